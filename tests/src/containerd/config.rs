//! The private containerd's configuration: its `config.toml` (version 2,
//! with the CRI plugin and the runtimes under test) and the CNI network
//! the CRI plugin gives each pod.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::ShimRuntime;
use crate::docker::husk::toml_string;

/// Where Debian's `containernetworking-plugins` installs the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The pods' subnet, inside the test's network namespace only.
pub const POD_SUBNET: &str = "10.88.77.0/24";
/// The bridge the CNI `bridge` plugin makes in the test's namespace.
pub const BRIDGE: &str = "huskcni0";

/// Paths and choices the configuration is written from.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The test's private directory; everything containerd keeps goes under it.
    pub dir: PathBuf,
    /// `overlayfs` or `native`.
    pub snapshotter: String,
    /// The image the CRI plugin runs as every pod's sandbox (pause) container.
    pub sandbox_image: String,
    /// The CNI network's name; host-local's leases and libcni's result
    /// cache are named by it.
    pub network: String,
}

impl Layout {
    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// containerd's configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// The CNI configuration directory the CRI plugin reads.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }

    /// runc's state directory (`--root`) for containers of the CRI `runc`
    /// handler, instead of the shim's default /run/containerd/runc.
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    /// Where pods' log directories go.
    pub fn pod_logs(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }
}

/// The CRI handler and shim of containerd's own runc runtime, always
/// registered besides the runtimes under test.
pub fn runc_runtime() -> ShimRuntime {
    ShimRuntime::new("runc", "io.containerd.runc.v2", None)
}

/// containerd's `config.toml`: root, state and sockets under
/// [`Layout::dir`], the CRI plugin with `runtimes` (plus runc), the
/// snapshotter and the CNI network of [`cni_conflist`].
pub fn config_toml(layout: &Layout, runtimes: &[ShimRuntime]) -> String {
    let dir = &layout.dir;
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    let mut text = format!(
        "# Written by husk-tests for a private containerd.\n\
         version = 2\n\
         root = {root}\n\
         state = {state}\n\
         [grpc]\n  address = {grpc}\n\
         [ttrpc]\n  address = {ttrpc}\n\
         [debug]\n  address = \"\"\n  level = \"debug\"\n\
         [metrics]\n  address = \"\"\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n\
         [{cri}]\n\
         \x20 sandbox_image = {sandbox}\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 stream_server_port = \"0\"\n\
         \x20 # The host's AppArmor profiles are the machine's, not the test's.\n\
         \x20 disable_apparmor = true\n\
         \x20 enable_selinux = false\n\
         \x20 # Sandboxes ask for oom_score_adj -998, which needs CAP_SYS_RESOURCE\n\
         \x20 # (not granted on these machines): none lower than containerd's own.\n\
         \x20 restrict_oom_score_adj = true\n\
         [{cri}.cni]\n\
         \x20 bin_dir = {bin_dir}\n\
         \x20 conf_dir = {conf_dir}\n\
         \x20 max_conf_num = 1\n\
         [{cri}.containerd]\n\
         \x20 snapshotter = {snapshotter}\n\
         \x20 default_runtime_name = \"runc\"\n\
         [{cri}.containerd.runtimes.runc]\n\
         \x20 runtime_type = \"io.containerd.runc.v2\"\n\
         [{cri}.containerd.runtimes.runc.options]\n\
         \x20 BinaryName = \"/usr/sbin/runc\"\n\
         \x20 Root = {runc_root}\n",
        root = toml_string(&dir.join("root")),
        state = toml_string(&dir.join("state")),
        grpc = toml_string(&layout.socket()),
        ttrpc = toml_string(&dir.join("containerd.sock.ttrpc")),
        opt = toml_string(&dir.join("opt")),
        sandbox = toml_str(&layout.sandbox_image),
        bin_dir = toml_str(CNI_BIN_DIR),
        conf_dir = toml_string(&layout.cni_conf_dir()),
        snapshotter = toml_str(&layout.snapshotter),
        runc_root = toml_string(&layout.runc_root()),
    );
    for rt in runtimes.iter().filter(|r| r.handler != "runc") {
        let table = format!("{cri}.containerd.runtimes.{}", toml_str(&rt.handler));
        // Infallible: writing to a String.
        let _ = write!(
            text,
            "[{table}]\n  runtime_type = {}\n",
            toml_str(&rt.runtime_type)
        );
        if !rt.pod_annotations.is_empty() {
            let list: Vec<String> = rt.pod_annotations.iter().map(|a| toml_str(a)).collect();
            let _ = writeln!(text, "  pod_annotations = [{}]", list.join(", "));
            let _ = writeln!(text, "  container_annotations = [{}]", list.join(", "));
        }
        if let Some(config) = &rt.config_path {
            // containerd 1.6 hands non-runc shims the generic runtime
            // options, whose ConfigPath is how a VM runtime finds its
            // configuration (Kata's way).
            let _ = write!(
                text,
                "[{table}.options]\n  ConfigPath = {}\n",
                toml_string(config)
            );
        }
    }
    text
}

/// The CNI network list of every pod: a `bridge` with the gateway on
/// [`BRIDGE`] and host-local addresses from [`POD_SUBNET`], leases kept
/// under the test's directory. Loopback is not in the list: the CRI
/// plugin brings each pod's `lo` up itself with the `loopback` plugin
/// from the same directory.
pub fn cni_conflist(layout: &Layout) -> String {
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": layout.network,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": POD_SUBNET }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": layout.dir.join("cni-ipam"),
            },
        }],
    });
    // Infallible for a json! value.
    serde_json::to_string_pretty(&conf).unwrap_or_default()
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    toml_string(Path::new(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            dir: "/tmp/husk-cd-x".into(),
            snapshotter: "overlayfs".into(),
            sandbox_image: "husk.test/pause:3.6".into(),
            network: "husk-cri-1-0".into(),
        }
    }

    #[test]
    fn the_config_keeps_everything_under_the_test_directory() {
        let text = config_toml(&layout(), &[]);
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["version"].as_integer(), Some(2));
        assert_eq!(v["root"].as_str(), Some("/tmp/husk-cd-x/root"));
        assert_eq!(v["state"].as_str(), Some("/tmp/husk-cd-x/state"));
        assert_eq!(
            v["grpc"]["address"].as_str(),
            Some("/tmp/husk-cd-x/containerd.sock")
        );
        let cri = &v["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["sandbox_image"].as_str(), Some("husk.test/pause:3.6"));
        assert_eq!(cri["cni"]["bin_dir"].as_str(), Some("/usr/lib/cni"));
        assert_eq!(cri["cni"]["conf_dir"].as_str(), Some("/tmp/husk-cd-x/cni"));
        let runc = &cri["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(
            runc["options"]["Root"].as_str(),
            Some("/tmp/husk-cd-x/runc")
        );
    }

    #[test]
    fn runtimes_under_test_are_registered_by_handler() {
        let mut husk = ShimRuntime::new("husk", "io.containerd.husk.v2", Some("/opt/husk".into()));
        husk.config_path = Some("/etc/husk.toml".into());
        husk.pod_annotations = vec!["io.husk.*".into()];
        let text = config_toml(&layout(), &[husk, runc_runtime()]);
        let v: toml::Value = toml::from_str(&text).unwrap();
        let runtimes = &v["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert_eq!(
            runtimes["husk"]["runtime_type"].as_str(),
            Some("io.containerd.husk.v2")
        );
        assert_eq!(
            runtimes["husk"]["options"]["ConfigPath"].as_str(),
            Some("/etc/husk.toml")
        );
        assert_eq!(
            runtimes["husk"]["pod_annotations"][0].as_str(),
            Some("io.husk.*")
        );
        assert!(runtimes["runc"].is_table());
    }

    #[test]
    fn the_cni_network_is_a_bridge_with_private_leases() {
        let v: serde_json::Value = serde_json::from_str(&cni_conflist(&layout())).unwrap();
        assert_eq!(v["name"], "husk-cri-1-0");
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], POD_SUBNET);
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/husk-cd-x/cni-ipam");
    }
}
