//! The distribution spec's API with the blob cache on: the requests the OCI conformance suite
//! makes (pull, push, content discovery, content management), each asked of the registry
//! directly (its ACR-like shim and the data endpoint) and through the edge, and every answer
//! compared: status, the headers the spec names, the body (bytes, or the error codes). Each
//! side works on a repository of its own with the same content; blob pulls through the edge are
//! made three times (the fill, then two hits) and each compared, and once the registry has
//! deleted a blob, the edge answers its 404 although the digest is still cached.
//!
//! Every step also checks the status the spec asks for, so that two sides failing alike fail
//! the test.

use std::collections::BTreeMap;

use crate::harness::{Client, Harness, Proto, ReqBody, LOGIN_HOST};
use crate::image::sha256_hex;
use crate::{basic_auth, token_for};

const MANIFEST_TYPE: &str = crate::image::MANIFEST_TYPE;
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One side of the comparison: the edge or the registry, each with its repository.
struct Side<'a> {
    name: &'static str,
    h: &'a Harness,
    /// `None`: the registry directly.
    edge: Option<Client<'a>>,
    repo: String,
    /// `Authorization` with pull, push and delete on the repository, and pull and push on its
    /// mount source, `<repo>-src`.
    auth: String,
}

/// What is compared of a response.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// The headers the spec names, values with the side's origin, repository and upload id
    /// replaced by placeholders.
    headers: BTreeMap<&'static str, String>,
    /// The body: `errors: CODE,...` for an error, `sha256:… (N bytes)` for a blob, the text
    /// (placeholders as above) otherwise.
    body: String,
}

/// Headers compared. `Location` of a redirect to the data host is followed, not compared.
const COMPARED: [&str; 7] = [
    "content-type",
    "docker-content-digest",
    "content-range",
    "range",
    "location",
    "link",
    "oci-subject",
];

impl Side<'_> {
    fn origin(&self) -> String {
        match &self.edge {
            Some(c) => c.origin(),
            None => format!("http://{}", self.h.shim),
        }
    }

    /// `path` (starting with `/`) or an absolute URL.
    fn url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.origin())
        } else {
            path.to_string()
        }
    }

    fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: ReqBody<'_>,
    ) -> crate::harness::CurlResp {
        let url = self.url(path);
        match &self.edge {
            Some(c) => c.send(method, &url, headers, body, None),
            None => self.h.send_direct(method, &url, headers, body),
        }
    }

    /// A request with the side's credentials, its answer normalized.
    fn ask(&self, method: &str, path: &str, headers: &[&str], body: ReqBody<'_>) -> Answer {
        let mut all = vec![self.auth.as_str()];
        all.extend_from_slice(headers);
        let r = self.raw(method, path, &all, body);
        self.answer(&r, method, false)
    }

    /// [`Side::ask`] for a blob: a redirect is followed (without credentials, as clients do),
    /// and the bytes are summed up.
    fn blob(&self, method: &str, digest: &str, headers: &[&str]) -> Answer {
        let path = format!("/v2/{}/blobs/{digest}", self.repo);
        let mut all = vec![self.auth.as_str()];
        all.extend_from_slice(headers);
        let r = self.raw(method, &path, &all, ReqBody::Nothing);
        if !matches!(r.status, 302 | 307) {
            return self.answer(&r, method, true);
        }
        let loc = r
            .header("location")
            .expect("a redirect's Location")
            .to_string();
        let r = self.raw(method, &loc, headers, ReqBody::Nothing);
        self.answer(&r, method, true)
    }

    /// `r` with this side's names replaced.
    /// (curl writes a `HEAD`'s head where the body would go: no body is read.)
    fn answer(&self, r: &crate::harness::CurlResp, method: &str, blob: bool) -> Answer {
        let mut headers = BTreeMap::new();
        for name in COMPARED {
            if let Some(v) = r.header(name) {
                headers.insert(name, self.neutral(v));
            }
        }
        if (200..300).contains(&r.status) {
            if let Some(v) = r.header("content-length") {
                headers.insert("content-length", v.to_string());
            }
        }
        let json = (r.status >= 400 && method != "HEAD")
            .then(|| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .flatten();
        let body = if method == "HEAD" {
            String::new()
        } else if let Some(json) = json {
            let codes: Vec<&str> = json["errors"]
                .as_array()
                .map(|a| a.iter().filter_map(|e| e["code"].as_str()).collect())
                .unwrap_or_default();
            format!("errors: {}", codes.join(","))
        } else if blob && !r.body.is_empty() {
            format!("sha256:{} ({} bytes)", sha256_hex(&r.body), r.body.len())
        } else {
            self.neutral(&String::from_utf8_lossy(&r.body))
        };
        Answer {
            status: r.status,
            headers,
            body,
        }
    }

    /// A value with this side's origin, repository and upload ids replaced.
    fn neutral(&self, v: &str) -> String {
        let v = v.replace(&self.origin(), "<origin>");
        let v = v.replace(&self.repo, "<repo>");
        // /v2/<repo>/blobs/uploads/<id>[?state]
        match v.split_once("/blobs/uploads/") {
            Some((head, rest)) if !rest.is_empty() => {
                let end = rest.find(['?', '>', '"']).unwrap_or(rest.len());
                let tail = &rest[end..];
                let tail = if tail.starts_with('?') { "" } else { tail };
                format!("{head}/blobs/uploads/<id>{tail}")
            }
            _ => v,
        }
    }
}

/// Bytes of a given length, distinct per `seed`.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(b))
}

fn manifest(config: &[u8], layers: &[&[u8]], annotation: &str) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| serde_json::json!({"mediaType": LAYER_TYPE, "digest": digest(l), "size": l.len()}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": digest(config), "size": config.len()},
        "layers": layers,
        "annotations": {"org.example.note": annotation},
    }))
    .unwrap()
}

/// The upload URL a `POST` answered, relative to the side (the `Location`).
fn upload_location(r: &crate::harness::CurlResp) -> String {
    r.header("location")
        .expect("an upload's Location")
        .to_string()
}

fn with_query(url: &str, q: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{q}")
}

/// Runs `f` on both sides, compares the answers, and checks the status the spec asks for.
fn both(sides: &[Side<'_>; 2], what: &str, want: &[u16], f: impl Fn(&Side<'_>) -> Answer) {
    let edge = f(&sides[0]);
    let direct = f(&sides[1]);
    assert_eq!(
        edge, direct,
        "{what}: the edge answered differently from the registry"
    );
    assert!(
        want.contains(&edge.status),
        "{what}: {} is not what the spec asks ({want:?}): {edge:?}",
        edge.status
    );
}

/// A POST that starts an upload on `s`: its Location.
fn start_upload(s: &Side<'_>) -> String {
    start_upload_in(s, &s.repo)
}

fn start_upload_in(s: &Side<'_>, repo: &str) -> String {
    let r = s.raw(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[&s.auth],
        ReqBody::Bytes(b""),
    );
    assert_eq!(r.status, 202, "{}: {r:?}", s.name);
    upload_location(&r)
}

/// POST then PUT of `blob` into `repo` on `s`: the PUT's answer.
fn upload(s: &Side<'_>, repo: &str, blob: &[u8]) -> Answer {
    let loc = start_upload_in(s, repo);
    let put = with_query(&loc, &format!("digest={}", digest(blob)));
    s.ask(
        "PUT",
        &put,
        &["Content-Type: application/octet-stream"],
        ReqBody::Bytes(blob),
    )
}

/// [`upload`], which must create the blob (201).
fn push_blob(s: &Side<'_>, repo: &str, blob: &[u8]) {
    let r = upload(s, repo, blob);
    assert_eq!(r.status, 201, "{}: {r:?}", s.name);
}

/// The whole sequence with the edge reached over `proto`, on repositories `conformance<n>/…`
/// and blobs of their own (`n` makes them differ from another run's).
fn run(h: &Harness, proto: Proto, n: u8) {
    let c = h.client(Proto::Http);
    let realm = format!("{}/oauth2/token", c.origin());
    // Names of one length: the bodies that name them have one length too.
    let repos = [
        format!("conformance{n}/edge"),
        format!("conformance{n}/bare"),
    ];
    let auth = |repo: &str| {
        let scope =
            format!("repository:{repo}:pull,push,delete&scope=repository:{repo}-src:pull,push");
        let t = token_for(&c, &realm, LOGIN_HOST, &scope, Some(&basic_auth()));
        format!("Authorization: Bearer {t}")
    };
    let sides = [
        Side {
            name: "edge",
            h,
            edge: Some(h.client(proto)),
            repo: repos[0].clone(),
            auth: auth(&repos[0]),
        },
        Side {
            name: "registry",
            h,
            edge: None,
            repo: repos[1].clone(),
            auth: auth(&repos[1]),
        },
    ];
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"run":{n}}}"#
    );
    let config = config.as_bytes();
    let seed = n.wrapping_mul(8);
    let a = bytes(3 << 20, seed + 1);
    // Under 256 KiB: distribution answers a single-request POST without reading its body, and
    // Go's server then reads up to 256 KiB of it to keep the connection. With a larger body
    // the edge's answer over HTTP/2 ends in RST_STREAM(NO_ERROR) while curl still uploads, and
    // curl 7.88 drops such an answer now and then (docs/testing.md, "An early answer over
    // HTTP/2, and curl 7.88").
    let b = bytes(200 << 10, seed + 2);
    let chunked = bytes((2 << 20) + 12345, seed + 3);
    let mounted = bytes(70 << 10, seed + 4);
    let absent = digest(b"never pushed");
    let octets = "Content-Type: application/octet-stream";

    // --- Push ---------------------------------------------------------------------------------
    both(&sides, "HEAD of a blob not pushed yet", &[404], |s| {
        s.blob("HEAD", &digest(&a), &[])
    });
    both(&sides, "GET of a blob never pushed", &[404], |s| {
        s.blob("GET", &absent, &[])
    });
    both(&sides, "POST starts an upload", &[202], |s| {
        s.ask(
            "POST",
            &format!("/v2/{}/blobs/uploads/", s.repo),
            &[],
            ReqBody::Bytes(b""),
        )
    });
    both(&sides, "POST then PUT: a monolithic upload", &[201], |s| {
        upload(s, &s.repo, &a)
    });
    both(
        &sides,
        "POST with the digest and the bytes: a single-request upload",
        &[201, 202],
        |s| {
            let path = format!("/v2/{}/blobs/uploads/?digest={}", s.repo, digest(&b));
            s.ask("POST", &path, &[octets], ReqBody::Bytes(&b))
        },
    );
    both(&sides, "POST with a config blob", &[201, 202], |s| {
        let path = format!("/v2/{}/blobs/uploads/?digest={}", s.repo, digest(config));
        s.ask("POST", &path, &[octets], ReqBody::Bytes(config))
    });
    // A single-request upload the registry answered with 202 is finished with a PUT.
    for s in &sides {
        for blob in [&b[..], config] {
            if s.blob("HEAD", &digest(blob), &[]).status == 404 {
                push_blob(s, &s.repo, blob);
            }
        }
    }
    let half = chunked.len() / 2;
    both(
        &sides,
        "PATCH, status, PATCH, PUT: a chunked upload",
        &[201],
        |s| {
            let loc = start_upload(s);
            let first = format!("Content-Range: 0-{}", half - 1);
            let r = s.raw(
                "PATCH",
                &loc,
                &[&s.auth, octets, &first],
                ReqBody::Bytes(&chunked[..half]),
            );
            assert_eq!(r.status, 202, "{}: first chunk: {r:?}", s.name);
            assert_eq!(r.header("range"), Some(format!("0-{}", half - 1).as_str()));
            let loc = upload_location(&r);
            let status = s.ask("GET", &loc, &[], ReqBody::Nothing);
            assert_eq!(status.status, 204, "{}: upload status: {status:?}", s.name);
            let second = format!("Content-Range: {half}-{}", chunked.len() - 1);
            let r = s.raw(
                "PATCH",
                &loc,
                &[&s.auth, octets, &second],
                ReqBody::Bytes(&chunked[half..]),
            );
            assert_eq!(r.status, 202, "{}: second chunk: {r:?}", s.name);
            let loc = upload_location(&r);
            let put = with_query(&loc, &format!("digest={}", digest(&chunked)));
            s.ask("PUT", &put, &[], ReqBody::Nothing)
        },
    );
    both(&sides, "GET of an upload's status", &[204], |s| {
        let loc = start_upload(s);
        s.ask("GET", &loc, &[], ReqBody::Nothing)
    });
    // The spec asks for 416; distribution 2.8 appends the chunk whatever its Content-Range
    // says (202). The edge must answer as the registry does either way.
    both(&sides, "PATCH out of order", &[202, 416], |s| {
        let loc = start_upload(s);
        let r = s.raw(
            "PATCH",
            &loc,
            &[&s.auth, octets, "Content-Range: 0-9"],
            ReqBody::Bytes(&a[..10]),
        );
        assert_eq!(r.status, 202, "{}: {r:?}", s.name);
        let loc = upload_location(&r);
        s.ask(
            "PATCH",
            &loc,
            &[octets, "Content-Range: 20-29"],
            ReqBody::Bytes(&a[20..30]),
        )
    });
    both(
        &sides,
        "PUT with a digest the bytes do not have",
        &[400],
        |s| {
            let loc = start_upload(s);
            let put = with_query(&loc, &format!("digest={absent}"));
            s.ask("PUT", &put, &[octets], ReqBody::Bytes(b"other bytes"))
        },
    );
    both(&sides, "DELETE cancels an upload", &[204], |s| {
        let loc = start_upload(s);
        s.ask("DELETE", &loc, &[], ReqBody::Nothing)
    });
    both(&sides, "GET of a cancelled upload", &[404], |s| {
        let loc = start_upload(s);
        let r = s.ask("DELETE", &loc, &[], ReqBody::Nothing);
        assert_eq!(r.status, 204);
        s.ask("GET", &loc, &[], ReqBody::Nothing)
    });
    // The mount source: a blob pushed to `<repo>-src` only.
    for s in &sides {
        push_blob(s, &format!("{}-src", s.repo), &mounted);
    }
    both(
        &sides,
        "HEAD of a blob another repository has",
        &[404],
        |s| s.blob("HEAD", &digest(&mounted), &[]),
    );
    both(
        &sides,
        "POST ?mount= from another repository",
        &[201],
        |s| {
            let path = format!(
                "/v2/{0}/blobs/uploads/?mount={1}&from={0}-src",
                s.repo,
                digest(&mounted)
            );
            s.ask("POST", &path, &[], ReqBody::Bytes(b""))
        },
    );
    both(&sides, "HEAD of the mounted blob", &[200], |s| {
        s.blob("HEAD", &digest(&mounted), &[])
    });
    both(
        &sides,
        "POST ?mount= of a blob the source does not have",
        &[202],
        |s| {
            let path = format!(
                "/v2/{}/blobs/uploads/?mount={absent}&from={}",
                s.repo, s.repo
            );
            s.ask("POST", &path, &[], ReqBody::Bytes(b""))
        },
    );
    let m1 = manifest(config, &[&a, &b, &chunked], "one");
    let m2 = manifest(config, &[&b], "two");
    let m3 = manifest(config, &[&mounted], "three");
    let manifest_type = format!("Content-Type: {MANIFEST_TYPE}");
    both(&sides, "PUT of a manifest by tag", &[201], |s| {
        let path = format!("/v2/{}/manifests/v1", s.repo);
        s.ask("PUT", &path, &[&manifest_type], ReqBody::Bytes(&m1))
    });
    for tag in ["v2", "v3", "v4"] {
        both(
            &sides,
            &format!("PUT of a manifest by tag {tag}"),
            &[201],
            |s| {
                let path = format!("/v2/{}/manifests/{tag}", s.repo);
                s.ask("PUT", &path, &[&manifest_type], ReqBody::Bytes(&m2))
            },
        );
    }
    both(&sides, "PUT of a manifest by digest", &[201], |s| {
        let path = format!("/v2/{}/manifests/{}", s.repo, digest(&m3));
        s.ask("PUT", &path, &[&manifest_type], ReqBody::Bytes(&m3))
    });
    both(
        &sides,
        "PUT of a manifest naming a blob never pushed",
        &[400],
        |s| {
            let m = manifest(config, &[b"never pushed"], "missing");
            let path = format!("/v2/{}/manifests/missing", s.repo);
            s.ask("PUT", &path, &[&manifest_type], ReqBody::Bytes(&m))
        },
    );
    both(
        &sides,
        "PUT of a manifest under another digest",
        &[400],
        |s| {
            let path = format!("/v2/{}/manifests/{}", s.repo, digest(&m1));
            s.ask("PUT", &path, &[&manifest_type], ReqBody::Bytes(&m2))
        },
    );

    // --- Pull ---------------------------------------------------------------------------------
    let accept = format!("Accept: {MANIFEST_TYPE}");
    both(&sides, "GET /v2/ with a token", &[200], |s| {
        s.ask("GET", "/v2/", &[], ReqBody::Nothing)
    });
    for (what, reference) in [("tag", "v1".to_string()), ("digest", digest(&m1))] {
        for method in ["HEAD", "GET"] {
            both(
                &sides,
                &format!("{method} of a manifest by {what}"),
                &[200],
                |s| {
                    let path = format!("/v2/{}/manifests/{reference}", s.repo);
                    s.ask(method, &path, &[&accept], ReqBody::Nothing)
                },
            );
        }
    }
    both(&sides, "GET of a manifest by an unknown tag", &[404], |s| {
        let path = format!("/v2/{}/manifests/nope", s.repo);
        s.ask("GET", &path, &[&accept], ReqBody::Nothing)
    });
    both(
        &sides,
        "GET of a manifest by an unknown digest",
        &[404],
        |s| {
            let path = format!("/v2/{}/manifests/{absent}", s.repo);
            s.ask("GET", &path, &[&accept], ReqBody::Nothing)
        },
    );
    let log = h.access_log().len();
    for round in ["the fill", "a hit", "another hit"] {
        for (name, blob) in [
            ("config", config),
            ("a", &a),
            ("b", &b),
            ("chunked", &chunked),
        ] {
            both(
                &sides,
                &format!("GET of blob {name} ({round} through the edge)"),
                &[200],
                |s| s.blob("GET", &digest(blob), &[]),
            );
        }
        both(
            &sides,
            &format!("GET of a range of a blob ({round})"),
            &[206],
            |s| s.blob("GET", &digest(&a), &["Range: bytes=1000-2999"]),
        );
        both(&sides, &format!("HEAD of a blob ({round})"), &[200], |s| {
            s.blob("HEAD", &digest(&a), &[])
        });
    }
    let uses: Vec<String> = h.access_log()[log..]
        .iter()
        .filter(|l| l["route"] == "data" && l["method"] == "GET")
        .map(|l| l["cache"].as_str().unwrap_or("none").to_string())
        .collect();
    // The first round fills the four blobs; its range, and everything after, is answered from
    // the entries.
    let mut want: Vec<&str> = vec!["fill"; 4];
    want.extend(["hit"; 11]);
    assert_eq!(uses, want, "how the edge served the blob GETs");

    // --- Content discovery --------------------------------------------------------------------
    both(&sides, "GET of the tag list", &[200], |s| {
        s.ask(
            "GET",
            &format!("/v2/{}/tags/list", s.repo),
            &[],
            ReqBody::Nothing,
        )
    });
    both(&sides, "GET of the tag list, two at a time", &[200], |s| {
        let path = format!("/v2/{}/tags/list?n=2", s.repo);
        s.ask("GET", &path, &[], ReqBody::Nothing)
    });
    both(&sides, "GET of the tag list after v2", &[200], |s| {
        let path = format!("/v2/{}/tags/list?n=2&last=v2", s.repo);
        s.ask("GET", &path, &[], ReqBody::Nothing)
    });

    // --- Content management -------------------------------------------------------------------
    both(
        &sides,
        "DELETE of a manifest by tag",
        &[202, 400, 405],
        |s| {
            let path = format!("/v2/{}/manifests/v4", s.repo);
            s.ask("DELETE", &path, &[], ReqBody::Nothing)
        },
    );
    both(&sides, "DELETE of a manifest by digest", &[202], |s| {
        let path = format!("/v2/{}/manifests/{}", s.repo, digest(&m3));
        s.ask("DELETE", &path, &[], ReqBody::Nothing)
    });
    both(&sides, "GET of a deleted manifest", &[404], |s| {
        let path = format!("/v2/{}/manifests/{}", s.repo, digest(&m3));
        s.ask("GET", &path, &[&accept], ReqBody::Nothing)
    });
    both(&sides, "DELETE of a blob", &[202], |s| {
        let path = format!("/v2/{}/blobs/{}", s.repo, digest(&a));
        s.ask("DELETE", &path, &[], ReqBody::Nothing)
    });
    let data = h.data.hits.lock().unwrap().len();
    let log = h.access_log().len();
    both(
        &sides,
        "GET of a deleted blob that the edge has cached",
        &[404],
        |s| s.blob("GET", &digest(&a), &[]),
    );
    both(&sides, "HEAD of a deleted blob", &[404], |s| {
        s.blob("HEAD", &digest(&a), &[])
    });
    assert!(
        h.access_log()[log..]
            .iter()
            .all(|l| l["route"] != "data" && l["cache"].is_null()),
        "the edge answered for a deleted blob from its cache"
    );
    assert_eq!(h.data.hits.lock().unwrap().len(), data);
    both(&sides, "GET of a blob still there", &[200], |s| {
        s.blob("GET", &digest(&b), &[])
    });
}

#[test]
fn the_distribution_api_answers_through_the_edge_with_its_cache_as_the_registry_does() {
    let cache = std::env::temp_dir().join(format!(
        "registry-edge-e2e-conformance-blobs-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&cache);
    let mut h = crate::cache::start("conformance", &cache);
    for (n, proto) in [Proto::Http, Proto::TlsH2, Proto::TlsH1]
        .into_iter()
        .enumerate()
    {
        h.step(
            &format!(
                "pull, push, discovery and management over {}: the edge answers as the registry",
                proto.name()
            ),
            || run(&h, proto, n as u8 + 1),
        );
    }
    h.step("scan every response header the clients saw", || h.scan());
    let logs = h.logs();
    crate::harness::step("registry-edge and docker-registry still run", &logs, || {
        h.assert_alive()
    });
    let _ = std::fs::remove_dir_all(&cache);
}
