//! create + start + wait (+ remove) of `/bin/true` through the agent API,
//! beside `crun run` and `runc run` of the same bundle, interleaved in one
//! run. Prints medians and ratios. Run with `cargo bench -p husk-agent
//! --bench lifecycle` as root.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ROUNDS: usize = 20;

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The command that runs the bundle with `runtime`.
///
/// crun 1.8 refuses this host's hybrid cgroup layout, so it runs in a private
/// mount namespace with a bare cgroup2 mount and its cgroup manager
/// disabled: it does less work than runc and husk (no cgroup at all), which
/// favours it in the comparison.
fn oci_command(runtime: &str, bundle: &Path, id: &str) -> Command {
    let run = format!("run --bundle {} {id}", bundle.display());
    if runtime == "crun" {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && \
             exec crun --cgroup-manager=disabled {run}"
            ));
        cmd
    } else {
        let mut cmd = Command::new(runtime);
        cmd.args(run.split(' '));
        cmd
    }
}

fn oci_run(runtime: &str, bundle: &Path, id: &str) -> Duration {
    let started = Instant::now();
    let status = oci_command(runtime, bundle, id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running {runtime}: {e}"));
    let elapsed = started.elapsed();
    assert!(status.success(), "{runtime} run failed: {status}");
    elapsed
}

fn main() {
    let peers: Vec<&str> = ["crun", "runc"]
        .into_iter()
        .filter(|p| Command::new(p).arg("--version").output().is_ok())
        .collect();
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
            others[i].push(oci_run(peer, bundle.path(), &format!("{id}-{peer}")));
        }
    }

    let husk = median(&mut husk);
    println!("create+start+wait+delete of /bin/true, median of {ROUNDS}, interleaved");
    println!("| runtime | median | ratio to husk-agent |");
    println!("| --- | --- | --- |");
    println!(
        "| husk-agent (ttrpc API) | {:.1} ms | 1.00 |",
        husk.as_secs_f64() * 1e3
    );
    for (peer, samples) in peers.iter().zip(others.iter_mut()) {
        let m = median(samples);
        println!(
            "| {peer} run | {:.1} ms | {:.2} |",
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() / husk.as_secs_f64()
        );
    }
}
