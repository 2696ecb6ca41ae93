//! Test images as OCI layouts: real gzipped tar layers (ustar) generated here, one of them large
//! and incompressible (random bytes), an image config whose `diff_ids` match, a
//! manifest and an `index.json` naming it by tag. Layers are compressed already, so that skopeo
//! copies every manifest unchanged (`--preserve-digests` makes it fail otherwise).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// Of a layer: the digest of its uncompressed tar.
    pub diff_id: String,
    /// Where the bytes are, inside the layout.
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Image {
    pub layout: PathBuf,
    pub tag: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// Config first, then layers: every blob a push uploads.
    pub fn blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config).chain(&self.layers).collect()
    }
    pub fn largest(&self) -> &Blob {
        self.layers
            .iter()
            .max_by_key(|b| b.size)
            .expect("an image has layers")
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 of a file, streamed.
pub fn file_digest(path: &Path) -> String {
    use std::io::Read;
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read blob");
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    format!("sha256:{}", hex(ctx.finish().as_ref()))
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W: Write> {
    inner: W,
    ctx: ring::digest::Context,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One file of a layer: its name and either literal bytes or `n` pseudo-random bytes.
enum Content {
    Text(String),
    Random(u64),
}

fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{v:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// Writes a gzipped tar of `files` into the layout's blob store; returns the blob.
fn write_layer(layout: &Path, files: &[(&str, Content)]) -> Blob {
    let tmp = layout.join("layer.tmp");
    let file = BufWriter::with_capacity(1 << 20, File::create(&tmp).expect("create layer"));
    let compressed = Hashing {
        inner: file,
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
        len: 0,
    };
    let mut w = Hashing {
        // Stored deflate blocks: the data is random, and a debug build of zlib would take seconds
        // to find that out.
        inner: flate2::write::GzEncoder::new(compressed, flate2::Compression::none()),
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
        len: 0,
    };
    for (name, content) in files {
        let size = match content {
            Content::Text(t) => t.len() as u64,
            Content::Random(n) => *n,
        };
        w.write_all(&tar_header(name, size)).expect("write tar");
        match content {
            Content::Text(t) => w.write_all(t.as_bytes()).expect("write tar"),
            Content::Random(n) => {
                let rng = ring::rand::SystemRandom::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut left = *n;
                while left > 0 {
                    let k = left.min(buf.len() as u64) as usize;
                    ring::rand::SecureRandom::fill(&rng, &mut buf[..k]).expect("random bytes");
                    w.write_all(&buf[..k]).expect("write tar");
                    left -= k as u64;
                }
            }
        }
        let pad = (512 - size % 512) % 512;
        w.write_all(&vec![0u8; pad as usize]).expect("write tar");
    }
    w.write_all(&[0u8; 1024]).expect("write tar");
    let diff_id = format!("sha256:{}", hex(w.ctx.finish().as_ref()));
    let mut compressed = w.inner.finish().expect("finish gzip");
    compressed.flush().expect("flush layer");
    let digest = format!("sha256:{}", hex(compressed.ctx.finish().as_ref()));
    let path = blob_path(layout, &digest);
    std::fs::rename(&tmp, &path).expect("place layer");
    Blob {
        digest,
        size: compressed.len,
        media_type: LAYER_TYPE.into(),
        diff_id,
        path,
    }
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn write_blob(layout: &Path, bytes: &[u8], media_type: &str) -> Blob {
    let digest = format!("sha256:{}", sha256_hex(bytes));
    let path = blob_path(layout, &digest);
    std::fs::write(&path, bytes).expect("write blob");
    Blob {
        digest,
        size: bytes.len() as u64,
        media_type: media_type.into(),
        diff_id: String::new(),
        path,
    }
}

fn descriptor(b: &Blob) -> serde_json::Value {
    serde_json::json!({"mediaType": b.media_type, "digest": b.digest, "size": b.size})
}

/// A three-layer image: a few text files, 1 MiB and `big` bytes of random (incompressible) data,
/// so that every image is distinct and each push really uploads. `seed` names the image.
pub fn build(layout: &Path, tag: &str, seed: u64, big: u64) -> Image {
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("layout dir");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("oci-layout");
    let layers = vec![
        write_layer(
            layout,
            &[
                (
                    "etc/motd",
                    Content::Text(format!("registry-edge e2e image {seed}\n")),
                ),
                (
                    "app/config.json",
                    Content::Text(format!("{{\"seed\":{seed}}}\n")),
                ),
            ],
        ),
        write_layer(layout, &[("app/small.bin", Content::Random(1 << 20))]),
        write_layer(layout, &[("app/large.bin", Content::Random(big))]),
    ];
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/true"], "Labels": {"seed": seed.to_string()}},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "registry-edge e2e"})).collect::<Vec<_>>(),
    });
    let config = write_blob(layout, config.to_string().as_bytes(), CONFIG_TYPE);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(&config),
        "layers": layers.iter().map(descriptor).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let m = write_blob(layout, &manifest, MANIFEST_TYPE);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_TYPE, "digest": m.digest, "size": m.size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("index.json");
    Image {
        layout: layout.to_path_buf(),
        tag: tag.into(),
        manifest,
        manifest_digest: m.digest,
        config,
        layers,
    }
}

/// The manifest digest an OCI layout's `index.json` names for `tag`.
pub fn layout_manifest_digest(layout: &Path, tag: &str) -> String {
    let raw = std::fs::read(layout.join("index.json"))
        .unwrap_or_else(|e| panic!("{}/index.json: {e}", layout.display()));
    let index: serde_json::Value = serde_json::from_slice(&raw).expect("index.json is JSON");
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in {}", layout.display()))
        .to_string()
}

/// Checks that `pulled` (an OCI layout) holds `image` exactly: same manifest digest, and every
/// blob present with the bytes its digest names.
pub fn assert_same(image: &Image, pulled: &Path) {
    let digest = layout_manifest_digest(pulled, &image.tag);
    assert_eq!(
        digest, image.manifest_digest,
        "pulled manifest digest differs from the pushed one"
    );
    let manifest = std::fs::read(blob_path(pulled, &digest)).expect("pulled manifest blob");
    assert_eq!(manifest, image.manifest, "manifest bytes differ");
    for b in image.blobs() {
        let p = blob_path(pulled, &b.digest);
        assert_eq!(
            file_digest(&p),
            b.digest,
            "pulled blob {} has other bytes",
            p.display()
        );
    }
}

#[test]
fn tar_headers_are_valid_ustar() {
    let h = tar_header("app/x", 1234);
    let stored = std::str::from_utf8(&h[148..154]).unwrap();
    let mut zeroed = h;
    zeroed[148..156].copy_from_slice(b"        ");
    let sum: u32 = zeroed.iter().map(|&b| u32::from(b)).sum();
    assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
    assert_eq!(&h[124..136], b"00000002322\0");
}

#[test]
fn layers_are_gzipped_tarballs() {
    let dir = std::env::temp_dir().join(format!("registry-edge-e2e-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let image = build(&dir, "t", 7, 4096);
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&image.layers[0].path)
        .output()
        .unwrap();
    assert!(listing.status.success(), "{listing:?}");
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "etc/motd\napp/config.json\n"
    );
    assert_eq!(file_digest(&image.config.path), image.config.digest);
    assert_eq!(layout_manifest_digest(&dir, "t"), image.manifest_digest);
    std::fs::remove_dir_all(&dir).unwrap();
}
