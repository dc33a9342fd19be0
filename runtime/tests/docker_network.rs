//! Networking end to end with real clients: a private containerd + dockerd
//! (and a private Podman) run inside a network namespace the test creates,
//! with their own bridges, NAT and published ports there, so nothing here
//! touches the machine's own network. Servers and clients of the test
//! (busybox `httpd` and `wget`) run in that namespace too. busybox 1.35's
//! `wget -T` crashes, so every wget is bounded by `timeout` instead.
//!
//! Docker: the default bridge (the container's address, MAC and gateway
//! are Docker's; it reaches a server on the bridge address; other
//! containers reach it by IP; `-p` publishes its port), a user-defined
//! network (names resolved by Docker's embedded DNS at 127.0.0.11) and the
//! shared namespaces (`--network host`, `--network container:X`), which a
//! VM cannot join: husk must refuse them in one line, leaving nothing.
//! Podman: its default network (a namespace *path* in the spec), and paths
//! that are not a network namespace. After each daemon's teardown no husk
//! tap, tc filter, namespace, VM or process may remain.
//!
//! The `*_runc_peer` tests prove the harness and the checks with runc; the
//! `*_husk` ones run them with husk (each container in its own microVM).

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use husk_tests::docker::checks::{self, timed};
use husk_tests::docker::{self, leftovers, DockerDaemon, Runtime};
use husk_tests::netns::{self, HttpServer, NetNs};
use husk_tests::podman::Podman;

/// The busybox image every container runs.
const IMAGE: &str = "husk-net-busybox:latest";
/// How long a server in a container may take to answer (under husk each
/// container boots a VM on TCG).
const WAIT: Duration = Duration::from_secs(90);
/// The port the test's own server listens on in the test namespace.
const HOST_PORT: &str = "8000";
/// The port `-p` publishes.
const PUBLISHED: &str = "18080";
/// What the test's own server serves.
const HOST_PAGE: &str = "page-from-the-test-namespace";
/// The user-defined network.
const NETWORK: &str = "husk-t-net";

#[test]
fn docker_network_runc_peer() {
    docker_network_checks("runc", &[]);
}

/// The same checks with `--runtime=husk`.
#[test]
fn docker_network_husk() {
    let (_config_dir, husk) = husk_runtime();
    docker_network_checks("husk", &[husk]);
}

#[test]
fn podman_network_runc_peer() {
    podman_network_checks("runc", None);
}

/// Podman with `--runtime <husk>`: Podman hands husk a network namespace
/// path, already configured by netavark.
#[test]
fn podman_network_husk() {
    let (_config_dir, husk) = husk_runtime();
    podman_network_checks("husk", Some(&husk));
}

/// husk as a runtime, its configuration in the returned directory.
fn husk_runtime() -> (tempfile::TempDir, Runtime) {
    docker::husk::test_runtime(Path::new(env!("CARGO_BIN_EXE_husk")))
}

fn docker_network_checks(runtime: &str, registrations: &[Runtime]) {
    let started = Instant::now();
    let daemon = DockerDaemon::start_networked(registrations)
        .unwrap_or_else(|e| panic!("the private containerd + dockerd did not start: {e:#}"));
    let ns_name = daemon
        .netns()
        .expect("a networked daemon")
        .name()
        .to_owned();
    daemon
        .import_busybox(IMAGE)
        .unwrap_or_else(|e| panic!("cannot import the busybox image: {e:#}"));
    let c = Checks {
        c: checks::Checks {
            d: &daemon,
            runtime,
            image: IMAGE,
        },
        ns: daemon.netns().expect("a networked daemon"),
        state_dirs: registrations
            .iter()
            .flat_map(|r| r.state_dirs.iter().cloned())
            .collect(),
    };
    let links = c.ns.links().expect("the test namespace's links");
    assert!(
        links.iter().any(|l| l == "docker0"),
        "dockerd made no docker0 in {ns_name}: {links:?}"
    );
    let bridge = c.ns.ipv4_of("docker0").expect("docker0's address");
    let server = HttpServer::start(c.ns, &format!("{bridge}:{HOST_PORT}"), HOST_PAGE)
        .unwrap_or_else(|e| panic!("the test's HTTP server did not start: {e:#}"));
    eprintln!(
        "[{runtime}] daemons up in {ns_name} (docker0 {bridge}), image imported: {:?}",
        started.elapsed()
    );

    timed(
        runtime,
        "default bridge: address, MAC, server on the bridge, by IP, -p",
        || c.default_bridge(&bridge),
    );
    timed(
        runtime,
        "user-defined network: names through 127.0.0.11",
        || c.user_defined_network(),
    );
    timed(runtime, "--network host and container:X", || {
        c.shared_namespaces()
    });
    drop(server);

    let ids = checks::shut_down_clean(daemon, runtime);
    assert!(
        !netns::leftover_names().contains(&ns_name),
        "the test namespace {ns_name} is still there"
    );
    eprintln!(
        "[{runtime}] all network checks passed, {} containers, {:?} in all",
        ids.len(),
        started.elapsed()
    );
}

/// A shell command serving `/www/index.html` holding `page` on port 80 in
/// the foreground (busybox httpd).
fn serve(page: &str) -> String {
    format!("mkdir -p /www && echo {page} > /www/index.html && exec httpd -f -p 80 -h /www")
}

/// The shared checks' helpers (`run`, `ok`, `inspect`...), with the test
/// namespace the daemons run in, and this file's checks on top of them.
struct Checks<'a> {
    c: checks::Checks<'a>,
    ns: &'a NetNs,
    /// The runtimes' own state directories, searched for what a refused
    /// container left.
    state_dirs: Vec<PathBuf>,
}

impl<'a> Deref for Checks<'a> {
    type Target = checks::Checks<'a>;

    fn deref(&self) -> &Self::Target {
        &self.c
    }
}

impl Checks<'_> {
    /// Starts a detached container `name` serving `page` on port 80.
    fn start_server(&self, name: &str, flags: &[&str], page: &str) {
        let mut all = vec!["-d", "--name", name];
        all.extend_from_slice(flags);
        let out = self.run(&all, &["sh", "-c", &serve(page)]);
        self.ok(&out, &format!("docker run -d --name {name} (httpd)"));
    }

    /// `docker exec name cmd`, successful, its trimmed stdout.
    fn exec(&self, name: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        let out = self.d.docker(&args);
        self.text(self.ok(&out, &format!("docker exec {name} {}", cmd.join(" "))))
    }

    /// `wget url` inside container `name` until it answers (its server may
    /// still be starting) or [`WAIT`] passes.
    fn fetch_in(&self, name: &str, url: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let out = self
                .d
                .docker(&["exec", name, "timeout", "10", "wget", "-q", "-O", "-", url]);
            if out.status.success() {
                return self.text(&out);
            }
            assert!(
                Instant::now() < deadline,
                "[{}] `wget {url}` in {name} kept failing for {WAIT:?}: {}",
                self.runtime,
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn rm(&self, names: &[&str]) {
        let mut args = vec!["rm", "-f"];
        args.extend_from_slice(names);
        self.ok(&self.d.docker(&args), &format!("docker rm -f {names:?}"));
    }

    fn default_bridge(&self, bridge: &str) {
        let web = format!("net-{}-web", self.runtime);
        let publish = format!("{PUBLISHED}:80");
        self.start_server(&web, &["-p", &publish], "page-from-web");

        // The container's eth0 is what Docker configured.
        let want = self.inspect(
            &web,
            "{{.NetworkSettings.IPAddress}}/{{.NetworkSettings.IPPrefixLen}} \
             {{.NetworkSettings.MacAddress}} {{.NetworkSettings.Gateway}}",
        );
        let [cidr, mac, gateway] = want.split_whitespace().collect::<Vec<_>>()[..] else {
            panic!(
                "[{}] unexpected docker inspect output {want:?}",
                self.runtime
            );
        };
        let ip = cidr.split('/').next().unwrap_or_default().to_owned();
        assert_eq!(gateway, bridge, "Docker's gateway is not docker0's address");
        let addr = self.exec(&web, &["ip", "-o", "addr", "show", "dev", "eth0"]);
        assert!(
            addr.contains(&format!("inet {cidr} ")),
            "[{}] eth0 in the container lacks Docker's address {cidr}: {addr}",
            self.runtime
        );
        let link = self.exec(&web, &["ip", "-o", "link", "show", "dev", "eth0"]);
        assert!(
            link.contains(&format!("link/ether {mac} ")),
            "[{}] eth0 in the container lacks Docker's MAC {mac}: {link}",
            self.runtime
        );
        let routes = self.exec(&web, &["ip", "route"]);
        assert!(
            routes.contains(&format!("default via {gateway} dev eth0")),
            "[{}] no default route through {gateway}: {routes}",
            self.runtime
        );
        // Docker's /etc/hosts names the container by its address.
        let hosts = self.exec(&web, &["cat", "/etc/hosts"]);
        assert!(
            hosts.lines().any(|l| l.starts_with(&format!("{ip}\t"))),
            "[{}] /etc/hosts does not hold {ip}: {hosts}",
            self.runtime
        );

        // The container reaches the test's server on the bridge address.
        let page = self.fetch_in(&web, &format!("http://{bridge}:{HOST_PORT}/"));
        assert_eq!(page, HOST_PAGE, "[{}] page from the bridge", self.runtime);

        // A client in the test namespace reaches the published port, by
        // loopback (docker-proxy) and by the bridge address (iptables DNAT).
        for host in ["127.0.0.1", bridge] {
            let url = format!("http://{host}:{PUBLISHED}/");
            let page = self
                .ns
                .fetch(&url, WAIT)
                .unwrap_or_else(|e| panic!("[{}] -p {publish}: {e:#}", self.runtime));
            assert_eq!(page.trim(), "page-from-web", "[{}] {url}", self.runtime);
        }

        // A second container, of runc and of this runtime, reaches it by IP.
        let mut peers = vec!["runc"];
        if self.runtime != "runc" {
            peers.push(self.runtime);
        }
        for peer in peers {
            let url = format!("http://{ip}/");
            let out = self.run_with(
                peer,
                &["--rm"],
                &["timeout", "20", "wget", "-q", "-O", "-", &url],
            );
            let page = self.text(self.ok(&out, &format!("[{peer}] wget {url}")));
            assert_eq!(
                page, "page-from-web",
                "[{}] a {peer} container fetching {url}",
                self.runtime
            );
        }
        self.rm(&[&web]);
    }

    fn user_defined_network(&self) {
        self.ok(
            &self.d.docker(&["network", "create", NETWORK]),
            "docker network create",
        );
        let alpha = format!("net-{}-alpha", self.runtime);
        let beta = format!("net-{}-beta", self.runtime);
        for name in [&alpha, &beta] {
            self.start_server(name, &["--network", NETWORK], &format!("page-from-{name}"));
        }
        for (from, to) in [(&alpha, &beta), (&beta, &alpha)] {
            let resolv = self.exec(from, &["cat", "/etc/resolv.conf"]);
            assert!(
                resolv.contains("nameserver 127.0.0.11"),
                "[{}] {from}'s resolv.conf is not Docker's embedded DNS: {resolv}",
                self.runtime
            );
            let want = self.inspect(
                to,
                &format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}"),
            );
            let lookup = self.exec(from, &["nslookup", to]);
            assert!(
                lookup.contains(&want),
                "[{}] nslookup {to} in {from} does not give {want}: {lookup}",
                self.runtime
            );
            let page = self.fetch_in(from, &format!("http://{to}/"));
            assert_eq!(
                page,
                format!("page-from-{to}"),
                "[{}] {from} fetching http://{to}/",
                self.runtime
            );
        }
        self.rm(&[&alpha, &beta]);
        self.ok(
            &self.d.docker(&["network", "rm", NETWORK]),
            "docker network rm",
        );
    }

    fn shared_namespaces(&self) {
        let owner = format!("net-{}-owner", self.runtime);
        self.start_server(&owner, &[], "page-from-owner");
        let owner_ip = self.inspect(&owner, "{{.NetworkSettings.IPAddress}}");
        let container = format!("container:{owner}");
        for (mode, flags) in [
            ("host", vec!["--network", "host"]),
            ("container", vec!["--network", &container]),
        ] {
            let cidfile = self.d.cidfile();
            let cidfile_arg = cidfile.to_string_lossy().into_owned();
            let mut all = vec!["--cidfile", &cidfile_arg];
            all.extend_from_slice(&flags);
            let out = self.run(&all, &["ip", "-o", "-4", "addr"]);
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let id = std::fs::read_to_string(&cidfile).unwrap_or_default();
            if self.runtime == "runc" {
                // runc shares them: host = the test namespace (its docker0),
                // container:X = X's address.
                let addrs = self.text(self.ok(&out, &format!("--network {mode}")));
                let want = if mode == "host" { "docker0" } else { &owner_ip };
                assert!(
                    addrs.contains(want),
                    "[runc] --network {mode}: no {want} in {addrs}"
                );
            } else {
                assert!(
                    !out.status.success(),
                    "[{}] --network {mode} must be refused; it ran: {}",
                    self.runtime,
                    self.text(&out)
                );
                // Docker wraps the runtime's error in one line of its own.
                let line = stderr
                    .lines()
                    .find(|l| l.contains("OCI runtime create failed"))
                    .unwrap_or_else(|| {
                        panic!(
                            "[{}] --network {mode}: not refused by the runtime: {stderr}",
                            self.runtime
                        )
                    });
                assert!(
                    line.contains("network"),
                    "[{}] --network {mode}: the refusal does not say why: {line}",
                    self.runtime
                );
                // Nothing of the refused container is left, even before rm.
                let id = id.trim().to_owned();
                assert!(!id.is_empty(), "no container ID in {}", cidfile.display());
                let procs = leftovers::processes(std::slice::from_ref(&id));
                assert!(
                    procs.is_empty(),
                    "[{}] --network {mode}: processes of the refused container: {procs:?}",
                    self.runtime
                );
                for dir in &self.state_dirs {
                    let found = leftovers::entries_named(dir, std::slice::from_ref(&id), 3);
                    assert!(
                        found.is_empty(),
                        "[{}] --network {mode}: state of the refused container: {found:?}",
                        self.runtime
                    );
                }
            }
            let id = id.trim();
            if !id.is_empty() {
                self.rm(&[id]);
            }
        }
        // The owner still serves: the refusal took nothing from its namespace.
        let page = self
            .ns
            .fetch(&format!("http://{owner_ip}/"), WAIT)
            .unwrap_or_else(|e| panic!("[{}] {owner} after the refusals: {e:#}", self.runtime));
        assert_eq!(page.trim(), "page-from-owner");
        self.rm(&[&owner]);
        let tc = self.ns.tc_state().expect("tc state of the test namespace");
        assert!(tc.is_empty(), "[{}] tc state left: {tc:?}", self.runtime);
    }
}

fn podman_network_checks(runtime: &str, husk: Option<&Runtime>) {
    let started = Instant::now();
    let podman =
        Podman::start(husk).unwrap_or_else(|e| panic!("the private Podman did not come up: {e:#}"));
    let ns_name = podman.netns().name().to_owned();
    podman
        .import_busybox(IMAGE)
        .unwrap_or_else(|e| panic!("cannot import the busybox image: {e:#}"));
    // Every address of the test namespace: podman's bridge appears only
    // with the first container.
    let server = HttpServer::start(podman.netns(), HOST_PORT, HOST_PAGE)
        .unwrap_or_else(|e| panic!("the test's HTTP server did not start: {e:#}"));
    eprintln!(
        "[podman {runtime}] up in {ns_name}, image imported: {:?}",
        started.elapsed()
    );

    let ok = |out: &Output, what: &str| -> String {
        assert!(
            out.status.success(),
            "[podman {runtime}] {what} failed ({}): stdout {:?}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };

    // Podman's default network: the container finds the host side of the
    // bridge as its default gateway and fetches the test's page from it.
    // The trailing `exit` keeps wget a child of sh: sh would exec a last
    // simple command, and a container's PID 1 ignores timeout's signal.
    let script = format!(
        "gw=$(ip route | awk '/^default/ {{print $3}}'); ip -o -4 addr show dev eth0; \
         echo gateway=$gw; timeout 20 wget -q -O - http://$gw:{HOST_PORT}/; exit $?"
    );
    let out = podman.podman(&["run", "--rm", IMAGE, "sh", "-c", &script]);
    let text = ok(&out, "podman run (default network)");
    let gateway = text
        .lines()
        .find_map(|l| l.strip_prefix("gateway="))
        .unwrap_or_default()
        .to_owned();
    let bridge_addrs = podman.netns().links().unwrap_or_default();
    assert!(
        !gateway.is_empty(),
        "[podman {runtime}] no default route in the container: {text}"
    );
    assert!(
        text.lines().last() == Some(HOST_PAGE),
        "[podman {runtime}] the page from the bridge's host side ({gateway}) did not arrive: {text}; links {bridge_addrs:?}"
    );
    assert!(
        text.contains("inet 10.88."),
        "[podman {runtime}] eth0 is not on Podman's default network: {text}"
    );

    // Namespace paths that are not a network namespace are refused.
    let missing = format!("/run/netns/{}nope-{}", netns::PREFIX, std::process::id());
    let plain = podman.root().join("not-a-namespace");
    std::fs::write(&plain, "").expect("a plain file");
    for path in [missing.as_str(), "/proc/1/ns/uts", &plain.to_string_lossy()] {
        let network = format!("ns:{path}");
        let out = podman.podman(&["run", "--rm", "--network", &network, IMAGE, "true"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "[podman {runtime}] --network {network} must be refused; it ran"
        );
        if runtime == "husk" {
            assert!(
                stderr.contains(path),
                "[podman husk] the refusal of {network} does not name the path: {stderr}"
            );
        }
    }
    drop(server);

    let left = podman.shutdown();
    assert!(
        left.is_empty(),
        "[podman {runtime}] teardown found leftovers:\n{left}"
    );
    assert!(
        !netns::leftover_names().contains(&ns_name),
        "the test namespace {ns_name} is still there"
    );
    eprintln!(
        "[podman {runtime}] all network checks passed, {:?} in all",
        started.elapsed()
    );
}
