//! create + start + wait (+ remove) of `/bin/true` through the agent API,
//! beside `crun run` and `runc run` of the same bundle, interleaved in one
//! run. Prints medians and ratios. Run with `cargo bench -p husk-agent
//! --bench lifecycle` as root.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use husk_tests::bench::{median, peer_run, peers};

const ROUNDS: usize = 20;

fn main() {
    // crun runs without a cgroup here: see husk_tests::bench.
    let peers = peers();
    let spec = spec(&["/bin/true"]);

    // One bundle for the OCI runtimes: the same spec and rootfs.
    let bundle = tempfile::tempdir().expect("bundle dir");
    let mut oci_spec = spec.clone();
    let mut root = oci_spec.root().clone().expect("root");
    root.set_path(busybox_rootfs().to_owned());
    oci_spec.set_root(Some(root));
    oci_spec
        .save(bundle.path().join("config.json"))
        .expect("config.json");

    let agent = Agent::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt.block_on(agent.client());

    let mut husk = Vec::new();
    let mut others: Vec<Vec<Duration>> = vec![Vec::new(); peers.len()];
    for round in 0..ROUNDS {
        let id = format!("bench-{}-{round}", std::process::id());
        let started = Instant::now();
        rt.block_on(async {
            create(&client, &id, &spec).await.expect("create");
            start(&client, &id).await;
            assert_eq!(wait(&client, &id, "init").await, 0);
            remove(&client, &id).await;
        });
        husk.push(started.elapsed());
        for (i, peer) in peers.iter().enumerate() {
            let elapsed = peer_run(peer, bundle.path(), &format!("{id}-{peer}"))
                .unwrap_or_else(|e| panic!("{e}"));
            others[i].push(elapsed);
        }
    }

    let husk = median(&husk);
    println!("create+start+wait+delete of /bin/true, median of {ROUNDS}, interleaved");
    println!("| runtime | median | ratio to husk-agent |");
    println!("| --- | --- | --- |");
    println!(
        "| husk-agent (ttrpc API) | {:.1} ms | 1.00 |",
        husk.as_secs_f64() * 1e3
    );
    for (peer, samples) in peers.iter().zip(&others) {
        let m = median(samples);
        println!(
            "| {peer} run | {:.1} ms | {:.2} |",
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() / husk.as_secs_f64()
        );
    }
}
