//! The snapshot path of the builtin VMM on the real guest, for the nested
//! layer (`tests/nested/suite.sh`) and by hand:
//!
//! ```text
//! snapshot_probe KERNEL INITRD WORKDIR
//! ```
//!
//! Boots a sandbox VM (1 vCPU, 256 MiB) cold and waits until its agent
//! answers; closes the connection, pauses and saves the VM, stops it. Then
//! restores the snapshot twice, into two new sandboxes with their own
//! vsock sockets and shares, and waits until each agent answers and
//! reports the guest. Prints `ok`/`not ok` lines and the times (cold boot
//! to agent, restore to agent); exits non-zero on any failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use husk_protocol::agent::{CheckRequest, GuestDetailsRequest};
use husk_runtime::agent_client;
use husk_runtime::hypervisor::builtin::Builtin;
use husk_runtime::hypervisor::{Hypervisor, VmSpec};
use husk_runtime::sandbox_dir::SandboxDir;
use husk_vmm::machine::SnapshotPaths;

const BOOT_TIMEOUT: Duration = Duration::from_secs(150);
const MEMORY_MIB: u32 = 256;

fn spec(kernel: &Path, initrd: &Path, root: &Path, id: &str) -> Result<VmSpec> {
    let sandbox = SandboxDir::new(root, id)?;
    sandbox.create()?;
    Ok(VmSpec {
        vcpus: 1,
        memory_mib: MEMORY_MIB,
        kernel: kernel.to_owned(),
        initrd: initrd.to_owned(),
        kernel_args: Vec::new(),
        sandbox,
        nics: Vec::new(),
    })
}

/// Waits until the agent behind `spec`'s socket answers; returns how long
/// that took and what it says about the guest.
async fn agent_answers(spec: &VmSpec, since: Instant) -> Result<(Duration, String)> {
    let client = agent_client::connect(
        &spec.sandbox.vsock_socket(),
        husk_protocol::AGENT_VSOCK_PORT,
        BOOT_TIMEOUT,
    )
    .await
    .context("agent connection")?;
    let check = client
        .check(agent_client::ctx(), &CheckRequest::new())
        .await
        .context("agent Check")?;
    let waited = since.elapsed();
    if check.status != "SERVING" {
        bail!("agent says {:?}", check.status);
    }
    let details = client
        .get_guest_details(agent_client::ctx(), &GuestDetailsRequest::new())
        .await
        .context("agent GetGuestDetails")?;
    Ok((
        waited,
        format!(
            "kernel {}, {} MiB, {} CPU(s)",
            details.kernel_release,
            details.mem_total_bytes >> 20,
            details.online_cpus
        ),
    ))
}

/// RSS, PSS and private dirty kB of this process's mappings of `file`
/// (one per restored VM's RAM range), from /proc/self/smaps.
fn mapped(file: &Path) -> Result<(u64, u64, u64)> {
    let file = std::fs::canonicalize(file)?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let (mut inside, mut rss, mut pss, mut dirty) = (false, 0, 0, 0);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            inside = line.ends_with(&*file.to_string_lossy());
            continue;
        }
        let kb: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        match (inside, first) {
            (true, "Rss:") => rss += kb,
            (true, "Pss:") => pss += kb,
            (true, "Private_Dirty:") => dirty += kb,
            _ => {}
        }
    }
    Ok((rss, pss, dirty))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [kernel, initrd, work] = args.as_slice() else {
        bail!("usage: snapshot_probe KERNEL INITRD WORKDIR");
    };
    let roots = work.join("sandboxes");
    let paths = SnapshotPaths::new(work.join("template"));
    let key = format!("{} {} 1 {MEMORY_MIB}", kernel.display(), initrd.display());

    let cold = spec(kernel, initrd, &roots, "cold")?;
    let mut template = Builtin::new();
    let t = Instant::now();
    template.start(&cold).context("cold boot")?;
    let (cold_time, cold_guest) = agent_answers(&cold, t).await?;
    println!("ok - cold boot: agent answers after {cold_time:?} ({cold_guest})");
    // The client is gone; give the guest time to see its connection close,
    // so no vsock connection is open in the snapshot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    template.snapshot(&paths, &key).context("snapshot")?;
    println!("ok - snapshot written in {:?}", t.elapsed());
    template.stop(Duration::ZERO)?;

    let mut restored = Vec::new();
    for id in ["restored-1", "restored-2"] {
        let spec = spec(kernel, initrd, &roots, id)?;
        let mut vm = Builtin::new();
        let t = Instant::now();
        vm.start_restored(&spec, &paths, &key)
            .with_context(|| format!("{id}: restore"))?;
        let (time, guest) = agent_answers(&spec, t)
            .await
            .with_context(|| format!("{id}: agent after restore"))?;
        if guest != cold_guest {
            bail!("{id}: guest {guest:?}, the template's was {cold_guest:?}");
        }
        println!("ok - {id}: agent answers {time:?} after restore ({guest})");
        restored.push(vm);
    }
    let (rss, pss, dirty) = mapped(&paths.memory())?;
    println!(
        "ok - {} restored VMs map the template: RSS {} MiB, PSS {} MiB, private dirty {} MiB",
        restored.len(),
        rss >> 10,
        pss >> 10,
        dirty >> 10
    );
    for mut vm in restored {
        vm.stop(Duration::ZERO)?;
    }

    let mut other = Builtin::new();
    let spec = spec(kernel, initrd, &roots, "wrong-key")?;
    match other.start_restored(&spec, &paths, "another kernel") {
        Err(e) if e.to_string().contains("another kernel") => {
            println!("ok - a snapshot for another key is refused: {e}")
        }
        Err(e) => bail!("refused for another reason: {e}"),
        Ok(()) => bail!("a snapshot for another key was restored"),
    }
    Ok(())
}
