//! Generates the agent API from `proto/agent.proto` with ttrpc-codegen's
//! pure-Rust parser, so building needs no `protoc` on the machine.

use std::{fs, io, path::Path};

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() -> io::Result<()> {
    let out_dir = std::env::var("OUT_DIR").map_err(io::Error::other)?;
    println!("cargo:rerun-if-changed=proto/agent.proto");

    Codegen::new()
        .out_dir(&out_dir)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()?;

    // The generated files carry inner attributes and doc comments that
    // `include!` cannot take; lib.rs puts its own allows on the modules.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        strip_inner_attributes(&Path::new(&out_dir).join(name))?;
    }
    Ok(())
}

fn strip_inner_attributes(path: &Path) -> io::Result<()> {
    let text = fs::read_to_string(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            !line.starts_with("#![") && !line.starts_with("//!")
        })
        .collect();
    fs::write(path, kept.join("\n"))
}
