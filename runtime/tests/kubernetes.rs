//! Kubernetes end to end, the kubelet's way: a private containerd (Debian's
//! 1.6, its CRI plugin on) runs inside a network namespace of the test's
//! own, with offline busybox and pause images, and the test speaks CRI to
//! it as a kubelet would. One pod of two containers sharing an emptyDir
//! and the pod's network (A serves HTTP, B fetches from it over
//! 127.0.0.1), ExecSync, the CRI log format, exit codes, an OOM kill under
//! a memory limit, stats, then the pod's stop and removal; and `ctr run`
//! and `ctr task exec` with the runtime's shim directly. After teardown no
//! process, mount, pod namespace or state may remain.
//!
//! [`pod_scenario`] takes the CRI handler and containerd runtime type:
//! `cri_pod_with_runc_handler` proves the harness and the checks with
//! containerd's own runc shim; husk's shim (`containerd-shim-husk-v2`,
//! handler `husk`) runs the same function.

use std::path::Path;
use std::time::{Duration, Instant};

use husk_tests::containerd::cri::{self, api, ContainerConfig, Cri};
use husk_tests::containerd::{images, Containerd, ShimRuntime};

/// The memory limit of the container that must be OOM-killed.
const OOM_LIMIT: i64 = 32 << 20;
/// How long a container may take to reach a state (under husk each pod
/// boots a VM on TCG).
const WAIT: Duration = Duration::from_secs(120);
/// The port container A's httpd listens on in the pod's network.
const PORT: u16 = 8080;
/// What A serves from the shared emptyDir.
const PAGE: &str = "page-written-by-a";

#[test]
fn cri_pod_with_runc_handler() {
    let runc = ShimRuntime::new("runc", "io.containerd.runc.v2", None);
    pod_scenario(&[runc], "runc", "io.containerd.runc.v2", None);
}

/// husk's shim, `containerd-shim-husk-v2` (runtime type
/// `io.containerd.husk.v2`, CRI handler `husk`): the same scenario, each
/// pod in a microVM of its own.
#[test]
fn cri_pod_with_husk_handler() {
    let (_dir, husk) = husk_shim_runtime();
    let root = husk.state_dirs[0].clone();
    pod_scenario(
        &[husk],
        "husk",
        "io.containerd.husk.v2",
        Some(&|| husk_vms(&root)),
    );
}

/// How many husk VMs run with sandboxes under `root`: its sandbox
/// directories or its QEMU processes, whichever are more (QEMU names its
/// sandbox directory on its command line; the builtin VMM runs inside the
/// shim and has none).
fn husk_vms(root: &Path) -> usize {
    let dirs: Vec<std::path::PathBuf> = std::fs::read_dir(root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.len().max(qemus_under(root).len())
}

/// The QEMU processes of husk sandboxes under `root`.
fn qemus_under(root: &Path) -> Vec<i32> {
    let root = root.to_string_lossy();
    processes()
        .into_iter()
        .filter(|(_, argv)| argv.first().is_some_and(|a| a.contains("qemu-system")))
        .filter(|(_, argv)| argv.iter().any(|a| a.contains(&*root)))
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process's pid and argv.
fn processes() -> Vec<(i32, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !argv.is_empty() {
            out.push((pid, argv));
        }
    }
    out
}

/// The long-lived shims of this containerd (not a `start` or `delete`
/// invocation, which end at once).
fn pod_shims(cd: &Containerd) -> Vec<i32> {
    let socket = cd.socket().to_string_lossy().into_owned();
    processes()
        .into_iter()
        .filter(|(_, argv)| argv.first().is_some_and(|a| a.contains("containerd-shim-")))
        .filter(|(_, argv)| {
            argv.contains(&socket)
                && !argv
                    .last()
                    .is_some_and(|action| action == "start" || action == "delete")
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// A running pod of husk's survives containerd restarting (the shim and
/// its VM keep running; containerd reconnects through the address in the
/// bundle); its shim killed with SIGKILL is cleaned up after by
/// StopPodSandbox and RemovePodSandbox: no VM, sandbox directory, mount,
/// pod namespace or shim left.
#[test]
fn a_husk_pod_survives_a_containerd_restart_and_its_killed_shim_is_cleaned_up() {
    let (_dir, husk) = husk_shim_runtime();
    let root = husk.state_dirs[0].clone();
    let mut cd = Containerd::start(&[husk]).unwrap_or_else(|e| panic!("{e:#}"));
    cd.import_images().unwrap_or_else(|e| panic!("{e:#}"));
    let cri = cd.cri().unwrap();
    let pod = cd.pod_config("survivor").unwrap().build();
    let pod_id = cri.run_pod_sandbox(&pod, "husk").unwrap();
    let sleeper = ContainerConfig::new("sleeper", images::BUSYBOX)
        .command(&["sleep", "600"])
        .build();
    let id = cri.create_container(&pod_id, &sleeper, &pod).unwrap();
    cri.start_container(&id).unwrap();
    let shims = pod_shims(&cd);
    assert_eq!(shims.len(), 1, "{shims:?}");
    assert_eq!(husk_vms(&root), 1);

    drop(cri);
    cd.restart().unwrap_or_else(|e| panic!("{e:#}"));
    let cri = cd.cri().unwrap();
    assert_eq!(pod_shims(&cd), shims, "the shim was replaced");
    let status = cri.container_status(&id).unwrap();
    assert_eq!(
        status.state,
        api::ContainerState::ContainerRunning as i32,
        "{status:?}"
    );
    let out = cri
        .exec_sync(&id, &["echo", "still here"], Duration::from_secs(30))
        .unwrap();
    assert_eq!((out.stdout.as_str(), out.exit_code), ("still here\n", 0));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    while !pod_shims(&cd).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    cri.stop_pod_sandbox(&pod_id).unwrap();
    cri.remove_pod_sandbox(&pod_id).unwrap();
    // containerd runs the shim's `delete` (which takes the VM down) when it
    // notices the shim is gone, beside the CRI calls: give it a bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    while husk_vms(&root) != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(husk_vms(&root), 0, "the killed shim's VM is still there");
    drop(cri);
    let left = cd.shutdown();
    assert!(left.is_empty(), "leftovers after teardown:\n{left}");
}

/// husk's shim registered with containerd, with its configuration (the
/// project's guest, sandboxes under a directory of the test's) in the
/// environment containerd hands the shim.
fn husk_shim_runtime() -> (tempfile::TempDir, ShimRuntime) {
    let shim = Path::new(env!("CARGO_BIN_EXE_containerd-shim-husk-v2"));
    let (dir, cli) = husk_tests::docker::husk::test_runtime(Path::new(env!(
        "CARGO_BIN_EXE_containerd-shim-husk-v2"
    )));
    let config = cli.args.last().cloned().expect("husk's --config argument");
    let mut husk = ShimRuntime::new(
        "husk",
        "io.containerd.husk.v2",
        shim.parent().map(Path::to_owned),
    );
    husk.env.push(("HUSK_CONFIG".into(), config));
    husk.state_dirs = cli.state_dirs;
    (dir, husk)
}

/// The leftover checks themselves: containerd killed with a pod running
/// leaves its shim, the pod's processes, mounts and network namespace,
/// and teardown must report them all, then remove them.
#[test]
fn cri_teardown_reports_what_a_killed_containerd_left() {
    let cd = Containerd::start(&[]).unwrap_or_else(|e| panic!("{e:#}"));
    cd.import_images().unwrap_or_else(|e| panic!("{e:#}"));
    let cri = cd.cri().unwrap();
    let pod = cd.pod_config("orphan").unwrap().build();
    let pod_id = cri.run_pod_sandbox(&pod, "runc").unwrap();
    let sleeper = ContainerConfig::new("sleeper", images::BUSYBOX)
        .command(&["sleep", "600"])
        .build();
    let id = cri.create_container(&pod_id, &sleeper, &pod).unwrap();
    cri.start_container(&id).unwrap();
    drop(cri);
    let root = cd.root().to_owned();
    let pid = cd.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    let left = cd.shutdown();
    eprintln!("{left}");
    let exes: Vec<&str> = left.processes.iter().map(|p| p.exe.as_str()).collect();
    assert!(exes.contains(&"containerd-shim-runc-v2"), "{left}");
    assert!(exes.contains(&"busybox"), "{left}");
    assert!(
        left.network.iter().any(|n| n.contains("/run/netns/cni-")),
        "{left}"
    );
    assert!(left.mounts.iter().any(|m| m.starts_with(&root)), "{left}");
    for dir in ["/run/containerd/s", "/var/lib/cni/results"] {
        assert!(left.paths.iter().any(|p| p.starts_with(dir)), "{left}");
    }
    assert!(
        left.paths.iter().any(|p| p.starts_with("/sys/fs/cgroup")),
        "{left}"
    );
    // All of it is gone now.
    let marker = root.to_string_lossy().into_owned();
    assert!(husk_tests::docker::leftovers::processes(&[marker]).is_empty());
    assert!(husk_tests::docker::leftovers::mounts(&root, &[]).is_empty());
    assert!(!root.exists());
    for pod_ns in left
        .network
        .iter()
        .filter_map(|n| n.strip_prefix("pod namespace "))
    {
        assert!(!Path::new(pod_ns).exists(), "{pod_ns}");
    }
}

/// Times each step, so a slow runtime shows where.
struct Steps {
    started: Instant,
    step: Instant,
}

impl Steps {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            step: now,
        }
    }

    fn done(&mut self, what: &str) {
        eprintln!("[{:>6.2?}] {what}", self.step.elapsed());
        self.step = Instant::now();
    }
}

/// The whole scenario with CRI handler `handler` (registered by one of
/// `runtimes`, or containerd's own runc) and, for `ctr run`, the
/// containerd runtime type `runtime_type`.
pub fn pod_scenario(
    runtimes: &[ShimRuntime],
    handler: &str,
    runtime_type: &str,
    vms: Option<&dyn Fn() -> usize>,
) {
    let mut steps = Steps::new();
    let cd = Containerd::start(runtimes).unwrap_or_else(|e| panic!("{e:#}"));
    steps.done("containerd started, CRI runtime and network ready");
    cd.import_images().unwrap_or_else(|e| panic!("{e:#}"));
    let cri = cd.cri().unwrap();
    for image in [images::BUSYBOX, images::PAUSE] {
        let seen = cri.image_status(image).unwrap();
        assert!(seen.is_some(), "the CRI plugin does not see {image}");
    }
    let version = cri.version().unwrap();
    assert_eq!(version.runtime_name, "containerd");
    steps.done(&format!(
        "images imported ({} {}, CRI {})",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    ));

    pod_checks(&cd, &cri, handler, vms, &mut steps);
    ctr_checks(&cd, runtime_type, &mut steps);

    drop(cri);
    let left = cd.shutdown();
    steps.done("containerd stopped");
    assert!(left.is_empty(), "leftovers after teardown:\n{left}");
    eprintln!(
        "pod scenario with handler {handler} took {:.1?}",
        steps.started.elapsed()
    );
}

fn pod_checks(
    cd: &Containerd,
    cri: &Cri,
    handler: &str,
    vms: Option<&dyn Fn() -> usize>,
    steps: &mut Steps,
) {
    let pod = cd.pod_config("web").unwrap();
    let pod_config = pod.build();
    let pod_id = cri.run_pod_sandbox(&pod_config, handler).unwrap();
    let status = cri.pod_sandbox_status(&pod_id).unwrap();
    assert!(status.ready, "{:?}", status.status);
    assert_eq!(status.status.runtime_handler, handler);
    assert!(
        status.ip.starts_with("10.88.77."),
        "pod IP {:?} is not from the CNI subnet",
        status.ip
    );
    steps.done(&format!("pod {pod_id} ready at {}", status.ip));

    // An emptyDir: a host directory mounted in both containers.
    let empty_dir = cd.root().join("volumes/shared");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let a = ContainerConfig::new("a", images::BUSYBOX)
        .command(&["sh", "-c"])
        .args(&[&format!(
            "echo {PAGE} > /data/index.html; echo a is up; exec httpd -f -p {PORT} -h /data"
        )])
        .mount(&empty_dir, "/data", false)
        .build();
    let a_id = cri.create_container(&pod_id, &a, &pod_config).unwrap();
    cri.start_container(&a_id).unwrap();
    // B fetches A's page over the pod's loopback, reads the file A wrote
    // into the emptyDir, leaves one for A, and exits 7; `timeout` bounds
    // its wait for A.
    let b = ContainerConfig::new("b", images::BUSYBOX)
        .command(&["timeout", "60", "sh", "-c"])
        .args(&[&format!(
            "until wget -q -O /tmp/page http://127.0.0.1:{PORT}/; do sleep 0.2; done; \
             echo fetched $(cat /tmp/page); echo read $(cat /data/index.html); \
             echo from-b > /data/from-b; echo to-stderr >&2; exit 7"
        )])
        .mount(&empty_dir, "/data", false)
        .build();
    let b_id = cri.create_container(&pod_id, &b, &pod_config).unwrap();
    cri.start_container(&b_id).unwrap();
    let b_status = cri.wait_exited(&b_id, WAIT).unwrap();
    assert_eq!(b_status.exit_code, 7, "{b_status:?}");
    steps.done("containers A and B: B fetched A's page over the pod's loopback");
    // One shim serves the whole pod (and, for a VM runtime, one VM).
    assert_eq!(pod_shims(cd).len(), 1, "{:?}", pod_shims(cd));
    if let Some(vms) = vms {
        assert_eq!(vms(), 1, "a pod of three containers runs in one VM");
    }

    // B's log, in the CRI format, at the path the pod and container named.
    let log_path = Path::new(&b_status.log_path);
    assert_eq!(log_path, pod.log_directory().join("b.log"));
    let log = std::fs::read_to_string(log_path).unwrap();
    let lines = cri::parse_log(&log).unwrap_or_else(|e| panic!("{e:#}\n{log}"));
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|l| l.stream == "stdout")
        .map(|l| l.text.as_str())
        .collect();
    assert_eq!(
        stdout,
        [format!("fetched {PAGE}"), format!("read {PAGE}")],
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.stream == "stderr" && l.tag == "F" && l.text == "to-stderr"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(empty_dir.join("from-b")).unwrap(),
        "from-b\n"
    );

    // The pod's address answers from the test's namespace (the CNI bridge).
    let page = cd
        .netns()
        .fetch(&format!("http://{}:{PORT}/", status.ip), WAIT)
        .unwrap();
    assert_eq!(page.trim(), PAGE);

    // ExecSync in A: output, and a non-zero exit code with stderr. A has
    // a PID namespace of its own (the pod does not share one): its PID 1
    // is its httpd, not the sandbox's pause.
    let out = cri
        .exec_sync(&a_id, &["cat", "/proc/1/cmdline"], Duration::from_secs(30))
        .unwrap();
    assert!(out.stdout.starts_with("httpd\0"), "{out:?}");
    let out = cri
        .exec_sync(&a_id, &["cat", "/data/from-b"], Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        (out.stdout.as_str(), out.exit_code),
        ("from-b\n", 0),
        "{out:?}"
    );
    let out = cri
        .exec_sync(
            &a_id,
            &["sh", "-c", "echo out; echo err >&2; exit 5"],
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str(), out.exit_code),
        ("out\n", "err\n", 5)
    );
    steps.done("pod IP reached from the namespace; ExecSync");

    // A memory hog under a limit: busybox `tail` keeps /dev/zero's one
    // endless line in memory.
    let hog = ContainerConfig::new("hog", images::BUSYBOX)
        .command(&["tail", "/dev/zero"])
        .memory_limit(OOM_LIMIT)
        .build();
    let hog_id = cri.create_container(&pod_id, &hog, &pod_config).unwrap();
    cri.start_container(&hog_id).unwrap();
    let hog_status = cri.wait_exited(&hog_id, WAIT).unwrap();
    assert_eq!(hog_status.reason, "OOMKilled", "{hog_status:?}");
    assert_eq!(hog_status.exit_code, 137, "{hog_status:?}");
    steps.done("memory hog OOMKilled");

    let stats = cri.container_stats(&a_id).unwrap();
    let memory = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds)
        .map_or(0, |v| v.value);
    assert!(memory > 0 && cpu > 0, "{stats:?}");
    let listed: Vec<String> = cri
        .list_containers()
        .unwrap()
        .into_iter()
        .filter(|c| c.pod_sandbox_id == pod_id)
        .map(|c| c.id)
        .collect();
    for id in [&a_id, &b_id, &hog_id] {
        assert!(listed.contains(id), "{id} not in {listed:?}");
    }
    assert!(cri
        .list_pod_sandboxes()
        .unwrap()
        .iter()
        .any(|p| p.id == pod_id && p.runtime_handler == handler));
    steps.done(&format!(
        "ContainerStats (A: {memory} bytes working set), ListContainers"
    ));

    report_runtime_view(cd, &pod_id, &a_id);

    cri.stop_pod_sandbox(&pod_id).unwrap();
    let stopped = cri.pod_sandbox_status(&pod_id).unwrap();
    assert!(!stopped.ready);
    let a_status = cri.container_status(&a_id).unwrap();
    assert_eq!(
        a_status.state,
        api::ContainerState::ContainerExited as i32,
        "{a_status:?}"
    );
    cri.remove_pod_sandbox(&pod_id).unwrap();
    assert!(!cri
        .list_pod_sandboxes()
        .unwrap()
        .iter()
        .any(|p| p.id == pod_id));
    assert!(cri.list_containers().unwrap().is_empty());
    steps.done("StopPodSandbox, RemovePodSandbox");

    // shareProcessNamespace: the pod's containers see one process tree,
    // whose PID 1 is the sandbox's pause process.
    let pod = cd
        .pod_config("shared-pid")
        .unwrap()
        .share_process_namespace(true);
    let pod_config = pod.build();
    let pod_id = cri.run_pod_sandbox(&pod_config, handler).unwrap();
    let c = ContainerConfig::new("c", images::BUSYBOX)
        .command(&["sleep", "600"])
        .build();
    let c_id = cri.create_container(&pod_id, &c, &pod_config).unwrap();
    cri.start_container(&c_id).unwrap();
    let out = cri
        .exec_sync(&c_id, &["cat", "/proc/1/cmdline"], Duration::from_secs(30))
        .unwrap();
    assert!(
        out.stdout.contains("trap"),
        "PID 1 is not the pause: {out:?}"
    );
    let out = cri
        .exec_sync(&c_id, &["pidof", "sleep"], Duration::from_secs(30))
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    cri.stop_pod_sandbox(&pod_id).unwrap();
    cri.remove_pod_sandbox(&pod_id).unwrap();
    steps.done("shareProcessNamespace: one process tree, the pause as PID 1");
}

/// Asserts a command printed `stdout` and exited with `code`.
fn assert_output(out: &std::process::Output, stdout: &str, code: i32) {
    assert_eq!(
        (
            String::from_utf8_lossy(&out.stdout).as_ref(),
            out.status.code()
        ),
        (stdout, Some(code)),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ctr run --rm` (its output and exit status) and `ctr task exec` with
/// the runtime type directly, no CRI.
fn ctr_checks(cd: &Containerd, runtime_type: &str, steps: &mut Steps) {
    let cgroup = |id: &str| format!("/{}/{id}", cd.cgroup_parent());
    let id = "husk-ctr-run";
    let out = cd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        runtime_type,
        "--cgroup",
        &cgroup(id),
        images::BUSYBOX,
        id,
        "sh",
        "-c",
        "echo hi; exit 3",
    ]);
    assert_output(&out, "hi\n", 3);
    steps.done("ctr run --rm");

    let id = "husk-ctr-exec";
    let out = cd.ctr(&[
        "run",
        "-d",
        "--null-io",
        "--runtime",
        runtime_type,
        "--cgroup",
        &cgroup(id),
        images::BUSYBOX,
        id,
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = cd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        id,
        "sh",
        "-c",
        "echo from-exec; exit 4",
    ]);
    assert_output(&out, "from-exec\n", 4);
    // Metrics from the container's cgroup, pause and resume, then a kill
    // whose exit status ctr's task list shows.
    let text = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let out = cd.ctr(&["task", "metrics", id]);
    assert!(out.status.success(), "{out:?}");
    let metrics = text(&out);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pids.current") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        // cgroup v2 (husk's guest) or v1 (runc on this host).
        metrics
            .lines()
            .any(|l| l.starts_with("memory.usage ") || l.starts_with("memory.usage_in_bytes ")),
        "{metrics}"
    );
    let status = |cd: &Containerd| {
        let out = cd.ctr(&["task", "ls"]);
        text(&out)
            .lines()
            .find(|l| l.starts_with(id))
            .map(|l| l.split_whitespace().last().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    assert!(cd.ctr(&["task", "pause", id]).status.success());
    assert_eq!(status(cd), "PAUSED");
    assert!(cd.ctr(&["task", "resume", id]).status.success());
    assert_eq!(status(cd), "RUNNING");
    assert!(cd.ctr(&["task", "kill", "-s", "KILL", id]).status.success());
    let deadline = Instant::now() + WAIT;
    while status(cd) != "STOPPED" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(cd), "STOPPED");
    let out = cd.ctr(&["task", "delete", id]);
    assert!(out.status.success(), "{out:?}");
    let out = cd.ctr(&["containers", "rm", id]);
    assert!(out.status.success(), "{out:?}");
    steps.done("ctr run -d, task exec, metrics, pause, resume, kill, delete");
}

/// Prints what the runtime was handed: the `io.kubernetes.cri.*`
/// annotations of the sandbox's and a container's OCI spec, and the argv
/// of the shims serving the pod. With `HUSK_CRI_NOTES=<dir>` set, the two
/// specs are also saved there.
fn report_runtime_view(cd: &Containerd, pod_id: &str, container_id: &str) {
    let tasks = cd.state_dir().join("io.containerd.runtime.v2.task/k8s.io");
    let notes = std::env::var_os("HUSK_CRI_NOTES").map(std::path::PathBuf::from);
    for (what, id) in [("sandbox", pod_id), ("container", container_id)] {
        let path = tasks.join(id).join("config.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let spec: serde_json::Value = serde_json::from_str(&text).unwrap();
        let annotations = spec["annotations"].as_object().cloned().unwrap_or_default();
        let cri_keys: Vec<String> = annotations
            .iter()
            .filter(|(k, _)| k.starts_with("io.kubernetes.cri."))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        eprintln!("{what} annotations: {cri_keys:#?}");
        assert!(
            annotations.contains_key("io.kubernetes.cri.sandbox-id"),
            "{what} spec has no sandbox-id annotation: {annotations:?}"
        );
        if let Some(dir) = &notes {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(format!("cri-{what}-config.json")), &text).unwrap();
        }
    }
    let socket = cd.socket().to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = argv.first().is_some_and(|a| a.contains("containerd-shim-"));
        if is_shim && argv.contains(&socket) {
            eprintln!("shim: {}", argv.join(" "));
        }
    }
}

/// Pods asking for the host's network, PID or IPC namespace cannot have
/// them in a VM: RunPodSandbox fails with the reason, and nothing of the
/// attempt is left.
#[test]
fn husk_refuses_pods_sharing_the_hosts_network_pid_or_ipc_namespace() {
    let (_dir, husk) = husk_shim_runtime();
    let root = husk.state_dirs[0].clone();
    let cd = Containerd::start(&[husk]).unwrap_or_else(|e| panic!("{e:#}"));
    cd.import_images().unwrap_or_else(|e| panic!("{e:#}"));
    let cri = cd.cri().unwrap();
    let node = api::NamespaceMode::Node as i32;
    for (name, options, reason) in [
        (
            "hostnet",
            api::NamespaceOption {
                network: node,
                ..Default::default()
            },
            "network namespace",
        ),
        (
            "hostpid",
            api::NamespaceOption {
                pid: node,
                ..Default::default()
            },
            "hostPID",
        ),
        (
            "hostipc",
            api::NamespaceOption {
                ipc: node,
                ..Default::default()
            },
            "hostIPC",
        ),
    ] {
        let pod = cd
            .pod_config(name)
            .unwrap()
            .security_context(api::LinuxSandboxSecurityContext {
                namespace_options: Some(options),
                ..Default::default()
            })
            .build();
        let err = cri
            .run_pod_sandbox(&pod, "husk")
            .expect_err("a pod sharing a host namespace ran");
        let message = format!("{err:#}");
        eprintln!("{name}: {message}");
        assert!(message.contains(reason), "{name}: {message}");
        assert_eq!(husk_vms(&root), 0, "{name}: a VM was left");
    }
    drop(cri);
    let left = cd.shutdown();
    assert!(left.is_empty(), "leftovers after teardown:\n{left}");
}

/// A pod whose VM dies (its QEMU killed) does not hang: its containers end
/// with status 255, and the pod stops and goes without leftovers.
#[test]
fn a_husk_pod_whose_vm_dies_ends_its_containers() {
    let (_dir, husk) = husk_shim_runtime();
    let root = husk.state_dirs[0].clone();
    let cd = Containerd::start(&[husk]).unwrap_or_else(|e| panic!("{e:#}"));
    cd.import_images().unwrap_or_else(|e| panic!("{e:#}"));
    let cri = cd.cri().unwrap();
    let pod = cd.pod_config("doomed").unwrap().build();
    let pod_id = cri.run_pod_sandbox(&pod, "husk").unwrap();
    let sleeper = ContainerConfig::new("sleeper", images::BUSYBOX)
        .command(&["sleep", "600"])
        .build();
    let id = cri.create_container(&pod_id, &sleeper, &pod).unwrap();
    cri.start_container(&id).unwrap();
    let qemus = qemus_under(&root);
    if qemus.is_empty() {
        eprintln!("skipping the VM kill: this configuration runs the builtin VMM inside the shim");
    } else {
        assert_eq!(qemus.len(), 1, "{qemus:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(qemus[0]),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let status = cri.wait_exited(&id, WAIT).unwrap();
        assert_eq!(status.exit_code, 255, "{status:?}");
    }
    cri.stop_pod_sandbox(&pod_id).unwrap();
    cri.remove_pod_sandbox(&pod_id).unwrap();
    assert_eq!(husk_vms(&root), 0);
    drop(cri);
    let left = cd.shutdown();
    assert!(left.is_empty(), "leftovers after teardown:\n{left}");
}
