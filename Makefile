# husk: the two commands of the README's quick start are `make demo` and
# `make test`; everything else here is what they are built from.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
BUILD := build
export CARGO_TERM_COLOR ?= never

.PHONY: demo test deps build check agent kernel image guest bench clean

## demo: install what is needed, build everything (guest kernel and image
## included) and run a container.
demo: deps build guest
	cargo run --quiet -p husk-tests --bin husk-demo

## test: install what is needed, build, and run every test.
test: deps check build guest
	cargo test --workspace --no-fail-fast
	tests/guest/image-check.sh
	tests/guest/boot-check.sh --kernel "$$(guest-kernel/build.sh --print-path)"

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

bench: deps build
	cargo bench -p husk-agent --bench lifecycle
	cargo bench -p husk-vmm --bench boot
	cargo bench -p husk-tests --bench microvm

clean:
	cargo clean
	rm -rf $(BUILD)
