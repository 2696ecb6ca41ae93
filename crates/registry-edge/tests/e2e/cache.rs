//! The blob cache (docs/blob-cache.md) in front of the real registry and its data endpoint: a
//! second pull served by the edge while the registry still authorizes every blob request, no
//! cached byte for a client the registry refuses or a URL that was altered, corrupt storage never
//! cached and never delivered whole, one upstream fetch for 20 concurrent pulls, and a pull that
//! completes when the cache's disk is full.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::harness::{challenge, step, Client, Harness, Proto, DATA_HOST};
use crate::image::{self, Image};
use crate::{skopeo_copy_back, skopeo_push, storage_path, token_for, Via};

/// A key file of 32 random bytes, outside the harness's directory (which it clears at start).
fn key_file(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "registry-edge-e2e-key-{name}-{}",
        std::process::id()
    ));
    let key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(97) ^ (std::process::id() as u8))
        .collect();
    std::fs::write(&p, key).unwrap();
    p
}

/// A harness whose edge caches blobs in `cache` (every blob: `min_blob_size: 1`).
pub fn start(name: &str, cache: &Path) -> Harness {
    let block = format!(
        "blob_cache:\n  path: {}\n  max_size: 2GiB\n  min_blob_size: 1\n  key_file: {}\n",
        cache.display(),
        key_file(name).display()
    );
    step(
        &format!("start the harness with a blob cache ({name})"),
        &[],
        || Harness::start_with(name, true, &block),
    )
}

fn http(h: &Harness) -> Via<'static> {
    Via {
        port: h.http_port,
        tls: false,
        godebug: None,
        name: "HTTP",
    }
}

/// How the edge served each blob GET of `image` on the data host since access-log line `since`.
fn cache_uses(h: &Harness, since: usize, image: &Image) -> Vec<String> {
    let log = h.access_log();
    image
        .blobs()
        .iter()
        .map(|b| {
            let path = storage_path(&b.digest);
            log[since..]
                .iter()
                .filter(|l| {
                    l["route"] == "data" && l["method"] == "GET" && l["path"] == path.as_str()
                })
                .map(|l| l["cache"].as_str().unwrap_or("none").to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// The access log's `cache` field of every data-host request for `digest`, in order.
fn blob_cache_uses(h: &Harness, digest: &str) -> Vec<String> {
    h.access_log()
        .iter()
        .filter(|l| l["path"] == storage_path(digest).as_str())
        .map(|l| l["cache"].to_string())
        .collect()
}

fn data_gets(h: &Harness, since: usize, digest: &str) -> usize {
    let path = storage_path(digest);
    h.data.hits.lock().unwrap()[since..]
        .iter()
        .filter(|d| d.method == "GET" && d.path == path)
        .count()
}

/// An anonymous pull token's header for `repo`, from the challenge's realm.
fn pull_auth(c: &Client<'_>, repo: &str) -> String {
    let r = c.get(&format!("{}/v2/", c.origin()), &[]);
    let ch = challenge(r.header("www-authenticate").unwrap());
    let scope = format!("repository:{repo}:pull");
    format!(
        "Authorization: Bearer {}",
        token_for(c, &ch["realm"], &ch["service"], &scope, None)
    )
}

/// The registry's redirect for a blob, as the edge rewrote (and signed) it: origin-form target
/// on the data host.
fn signed_target(c: &Client<'_>, repo: &str, digest: &str, auth: &str) -> String {
    let r = c.get(&format!("{}/v2/{repo}/blobs/{digest}", c.origin()), &[auth]);
    assert_eq!(r.status, 307, "{r:?}");
    let loc = r.header("location").unwrap();
    assert!(loc.contains("&_rec=sha256-"), "no cache token in {loc}");
    loc.strip_prefix(&c.data_origin()).unwrap().to_string()
}

/// Sends a request for `target` on the data host (`extra`: more header lines, each ended by
/// CRLF) and reads the response head: its status and the head.
fn ask(
    s: &mut TcpStream,
    port: u16,
    method: &str,
    target: &str,
    extra: &str,
) -> (u16, crate::http1::Head) {
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {DATA_HOST}:{port}\r\n{extra}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "head cut short");
        head.push(byte[0]);
    }
    let head = crate::http1::Head::parse(&head).unwrap();
    (head.status().unwrap(), head)
}

/// A raw `GET` on the data host through the edge's HTTP listener: the status, the declared
/// length, the body's length and SHA-256 (read to the connection's end).
fn raw_get(port: u16, target: &str) -> (u16, u64, u64, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (status, head) = ask(&mut s, port, "GET", target, "Connection: close\r\n");
    let declared = head.get("content-length").map_or(0, |v| v.parse().unwrap());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                ctx.update(&buf[..n]);
                got += n as u64;
            }
        }
    }
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (status, declared, got, format!("sha256:{hex}"))
}

#[test]
fn a_second_pull_comes_from_the_edge_and_the_registry_still_decides() {
    let cache =
        std::env::temp_dir().join(format!("registry-edge-e2e-blobs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let mut h = start("cache", &cache);
    let via = http(&h);
    let img = crate::build_image(&h, "cached", 31);
    h.step("skopeo push", || skopeo_push(&h, &via, &img, "team/cached"));
    h.step(
        "first pull: every blob from the data endpoint, verified and stored",
        || {
            let (log, data) = (h.access_log().len(), h.data.hits.lock().unwrap().len());
            let relayed = h.metric("registry_edge_blob_cache_relayed_bytes_total");
            skopeo_copy_back(&h, &via, &img, "team/cached", "first");
            for b in img.blobs() {
                assert_eq!(data_gets(&h, data, &b.digest), 1, "{}", b.digest);
            }
            // Plain TCP to the client and to the data endpoint: the fills were relayed through
            // pipes, all but each blob's first bytes and last chunk (4 MiB at most).
            let relayed = h.metric("registry_edge_blob_cache_relayed_bytes_total") - relayed;
            let largest = img.largest().size as f64;
            let all: f64 = img.blobs().iter().map(|b| b.size as f64).sum();
            assert!(
                relayed >= largest - f64::from(5u32 << 20) && relayed < all,
                "{relayed} bytes relayed of {all} (largest blob {largest})"
            );
            assert!(
                cache_uses(&h, log, &img).iter().all(|u| u == "fill"),
                "{:?}",
                cache_uses(&h, log, &img)
            );
        },
    );
    h.step(
        "second pull: nothing to the data endpoint; the registry saw every blob GET",
        || pull_from_cache(&h, &via, &img, "second"),
    );
    // Over TLS the edge copies a hit through rustls in blocks (not sendfile): skopeo checks
    // every blob's digest, over HTTP/2 and over HTTP/1.1.
    for (godebug, name, into) in [
        (None, "TLS (HTTP/2)", "third"),
        (Some("http2client=0"), "TLS (HTTP/1.1)", "fourth"),
    ] {
        let tls = Via {
            port: h.tls_port,
            tls: true,
            godebug,
            name,
        };
        h.step(
            &format!("{into} pull over {name}: every blob a hit, byte for byte"),
            || pull_from_cache(&h, &tls, &img, into),
        );
    }
    h.step(
        "hits on one connection: ranges, HEAD, 416 and whole bodies, byte for byte",
        || hits_on_one_connection(&h, &img),
    );
    h.step("no cached byte without the registry's consent", || {
        refusals(&h, &img)
    });
    h.step(
        "corrupt storage: never stored, never delivered whole",
        || corrupt(&h, &via),
    );
    h.step(
        "corrupt storage mid-body, in a relayed chunk: never stored, never delivered whole",
        || corrupt_mid_body(&h, &via),
    );
    h.step(
        "storage that stops mid-body: the transfer cut, nothing stored",
        || storage_that_stops_early(&h, &via),
    );
    h.step(
        "storage without the blob: its 404 passed on, nothing stored",
        || storage_without_the_blob(&h, &via),
    );
    h.step(
        "20 concurrent pulls of an uncached 200 MiB blob: one upstream fetch",
        || concurrent(&h, &via),
    );
    h.step("scan every response header the clients saw", || h.scan());
    let logs = h.logs();
    step("registry-edge and docker-registry still run", &logs, || {
        h.assert_alive()
    });
    let _ = std::fs::remove_dir_all(&cache);
}

/// A pull of `img` served from the cache: nothing asked of the data endpoint, every blob GET
/// authorized by the registry (its 307), every blob a hit.
fn pull_from_cache(h: &Harness, via: &Via<'_>, img: &Image, into: &str) {
    let (log, data) = (h.access_log().len(), h.data.hits.lock().unwrap().len());
    let registry = h.shim_log.lock().unwrap().len();
    skopeo_copy_back(h, via, img, "team/cached", into);
    assert_eq!(
        h.data.hits.lock().unwrap().len(),
        data,
        "the data endpoint was asked"
    );
    let seen = h.shim_log.lock().unwrap()[registry..].to_vec();
    for b in img.blobs() {
        let target = format!("/v2/team/cached/blobs/{}", b.digest);
        assert!(
            seen.iter()
                .any(|e| e.method == "GET" && e.target == target && e.status == 307),
            "the registry did not authorize {target}"
        );
    }
    assert!(
        cache_uses(h, log, img).iter().all(|u| u == "hit"),
        "{:?}",
        cache_uses(h, log, img)
    );
}

/// One request on a kept-alive connection to the data host: the status, the head, and the body
/// (exactly `Content-Length` bytes; none for a `HEAD`).
fn exchange(
    s: &mut TcpStream,
    port: u16,
    method: &str,
    target: &str,
    range: Option<&str>,
) -> (u16, crate::http1::Head, Vec<u8>) {
    let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
    let (status, head) = ask(s, port, method, target, &range);
    let len: usize = head.get("content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; if method == "HEAD" { 0 } else { len }];
    s.read_exact(&mut body).unwrap();
    (status, head, body)
}

/// Cached blobs answered on one connection, as the kernel sends them over plain HTTP: single
/// ranges (206 with the exact `Content-Range`), a suffix range, an unsatisfiable one (416), a
/// `HEAD`, and whole bodies of two blobs, every byte compared with the pushed blob; the
/// connection stays open throughout, and each answer is a hit.
fn hits_on_one_connection(h: &Harness, img: &Image) {
    let c = h.client(Proto::Http);
    let auth = pull_auth(&c, "team/cached");
    let big = img.largest();
    let small = img.blobs().into_iter().min_by_key(|b| b.size).unwrap();
    let bytes = std::fs::read(&big.path).unwrap();
    let size = bytes.len();
    let target = signed_target(&c, "team/cached", &big.digest, &auth);
    let log = h.access_log().len();
    let mut s = TcpStream::connect(("127.0.0.1", h.http_port)).unwrap();
    let port = h.http_port;

    let (status, head, body) = exchange(&mut s, port, "GET", &target, Some("bytes=100-1099"));
    assert_eq!(status, 206);
    assert_eq!(
        head.get("content-range"),
        Some(format!("bytes 100-1099/{size}").as_str())
    );
    assert!(body == bytes[100..1100], "the range's bytes differ");
    let mid = size / 2;
    let (status, head, body) =
        exchange(&mut s, port, "GET", &target, Some(&format!("bytes={mid}-")));
    assert_eq!(status, 206);
    assert_eq!(
        head.get("content-range"),
        Some(format!("bytes {mid}-{}/{size}", size - 1).as_str())
    );
    assert!(body == bytes[mid..], "the open range's bytes differ");
    let (status, _, body) = exchange(&mut s, port, "GET", &target, Some("bytes=-10"));
    assert_eq!(status, 206);
    assert!(body == bytes[size - 10..]);
    let (status, head, _) = exchange(
        &mut s,
        port,
        "GET",
        &target,
        Some(&format!("bytes={size}-")),
    );
    assert_eq!(status, 416);
    assert_eq!(
        head.get("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    let (status, head, body) = exchange(&mut s, port, "HEAD", &target, None);
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(head.get("content-length"), Some(size.to_string().as_str()));
    let (status, _, body) = exchange(&mut s, port, "GET", &target, None);
    assert_eq!(status, 200);
    assert!(body == bytes, "the whole blob's bytes differ");
    let small_target = signed_target(&c, "team/cached", &small.digest, &auth);
    let (status, _, body) = exchange(&mut s, port, "GET", &small_target, None);
    assert_eq!(status, 200);
    assert_eq!(
        crate::image::sha256_hex(&body),
        small.digest.trim_start_matches("sha256:")
    );

    let uses: Vec<String> = h.access_log()[log..]
        .iter()
        .filter(|l| l["route"] == "data")
        .map(|l| l["cache"].to_string())
        .collect();
    assert_eq!(uses, vec!["\"hit\""; 7], "{uses:?}");
}

/// The registry's 401 reaches a client without credentials for a cached digest; an altered
/// token serves nothing from the cache (the data endpoint answers, on its own SAS).
fn refusals(h: &Harness, img: &Image) {
    let c = h.client(Proto::Http);
    let digest = &img.largest().digest;
    let r = c.get(
        &format!("{}/v2/team/cached/blobs/{digest}", c.origin()),
        &[],
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.contains("Bearer realm=")));
    let auth = pull_auth(&c, "team/cached");
    let target = signed_target(&c, "team/cached", digest, &auth);
    let last = target.chars().last().unwrap();
    let altered = format!(
        "{}{}",
        &target[..target.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let data = h.data.hits.lock().unwrap().len();
    let log = h.access_log().len();
    let (status, declared, got, sum) = raw_get(h.http_port, &altered);
    assert_eq!(
        (status, got, sum.as_str()),
        (200, declared, digest.as_str())
    );
    assert_eq!(
        data_gets(h, data, digest),
        1,
        "an altered token was served from the cache"
    );
    let line = h.access_log()[log..]
        .iter()
        .find(|l| l["route"] == "data")
        .cloned()
        .unwrap();
    assert!(line["cache"].is_null(), "{line}");
}

/// Storage that returns a changed last byte: the client's transfer is cut before the end,
/// nothing is stored, and once storage is right again the blob is fetched (and stored) anew.
fn corrupt(h: &Harness, via: &Via<'_>) {
    let lines = storage_fault(h, via, "team/faulty", 32, &h.data.corrupt, 0);
    let uses: Vec<String> = lines.iter().map(|l| l["cache"].to_string()).collect();
    assert_eq!(uses, ["\"corrupt\"", "\"fill\""]);
}

/// Storage that returns a changed byte in the middle of the blob, inside a chunk the edge has
/// relayed to the client before the body could be verified: the transfer is cut all the same
/// (the last chunk is held back), nothing is stored, and the next request fills.
fn corrupt_mid_body(h: &Harness, via: &Via<'_>) {
    let lines = storage_fault(h, via, "team/faulty-middle", 36, &h.data.corrupt_middle, 0);
    let uses: Vec<String> = lines.iter().map(|l| l["cache"].to_string()).collect();
    assert_eq!(uses, ["\"corrupt\"", "\"fill\""]);
}

/// Storage that declares the blob's length and closes before its end: the client's transfer is
/// cut short (the edge holds the last chunk back until the whole blob has hashed), the access
/// log has the upstream's error, nothing is stored, and the next request fills.
fn storage_that_stops_early(h: &Harness, via: &Via<'_>) {
    let lines = storage_fault(h, via, "team/stopping", 35, &h.data.truncated, 1);
    assert!(!lines[0]["error"].is_null(), "{}", lines[0]);
    assert_eq!(lines[1]["cache"], "fill", "{}", lines[1]);
}

/// A blob fetched through the edge while storage has `fault` for it (its answer declaring
/// `extra` bytes more than the blob), then again once storage is right: the faulty transfer
/// is cut short of the blob (or, when the whole body came before the response head left, the
/// edge answers 502), the second is the whole blob, and the data endpoint was asked twice
/// (nothing was stored from the fault). The access log's lines of the two requests.
fn storage_fault(
    h: &Harness,
    via: &Via<'_>,
    repo: &str,
    seed: u64,
    fault: &Mutex<Vec<String>>,
    extra: u64,
) -> Vec<serde_json::Value> {
    let img = crate::build_image(h, repo.trim_start_matches("team/"), seed);
    skopeo_push(h, via, &img, repo);
    let c = h.client(Proto::Http);
    let auth = pull_auth(&c, repo);
    let blob = img.largest().clone();
    let path = storage_path(&blob.digest);
    fault.lock().unwrap().push(path.clone());
    let data = h.data.hits.lock().unwrap().len();
    let target = signed_target(&c, repo, &blob.digest, &auth);
    let (status, declared, got, _) = raw_get(h.http_port, &target);
    match status {
        200 => assert!(
            declared == blob.size + extra && got < blob.size,
            "{repo}: a faulty blob was delivered whole ({got} of {declared} bytes)"
        ),
        502 => {}
        other => panic!("{repo}: a faulty blob answered {other}"),
    }
    fault.lock().unwrap().clear();
    let (status, _, got, sum) = raw_get(h.http_port, &signed_target(&c, repo, &blob.digest, &auth));
    assert_eq!((status, got, sum), (200, blob.size, blob.digest.clone()));
    assert_eq!(
        data_gets(h, data, &blob.digest),
        2,
        "{repo}: the faulty bytes were cached"
    );
    let lines: Vec<_> = h
        .access_log()
        .into_iter()
        .filter(|l| l["path"] == path.as_str())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    lines
}

/// Storage that has lost the blob after the registry signed its URL: the fill's own exchange
/// gets a 404, not a blob, and hands the request to pingora's proxy path, which sends it again
/// and passes the 404 on; nothing is stored. Once the blob is back, the next request fills.
fn storage_without_the_blob(h: &Harness, via: &Via<'_>) {
    let img = crate::build_image(h, "vanishing", 34);
    skopeo_push(h, via, &img, "team/vanishing");
    let c = h.client(Proto::Http);
    let auth = pull_auth(&c, "team/vanishing");
    let blob = img.largest().clone();
    let target = signed_target(&c, "team/vanishing", &blob.digest, &auth);
    let file = h
        .dir
        .join("storage")
        .join(storage_path(&blob.digest).trim_start_matches('/'));
    let aside = h.dir.join("vanished-blob");
    std::fs::rename(&file, &aside).expect("move the blob aside");
    let data = h.data.hits.lock().unwrap().len();
    let (status, _, _, _) = raw_get(h.http_port, &target);
    assert_eq!(status, 404, "storage's answer was not passed on");
    let statuses: Vec<u16> = h.data.hits.lock().unwrap()[data..]
        .iter()
        .filter(|d| d.path == storage_path(&blob.digest))
        .map(|d| d.status)
        .collect();
    assert_eq!(
        statuses,
        [404, 404],
        "the fill's exchange, then the proxy path's"
    );
    std::fs::rename(&aside, &file).expect("put the blob back");
    let (status, _, got, sum) = raw_get(
        h.http_port,
        &signed_target(&c, "team/vanishing", &blob.digest, &auth),
    );
    assert_eq!((status, got, sum), (200, blob.size, blob.digest.clone()));
    let uses = blob_cache_uses(h, &blob.digest);
    assert_eq!(uses, ["\"miss\"", "\"fill\""]);
}

/// 20 clients, each with its own redirect from the registry, fetch a 200 MiB blob at once.
fn concurrent(h: &Harness, via: &Via<'_>) {
    let big = image::build(&h.dir.join("layout-big"), "1", 33, 200 << 20);
    skopeo_push(h, via, &big, "team/big");
    let c = h.client(Proto::Http);
    let auth = pull_auth(&c, "team/big");
    let blob = big.largest().clone();
    let targets: Vec<String> = (0..20)
        .map(|_| signed_target(&c, "team/big", &blob.digest, &auth))
        .collect();
    let data = h.data.hits.lock().unwrap().len();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| s.spawn(move || raw_get(h.http_port, t)))
            .collect();
        handles.into_iter().map(|j| j.join().unwrap()).collect()
    });
    for (status, _, got, sum) in results {
        assert_eq!(
            (status, got, sum.as_str()),
            (200, blob.size, blob.digest.as_str())
        );
    }
    assert_eq!(
        data_gets(h, data, &blob.digest),
        1,
        "more than one upstream fetch"
    );
}

/// The cache on a 8 MiB file system: the 52 MiB layer's fill fails on a full disk, and the
/// pull completes all the same.
#[test]
fn a_full_disk_during_a_fill_still_completes_the_pull() {
    let mount = std::env::temp_dir().join(format!("registry-edge-e2e-full-{}", std::process::id()));
    std::fs::create_dir_all(&mount).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(
        ok.success(),
        "mounting a tmpfs needs root (scripts/test runs as root in CI)"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _unmount = Unmount(mount.clone());
    let h = start("cache-full", &mount.join("blobs"));
    let via = http(&h);
    let img = crate::build_image(&h, "full", 34);
    h.step("skopeo push", || skopeo_push(&h, &via, &img, "team/full"));
    h.step(
        "the pull completes; the big layer's fill is bypassed, the rest stored",
        || {
            let log = h.access_log().len();
            skopeo_copy_back(&h, &via, &img, "team/full", "pulled");
            let uses = cache_uses(&h, log, &img);
            let largest = img
                .blobs()
                .iter()
                .position(|b| b.digest == img.largest().digest)
                .unwrap();
            assert_eq!(uses[largest], "bypass", "{uses:?}");
            assert!(
                uses.iter().filter(|u| *u == "fill").count() >= 2,
                "{uses:?}"
            );
            assert_eq!(
                std::fs::read_dir(mount.join("blobs/tmp")).unwrap().count(),
                0
            );
        },
    );
}
