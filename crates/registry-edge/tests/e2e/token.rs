//! The token server behind the realm: JWTs that distribution's `auth: token` accepts, ES256 with a
//! P-256 key whose self-signed certificate is the registry's `rootcertbundle`, `kid` = the libtrust
//! key id of that key. Anonymous → pull only; Basic with the test credentials → pull and push,
//! and delete when asked by name; refresh tokens through the OAuth2 POST flow
//! (`grant_type=password` / `refresh_token`), as docker's and containerd's `/oauth2/token`
//! clients use it.
//!
//! It decodes its parameters as Go's `net/url.ParseQuery` does (keys and values percent-decoded,
//! `+` a space, a pair with an invalid escape or a `;` skipped), from the query and, for POST, from
//! an `application/x-www-form-urlencoded` body (Go's `Request.Form`), and is deliberately lenient
//! beyond that, as the most forgiving token server behind an edge would be: parameter names and the
//! scope's type and name match without regard to case (ASP.NET's query collections, ACR's
//! lower-cased repository names), a JSON object body counts as parameters, and the path matches
//! `/oauth2/token` after decoding, case folding and dot-segment removal. Every request is
//! recorded whole (raw target, raw body, decoded parameters), so that the encoding corpus can show
//! that nothing naming a hidden repository ever reached it, in any encoding.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rcgen::PublicKeyData as _;
use ring::signature::KeyPair as _;

use crate::data::{iso8601, unix_now};
use crate::http1::{serve, Request, Response};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "s3cret-pass";
pub const ISSUER: &str = "registry-edge-e2e-token-server";

/// What the token server was asked, and what it granted.
#[derive(Clone, Debug)]
pub struct TokenHit {
    pub method: String,
    /// The path as this server understood it (decoded and normalised: `/oauth2/token` for every
    /// spelling it accepts as the token endpoint).
    pub path: String,
    /// The request target exactly as received.
    pub target: String,
    /// The request body as received (chunked framing removed), lossy UTF-8.
    pub body: String,
    /// Every parameter it decoded (query, form or JSON body), in order.
    pub params: Vec<(String, String)>,
    /// What Go's `ParseQuery` would have reported (skipped pairs).
    pub errors: Vec<String>,
    /// `anonymous`, `basic`, `password`, `refresh_token`, or `refused`.
    pub grant: String,
    pub service: Option<String>,
    pub scopes: Vec<String>,
    pub granted: Vec<String>,
    pub status: u16,
}

pub struct TokenServer {
    pub addr: SocketAddr,
    /// Every request, the edge's health probes included.
    pub hits: Arc<Mutex<Vec<TokenHit>>>,
    /// PEM of the signing key's self-signed certificate: the registry's `rootcertbundle`.
    pub cert_pem: String,
    pub kid: String,
}

struct State {
    key: ring::signature::EcdsaKeyPair,
    kid: String,
    service: String,
    rng: ring::rand::SystemRandom,
    refresh: Mutex<HashMap<String, String>>,
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn random_hex(rng: &ring::rand::SystemRandom) -> String {
    let b: [u8; 16] = ring::rand::generate(rng).expect("random").expose();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// libtrust's key id: base32 of the first 30 bytes of SHA-256 over the DER SubjectPublicKeyInfo,
/// without padding, in 12 groups of 4 joined by `:`.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let b32 = data_encoding::BASE32_NOPAD.encode(&digest.as_ref()[..30]);
    b32.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// Go's `url.QueryUnescape`: `%XX` with two hex digits, `+` a space; anything else after `%` is
/// an error (the whole pair is then skipped by `ParseQuery`).
pub fn query_unescape(s: &str) -> Result<String, String> {
    // Written as Go writes it (a pass over `%` pieces), not as the edge's gate decodes: this is
    // the token server's reading, the oracle the gate is checked against.
    let plus = s.replace('+', " ");
    let mut pieces = plus.split('%');
    let mut out = pieces.next().unwrap_or("").as_bytes().to_vec();
    for piece in pieces {
        let escape = piece
            .get(..2)
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| {
                let shown: String = piece.chars().take(2).collect();
                format!("invalid URL escape \"%{shown}\"")
            })?;
        out.push(u8::from_str_radix(escape, 16).map_err(|e| e.to_string())?);
        out.extend_from_slice(&piece.as_bytes()[2..]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `url.ParseQuery` (Go 1.17 and later): pairs split on `&`; a pair holding `;` is skipped
/// ("invalid semicolon separator in query"), as is one whose key or value does not unescape; the
/// pairs that parse are kept, with every error reported.
pub fn parse_query(q: &str) -> (Vec<(String, String)>, Vec<String>) {
    let (mut pairs, mut errors) = (Vec::new(), Vec::new());
    for pair in q.split('&') {
        if pair.contains(';') {
            errors.push(format!("invalid semicolon separator in query: {pair:?}"));
            continue;
        }
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (query_unescape(k), query_unescape(v)) {
            (Ok(k), Ok(v)) => pairs.push((k, v)),
            (Err(e), _) | (_, Err(e)) => errors.push(e),
        }
    }
    (pairs, errors)
}

/// A JSON object body as parameters: string values, and each string of an array value.
fn json_params(body: &[u8]) -> Vec<(String, String)> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in map {
        match v {
            serde_json::Value::String(s) => out.push((k, s)),
            serde_json::Value::Array(items) => out.extend(
                items
                    .into_iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .map(|i| (k.clone(), i)),
            ),
            other => out.push((k, other.to_string())),
        }
    }
    out
}

/// The fields of a `multipart/form-data` body (Go's `FormValue` reads them too).
fn multipart_params(content_type: &str, body: &[u8]) -> Vec<(String, String)> {
    let Some(boundary) = content_type
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim_matches('"').to_string())
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    for part in text.split(delimiter.as_str()).skip(1) {
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let name = head
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case("name"))
            .map(|(_, v)| v.trim_matches('"').to_string());
        if let Some(name) = name {
            out.push((
                name,
                value.strip_suffix("\r\n").unwrap_or(value).to_string(),
            ));
        }
    }
    out
}

/// The path as a forgiving server routes it: percent-decoded (Go's path unescape; `None` when
/// invalid), lower case, `\` as `/`, `;` parameters of each segment dropped, empty and `.`
/// segments removed, `..` resolved, no trailing slash.
pub fn lenient_path(path: &str) -> Option<String> {
    let decoded = query_unescape(&path.replace('+', "%2B")).ok()?;
    let lower = decoded.to_ascii_lowercase().replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for seg in lower.split('/') {
        let seg = seg.split(';').next().unwrap_or_default();
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    Some(format!("/{}", segments.join("/")))
}

/// The parameters of a token request as Go's `Request.ParseForm` puts them in `Form`: for POST a
/// form body first (a JSON object body too, leniently), then the query.
fn request_params(req: &Request) -> (Vec<(String, String)>, Vec<String>) {
    let (mut params, mut errors) = (Vec::new(), Vec::new());
    if req.method == "POST" {
        let media = req
            .header("content-type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if media == "application/x-www-form-urlencoded" {
            let (p, e) = parse_query(&String::from_utf8_lossy(&req.body));
            params.extend(p);
            errors.extend(e);
        } else if media == "multipart/form-data" {
            params.extend(multipart_params(
                req.header("content-type").unwrap_or_default(),
                &req.body,
            ));
        } else if media == "application/json" || req.body.first() == Some(&b'{') {
            params.extend(json_params(&req.body));
        }
    }
    let (p, e) = parse_query(req.query());
    params.extend(p);
    errors.extend(e);
    (params, errors)
}

fn basic(req: &Request) -> Option<(String, String)> {
    let v = req.header("authorization")?.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// `repository:team/app:pull,push` → the access entry granted to `user` (None: anonymous).
/// Leniently: the type (`repository`, `repository(plugin)`, `registry`) and the name match in any
/// case and the name is granted lower-cased, as ACR treats names; `*` asks for every action.
fn grant(scope: &str, user: Option<&str>) -> Option<serde_json::Value> {
    let (ty, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let ty = ty.to_ascii_lowercase();
    let name = name.to_ascii_lowercase();
    let ty = if ty.starts_with("repository") {
        "repository"
    } else {
        ty.as_str()
    };
    let allowed: &[&str] = match (ty, user) {
        ("repository", None) => &["pull"],
        ("repository", Some(_)) => &["pull", "push", "delete"],
        ("registry", Some(_)) if name == "catalog" => &["*"],
        _ => &[],
    };
    // `*` brings pull and push; `delete` is granted only when asked by name.
    let granted: Vec<&str> = if actions.split(',').any(|a| a == "*") && ty == "repository" {
        allowed.iter().copied().filter(|a| *a != "delete").collect()
    } else {
        actions.split(',').filter(|a| allowed.contains(a)).collect()
    };
    Some(serde_json::json!({"type": ty, "name": name, "actions": granted}))
}

impl State {
    fn jwt(&self, sub: &str, access: &[serde_json::Value]) -> String {
        let now = unix_now();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": sub,
            "aud": self.service,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": random_hex(&self.rng),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .expect("ES256 signature");
        format!("{input}.{}", b64url(sig.as_ref()))
    }

    fn handle(&self, req: &Request) -> (Response, TokenHit) {
        let json = |status: u16, v: serde_json::Value| {
            Response::new(
                status,
                &[("Content-Type", "application/json")],
                v.to_string(),
            )
        };
        let path = lenient_path(req.path()).unwrap_or_else(|| req.path().to_string());
        let (params, errors) = request_params(req);
        let mut hit = TokenHit {
            method: req.method.clone(),
            path: path.clone(),
            target: req.target.clone(),
            body: String::from_utf8_lossy(&req.body).into_owned(),
            params: params.clone(),
            errors,
            grant: "refused".into(),
            service: None,
            scopes: Vec::new(),
            granted: Vec::new(),
            status: 0,
        };
        if req.path() == "/v2/" {
            // The edge probes its upstreams with the login health check (GET /v2/, 401 healthy);
            // ACR's realm lives on the login server itself, which answers so.
            return (
                json(
                    401,
                    serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}),
                ),
                hit,
            );
        }
        if path != "/oauth2/token" {
            return (
                json(404, serde_json::json!({"errors": [{"code": "NOT_FOUND"}]})),
                hit,
            );
        }
        if req.method != "GET" && req.method != "POST" {
            return (json(405, serde_json::json!({"error": "method"})), hit);
        }
        let param = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        // `scope` may repeat (GET) and a value may hold several scopes separated by spaces (POST).
        hit.scopes = params
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("scope"))
            .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect();
        hit.service = param("service");
        if hit.service.as_deref().is_some_and(|s| s != self.service) {
            return (
                json(
                    400,
                    serde_json::json!({"errors": [{"code": "DENIED", "message": "unknown service"}]}),
                ),
                hit,
            );
        }
        let unauthorized = |hit: TokenHit| {
            (
                json(
                    401,
                    serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}),
                ),
                hit,
            )
        };
        let ok_user = |u: &str, p: &str| u == USER && p == PASSWORD;
        let (user, offline): (Option<String>, bool) = if req.method == "GET" {
            match basic(req) {
                None => {
                    hit.grant = "anonymous".into();
                    (None, false)
                }
                Some((u, p)) if ok_user(&u, &p) => {
                    hit.grant = "basic".into();
                    (Some(u), param("offline_token").as_deref() == Some("true"))
                }
                Some(_) => return unauthorized(hit),
            }
        } else {
            match param("grant_type").as_deref() {
                Some("password") => {
                    let (u, p) = (
                        param("username").unwrap_or_default(),
                        param("password").unwrap_or_default(),
                    );
                    if !ok_user(&u, &p) {
                        return unauthorized(hit);
                    }
                    hit.grant = "password".into();
                    (Some(u), param("access_type").as_deref() == Some("offline"))
                }
                Some("refresh_token") => {
                    let t = param("refresh_token").unwrap_or_default();
                    let Some(u) = self
                        .refresh
                        .lock()
                        .expect("refresh tokens")
                        .get(&t)
                        .cloned()
                    else {
                        return unauthorized(hit);
                    };
                    hit.grant = "refresh_token".into();
                    (Some(u), true)
                }
                // Leniently, a POST without a grant type is answered as a GET would be: Basic
                // credentials or anonymous.
                None => match basic(req) {
                    None => {
                        hit.grant = "anonymous".into();
                        (None, false)
                    }
                    Some((u, p)) if ok_user(&u, &p) => {
                        hit.grant = "basic".into();
                        (Some(u), false)
                    }
                    Some(_) => return unauthorized(hit),
                },
                Some(_) => {
                    return (
                        json(400, serde_json::json!({"error": "unsupported_grant_type"})),
                        hit,
                    )
                }
            }
        };
        let access: Vec<serde_json::Value> = hit
            .scopes
            .iter()
            .filter_map(|s| grant(s, user.as_deref()))
            .collect();
        hit.granted = access
            .iter()
            .map(|a| format!("{}:{}:{}", a["type"], a["name"], a["actions"]))
            .collect();
        let token = self.jwt(user.as_deref().unwrap_or(""), &access);
        let mut body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": 600,
            "issued_at": iso8601(unix_now()),
        });
        if let (Some(u), true) = (&user, offline) {
            let refresh = random_hex(&self.rng);
            self.refresh
                .lock()
                .expect("refresh tokens")
                .insert(refresh.clone(), u.clone());
            body["refresh_token"] = refresh.into();
        }
        if req.method == "POST" {
            body["scope"] = hit.scopes.join(" ").into();
        }
        hit.status = 200;
        (json(200, body), hit)
    }
}

/// Starts the token server for the registry `service` (the token audience).
pub fn start(rt: &tokio::runtime::Runtime, service: &str) -> TokenServer {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let kid = libtrust_kid(&key.subject_public_key_info());
    let mut params =
        rcgen::CertificateParams::new(vec!["token-signer".to_string()]).expect("cert params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "registry-edge e2e token signer");
    let cert_pem = params.self_signed(&key).expect("token cert").pem();
    let rng = ring::rand::SystemRandom::new();
    let signing = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &key.serialize_der(),
        &rng,
    )
    .expect("ring accepts rcgen's PKCS#8");
    assert_eq!(
        signing.public_key().as_ref(),
        key.public_key_raw(),
        "one key for the certificate and the signatures"
    );
    let state = Arc::new(State {
        key: signing,
        kid: kid.clone(),
        service: service.to_string(),
        rng,
        refresh: Mutex::default(),
    });
    let hits: Arc<Mutex<Vec<TokenHit>>> = Arc::default();
    let log = hits.clone();
    let addr = serve(
        rt,
        Arc::new(move |req: Request| {
            let (mut resp, mut hit) = state.handle(&req);
            hit.status = resp.status;
            log.lock().expect("token log").push(hit);
            resp.headers
                .push(("Cache-Control".into(), "no-store".into()));
            resp
        }),
    );
    TokenServer {
        addr,
        hits,
        cert_pem,
        kid,
    }
}

impl TokenServer {
    /// How many requests it has seen so far.
    pub fn seen(&self) -> usize {
        self.hits.lock().expect("token log").len()
    }
    /// The token requests (`/oauth2/token`) from the `since`-th request on.
    pub fn token_requests_since(&self, since: usize) -> Vec<TokenHit> {
        self.hits.lock().expect("token log")[since..]
            .iter()
            .filter(|t| t.path == "/oauth2/token")
            .cloned()
            .collect()
    }
}

/// The claims of a JWT, unverified (for assertions on what was granted).
pub fn claims(jwt: &str) -> serde_json::Value {
    jwt_part(jwt, 1)
}

/// Part `i` of a JWT (0: header, 1: claims), decoded.
pub fn jwt_part(jwt: &str, i: usize) -> serde_json::Value {
    let part = jwt.split('.').nth(i).unwrap_or_default();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap_or_default();
    serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null)
}

#[test]
fn libtrust_key_id_shape() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let kid = libtrust_kid(&key.subject_public_key_info());
    assert_eq!(kid.len(), 12 * 4 + 11, "{kid}");
    assert!(kid.split(':').all(|g| g.len() == 4
        && g.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))));
}

#[test]
fn scopes_are_granted_by_identity() {
    let anon = grant("repository:team/app:pull,push", None).unwrap();
    assert_eq!(anon["actions"], serde_json::json!(["pull"]));
    let user = grant("repository:team/app:pull,push", Some(USER)).unwrap();
    assert_eq!(user["actions"], serde_json::json!(["pull", "push"]));
    let host = grant("repository:host:5000/app:pull", None).unwrap();
    assert_eq!(host["name"], "host:5000/app");
    let upper = grant("Repository:Demo/App:*", Some(USER)).unwrap();
    assert_eq!(upper["type"], "repository");
    assert_eq!(upper["name"], "demo/app");
    assert_eq!(upper["actions"], serde_json::json!(["pull", "push"]));
    let delete = grant("repository:team/app:pull,delete", Some(USER)).unwrap();
    assert_eq!(delete["actions"], serde_json::json!(["pull", "delete"]));
    let anon_delete = grant("repository:team/app:delete", None).unwrap();
    assert_eq!(anon_delete["actions"], serde_json::json!([]));
}

#[test]
fn parameters_are_decoded_as_go_does() {
    assert_eq!(query_unescape("a%3Ab+c").unwrap(), "a:b c");
    assert!(query_unescape("a%3Ab+c%2").is_err());
    assert!(query_unescape("%zz").is_err());
    assert!(query_unescape("100%").is_err());
    assert_eq!(query_unescape("%41%42%2B+%e2%82%ac").unwrap(), "AB+ €");
    assert_eq!(
        query_unescape("x%4").unwrap_err(),
        "invalid URL escape \"%4\""
    );
    let (pairs, errors) =
        parse_query("sc%6fpe=repository%3Ademo%2Fapp%3Apull&a=%zz&b;c=1&&x&s=1+2");
    assert_eq!(
        pairs,
        [
            ("scope".to_string(), "repository:demo/app:pull".to_string()),
            ("x".into(), "".into()),
            ("s".into(), "1 2".into()),
        ]
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(
        json_params(br#"{"scope":["repository:a:pull","x"],"service":"s","n":1}"#),
        [
            ("n".to_string(), "1".to_string()),
            ("scope".into(), "repository:a:pull".into()),
            ("scope".into(), "x".into()),
            ("service".into(), "s".into()),
        ]
    );
    assert_eq!(
        multipart_params(
            "multipart/form-data; boundary=\"B\"",
            b"--B\r\nContent-Disposition: form-data; name=\"scope\"\r\n\r\nrepository:a:pull\r\n--B--\r\n"
        ),
        [("scope".to_string(), "repository:a:pull".to_string())]
    );
    for p in [
        "/oauth2/token",
        "/oauth2/%74oken",
        "/OAuth2/Token",
        "/oauth2/token/",
        "/oauth2/token;x",
        "//oauth2/./token",
        "/x/../oauth2/token",
        "/oauth2%2ftoken",
        "/oauth2\\token",
    ] {
        assert_eq!(lenient_path(p).as_deref(), Some("/oauth2/token"), "{p}");
    }
    assert_eq!(lenient_path("/oauth2/%zzoken"), None);
}
