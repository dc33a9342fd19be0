//! Offline OCI images for the private containerd: a busybox root file
//! system (tests/src/rootfs.rs) as one uncompressed layer, written as an
//! OCI image layout archive (`oci-layout`, `index.json`, blobs named by
//! their SHA-256) that `ctr images import` takes. No registry is
//! reachable here, and the CRI plugin needs real images (a config with
//! `rootfs.diff_ids`, a platform), not `docker import`-style tarballs.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::rootfs;

/// The busybox image every test container runs.
pub const BUSYBOX: &str = "docker.io/library/busybox:latest";
/// The pod sandbox ("pause") image, the CRI plugin's `sandbox_image`.
pub const PAUSE: &str = "husk.test/pause:3.6";
/// The pause image's program: a shell that sleeps until SIGTERM or
/// SIGINT and then exits 0, as `pause` does. (`sleep` in the background
/// and `wait`, because a shell runs a trap only between commands.)
pub const PAUSE_ENTRYPOINT: [&str; 3] = [
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
];

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// One image to write: its full reference and its process.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The full reference containerd stores it under
    /// (`docker.io/library/busybox:latest`).
    pub name: String,
    /// The config's `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// The config's `Cmd`.
    pub cmd: Vec<String>,
}

impl ImageSpec {
    /// busybox with `sh` as its command, like Docker Hub's.
    pub fn busybox() -> Self {
        Self {
            name: BUSYBOX.into(),
            entrypoint: Vec::new(),
            cmd: vec!["sh".into()],
        }
    }

    /// busybox whose entrypoint waits for SIGTERM ([`PAUSE_ENTRYPOINT`]).
    pub fn pause() -> Self {
        Self {
            name: PAUSE.into(),
            entrypoint: PAUSE_ENTRYPOINT.iter().map(|s| s.to_string()).collect(),
            cmd: Vec::new(),
        }
    }
}

/// A blob: its digest (`sha256:<hex>`) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// In bytes.
    pub size: u64,
}

impl Blob {
    /// The digest and size of the file at `path`, read in chunks.
    pub fn of_file(path: &Path) -> Result<Self> {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok(Self {
            digest: format!("sha256:{}", hex(&hasher.finalize())),
            size,
        })
    }

    /// The digest and size of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self {
            digest: format!("sha256:{}", hex(&Sha256::digest(bytes))),
            size: bytes.len() as u64,
        }
    }

    /// Its path under an OCI layout directory: `blobs/sha256/<hex>`.
    pub fn path_in(&self, layout: &Path) -> PathBuf {
        let hex = self.digest.trim_start_matches("sha256:");
        layout.join("blobs/sha256").join(hex)
    }
}

/// Makes a busybox root file system in `dir` (which must not exist) and
/// a tar of it at `layer` (numeric owners root), the layer of every image.
pub fn busybox_layer(dir: &Path, layer: &Path) -> Result<Blob> {
    rootfs::busybox(dir).context("building the busybox rootfs")?;
    let out = Command::new("tar")
        .arg("--numeric-owner")
        .args(["--owner=0", "--group=0"])
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(layer)
        .arg(".")
        .output()
        .context("running tar")?;
    if !out.status.success() {
        bail!("tar failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Blob::of_file(layer)
}

/// The image config of `spec` on the one uncompressed `layer` (whose
/// digest is also its diff ID).
pub fn config_json(spec: &ImageSpec, layer: &Blob) -> serde_json::Value {
    let mut config = serde_json::json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/",
    });
    if !spec.entrypoint.is_empty() {
        config["Entrypoint"] = serde_json::json!(spec.entrypoint);
    }
    if !spec.cmd.is_empty() {
        config["Cmd"] = serde_json::json!(spec.cmd);
    }
    serde_json::json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "husk-tests" }],
    })
}

/// Writes `spec` as an OCI image layout in `layout` (a fresh directory)
/// around the layer tar `layer_tar` (its blob `layer`), then packs it as
/// the archive `archive`. The manifest in `index.json` carries the full
/// reference as `io.containerd.image.name`, which `ctr images import`
/// keeps as the image's name (with `org.opencontainers.image.ref.name`
/// alone, it would prefix it with `import-<date>`).
pub fn write_archive(
    spec: &ImageSpec,
    layer_tar: &Path,
    layer: &Blob,
    layout: &Path,
    archive: &Path,
) -> Result<Blob> {
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    let layer_path = layer.path_in(layout);
    // A hard link when on the same file system: the layer is tens of MiB.
    if std::fs::hard_link(layer_tar, &layer_path).is_err() {
        std::fs::copy(layer_tar, &layer_path)
            .with_context(|| format!("copying {}", layer_tar.display()))?;
    }
    let config = serde_json::to_vec(&config_json(spec, layer))?;
    let config_blob = Blob::of_bytes(&config);
    std::fs::write(config_blob.path_in(layout), &config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_blob.digest, "size": config_blob.size },
        "layers": [{ "mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size }],
    }))?;
    let manifest_blob = Blob::of_bytes(&manifest);
    std::fs::write(manifest_blob.path_in(layout), &manifest)?;
    let tag = spec.name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_blob.digest,
            "size": manifest_blob.size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": spec.name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let out = Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(layout)
        .arg("-cf")
        .arg(archive)
        .args(["oci-layout", "index.json", "blobs"])
        .output()
        .context("running tar")?;
    if !out.status.success() {
        bail!("tar failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(manifest_blob)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_named_by_their_sha256() {
        // sha256 of the empty string.
        let empty = Blob::of_bytes(b"");
        assert_eq!(
            empty.digest,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(Blob::of_file(&file).unwrap(), empty);
        assert!(empty.path_in(Path::new("/l")).ends_with(
            "blobs/sha256/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        ));
    }

    #[test]
    fn the_config_names_the_layer_as_its_diff_id() {
        let layer = Blob::of_bytes(b"layer");
        let v = config_json(&ImageSpec::pause(), &layer);
        assert_eq!(v["rootfs"]["diff_ids"][0], layer.digest.as_str());
        assert_eq!(v["config"]["Entrypoint"][0], "/bin/sh");
        assert!(v["config"].get("Cmd").is_none());
        assert_eq!(
            config_json(&ImageSpec::busybox(), &layer)["config"]["Cmd"][0],
            "sh"
        );
    }

    #[test]
    fn an_archive_holds_a_consistent_layout() {
        let dir = tempfile::tempdir().unwrap();
        let layer_tar = dir.path().join("layer.tar");
        std::fs::write(&layer_tar, b"not really a tar").unwrap();
        let layer = Blob::of_file(&layer_tar).unwrap();
        let layout = dir.path().join("layout");
        let archive = dir.path().join("image.tar");
        let manifest =
            write_archive(&ImageSpec::busybox(), &layer_tar, &layer, &layout, &archive).unwrap();
        assert!(archive.is_file());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(entry["digest"], manifest.digest.as_str());
        assert_eq!(entry["annotations"]["io.containerd.image.name"], BUSYBOX);
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );
        // Every blob is stored under its own digest.
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(manifest.path_in(&layout)).unwrap()).unwrap();
        for desc in [&m["config"], &m["layers"][0]] {
            let digest = desc["digest"].as_str().unwrap();
            let blob = Blob {
                digest: digest.into(),
                size: desc["size"].as_u64().unwrap(),
            };
            assert_eq!(Blob::of_file(&blob.path_in(&layout)).unwrap(), blob);
        }
    }
}
