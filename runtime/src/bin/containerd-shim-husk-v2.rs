//! `containerd-shim-husk-v2`: the containerd runtime v2 shim of husk
//! (runtime type `io.containerd.husk.v2`).

fn main() {
    husk_runtime::shim::main();
}
