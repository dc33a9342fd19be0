//! The real `husk-agent` binary on a Unix socket, driven through the
//! generated ttrpc client, running real containers from a busybox rootfs.
//! Needs root (run by `make test`).

mod common;

use std::time::Duration;

use common::*;
use husk_protocol::agent::*;
use husk_protocol::ttrpc::Code;
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder,
    LinuxSyscallBuilder, UserBuilder,
};
use sha2::{Digest, Sha256};

#[tokio::test]
async fn echo_and_exit_codes() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("echo");
    let (out, _, status) = run(&client, &id, &spec(&["echo", "hello from husk"])).await;
    assert_eq!(out, "hello from husk\n");
    assert_eq!(status, 0);

    let (_, err, status) = run(&client, &id, &spec(&["sh", "-c", "echo oops >&2; exit 3"])).await;
    assert_eq!(err, "oops\n");
    assert_eq!(status, 3);
}

/// The container's init is forked from the agent and logs through its
/// subscriber until it execs: none of that may reach the container's stderr.
#[tokio::test]
async fn the_agents_debug_log_stays_out_of_a_containers_stderr() {
    let agent = Agent::start_args(&["--log-level", "debug"]);
    let client = agent.client().await;
    let (out, err, status) = run(&client, &unique_id("quiet"), &spec(&["echo", "only this"])).await;
    assert_eq!((out.as_str(), err.as_str(), status), ("only this\n", "", 0));
}

#[tokio::test]
async fn sigterm_gives_143() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("sigterm");
    // As pid 1 of a pid namespace, sleep would ignore SIGTERM (it has no
    // handler), as it does under runc; share the agent's pid namespace.
    let mut s = spec(&["sleep", "1000"]);
    if let Some(linux) = s.linux_mut() {
        let namespaces = linux.namespaces().clone().unwrap_or_default();
        linux.set_namespaces(Some(
            namespaces
                .into_iter()
                .filter(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Pid)
                .collect(),
        ));
    }
    create(&client, &id, &s).await.expect("create");
    start(&client, &id).await;
    client
        .signal_process(
            ctx(),
            &SignalProcessRequest {
                container_id: id.clone(),
                exec_id: "init".into(),
                signal: libc::SIGTERM as u32,
                ..Default::default()
            },
        )
        .await
        .expect("signal");
    assert_eq!(wait(&client, &id, "init").await, 143);
    remove(&client, &id).await;
}

#[tokio::test]
async fn stdin_round_trip_through_cat() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("cat");
    create(&client, &id, &spec(&["cat"])).await.expect("create");
    start(&client, &id).await;
    let written = client
        .write_stdin(
            ctx(),
            &WriteStreamRequest {
                container_id: id.clone(),
                exec_id: "init".into(),
                data: b"round trip\n".to_vec(),
                ..Default::default()
            },
        )
        .await
        .expect("write stdin");
    assert_eq!(written.len, 11);
    client
        .close_stdin(
            ctx(),
            &ProcessRequest {
                container_id: id.clone(),
                exec_id: "init".into(),
                ..Default::default()
            },
        )
        .await
        .expect("close stdin");
    assert_eq!(read_all(&client, &id, "init", false).await, b"round trip\n");
    assert_eq!(wait(&client, &id, "init").await, 0);
    remove(&client, &id).await;
}

#[tokio::test]
async fn ten_mib_of_stdout_arrive_intact() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("bulk");
    // 10 MiB of varied bytes: /dev/urandom's output is what we compare against
    // the container's own sha256sum of it.
    let script =
        "head -c 10485760 /dev/urandom > /tmp/blob; sha256sum /tmp/blob >&2; cat /tmp/blob";
    let mut s = spec(&["sh", "-c", script]);
    s.root_mut()
        .as_mut()
        .expect("root")
        .set_readonly(Some(false));
    // /tmp in the shared rootfs must not be written by tests: give it a tmpfs.
    let mut mounts = s.mounts().clone().unwrap_or_default();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["size=32m".to_string()])
            .build()
            .expect("mount"),
    );
    s.set_mounts(Some(mounts));
    let (out, err, status) = {
        create(&client, &id, &s).await.expect("create");
        start(&client, &id).await;
        let (out, err) = tokio::join!(
            read_all(&client, &id, "init", false),
            read_all(&client, &id, "init", true)
        );
        (
            out,
            String::from_utf8_lossy(&err).into_owned(),
            wait(&client, &id, "init").await,
        )
    };
    remove(&client, &id).await;
    assert_eq!(status, 0, "stderr: {err}");
    assert_eq!(out.len(), 10 << 20);
    let digest = format!("{:x}", Sha256::digest(&out));
    let expected = err.split_whitespace().next().unwrap_or_default();
    assert_eq!(digest, expected);
}

#[tokio::test]
async fn exec_into_running_container_and_pid_namespace() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("exec");
    create(
        &client,
        &id,
        &spec(&["sh", "-c", "echo $$; exec sleep 1000"]),
    )
    .await
    .expect("create");
    start(&client, &id).await;
    let first = client
        .read_stdout(
            ctx(),
            &ReadStreamRequest {
                container_id: id.clone(),
                exec_id: "init".into(),
                len: 64,
                ..Default::default()
            },
        )
        .await
        .expect("read");
    assert_eq!(
        String::from_utf8_lossy(&first.data),
        "1\n",
        "init is pid 1 in its namespace"
    );

    let process = exec_process(
        &[
            "sh",
            "-c",
            "hostname; cat /proc/1/cmdline | tr '\\0' ' '; exit 5",
        ],
        false,
    );
    client
        .exec_process(
            ctx(),
            &ExecProcessRequest {
                container_id: id.clone(),
                exec_id: "e1".into(),
                process_json: serde_json::to_string(&process).expect("json"),
                ..Default::default()
            },
        )
        .await
        .expect("exec");
    let out = read_all(&client, &id, "e1", false).await;
    assert_eq!(String::from_utf8_lossy(&out), "husk-test\nsleep 1000 ");
    assert_eq!(wait(&client, &id, "e1").await, 5);

    let ps = client
        .list_processes(
            ctx(),
            &ContainerRequest {
                container_id: id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("list processes");
    assert!(!ps.pids.is_empty());

    let stats = client
        .stats_container(
            ctx(),
            &ContainerRequest {
                container_id: id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("stats");
    assert!(stats.memory.usage_bytes > 0, "{stats:?}");
    assert!(stats.pids.current >= 1, "{stats:?}");

    // A duplicate exec id is refused.
    let err = client
        .exec_process(
            ctx(),
            &ExecProcessRequest {
                container_id: id.clone(),
                exec_id: "e1".into(),
                process_json: serde_json::to_string(&process).expect("json"),
                ..Default::default()
            },
        )
        .await
        .expect_err("duplicate exec id");
    assert_eq!(code(&err), Code::ALREADY_EXISTS);

    remove(&client, &id).await;
}

#[tokio::test]
async fn pause_and_resume() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("pause");
    create(&client, &id, &spec(&["sleep", "1000"]))
        .await
        .expect("create");
    start(&client, &id).await;
    let req = ContainerRequest {
        container_id: id.clone(),
        ..Default::default()
    };
    client.pause_container(ctx(), &req).await.expect("pause");
    let pid = {
        let ps = client.list_processes(ctx(), &req).await.expect("ps");
        ps.pids[0]
    };
    let state = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
            .flatten()
    };
    // A frozen task sleeps in the freezer ('D' on v1 or 'S').
    assert_ne!(state(pid), Some('R'));
    client.resume_container(ctx(), &req).await.expect("resume");
    remove(&client, &id).await;
}

#[tokio::test]
async fn readonly_rootfs_refuses_writes_and_masked_paths_are_empty() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("ro");
    let mut s = spec(&[
        "sh",
        "-c",
        "touch /newfile 2>/dev/null && echo wrote || echo refused; wc -c < /proc/timer_list",
    ]);
    s.root_mut()
        .as_mut()
        .expect("root")
        .set_readonly(Some(true));
    let (out, _, status) = run(&client, &id, &s).await;
    assert_eq!(status, 0);
    assert_eq!(out, "refused\n0\n");
    assert!(!busybox_rootfs().join("newfile").exists());
}

#[tokio::test]
async fn non_root_user_is_seen_inside() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("user");
    let mut s = spec(&[
        "sh",
        "-c",
        "id -u; id -g; id -G; grep '^CapEff:' /proc/self/status",
    ]);
    let mut process = s.process().clone().expect("process");
    process.set_user(
        UserBuilder::default()
            .uid(1000u32)
            .gid(1000u32)
            .additional_gids(vec![2000u32])
            .build()
            .expect("user"),
    );
    // As Docker passes them: no ambient or inheritable capabilities.
    let mut caps = process
        .capabilities()
        .clone()
        .expect("default capabilities");
    caps.set_ambient(Some(Default::default()));
    caps.set_inheritable(Some(Default::default()));
    process.set_capabilities(Some(caps));
    s.set_process(Some(process));
    let (out, err, status) = run(&client, &id, &s).await;
    assert_eq!(status, 0, "{err}");
    // Without ambient capabilities a non-root user keeps none across exec.
    assert_eq!(out, "1000\n1000\n1000 2000\nCapEff:\t0000000000000000\n");
}

#[tokio::test]
async fn reduced_capabilities_are_seen_inside() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("caps");
    let mut s = spec(&["sh", "-c", "grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status"]);
    let mut process = s.process().clone().expect("process");
    let only_kill: std::collections::HashSet<Capability> = [Capability::Kill].into();
    process.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(only_kill.clone())
            .effective(only_kill.clone())
            .permitted(only_kill)
            .inheritable(std::collections::HashSet::new())
            .ambient(std::collections::HashSet::new())
            .build()
            .expect("caps"),
    ));
    s.set_process(Some(process));
    let (out, err, status) = run(&client, &id, &s).await;
    assert_eq!(status, 0, "{err}");
    // CAP_KILL is bit 5.
    assert_eq!(
        out,
        "CapPrm:\t0000000000000020\nCapEff:\t0000000000000020\nCapBnd:\t0000000000000020\n"
    );
}

fn mkdir_eperm_profile() -> LinuxSeccomp {
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![LinuxSyscallBuilder::default()
            .names(vec!["mkdir".to_string(), "mkdirat".to_string()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::EPERM as u32)
            .build()
            .expect("syscall rule")])
        .build()
        .expect("seccomp")
}

#[tokio::test]
async fn seccomp_profile_is_enforced() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("seccomp");
    let mut s = spec(&["sh", "-c", "mkdir /tmp/x 2>&1; echo done"]);
    s.linux_mut()
        .as_mut()
        .expect("linux")
        .set_seccomp(Some(mkdir_eperm_profile()));
    let (out, _, status) = run(&client, &id, &s).await;
    assert_eq!(status, 0);
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.ends_with("done\n"));
}

#[tokio::test]
async fn docker_default_seccomp_profile_loads() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("dockerseccomp");
    let profile: LinuxSeccomp =
        serde_json::from_str(include_str!("fixtures/docker-default-seccomp.json"))
            .expect("fixture parses as OCI seccomp");
    let mut s = spec(&[
        "sh",
        "-c",
        "echo still works; unshare -U true 2>/dev/null || echo unshare denied",
    ]);
    s.linux_mut()
        .as_mut()
        .expect("linux")
        .set_seccomp(Some(profile));
    let (out, err, status) = run(&client, &id, &s).await;
    assert_eq!(status, 0, "{err}");
    assert_eq!(out, "still works\nunshare denied\n");
}

#[tokio::test]
async fn terminal_reports_resized_window() {
    let agent = Agent::start();
    let client = agent.client().await;
    let id = unique_id("tty");
    let mut s = spec(&["sh", "-c", "read line; stty size"]);
    let mut process = s.process().clone().expect("process");
    process.set_terminal(Some(true));
    s.set_process(Some(process));
    create(&client, &id, &s).await.expect("create");
    client
        .tty_win_resize(
            ctx(),
            &TtyWinResizeRequest {
                container_id: id.clone(),
                exec_id: "init".into(),
                rows: 37,
                cols: 121,
                ..Default::default()
            },
        )
        .await
        .expect("resize");
    start(&client, &id).await;
    client
        .write_stdin(
            ctx(),
            &WriteStreamRequest {
                container_id: id.clone(),
                exec_id: "init".into(),
                data: b"go\n".to_vec(),
                ..Default::default()
            },
        )
        .await
        .expect("write");
    let out = String::from_utf8_lossy(&read_all(&client, &id, "init", false).await).into_owned();
    assert_eq!(wait(&client, &id, "init").await, 0);
    // The terminal echoes the input, then stty prints rows and columns.
    assert!(out.contains("37 121"), "{out:?}");
    remove(&client, &id).await;
}

#[tokio::test]
async fn the_agent_says_ready_once_listening_and_reports_its_boot_stages() {
    let host = tempfile::tempdir().unwrap();
    let ready = host.path().join("ready.sock");
    let listener = tokio::net::UnixListener::bind(&ready).unwrap();
    let agent = Agent::start_args(&["--ready-host", &format!("unix:{}", ready.display())]);
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the agent never said ready")
        .unwrap();
    let mut line = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut line)
        .await
        .unwrap();
    assert_eq!(line, husk_protocol::READY_LINE);

    let client = agent.client().await;
    let stages = |details: GuestDetailsResponse| details.boot.into_option().expect("boot stages");
    let boot = stages(
        client
            .get_guest_details(ctx(), &GuestDetailsRequest::new())
            .await
            .expect("details"),
    );
    // Not PID 1: no base system to set up; the rest in order.
    assert_eq!(boot.base_system_ns, 0);
    assert!(boot.init_ns > 0, "{boot:?}");
    assert!(boot.listening_ns >= boot.init_ns, "{boot:?}");
    assert!(boot.ready_sent_ns >= boot.listening_ns, "{boot:?}");
    assert!(boot.now_ns >= boot.ready_sent_ns, "{boot:?}");
    assert_eq!(boot.sandbox_created_ns, 0);
    assert_eq!(boot.container_created_ns, 0);

    client
        .create_sandbox(ctx(), &CreateSandboxRequest::new())
        .await
        .expect("create sandbox");
    let boot = stages(
        client
            .get_guest_details(ctx(), &GuestDetailsRequest::new())
            .await
            .expect("details"),
    );
    assert!(boot.sandbox_created_ns >= boot.ready_sent_ns, "{boot:?}");
    assert!(boot.now_ns >= boot.sandbox_created_ns, "{boot:?}");
}

#[tokio::test]
async fn create_sandbox_refuses_more_entropy_than_it_accepts() {
    let agent = Agent::start();
    let client = agent.client().await;
    let err = client
        .create_sandbox(
            ctx(),
            &CreateSandboxRequest {
                hostname: "too-much".into(),
                entropy: vec![7; 513],
                ..Default::default()
            },
        )
        .await
        .expect_err("513 entropy bytes");
    assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{err:?}");
    assert!(format!("{err:?}").contains("at most 512"), "{err:?}");
}

#[tokio::test]
async fn sandbox_details_storage_and_destroy() {
    let mut agent = Agent::start();
    let client = agent.client().await;
    let check = client
        .check(ctx(), &CheckRequest::new())
        .await
        .expect("check");
    assert_eq!(check.status, "SERVING");
    let details = client
        .get_guest_details(ctx(), &GuestDetailsRequest::new())
        .await
        .expect("details");
    assert_eq!(details.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(details.mem_total_bytes > 0 && !details.kernel_release.is_empty());
    assert!(!details.init);

    let tmpfs = agent.dir.path().join("scratch");
    client
        .create_sandbox(
            ctx(),
            &CreateSandboxRequest {
                hostname: "husk-sandbox".into(),
                dns: vec!["192.0.2.53".into()],
                // Credited to the kernel's pool and reseeded (as root).
                entropy: (0..64u8).collect(),
                storages: vec![Storage {
                    driver: "tmpfs".into(),
                    mount_point: tmpfs.display().to_string(),
                    options: vec!["size=1m".into()],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await
        .expect("create sandbox");
    let resolv = std::fs::read_to_string(agent.dir.path().join("resolv.conf")).expect("resolv");
    assert_eq!(resolv, "nameserver 192.0.2.53\n");
    let pid = agent.pid();
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).expect("mounts");
    assert!(
        mounts.contains(&format!("tmpfs {} tmpfs", tmpfs.display())),
        "tmpfs mounted in the agent's namespace"
    );
    let uts = std::fs::read_link(format!("/proc/{pid}/ns/uts")).expect("uts ns");
    assert_ne!(
        uts,
        std::fs::read_link("/proc/self/ns/uts").expect("own uts")
    );

    let id = unique_id("destroy");
    create(&client, &id, &spec(&["sleep", "1000"]))
        .await
        .expect("create");
    start(&client, &id).await;
    client
        .destroy_sandbox(ctx(), &DestroySandboxRequest::new())
        .await
        .expect("destroy");
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent exits after destroy");
    assert!(status.success());
    let state = agent.dir.path().join("state/containers").join(&id);
    assert!(!state.exists(), "container state removed");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_agent_keeps_serving() {
    let mut agent = Agent::start();
    let client = agent.client().await;
    let good = serde_json::to_string(&spec(&["true"])).expect("json");
    let request = |id: &str, json: &str, rootfs: &str| CreateContainerRequest {
        container_id: id.into(),
        exec_id: "init".into(),
        spec_json: json.into(),
        rootfs: rootfs.into(),
        ..Default::default()
    };
    let rootfs = busybox_rootfs().display().to_string();

    let err = client
        .create_container(ctx(), &request("badjson", "{not json", &rootfs))
        .await
        .expect_err("malformed JSON");
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    assert!(format!("{err:?}").contains("spec JSON"), "{err:?}");

    for bad_id in ["a/b", "..", "../escape", ""] {
        let err = client
            .create_container(ctx(), &request(bad_id, &good, &rootfs))
            .await
            .expect_err("bad id");
        assert_eq!(code(&err), Code::INVALID_ARGUMENT, "{bad_id:?}");
    }

    let err = client
        .create_container(ctx(), &request("norootfs", &good, "/nonexistent/rootfs"))
        .await
        .expect_err("missing rootfs");
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    assert!(format!("{err:?}").contains("does not exist"), "{err:?}");
    assert!(
        !agent.dir.path().join("state/bundles/norootfs").exists(),
        "nothing left behind"
    );

    let err = client
        .start_container(
            ctx(),
            &ContainerRequest {
                container_id: "nosuch".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("unknown id");
    assert_eq!(code(&err), Code::NOT_FOUND);
    let err = client
        .wait_process(
            ctx(),
            &ProcessRequest {
                container_id: "nosuch".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("unknown id");
    assert_eq!(code(&err), Code::NOT_FOUND);

    let id = unique_id("dup");
    create(&client, &id, &spec(&["sleep", "100"]))
        .await
        .expect("create");
    let err = create(&client, &id, &spec(&["true"]))
        .await
        .expect_err("duplicate");
    assert_eq!(code(&err), Code::ALREADY_EXISTS);
    remove(&client, &id).await;

    let err = client
        .signal_process(
            ctx(),
            &SignalProcessRequest {
                container_id: id.clone(),
                signal: 999,
                ..Default::default()
            },
        )
        .await
        .expect_err("bad signal");
    assert!(matches!(
        code(&err),
        Code::INVALID_ARGUMENT | Code::NOT_FOUND
    ));

    // A frame larger than ttrpc's 4 MiB limit, then garbage: the agent
    // answers or drops that connection and goes on serving others.
    oversized_frame(&agent.socket);
    garbage(&agent.socket);

    let check = client
        .check(ctx(), &CheckRequest::new())
        .await
        .expect("still serving");
    assert_eq!(check.status, "SERVING");
    let fresh = agent.client().await;
    fresh
        .check(ctx(), &CheckRequest::new())
        .await
        .expect("new connections too");
    assert!(agent.alive());
}

/// Writes a request frame whose header announces 5 MiB and reads the
/// agent's answer (an error status) or the connection's end.
fn oversized_frame(socket: &std::path::Path) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let len: u32 = 5 << 20;
    let mut frame = Vec::new();
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes()); // stream id
    frame.push(1); // request
    frame.push(0); // flags
    let _ = stream.write_all(&frame);
    let _ = stream.write_all(&vec![0u8; len as usize]);
    let mut answer = [0u8; 10];
    let _ = stream.read(&mut answer);
}

fn garbage(socket: &std::path::Path) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = stream.write_all(b"\xff\xff\xff\xffGARBAGE\x00\x01not a ttrpc frame at all");
    let mut answer = [0u8; 64];
    let _ = stream.read(&mut answer);
}

/// A pod's containers share its sandbox container's UTS, IPC and (when
/// asked) PID namespaces: a member created with `join_namespaces` sees the
/// sandbox's hostname and its processes; one that joins nothing sees its own.
#[tokio::test]
async fn a_pod_member_joins_its_sandbox_containers_namespaces() {
    let agent = Agent::start();
    let client = agent.client().await;
    let pause = unique_id("pause");
    let mut pause_spec = spec(&["sleep", "1000"]);
    pause_spec.set_hostname(Some("the-pod".into()));
    create(&client, &pause, &pause_spec)
        .await
        .expect("create pause");
    start(&client, &pause).await;

    let member = unique_id("member");
    let mut member_spec = spec(&[
        "sh",
        "-c",
        "hostname; ps -o comm= 2>/dev/null || ls /proc | grep -c '^[0-9]'",
    ]);
    member_spec.set_hostname(None);
    let created = client
        .create_container(
            ctx(),
            &CreateContainerRequest {
                container_id: member.clone(),
                exec_id: "init".into(),
                spec_json: serde_json::to_string(&member_spec).expect("spec json"),
                rootfs: busybox_rootfs().display().to_string(),
                namespaces_of: pause.clone(),
                join_namespaces: vec!["uts".into(), "ipc".into(), "pid".into()],
                ..Default::default()
            },
        )
        .await;
    created.expect("create member");
    start(&client, &member).await;
    let out =
        String::from_utf8_lossy(&read_all(&client, &member, "init", false).await).into_owned();
    assert_eq!(wait(&client, &member, "init").await, 0, "{out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("the-pod"), "{out}");
    assert!(out.contains("sleep"), "the pause process is visible: {out}");

    // Joining a container that does not exist, or a type that cannot be
    // joined, is refused by name.
    for (of, types, want) in [
        ("nosuch", vec!["ipc".to_string()], "nosuch"),
        (pause.as_str(), vec!["net".to_string()], "cannot be joined"),
    ] {
        let err = client
            .create_container(
                ctx(),
                &CreateContainerRequest {
                    container_id: unique_id("bad"),
                    exec_id: "init".into(),
                    spec_json: serde_json::to_string(&spec(&["true"])).expect("spec json"),
                    rootfs: busybox_rootfs().display().to_string(),
                    namespaces_of: of.into(),
                    join_namespaces: types,
                    ..Default::default()
                },
            )
            .await
            .expect_err("refused");
        assert!(format!("{err:?}").contains(want), "{err:?}");
    }
    remove(&client, &member).await;
    remove(&client, &pause).await;
}

/// A seccomp profile that forbids syscalls the engine itself makes
/// before exec'ing the program (`getcwd`, `chdir`, `fchdir`, `prctl`)
/// still starts the container, with or without `noNewPrivileges` (left
/// out, or `false` spelled out), as root or not, and for an exec'd
/// process too: the filter is loaded right before exec, as crun does
/// (config-linux.md "Seccomp"), and the workload meets it. Without
/// no_new_privs the load needs CAP_SYS_ADMIN, which the agent keeps only
/// until then: the workload never has it.
#[tokio::test]
async fn seccomp_loads_right_before_exec_with_or_without_no_new_privileges() {
    let agent = Agent::start();
    let client = agent.client().await;
    let profile = |names: &[&str]| {
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![LinuxSyscallBuilder::default()
                .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::EPERM as u32)
                .build()
                .expect("syscall rule")])
            .build()
            .expect("seccomp")
    };
    let blocked = ["getcwd", "chdir", "fchdir", "prctl"];
    // The shell's own capabilities, then a blocked chdir.
    let script = "while read l; do case $l in CapEff*|CapPrm*) echo $l;; esac; done </proc/self/status; cd /tmp 2>&1; echo started";
    let cases = [
        ("nnp", Some(true), 0),
        ("leftout", None, 0),
        ("explicitfalse", Some(false), 0),
        ("nonroot", None, 1000),
    ];
    for (name, no_new_privileges, uid) in cases {
        let id = unique_id(name);
        let mut s = spec(&["sh", "-c", script]);
        s.linux_mut()
            .as_mut()
            .expect("linux")
            .set_seccomp(Some(profile(&blocked)));
        let mut process = s.process().clone().expect("process");
        process.set_no_new_privileges(no_new_privileges);
        let mut user = process.user().clone();
        user.set_uid(uid);
        user.set_gid(uid);
        process.set_user(user);
        s.set_process(Some(process));
        let (out, err, status) = run(&client, &id, &s).await;
        assert_eq!(status, 0, "{name}: {out}{err}");
        assert!(out.ends_with("started\n"), "{name}: {out}{err}");
        assert!(
            out.contains("not permitted"),
            "{name}: the filter did not hold: {out}"
        );
        assert_no_sys_admin(name, &out);
    }

    // An exec'd process of a container without no_new_privs.
    let id = unique_id("execlate");
    let mut s = spec(&["sleep", "1000"]);
    s.linux_mut()
        .as_mut()
        .expect("linux")
        .set_seccomp(Some(profile(&blocked)));
    create(&client, &id, &s).await.expect("create");
    start(&client, &id).await;
    let mut process = exec_process(&["sh", "-c", script], false);
    process.set_capabilities(s.process().as_ref().and_then(|p| p.capabilities().clone()));
    let (out, status) = exec_output(&client, &id, "late", &process).await;
    assert_eq!(status, 0, "exec: {out}");
    assert!(
        out.contains("not permitted") && out.ends_with("started\n"),
        "exec: {out}"
    );
    assert_no_sys_admin("exec", &out);
    remove(&client, &id).await;
}

/// Fails unless every `CapEff:`/`CapPrm:` line of `out` lacks CAP_SYS_ADMIN.
fn assert_no_sys_admin(name: &str, out: &str) {
    const CAP_SYS_ADMIN: u32 = 21;
    let sets: Vec<u64> = out
        .lines()
        .filter_map(|l| {
            l.strip_prefix("CapEff:")
                .or_else(|| l.strip_prefix("CapPrm:"))
        })
        .map(|hex| u64::from_str_radix(hex.trim(), 16).expect("capability mask"))
        .collect();
    assert_eq!(sets.len(), 2, "{name}: {out}");
    for set in sets {
        assert_eq!(
            set & (1 << CAP_SYS_ADMIN),
            0,
            "{name}: CAP_SYS_ADMIN kept: {out}"
        );
    }
}

/// `start` returns only once the container's init has exec'd its program
/// (runc's exec FIFO guarantee), so a signal sent right after reaches the
/// program. A startContainer hook (run by the init between the start
/// signal and exec) holds the exec back for half a second: right after
/// StartContainer the init's executable must already be the workload's,
/// not the agent's, of which it is a fork until it execs.
#[tokio::test]
async fn start_returns_once_the_init_runs_its_program() {
    let agent = Agent::start();
    let client = agent.client().await;
    let agent_exe = std::fs::read_link(format!("/proc/{}/exe", agent.pid())).expect("agent exe");
    let id = unique_id("execd");
    let mut s = spec(&["sleep", "1000"]);
    s.set_hooks(Some(
        oci_spec::runtime::HooksBuilder::default()
            .start_container(vec![oci_spec::runtime::HookBuilder::default()
                .path("/bin/sleep")
                .args(vec!["sleep".to_string(), "0.5".to_string()])
                .build()
                .expect("hook")])
            .build()
            .expect("hooks"),
    ));
    create(&client, &id, &s).await.expect("create");
    start(&client, &id).await;
    let pids = client
        .list_processes(
            ctx(),
            &ContainerRequest {
                container_id: id.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("pids")
        .pids;
    let init = pids.iter().min().copied().expect("an init process");
    let exe = std::fs::read_link(format!("/proc/{init}/exe")).expect("init exe");
    assert_ne!(exe, agent_exe, "start returned before the init exec'd");
    assert!(exe.ends_with("bin/busybox"), "{}", exe.display());
    remove(&client, &id).await;
}

/// A bind mount's propagation option holds (the engine ignored it: the
/// kernel takes propagation only in a mount call of its own): `rshared`
/// shows a peer group in mountinfo, the default shows none.
#[tokio::test]
async fn a_bind_mounts_propagation_option_holds() {
    let agent = Agent::start();
    let client = agent.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let id = unique_id("propagation");
    let mut s = spec(&[
        "sh",
        "-c",
        "grep -E ' /(shared|plain) ' /proc/self/mountinfo",
    ]);
    let mut mounts = s.mounts().clone().unwrap_or_default();
    for (destination, options) in [
        ("/shared", vec!["rbind", "rshared"]),
        ("/plain", vec!["rbind"]),
    ] {
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination(destination)
                .typ("bind")
                .source(dir.path())
                .options(options.into_iter().map(String::from).collect::<Vec<_>>())
                .build()
                .expect("mount"),
        );
    }
    s.set_mounts(Some(mounts));
    let (out, err, status) = run(&client, &id, &s).await;
    assert_eq!(status, 0, "{out}{err}");
    let line = |m: &str| {
        out.lines()
            .find(|l| l.contains(&format!(" {m} ")))
            .unwrap_or_else(|| panic!("no {m}: {out}"))
            .to_owned()
    };
    assert!(line("/shared").contains(" shared:"), "{out}");
    assert!(!line("/plain").contains(" shared:"), "{out}");
}
