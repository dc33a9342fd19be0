//! The agent's network RPCs and DNS relay, on the host: the agent runs in a
//! network namespace the test creates (`unshare --net`) with veth pairs the
//! test makes in it, so the machine's own network is never touched.
//! Needs root and iproute2 (run by `make test`).

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use common::*;
use husk_agent::dns_relay::{read_frame, write_frame};
use husk_protocol::agent::*;
use husk_protocol::agent_ttrpc::AgentServiceClient;
use husk_protocol::ttrpc::{self, Code};
use oci_spec::runtime::LinuxNamespaceType;
use tokio::io::AsyncBufReadExt;

const MAC_A: &str = "02:00:00:00:00:0a";
const MAC_B: &str = "02:00:00:00:00:0b";

/// Runs `ip ARGS` in the agent's network namespace; returns its stdout.
fn ip(agent: &Agent, args: &str) -> String {
    let out = Command::new("nsenter")
        .args(["-t", &agent.pid().to_string(), "-n", "ip"])
        .args(args.split_whitespace())
        .output()
        .expect("run nsenter ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread that joined the agent's network namespace.
fn in_agent_netns<T: Send + 'static>(agent: &Agent, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = std::fs::File::open(format!("/proc/{}/ns/net", agent.pid())).expect("agent netns");
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn address(a: &str, prefix_len: u32) -> IpAddress {
    IpAddress {
        address: a.into(),
        prefix_len,
        ..Default::default()
    }
}

fn interface(name: &str, mac: &str, mtu: u32, addresses: Vec<IpAddress>) -> UpdateInterfaceRequest {
    UpdateInterfaceRequest {
        interface: Some(Interface {
            name: name.into(),
            mac: mac.into(),
            mtu,
            addresses,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn route(dst: &str, gw: &str, dev: &str, scope: u32, metric: u32, family: u32) -> Route {
    Route {
        destination: dst.into(),
        gateway: gw.into(),
        device: dev.into(),
        scope,
        metric,
        family,
        ..Default::default()
    }
}

/// A neighbour entry: `address` at `mac` on eth0.
fn neighbor(address: &str, mac: &str) -> Neighbor {
    Neighbor {
        address: address.into(),
        mac: mac.into(),
        device: "eth0".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn interfaces_routes_and_neighbours_are_configured() {
    let agent = Agent::start_in_netns(&[]);
    // Two NICs the "kernel" named the other way round from the host's wish:
    // MAC_A must become eth0 while eth0 is MAC_B's name.
    ip(
        &agent,
        &format!("link add eth1 address {MAC_A} type veth peer name peer1"),
    );
    ip(
        &agent,
        &format!("link add eth0 address {MAC_B} type veth peer name peer0"),
    );
    ip(&agent, "link set peer0 up");
    ip(&agent, "link set peer1 up");
    let client = agent.client().await;

    let eth0 = client
        .update_interface(
            ctx(),
            &interface(
                "eth0",
                MAC_A,
                1400,
                vec![address("10.88.0.2", 24), address("fd88::2", 64)],
            ),
        )
        .await
        .expect("update eth0");
    assert_eq!(
        (eth0.name.as_str(), eth0.mac.as_str(), eth0.mtu),
        ("eth0", MAC_A, 1400)
    );
    let mut got: Vec<(String, u32)> = eth0
        .addresses
        .iter()
        .map(|a| (a.address.clone(), a.prefix_len))
        .collect();
    got.sort();
    assert_eq!(got, [("10.88.0.2".into(), 24), ("fd88::2".into(), 64)]);

    let eth1 = client
        .update_interface(
            ctx(),
            &interface("eth1", MAC_B, 0, vec![address("10.89.0.2", 16)]),
        )
        .await
        .expect("update eth1");
    assert_eq!((eth1.name.as_str(), eth1.mtu), ("eth1", 1500));

    let link = ip(&agent, "-o link show eth0");
    assert!(
        link.contains("mtu 1400") && link.contains("UP") && link.contains(MAC_A),
        "{link}"
    );
    let addrs = ip(&agent, "-o addr show dev eth0");
    assert!(
        addrs.contains("inet 10.88.0.2/24 brd 10.88.0.255"),
        "{addrs}"
    );
    assert!(addrs.contains("inet6 fd88::2/64"), "{addrs}");
    // Usable at once: no duplicate address detection pending (the kernel's
    // own link-local address does go through it).
    let fd88 = addrs
        .lines()
        .find(|l| l.contains("fd88::2"))
        .unwrap_or_default();
    assert!(!fd88.contains("tentative"), "{addrs}");

    // Replacing the addresses removes the old ones.
    client
        .update_interface(
            ctx(),
            &interface("eth1", MAC_B, 0, vec![address("10.90.0.2", 16)]),
        )
        .await
        .expect("update eth1 again");
    let addrs = ip(&agent, "-o addr show dev eth1");
    assert!(
        addrs.contains("10.90.0.2/16") && !addrs.contains("10.89.0.2"),
        "{addrs}"
    );

    // The default route's gateway is reachable only through the link route
    // listed after it (as Calico does): the agent adds link routes first.
    client
        .update_routes(
            ctx(),
            &UpdateRoutesRequest {
                routes: vec![
                    route("", "169.254.1.1", "eth0", 0, 0, 4),
                    route("10.99.0.0/16", "10.88.0.254", "", 0, 50, 4),
                    route("169.254.1.1/32", "", "eth0", 253, 0, 4),
                    route("10.77.0.0/24", "", "eth1", 253, 0, 4),
                    route("", "fd88::1", "eth0", 0, 0, 6),
                    route("fd99::/64", "", "eth0", 0, 0, 6),
                ],
                ..Default::default()
            },
        )
        .await
        .expect("update routes");
    let routes = ip(&agent, "route show");
    for want in [
        "default via 169.254.1.1 dev eth0",
        "10.99.0.0/16 via 10.88.0.254 dev eth0 metric 50",
        "169.254.1.1 dev eth0 scope link",
        "10.77.0.0/24 dev eth1 scope link",
    ] {
        assert!(routes.contains(want), "{want:?} in\n{routes}");
    }
    let routes6 = ip(&agent, "-6 route show");
    for want in ["default via fd88::1 dev eth0", "fd99::/64 dev eth0"] {
        assert!(routes6.contains(want), "{want:?} in\n{routes6}");
    }

    client
        .add_arp_neighbors(
            ctx(),
            &AddArpNeighborsRequest {
                neighbors: vec![
                    neighbor("10.88.0.1", "02:00:00:00:00:99"),
                    neighbor("fd88::1", "02:00:00:00:00:98"),
                ],
                ..Default::default()
            },
        )
        .await
        .expect("add neighbours");
    let neigh = ip(&agent, "neigh show dev eth0");
    assert!(
        neigh.contains("10.88.0.1 lladdr 02:00:00:00:00:99 PERMANENT"),
        "{neigh}"
    );
    assert!(
        neigh.contains("fd88::1 lladdr 02:00:00:00:00:98 PERMANENT"),
        "{neigh}"
    );

    // A container without a network namespace of its own shares the
    // agent's (in the guest: the VM's) interfaces.
    let mut spec = spec(&[
        "cat",
        "/sys/class/net/eth0/address",
        "/sys/class/net/eth0/mtu",
    ]);
    let mut linux = spec.linux().clone().expect("linux");
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .collect();
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
    let (out, err, status) = run(&client, &unique_id("netns"), &spec).await;
    assert_eq!(
        (out.as_str(), status),
        (format!("{MAC_A}\n1400\n").as_str(), 0),
        "{err}"
    );
}

/// A restored guest's NIC: found by the template's placeholder MAC, given
/// the sandbox's MAC (while down), then named, addressed and brought up as
/// usual; the placeholder no longer names any link.
#[tokio::test]
async fn a_nic_found_by_its_current_mac_gets_the_requested_mac_and_addresses() {
    const PLACEHOLDER: &str = "02:68:75:73:6b:00";
    let agent = Agent::start_in_netns(&[]);
    ip(
        &agent,
        &format!("link add eth0 address {PLACEHOLDER} type veth peer name peer0"),
    );
    // Up, as a driver might have left it: the agent must take it down.
    ip(&agent, "link set peer0 up");
    ip(&agent, "link set eth0 up");
    let client = agent.client().await;
    let mut request = interface("eth0", MAC_A, 1400, vec![address("10.88.0.2", 24)]);
    if let Some(i) = request.interface.as_mut() {
        i.current_mac = PLACEHOLDER.into();
    }
    let eth0 = client
        .update_interface(ctx(), &request)
        .await
        .expect("update eth0 by its current MAC");
    assert_eq!(
        (eth0.name.as_str(), eth0.mac.as_str(), eth0.mtu),
        ("eth0", MAC_A, 1400)
    );
    let addresses: Vec<(String, u32)> = eth0
        .addresses
        .iter()
        .map(|a| (a.address.clone(), a.prefix_len))
        .collect();
    assert_eq!(addresses, [("10.88.0.2".into(), 24)]);
    let link = ip(&agent, "-o link show eth0");
    assert!(link.contains(&format!("link/ether {MAC_A}")), "{link}");
    assert!(link.contains(",UP"), "{link}");
    assert!(!ip(&agent, "-o link").contains(PLACEHOLDER));
    let addr = ip(&agent, "-o -4 addr show eth0");
    assert!(addr.contains("10.88.0.2/24"), "{addr}");

    // The same request again: no link has the placeholder any more.
    let err = client
        .update_interface(ctx(), &request)
        .await
        .expect_err("the placeholder is gone");
    assert!(
        err.to_string()
            .contains(&format!("no network interface with MAC {PLACEHOLDER}")),
        "{err}"
    );
    // A bad current MAC is refused like a bad MAC.
    if let Some(i) = request.interface.as_mut() {
        i.current_mac = "01:00:5e:00:00:01".into();
    }
    let err = client
        .update_interface(ctx(), &request)
        .await
        .expect_err("multicast current MAC");
    assert!(err.to_string().contains("not a unicast"), "{err}");
    // Another link already has the requested MAC: refused, nothing changed.
    ip(
        &agent,
        &format!("link add eth1 address {PLACEHOLDER} type veth peer name peer1"),
    );
    if let Some(i) = request.interface.as_mut() {
        i.current_mac = PLACEHOLDER.into();
        i.name = "eth1".into();
    }
    let err = client
        .update_interface(ctx(), &request)
        .await
        .expect_err("the MAC is eth0's");
    assert!(err.to_string().contains("already eth0's"), "{err}");
    let link = ip(&agent, "-o link show eth1");
    assert!(
        link.contains(&format!("link/ether {PLACEHOLDER}")),
        "{link}"
    );
}

/// The error of an `UpdateRoutes` with `routes` that the agent must refuse.
async fn routes_refused(client: &AgentServiceClient, routes: Vec<Route>) -> ttrpc::Error {
    client
        .update_routes(
            ctx(),
            &UpdateRoutesRequest {
                routes,
                ..Default::default()
            },
        )
        .await
        .expect_err("refused")
}

#[tokio::test]
async fn bad_network_requests_get_clear_errors() {
    let agent = Agent::start_in_netns(&[]);
    ip(
        &agent,
        &format!("link add eth0 address {MAC_A} type veth peer name peer0"),
    );
    let client = agent.client().await;

    let cases = [
        (
            interface("a-name-too-long-x", MAC_A, 0, vec![]),
            Code::INVALID_ARGUMENT,
            "1 to 15 bytes",
        ),
        (
            interface("eth0", "02:00:00:00:00", 0, vec![]),
            Code::INVALID_ARGUMENT,
            "six hex pairs",
        ),
        (
            interface("eth0", MAC_A, 20, vec![]),
            Code::INVALID_ARGUMENT,
            "MTU 20",
        ),
        (
            interface("eth0", MAC_A, 0, vec![address("10.0.0.1", 40)]),
            Code::INVALID_ARGUMENT,
            "at most 32",
        ),
        (interface("eth0", MAC_B, 0, vec![]), Code::NOT_FOUND, MAC_B),
        (
            UpdateInterfaceRequest::default(),
            Code::INVALID_ARGUMENT,
            "interface name",
        ),
    ];
    for (req, want, text) in cases {
        let err = client
            .update_interface(ctx(), &req)
            .await
            .expect_err("refused");
        assert_eq!(code(&err), want, "{err:?}");
        assert!(format!("{err:?}").contains(text), "{text:?} in {err:?}");
    }

    let too_many = vec![route("", "10.0.0.1", "", 0, 0, 4); 1025];
    let err = routes_refused(&client, too_many).await;
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    let err = routes_refused(&client, vec![route("10.0.0.1/8", "", "eth0", 0, 0, 4)]).await;
    assert!(
        format!("{err:?}").contains("bits set after its prefix"),
        "{err:?}"
    );
    // An unreachable gateway: the kernel's own refusal comes back.
    let err = routes_refused(&client, vec![route("", "192.0.2.1", "eth0", 0, 0, 4)]).await;
    assert!(
        format!("{err:?}").contains("adding route default via 192.0.2.1 dev eth0"),
        "{err:?}"
    );
    let err = client
        .add_arp_neighbors(
            ctx(),
            &AddArpNeighborsRequest {
                neighbors: vec![neighbor("10.0.0.1", "zz:00:00:00:00:01")],
                ..Default::default()
            },
        )
        .await
        .expect_err("refused");
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    // Still serving.
    client
        .check(ctx(), &CheckRequest::new())
        .await
        .expect("check");
}

/// A stand-in for the host side of the relay: checks the header, answers
/// each framed query with itself, its first byte set to 0x80.
fn fake_relay_host(path: std::path::PathBuf) {
    let listener = tokio::net::UnixListener::bind(path).expect("bind relay");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                stream.read_line(&mut line).await.expect("header");
                assert!(
                    line == "udp 127.0.0.11\n" || line == "tcp 127.0.0.11\n",
                    "{line:?}"
                );
                while let Ok(Some(mut q)) = read_frame(&mut stream).await {
                    q[0] = 0x80;
                    if write_frame(stream.get_mut(), &q).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

// Multi-threaded: the fake host keeps answering while a test thread
// blocks on the queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_queries_are_relayed_to_the_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay.sock");
    fake_relay_host(relay.clone());
    let agent = Agent::start_in_netns(&["--dns-relay-host", &format!("unix:{}", relay.display())]);
    // The guest's agent does this as PID 1.
    ip(&agent, "link set lo up");
    let client = agent.client().await;

    let err = client
        .create_sandbox(
            ctx(),
            &CreateSandboxRequest {
                dns_relay: vec!["192.0.2.53".into()],
                ..Default::default()
            },
        )
        .await
        .expect_err("not loopback");
    assert_eq!(code(&err), Code::INVALID_ARGUMENT);
    client
        .create_sandbox(
            ctx(),
            &CreateSandboxRequest {
                dns_relay: vec!["127.0.0.11".into()],
                ..Default::default()
            },
        )
        .await
        .expect("create sandbox");

    let (udp_answer, tcp_answer) = in_agent_netns(&agent, || {
        let mut query = vec![0u8; 29];
        query[1] = 42;
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
        udp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        udp.send_to(&query, "127.0.0.11:53").expect("send");
        let mut buf = [0u8; 512];
        let n = udp.recv(&mut buf).expect("udp answer");

        let mut tcp = TcpStream::connect("127.0.0.11:53").expect("tcp");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut framed = vec![0, query.len() as u8];
        framed.extend_from_slice(&query);
        tcp.write_all(&framed).expect("tcp query");
        let mut answer = vec![0u8; framed.len()];
        tcp.read_exact(&mut answer).expect("tcp answer");
        (buf[..n].to_vec(), answer)
    });
    assert_eq!(
        (udp_answer.len(), udp_answer[0], udp_answer[1]),
        (29, 0x80, 42)
    );
    assert_eq!(
        (tcp_answer[0], tcp_answer[1], tcp_answer[2], tcp_answer[3]),
        (0, 29, 0x80, 42)
    );

    // CreateSandbox again restarts the relay on the same ports.
    client
        .create_sandbox(
            ctx(),
            &CreateSandboxRequest {
                dns_relay: vec!["127.0.0.11".into()],
                ..Default::default()
            },
        )
        .await
        .expect("create sandbox again");
}
