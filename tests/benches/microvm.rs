//! QEMU backend timings, median of 5 boots (TCG on these machines, so
//! informational): QEMU launch → the agent's first `Check` reply, → a
//! container's first output byte, and guest memory in use after boot.
//! Run with `cargo bench -p husk-tests --bench microvm` as root, after
//! `make guest`.

use std::time::{Duration, Instant};

use husk_protocol::agent::{CheckRequest, CreateSandboxRequest, GuestDetailsRequest};
use husk_runtime::hypervisor::qemu::Qemu;
use husk_runtime::hypervisor::VmSpec;
use husk_runtime::sandbox_dir::SandboxDir;
use husk_runtime::service::vm::SandboxVm;
use husk_tests::bench::median;
use husk_tests::containers::{self, ctx, GUEST_SHARED};
use husk_tests::{guest, rootfs};

const ROUNDS: usize = 5;

struct Sample {
    to_check: Duration,
    to_first_byte: Duration,
    mem_used_kib: u64,
}

async fn one_boot(artifacts: &guest::GuestArtifacts, round: usize) -> Sample {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = SandboxDir::new(root.path(), &format!("bench{round}")).expect("sandbox dir");
    let spec = VmSpec::new(
        artifacts.kernel.clone(),
        artifacts.initrd.clone(),
        dir.clone(),
    );
    let launched = Instant::now();
    let vm = SandboxVm::boot(Box::new(Qemu::new()), spec, Duration::from_secs(60))
        .await
        .expect("boot");
    let agent = vm.agent().clone();
    agent
        .check(ctx(), &CheckRequest::new())
        .await
        .expect("Check");
    let to_check = launched.elapsed();
    let details = agent
        .get_guest_details(ctx(), &GuestDetailsRequest::new())
        .await
        .expect("GetGuestDetails");
    agent
        .create_sandbox(
            ctx(),
            &CreateSandboxRequest {
                storages: vec![containers::shared_storage()],
                ..Default::default()
            },
        )
        .await
        .expect("CreateSandbox");
    rootfs::busybox(&vm.dir().shared_dir().join("c")).expect("rootfs");
    let spec = containers::spec(&["echo", "hi"]);
    containers::create(&agent, "c", &spec, &format!("{GUEST_SHARED}/c"))
        .await
        .expect("create");
    containers::start(&agent, "c").await.expect("start");
    containers::read_stdout(&agent, "c").await.expect("read");
    let to_first_byte = launched.elapsed();
    containers::wait(&agent, "c").await.expect("wait");
    vm.shutdown(Duration::from_secs(10))
        .await
        .expect("shutdown");
    Sample {
        to_check,
        to_first_byte,
        mem_used_kib: (details.mem_total_bytes - details.mem_available_bytes) / 1024,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let work = tempfile::tempdir().expect("tempdir");
    let artifacts = guest::artifacts(work.path()).expect("guest kernel and initrd (make guest)");
    let mut samples = Vec::new();
    for round in 0..ROUNDS {
        samples.push(one_boot(&artifacts, round).await);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("QEMU backend (TCG), 1 vCPU, 256 MiB, median of {ROUNDS} boots");
    println!("| interval | median |");
    println!("| --- | --- |");
    println!(
        "| QEMU launch → first Check reply | {:.0} ms |",
        ms(median(
            &samples.iter().map(|s| s.to_check).collect::<Vec<_>>()
        ))
    );
    println!(
        "| QEMU launch → container's first output byte | {:.0} ms |",
        ms(median(
            &samples.iter().map(|s| s.to_first_byte).collect::<Vec<_>>()
        ))
    );
    println!(
        "| guest memory in use after boot (MemTotal − MemAvailable) | {} MiB |",
        median(&samples.iter().map(|s| s.mem_used_kib).collect::<Vec<_>>()) / 1024
    );
}
