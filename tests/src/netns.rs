//! A network namespace of the test's own (`ip netns add husk-t-<pid>-<n>`),
//! so that Docker's and Podman's bridges, NAT rules and published ports
//! live there and never touch the machine's own network.
//!
//! Processes are put into it by `setns` in the forked child before `exec`
//! ([`NetNs::enter`]), not by `ip netns exec`: the child then *is* the
//! program (its PID can be stopped), and no mount namespace is made.
//! The namespace is deleted when the [`NetNs`] is dropped, also on a
//! failed test.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::docker::timed;

/// The name prefix of every namespace the tests make: leftover checks
/// look for it in `/run/netns`.
pub const PREFIX: &str = "husk-t-";
/// Where `ip netns` keeps named namespaces.
pub const RUN_NETNS: &str = "/run/netns";
/// How long one `ip` command may take.
const IP_TIMEOUT: Duration = Duration::from_secs(20);

/// Tells apart the namespaces of one test process.
static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace with `lo` up, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Makes `husk-t-<pid>-<n>` and brings its loopback up.
    pub fn create() -> Result<Self> {
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        // From here on, an error drops `ns`, which deletes the namespace.
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount under [`RUN_NETNS`].
    pub fn path(&self) -> PathBuf {
        Path::new(RUN_NETNS).join(&self.name)
    }

    /// Makes `cmd` start inside the namespace: the namespace file is opened
    /// now, and the forked child joins it before `exec`.
    pub fn enter(&self, cmd: &mut Command) -> Result<()> {
        let fd: OwnedFd = std::fs::File::open(self.path())
            .with_context(|| format!("opening {}", self.path().display()))?
            .into();
        // SAFETY: setns is async-signal-safe; the fd is moved into the
        // closure, so it stays open until the child has joined.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// `program args` inside the namespace, stdin from /dev/null.
    pub fn command(&self, program: &str, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        self.enter(&mut cmd)?;
        Ok(cmd)
    }

    /// Runs `program args` inside the namespace to completion within
    /// `timeout` (killed after it), with its output.
    pub fn output(&self, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = self.command(program, args)?;
        timed::output(&mut cmd, timeout)
            .with_context(|| format!("running {program}"))?
            .map_err(|hung| {
                anyhow!(
                    "`{program} {}` in {} did not finish within {timeout:?}; stdout {:?}, stderr {:?}",
                    args.join(" "),
                    self.name,
                    String::from_utf8_lossy(&hung.partial.stdout),
                    String::from_utf8_lossy(&hung.partial.stderr)
                )
            })
    }

    /// Fetches `url` from inside the namespace with busybox `wget` (each
    /// try killed after 10 s), again
    /// and again until it answers or `timeout` has passed (a server in a
    /// container that is still booting refuses at first); the body, or
    /// the last error.
    pub fn fetch(&self, url: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output(
                BUSYBOX,
                &["wget", "-q", "-O", "-", url],
                Duration::from_secs(10),
            );
            let out = match out {
                Ok(out) => out,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => continue,
            };
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if Instant::now() >= deadline {
                bail!(
                    "wget {url} in {} kept failing for {timeout:?}: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The IPv4 address (without prefix) of `link` in the namespace.
    pub fn ipv4_of(&self, link: &str) -> Result<String> {
        let out = ip(&["-n", &self.name, "-o", "-4", "addr", "show", "dev", link])?;
        parse_ipv4(&out).ok_or_else(|| anyhow!("{link} in {} has no IPv4: {out}", self.name))
    }

    /// The links of the namespace (names only, without `@peer`).
    pub fn links(&self) -> Result<Vec<String>> {
        Ok(parse_links(&ip(&["-n", &self.name, "-o", "link", "show"])?))
    }

    /// Every tc filter and non-default qdisc in the namespace, one line
    /// each, prefixed by its link: what husk's tc redirects would leave.
    pub fn tc_state(&self) -> Result<Vec<String>> {
        tc_state_with(
            |args| {
                let mut all = vec!["-n", &self.name];
                all.extend_from_slice(args);
                tc(&all)
            },
            &self.links()?,
        )
    }

    /// Deletes the namespace now (also done on drop).
    pub fn delete(self) -> Result<()> {
        let name = self.name.clone();
        std::mem::forget(self);
        ip(&["netns", "delete", &name]).map(drop)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("cannot delete network namespace {}: {e:#}", self.name);
        }
    }
}

/// busybox (Debian's busybox-static): the tests' HTTP server and client.
/// Its `wget -T` crashes (busybox 1.35, SIGSEGV): waits are bounded from
/// outside instead ([`timed`] here, `timeout` inside containers).
pub const BUSYBOX: &str = "/bin/busybox";

/// `busybox httpd` serving one page (`/index.html`) inside a namespace;
/// stopped by its PID on drop.
pub struct HttpServer {
    child: Child,
    _dir: tempfile::TempDir,
}

impl HttpServer {
    /// Serves `page` at `http://<addr>/` (`addr` is `IP:PORT`, or `PORT`
    /// for every address of the namespace) from inside `ns`.
    pub fn start(ns: &NetNs, addr: &str, page: &str) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("husk-httpd-").tempdir()?;
        std::fs::write(dir.path().join("index.html"), page)?;
        let home = dir.path().to_string_lossy().into_owned();
        // -f: in the foreground, so the child is the server itself.
        let mut cmd = ns.command(BUSYBOX, &["httpd", "-f", "-p", addr, "-h", &home])?;
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().context("starting busybox httpd")?;
        let mut server = Self { child, _dir: dir };
        // Ready once it answers; an httpd that could not bind has exited.
        let local = if addr.contains(':') {
            addr.to_owned()
        } else {
            format!("127.0.0.1:{addr}")
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("busybox httpd -p {addr} in {} exited: {status}", ns.name());
            }
            let out = ns.output(
                BUSYBOX,
                &["wget", "-q", "-O", "-", &format!("http://{local}/")],
                Duration::from_secs(5),
            );
            if out.is_ok_and(|out| out.status.success()) {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                bail!("busybox httpd -p {addr} in {} never answered", ns.name());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The namespaces the tests made that still exist (any test process's).
pub fn leftover_names() -> Vec<String> {
    std::fs::read_dir(RUN_NETNS)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// Links named `husktap*` in the network namespace of the file `ns` (a
/// `/proc/PID/ns/net` or a namespace bind mount); only reads.
pub fn husk_taps_in(ns: &Path) -> Result<Vec<String>> {
    let out = in_netns(ns, "ip", &["-o", "link", "show"])?;
    Ok(parse_links(&out)
        .into_iter()
        .filter(|l| l.starts_with("husktap"))
        .collect())
}

/// What husk may leave in the namespace of the file `ns`, one line each,
/// naming it `what`: its `husktap*` links and tc state (or why its links
/// could not be listed).
pub fn husk_state_in(ns: &Path, what: &str) -> Vec<String> {
    let mut found = match husk_taps_in(ns) {
        Ok(taps) => taps
            .into_iter()
            .map(|t| format!("tap {t} in {what}"))
            .collect(),
        Err(e) => vec![format!("cannot list the links of {what}: {e:#}")],
    };
    if let Ok(tc) = tc_state_in(ns) {
        found.extend(tc.into_iter().map(|t| format!("tc in {what}: {t}")));
    }
    found
}

/// [`NetNs::tc_state`] for the namespace of the file `ns`.
pub fn tc_state_in(ns: &Path) -> Result<Vec<String>> {
    let links = parse_links(&in_netns(ns, "ip", &["-o", "link", "show"])?);
    tc_state_with(|args| in_netns(ns, "tc", args), &links)
}

fn tc_state_with(tc: impl Fn(&[&str]) -> Result<String>, links: &[String]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for link in links {
        let qdiscs = tc(&["qdisc", "show", "dev", link])?;
        // A fresh link has the kernel's default qdiscs only (noqueue,
        // pfifo_fast, mq, fq_codel...); husk adds `ingress` (or clsact).
        found.extend(
            qdiscs
                .lines()
                .filter(|l| l.contains("qdisc ingress") || l.contains("qdisc clsact"))
                .map(|l| format!("{link}: {l}")),
        );
        for parent in ["ingress", "egress"] {
            let filters = tc(&["filter", "show", "dev", link, parent])?;
            found.extend(
                filters
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| format!("{link} {parent}: {l}")),
            );
        }
    }
    Ok(found)
}

/// `program args` in the network namespace of the file `ns`, via nsenter.
fn in_netns(ns: &Path, program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.display()))
        .arg(program)
        .args(args);
    run(
        &mut cmd,
        &format!("{program} {} in {}", args.join(" "), ns.display()),
    )
}

fn ip(args: &[&str]) -> Result<String> {
    run(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
    )
}

fn tc(args: &[&str]) -> Result<String> {
    run(
        Command::new("tc").args(args),
        &format!("tc {}", args.join(" ")),
    )
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = timed::output(cmd.stdin(Stdio::null()), IP_TIMEOUT)
        .with_context(|| format!("running {what}"))?
        .map_err(|_| anyhow!("`{what}` did not finish within {IP_TIMEOUT:?}"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first `inet A.B.C.D/N` address of `ip -o addr` output, without `/N`.
pub fn parse_ipv4(ip_o_addr: &str) -> Option<String> {
    let mut words = ip_o_addr.split_whitespace();
    while let Some(w) = words.next() {
        if w == "inet" {
            return words.next()?.split('/').next().map(str::to_owned);
        }
    }
    None
}

/// Link names of `ip -o link` output (`2: eth0@if5: <...>` gives `eth0`).
pub fn parse_links(ip_o_link: &str) -> Vec<String> {
    ip_o_link
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_drop_their_peer_suffix() {
        let out = "1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue\n\
                   7: eth0@if8: <BROADCAST,UP> mtu 1500 qdisc noqueue\n\
                   9: husktap0: <BROADCAST> mtu 1500\n";
        assert_eq!(parse_links(out), ["lo", "eth0", "husktap0"]);
    }

    #[test]
    fn the_first_ipv4_address_is_taken_without_its_prefix() {
        let out = "3: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\       valid_lft forever";
        assert_eq!(parse_ipv4(out).as_deref(), Some("172.17.0.1"));
        assert_eq!(parse_ipv4("3: eth0    inet6 fe80::1/64 scope link"), None);
    }

    #[test]
    fn a_namespace_is_made_with_lo_up_and_deleted() {
        let ns = NetNs::create().unwrap();
        let path = ns.path();
        assert!(path.exists());
        assert_eq!(ns.links().unwrap(), ["lo"]);
        let out = ns
            .output("ip", &["-o", "link", "show", "lo"], Duration::from_secs(10))
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("UP"));
        assert!(ns.tc_state().unwrap().is_empty());
        assert!(husk_taps_in(&path).unwrap().is_empty());
        ns.delete().unwrap();
        assert!(!path.exists());
    }
}
