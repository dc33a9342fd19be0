# husk: the two commands of the README's quick start are `make demo` and
# `make test`; everything else here is what they are built from.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
BUILD := build
export CARGO_TERM_COLOR ?= never

.PHONY: demo test deps build check agent kernel image guest install bench bench-nested bench-budget bench-budget-nested bench-snapshot bench-snapshot-nested bench-net bench-pod soak fuzz clean

PREFIX ?= /usr/local

## demo: install what is needed, build everything (guest kernel and image
## included), install husk and run a container with `husk run`.
demo: deps build guest install
	cargo run --quiet -p husk-tests --bin husk-demo

## test: install what is needed, build, and run every test, layer by layer
## (each runs even when an earlier one failed), then a table of how long
## each layer took. The nested layer boots the real guest on the builtin VMM
## inside a QEMU/TCG VM with nested KVM (tests/nested/). The soak layer is
## `make soak` cut to 20 lifecycles; the fuzz smoke layer is `make fuzz` cut
## to 20 s per target.
LAYERS := $(BUILD)/test-layers.tsv
# The soak, as `make build` leaves it (debug, beside the husk it drives).
SOAK := $${CARGO_TARGET_DIR:-target}/debug/husk-soak
test: deps check build guest
	@rm -f $(LAYERS)
	scripts/layer.sh $(LAYERS) "cargo test (units, agent, VMM, QEMU e2e, docker)" \
		cargo test --workspace --no-fail-fast
	scripts/layer.sh $(LAYERS) "soak (20 lifecycles)" $(SOAK) --lifecycles 20 --every 10
	scripts/layer.sh $(LAYERS) "guest image" tests/guest/image-check.sh
	scripts/layer.sh $(LAYERS) "guest boot (QEMU/TCG)" \
		tests/guest/boot-check.sh --kernel "$$(guest-kernel/build.sh --print-path)"
	scripts/layer.sh $(LAYERS) "nested KVM (builtin VMM)" tests/nested/run.sh
	scripts/layer.sh $(LAYERS) "fuzz smoke (20 s per target)" scripts/fuzz.sh 20
	@scripts/layer.sh $(LAYERS) --summary

deps:
	scripts/install-deps.sh

build:
	cargo build --workspace --all-targets

check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## agent: the static husk-agent for the guest image.
agent:
	scripts/build-agent.sh

## kernel: the guest kernel, cached under /var/cache/husk by input hash.
kernel:
	guest-kernel/build.sh

## image: the guest initrd, with the static agent as /init.
image:
	mkdir -p $(BUILD)
	guest-image/build.sh "$$(scripts/build-agent.sh)" $(BUILD)/initrd.img

guest: kernel image

## install: husk and containerd-shim-husk-v2 in $(PREFIX)/bin, the guest kernel and image in
## $(PREFIX)/share/husk, and the documented configuration in /etc/husk
## (an existing one is kept).
install: guest
	cargo build --release -p husk-runtime --bin husk --bin containerd-shim-husk-v2
	install -D -m 0755 target/release/husk $(PREFIX)/bin/husk
	install -D -m 0755 target/release/containerd-shim-husk-v2 $(PREFIX)/bin/containerd-shim-husk-v2
	install -D -m 0644 "$$(guest-kernel/build.sh --print-path)" $(PREFIX)/share/husk/vmlinux
	install -D -m 0644 $(BUILD)/initrd.img $(PREFIX)/share/husk/initrd.img
	test -e /etc/husk/configuration.toml || install -D -m 0644 configuration.toml /etc/husk/configuration.toml

## bench: every benchmark (as root), each printing a table; see docs/benchmarks.md.
bench: deps build guest
	cargo bench -p husk-agent --bench lifecycle
	cargo bench -p husk-vmm --bench boot
	cargo bench -p husk-tests --bench microvm
	cargo bench -p husk-runtime --bench oci_run

## bench-nested: the builtin VMM against QEMU (-M microvm -accel kvm, husk's
## vhost-user devices) booting the same guest on the same KVM: inside the
## nested layer's outer VM (tests/nested/l1.sh), whose emulated AMD-V runs
## both. About 20 minutes; not part of `make test`. NESTED_BENCH_RUNS sets the
## timed runs per backend (default 5); tables in build/bench-nested/*.md.
NESTED_BENCH_OUT := $(BUILD)/bench-nested
NESTED_BENCH_RUNS ?= 5
bench-nested: deps guest
	oci_run=$$($(call bench_executable,husk-runtime,oci_run)); \
	boot=$$($(call bench_executable,husk-vmm,boot)); \
	[[ -x $$oci_run && -x $$boot ]] || { echo "bench-nested: no bench executables from cargo"; exit 1; }; \
	status=0; \
	tests/nested/l1.sh --out $(NESTED_BENCH_OUT) --timeout 1800 tests/nested/bench.sh \
		"$$oci_run" "$$boot" "$$(guest-kernel/build.sh --print-path)" "$$PWD/$(BUILD)/initrd.img" \
		$(NESTED_BENCH_RUNS) || status=$$?; \
	for table in $(NESTED_BENCH_OUT)/oci_run.md $(NESTED_BENCH_OUT)/boot.md; do \
		if [[ -s $$table ]]; then echo "== $$table"; cat "$$table"; echo; fi; \
	done; \
	if ((status != 0)); then \
		echo "bench-nested: failed ($$status); the end of $(NESTED_BENCH_OUT)/script.log:"; \
		tail -n 40 $(NESTED_BENCH_OUT)/script.log || true; \
	fi; \
	exit $$status

## bench-budget: the boot budget, every stage of `husk run` host and guest,
## as medians (as root; the backend this host picks). BUDGET_RUNS (default
## 10); BUDGET_VARIANTS compares builds or guests interleaved, as
## `NAME:husk=PATH,initrd=PATH,kernel=PATH,params=WORDS;...` (see
## runtime/benches/boot_budget.rs). docs/benchmarks.md, "Boot budget".
BUDGET_RUNS ?= 10
BUDGET_VARIANTS ?=
bench-budget: deps guest
	HUSK_BUDGET_RUNS=$(BUDGET_RUNS) HUSK_BUDGET_VARIANTS="$(BUDGET_VARIANTS)" \
		cargo bench -p husk-runtime --bench boot_budget

## bench-budget-nested: the same on the builtin VMM inside the nested
## layer's outer VM (tests/nested/budget.sh); the table in
## build/bench-nested/boot_budget.md. About 10 minutes at 5 runs.
bench-budget-nested: deps guest
	bench=$$($(call bench_executable,husk-runtime,boot_budget)); \
	[[ -x $$bench ]] || { echo "bench-budget-nested: no bench executable from cargo"; exit 1; }; \
	status=0; \
	flock /tmp/husk-nested.lock tests/nested/l1.sh --out $(NESTED_BENCH_OUT) --timeout 1800 tests/nested/budget.sh \
		"$$bench" "$$(guest-kernel/build.sh --print-path)" "$$PWD/$(BUILD)/initrd.img" \
		$(BUDGET_RUNS) "$(BUDGET_VARIANTS)" || status=$$?; \
	cat $(NESTED_BENCH_OUT)/boot_budget.md || true; \
	exit $$status

## bench-snapshot-nested: sandboxes restored from a snapshot template
## against cold-booted ones on the builtin VMM, inside the nested layer's
## outer VM (tests/nested/snapshot-bench.sh): `husk run` of /bin/true and
## the PSS of 1, 5 and 10 sandboxes side by side. SNAPSHOT_RUNS (default 5),
## SNAPSHOT_COUNTS (default 1,5,10); the table in
## build/bench-nested/snapshot.md. `make bench-snapshot` runs the same bench
## on this host (it needs KVM that runs Linux guests).
SNAPSHOT_RUNS ?= 5
SNAPSHOT_COUNTS ?= 1,5,10
bench-snapshot: deps guest
	HUSK_SNAPSHOT_RUNS=$(SNAPSHOT_RUNS) HUSK_SNAPSHOT_COUNTS=$(SNAPSHOT_COUNTS) \
		cargo bench -p husk-runtime --bench snapshot

bench-snapshot-nested: deps guest
	bench=$$($(call bench_executable,husk-runtime,snapshot)); \
	[[ -x $$bench ]] || { echo "bench-snapshot-nested: no bench executable from cargo"; exit 1; }; \
	status=0; \
	flock /tmp/husk-nested.lock tests/nested/l1.sh --out $(NESTED_BENCH_OUT) --timeout 1800 tests/nested/snapshot-bench.sh \
		"$$bench" "$$(guest-kernel/build.sh --print-path)" "$$PWD/$(BUILD)/initrd.img" \
		$(SNAPSHOT_RUNS) $(SNAPSHOT_COUNTS) || status=$$?; \
	cat $(NESTED_BENCH_OUT)/snapshot.md || true; \
	exit $$status

## bench-net: TCP throughput (iperf3) container <-> peer: husk's virtio-net
## backend beside QEMU's own -netdev tap on the same guest, and runc, in a
## private Docker inside a network namespace of its own (as root; about 10
## minutes under TCG). NET_BENCH_RUNS (default 5), NET_BENCH_SECONDS (10);
## the table also goes to build/bench-net.md.
bench-net: deps guest
	tests/bench/net-iperf.sh

## bench-pod: Kubernetes pod start (RunPodSandbox to the container RUNNING)
## and host memory per pod (PSS of the shim, QEMU and container processes):
## husk's containerd shim beside containerd's runc shim, in one private
## containerd with its CRI plugin inside a network namespace of its own (as
## root; about 2 minutes once built, under TCG). POD_BENCH_ROUNDS (default
## 5); the table also goes to build/bench-pod.md.
bench-pod: deps guest
	tests/bench/pod-start.sh

## soak: a leak soak of the husk CLI (as root): SOAK_LIFECYCLES (default
## 500) container lifecycles of mixed kinds (exit 0, non-zero, killed, OOM,
## exec'd, paused then deleted, `delete --force` while running), counting
## processes, fds, mounts, sockets, taps, netns, cgroups, state entries and
## used memory every SOAK_EVERY (50); fails when a count grows. About 2-3 s
## a lifecycle under TCG, so about 20 minutes; not part of `make test`,
## which runs 20. See tests/src/bin/husk-soak.rs.
SOAK_LIFECYCLES ?= 500
SOAK_EVERY ?= 50
soak: deps guest
	cargo build -p husk-runtime --bin husk
	cargo build -p husk-tests --bin husk-soak
	$(SOAK) --lifecycles $(SOAK_LIFECYCLES) --every $(SOAK_EVERY)

## fuzz: every cargo-fuzz target (fuzz/: vsock packets, virtio-fs requests,
## virtio-mmio registers and queues, agent replies) for FUZZ_SECONDS each
## (default 600), then a table of executions, corpus size and crashes;
## fails on any crash. See docs/fuzzing.md.
FUZZ_SECONDS ?= 600
fuzz: deps
	scripts/fuzz.sh $(FUZZ_SECONDS)

# The path of bench $(2) of package $(1), built in release (bench) mode, as
# cargo reports it.
bench_executable = cargo bench --quiet --no-run --message-format json -p $(1) --bench $(2) \
	| grep '"reason":"compiler-artifact"' | grep '"name":"$(2)"' \
	| grep -o '"executable":"[^"]*"' | cut -d'"' -f4

clean:
	cargo clean
	rm -rf $(BUILD)
