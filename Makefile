# husk: the two commands of the README's quick start are `make demo` and
# `make test`; everything else here is what they are built from.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
BUILD := build
export CARGO_TERM_COLOR ?= never

.PHONY: demo test deps build check agent kernel image guest install bench clean

PREFIX ?= /usr/local

## demo: install what is needed, build everything (guest kernel and image
## included), install husk and run a container with `husk run`.
demo: deps build guest install
	cargo run --quiet -p husk-tests --bin husk-demo

## test: install what is needed, build, and run every test, layer by layer
## (each runs even when an earlier one failed), then a table of how long
## each layer took. The nested layer boots the real guest on the builtin VMM
## inside a QEMU/TCG VM with nested KVM (tests/nested/).
LAYERS := $(BUILD)/test-layers.tsv
test: deps check build guest
	@rm -f $(LAYERS)
	scripts/layer.sh $(LAYERS) "cargo test (units, agent, VMM, QEMU e2e, docker)" \
		cargo test --workspace --no-fail-fast
	scripts/layer.sh $(LAYERS) "guest image" tests/guest/image-check.sh
	scripts/layer.sh $(LAYERS) "guest boot (QEMU/TCG)" \
		tests/guest/boot-check.sh --kernel "$$(guest-kernel/build.sh --print-path)"
	scripts/layer.sh $(LAYERS) "nested KVM (builtin VMM)" tests/nested/run.sh
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

## install: husk in $(PREFIX)/bin, the guest kernel and image in
## $(PREFIX)/share/husk, and the documented configuration in /etc/husk
## (an existing one is kept).
install: guest
	cargo build --release -p husk-runtime --bin husk
	install -D -m 0755 target/release/husk $(PREFIX)/bin/husk
	install -D -m 0644 "$$(guest-kernel/build.sh --print-path)" $(PREFIX)/share/husk/vmlinux
	install -D -m 0644 $(BUILD)/initrd.img $(PREFIX)/share/husk/initrd.img
	test -e /etc/husk/configuration.toml || install -D -m 0644 configuration.toml /etc/husk/configuration.toml

## bench: every benchmark (as root), each printing a table; see docs/benchmarks.md.
bench: deps build guest
	cargo bench -p husk-agent --bench lifecycle
	cargo bench -p husk-vmm --bench boot
	cargo bench -p husk-tests --bench microvm
	cargo bench -p husk-runtime --bench oci_run

clean:
	cargo clean
	rm -rf $(BUILD)
