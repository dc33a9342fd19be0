//! `make demo`: boots a husk microVM (the guest kernel and initrd this
//! repository builds, under QEMU with husk's own vhost-user vsock and
//! virtio-fs backends) and runs a busybox container in it through
//! husk-agent. Until the OCI CLI exists, this is husk's end-to-end demo.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use husk_protocol::agent::CreateSandboxRequest;
use husk_runtime::hypervisor::qemu::Qemu;
use husk_runtime::hypervisor::VmSpec;
use husk_runtime::sandbox_dir::SandboxDir;
use husk_runtime::sandbox_vm::SandboxVm;
use husk_tests::containers::{self, ctx, GUEST_SHARED};
use husk_tests::{guest, rootfs};

const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let message = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "hello from husk".into());
    let work = tempfile::tempdir().context("temporary directory")?;
    let artifacts = guest::artifacts(work.path()).map_err(|e| anyhow!(e))?;
    println!("guest kernel: {}", artifacts.kernel.display());
    println!("guest initrd: {}", artifacts.initrd.display());

    let dir = SandboxDir::new(work.path(), "demo").context("sandbox directory")?;
    let spec = VmSpec {
        vcpus: 1,
        memory_mib: 256,
        kernel: artifacts.kernel.clone(),
        initrd: artifacts.initrd.clone(),
        kernel_args: vec![],
        sandbox: dir.clone(),
    };
    let launched = Instant::now();
    let vm = SandboxVm::boot(Box::new(Qemu::new()), spec, AGENT_TIMEOUT)
        .await
        .context("booting the microVM")?;
    println!(
        "microVM up, agent answering after {:.2} s (QEMU pid {})",
        launched.elapsed().as_secs_f64(),
        vm.pid().unwrap_or(0)
    );
    let agent = vm.agent().clone();
    let result = async {
        agent
            .create_sandbox(
                ctx(),
                &CreateSandboxRequest {
                    hostname: "husk-demo".into(),
                    sandbox_id: "demo".into(),
                    storages: vec![containers::shared_storage()],
                    ..Default::default()
                },
            )
            .await
            .context("CreateSandbox")?;
        rootfs::busybox(&vm.dir().shared_dir().join("demo")).context("busybox rootfs")?;
        let script = format!("echo \"{message}\" from $(hostname), kernel $(uname -r)");
        let mut spec = containers::spec(&["sh", "-c", &script]);
        spec.set_hostname(Some("husk-demo".into()));
        containers::create(&agent, "demo", &spec, &format!("{GUEST_SHARED}/demo"))
            .await
            .context("CreateContainer")?;
        containers::start(&agent, "demo")
            .await
            .context("StartContainer")?;
        let out = containers::read_stdout_to_end(&agent, "demo")
            .await
            .context("ReadStdout")?;
        let status = containers::wait(&agent, "demo")
            .await
            .context("WaitProcess")?;
        containers::remove(&agent, "demo")
            .await
            .context("RemoveContainer")?;
        print!("container says: {}", String::from_utf8_lossy(&out));
        println!("container exit status: {status}");
        anyhow::ensure!(status == 0, "the container exited with {status}");
        Ok(())
    }
    .await;
    let stopped = vm
        .shutdown(Duration::from_secs(10))
        .await
        .context("stopping the microVM")?;
    println!("microVM stopped: {stopped:?}");
    result
}
