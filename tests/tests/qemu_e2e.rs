//! End to end under QEMU: the runtime's QEMU backend boots the real guest
//! kernel and initrd (TCG on these machines), husk's own vhost-user vsock
//! and virtio-fs backends serve it, and containers run through husk-agent.
//!
//! Needs the guest kernel (`guest-kernel/build.sh`, run by `make guest`);
//! without it the test fails and names that command. One VM is shared by
//! all assertions to keep the boot count at one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::agent::{
    CheckRequest, CreateSandboxRequest, GetOOMEventRequest, GuestDetailsRequest,
};
use husk_runtime::hypervisor::qemu::Qemu;
use husk_runtime::hypervisor::{Hypervisor, Stopped, VmSpec};
use husk_runtime::sandbox_dir::SandboxDir;
use husk_runtime::service::vm::SandboxVm;
use husk_tests::containers::{self, ctx, GUEST_SHARED};
use husk_tests::{guest, rootfs};

/// Under TCG the guest takes 1-3 s to boot and the agent a little more.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// DestroySandbox must have the guest powered off within this.
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(2);

fn artifacts() -> guest::GuestArtifacts {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("qemu-e2e");
    match guest::artifacts(&dir) {
        Ok(a) => a,
        Err(e) => panic!("cannot get the guest kernel and initrd: {e}"),
    }
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Prints the guest console and QEMU's stderr if the test fails while the
/// sandbox directory still exists, so a CI log shows why.
struct DumpOnPanic(SandboxDir);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for path in [self.0.console_log(), self.0.hypervisor_log()] {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                eprintln!("--- {} ---\n{text}", path.display());
            }
        }
    }
}

/// Builds a busybox rootfs for container `name` in the share and returns its guest path.
fn container_rootfs(dir: &SandboxDir, name: &str) -> String {
    rootfs::busybox(&dir.shared_dir().join(name)).expect("busybox rootfs");
    format!("{GUEST_SHARED}/{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_microvm_boots_the_agent_and_runs_containers_over_virtio_fs() {
    let artifacts = artifacts();
    let root = tempfile::tempdir().expect("tempdir");
    let dir = SandboxDir::new(root.path(), "e2e").expect("sandbox dir");
    let _dump = DumpOnPanic(dir.clone());
    let spec = VmSpec::new(
        artifacts.kernel.clone(),
        artifacts.initrd.clone(),
        dir.clone(),
    );

    let launched = Instant::now();
    let vm = match SandboxVm::boot(Box::new(Qemu::new()), spec, AGENT_TIMEOUT).await {
        Ok(vm) => vm,
        Err(e) => {
            panic!("boot failed: {e}");
        }
    };
    let pid = vm.pid().expect("QEMU pid");
    let agent = vm.agent().clone();

    // The agent answers over the hybrid vsock socket.
    let check = agent
        .check(ctx(), &CheckRequest::new())
        .await
        .expect("Check");
    let to_check = launched.elapsed();
    assert_eq!(check.status, "SERVING");

    let details = agent
        .get_guest_details(ctx(), &GuestDetailsRequest::new())
        .await
        .expect("GetGuestDetails");
    assert!(
        details.kernel_release.starts_with("6.12"),
        "kernel {}",
        details.kernel_release
    );
    assert!(details.init, "the agent must be the guest's PID 1");
    let guest_mem_used = details.mem_total_bytes - details.mem_available_bytes;

    // The sandbox mounts the virtio-fs share served by husk's fs backend.
    agent
        .create_sandbox(
            ctx(),
            &CreateSandboxRequest {
                hostname: "husk-e2e".into(),
                sandbox_id: "e2e".into(),
                storages: vec![containers::shared_storage()],
                ..Default::default()
            },
        )
        .await
        .expect("CreateSandbox");

    // First container: its rootfs comes from the host over virtio-fs.
    let rootfs = container_rootfs(vm.dir(), "c1");
    let started = Instant::now();
    let spec = containers::spec(&["echo", "hello from the microVM"]);
    containers::create(&agent, "c1", &spec, &rootfs)
        .await
        .expect("create c1");
    containers::start(&agent, "c1").await.expect("start c1");
    let mut out = containers::read_stdout(&agent, "c1")
        .await
        .expect("read c1");
    let to_first_byte = launched.elapsed();
    let create_to_first_byte = started.elapsed();
    out.extend(
        containers::read_stdout_to_end(&agent, "c1")
            .await
            .expect("read c1"),
    );
    assert_eq!(String::from_utf8_lossy(&out), "hello from the microVM\n");
    assert_eq!(containers::wait(&agent, "c1").await.expect("wait c1"), 0);
    containers::remove(&agent, "c1").await.expect("remove c1");

    // Second container in the same VM: what it writes shows up on the host.
    let rootfs = container_rootfs(vm.dir(), "c2");
    let spec = containers::spec(&["sh", "-c", "echo written in the guest > /from-guest"]);
    containers::create(&agent, "c2", &spec, &rootfs)
        .await
        .expect("create c2");
    containers::start(&agent, "c2").await.expect("start c2");
    assert_eq!(containers::wait(&agent, "c2").await.expect("wait c2"), 0);
    let written = std::fs::read_to_string(vm.dir().shared_dir().join("c2/from-guest"))
        .expect("file written by the container");
    assert_eq!(written, "written in the guest\n");
    containers::remove(&agent, "c2").await.expect("remove c2");

    // Third: a cgroup v2 memory limit in the guest OOM-kills the container,
    // and the agent reports the OOM event for it.
    let rootfs = container_rootfs(vm.dir(), "c3");
    // dd allocates its 64 MiB block, more than the 16 MiB limit allows.
    let spec = containers::with_memory_limit(
        containers::spec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]),
        16 << 20,
    );
    containers::create(&agent, "c3", &spec, &rootfs)
        .await
        .expect("create c3");
    let oom = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.get_oom_event(ctx(), &GetOOMEventRequest::new()).await })
    };
    containers::start(&agent, "c3").await.expect("start c3");
    assert_eq!(
        containers::wait(&agent, "c3").await.expect("wait c3"),
        137,
        "the OOM killer's SIGKILL gives 128+9"
    );
    let event = tokio::time::timeout(Duration::from_secs(30), oom)
        .await
        .expect("no OOM event within 30 s")
        .expect("OOM task")
        .expect("GetOOMEvent");
    assert_eq!(event.container_id, "c3");
    containers::remove(&agent, "c3").await.expect("remove c3");

    // Fourth: a host file appears inside; `..` and symlinks that point out of
    // the share reach nothing of the host's.
    let rootfs = container_rootfs(vm.dir(), "c4");
    let c4 = vm.dir().shared_dir().join("c4");
    std::fs::write(c4.join("from-host"), "written on the host\n").expect("host file");
    let secret = root.path().join("outside-secret");
    std::fs::write(&secret, "HOST-SECRET\n").expect("secret");
    std::os::unix::fs::symlink("../../../outside-secret", c4.join("link-rel")).expect("symlink");
    std::os::unix::fs::symlink(&secret, c4.join("link-abs")).expect("symlink");
    let script = format!(
        "cat /from-host; cat /../../../../outside-secret /link-rel /link-abs {} 2>/dev/null; \
         ls /../../.. | grep -c outside-secret; true",
        secret.display()
    );
    let spec = containers::spec(&["sh", "-c", &script]);
    containers::create(&agent, "c4", &spec, &rootfs)
        .await
        .expect("create c4");
    containers::start(&agent, "c4").await.expect("start c4");
    let out = containers::read_stdout_to_end(&agent, "c4")
        .await
        .expect("read c4");
    let out = String::from_utf8_lossy(&out);
    assert_eq!(containers::wait(&agent, "c4").await.expect("wait c4"), 0);
    assert_eq!(
        out, "written on the host\n0\n",
        "nothing outside the share is reachable"
    );
    containers::remove(&agent, "c4").await.expect("remove c4");

    // Fifth: statistics of a busy container; pause freezes it, resume goes on.
    let rootfs = container_rootfs(vm.dir(), "c5");
    let spec = containers::spec(&[
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > /count.tmp; mv /count.tmp /count; done",
    ]);
    containers::create(&agent, "c5", &spec, &rootfs)
        .await
        .expect("create c5");
    containers::start(&agent, "c5").await.expect("start c5");
    let count_file = vm.dir().shared_dir().join("c5/count");
    let count = || -> u64 {
        std::fs::read_to_string(&count_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(count() >= 5, "the busy loop does not run");
    let stats = containers::stats(&agent, "c5").await.expect("stats c5");
    assert!(stats.memory.usage_bytes > 0, "{stats:?}");
    assert!(stats.cpu.usage_usec > 0, "{stats:?}");
    assert!(stats.pids.current >= 1, "{stats:?}");
    let c5 = husk_protocol::agent::ContainerRequest {
        container_id: "c5".into(),
        ..Default::default()
    };
    agent.pause_container(ctx(), &c5).await.expect("pause c5");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(count(), frozen, "a paused container must not run");
    agent.resume_container(ctx(), &c5).await.expect("resume c5");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count() <= frozen && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(count() > frozen, "a resumed container runs again");
    containers::remove(&agent, "c5").await.expect("remove c5");

    // Sixth: a pids limit stops a fork bomb.
    let rootfs = container_rootfs(vm.dir(), "c6");
    let spec = containers::with_pids_limit(
        containers::spec(&[
            "sh",
            "-c",
            // The bomb runs in a subshell (a shell dies when it cannot
            // fork); the container's shell then waits without forking.
            "(i=0; while [ $i -lt 40 ]; do sleep 60 & i=$((i+1)); done) 2>/dev/null; \
             echo forked; read never",
        ]),
        10,
    );
    containers::create(&agent, "c6", &spec, &rootfs)
        .await
        .expect("create c6");
    containers::start(&agent, "c6").await.expect("start c6");
    let out = containers::read_stdout_until(&agent, "c6", "forked")
        .await
        .expect("read c6");
    assert!(out.contains("forked"), "{out}");
    let stats = containers::stats(&agent, "c6").await.expect("stats c6");
    assert_eq!(stats.pids.limit, 10, "{stats:?}");
    assert!(
        (2..=10).contains(&stats.pids.current),
        "the limit holds the fork bomb: {stats:?}"
    );
    containers::remove(&agent, "c6").await.expect("remove c6");

    eprintln!(
        "qemu-e2e: guest memory in use after boot {} KiB",
        guest_mem_used / 1024
    );
    eprintln!(
        "qemu-e2e: QEMU launch to first Check reply {} ms; to first container output byte {} ms \
         (create+start+first byte {} ms)",
        to_check.as_millis(),
        to_first_byte.as_millis(),
        create_to_first_byte.as_millis()
    );

    // DestroySandbox powers the guest off: QEMU ends by itself.
    let shutdown = Instant::now();
    let stopped = vm.shutdown(POWER_OFF_TIMEOUT).await.expect("shutdown");
    assert!(
        matches!(stopped, Stopped::Exited(_)),
        "the guest did not power off within {POWER_OFF_TIMEOUT:?}: {stopped:?}"
    );
    eprintln!(
        "qemu-e2e: DestroySandbox to QEMU exit {} ms",
        shutdown.elapsed().as_millis()
    );

    // Nothing is left: no QEMU, no sockets, no sandbox directory.
    assert!(!process_exists(pid), "QEMU {pid} still exists");
    assert!(!dir.path().exists(), "sandbox dir left behind");
}

#[test]
fn a_missing_kernel_is_an_error_before_anything_starts() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = SandboxDir::new(root.path(), "nokernel").expect("sandbox dir");
    dir.create().expect("create");
    let spec = VmSpec::new(
        root.path().join("missing-vmlinux"),
        root.path().join("missing-initrd"),
        dir.clone(),
    );
    let mut qemu = Qemu::new();
    let err = qemu.start(&spec).expect_err("start without a kernel");
    assert!(err.to_string().contains("missing-vmlinux"), "{err}");
    assert_eq!(qemu.pid(), None);
    assert!(!dir.vsock_socket().exists());
}
