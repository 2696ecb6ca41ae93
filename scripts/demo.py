#!/usr/bin/env python3
"""The pieces of scripts/demo that are not processes of their own packages: a token server,
a country database, a test image, a recording relay in front of the edge, and the report.

Python 3 standard library plus `cryptography` (Debian: python3-cryptography). Each subcommand
is run by scripts/demo; none is meant to be run by hand:

  ports N                                   N free loopback ports
  token-server PORT SERVICE CERT            JWTs for distribution's `auth: token` (ES256)
  mmdb OUT                                  an IPv4 country database: 127.0.0.2 is in KP
  image LAYOUT TAG                          a three-layer OCI image layout
  tap PORT TARGET_PORT DIR                  a relay that records what clients receive
  same-image LAYOUT PULLED                  the pulled layout holds the pushed image
  report DIR                                what happened, in a few lines (exit 3 on a leak or a missing step)
"""

import base64
import gzip
import hashlib
import http.server
import io
import ipaddress
import json
import os
import re
import secrets
import socket
import sys
import tarfile
import threading
import time
import urllib.parse
import urllib.request

# ---------------------------------------------------------------------------------------------
# ports


def ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


# ---------------------------------------------------------------------------------------------
# The token server: ES256 JWTs signed with a P-256 key whose self-signed certificate is the
# registry's rootcertbundle; the JWT header's `kid` is the libtrust key id of that key, which is
# how distribution 2.8 finds the key. Anonymous requests get pull, the demo user (password in
# DEMO_PASSWORD) pull and push. A `service` other than the registry's own is refused: the edge
# must map its public host back.

ISSUER = "registry-edge-demo-token-server"
USER = "demo"


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def libtrust_kid(spki_der):
    """libtrust's key id: base32 of the first 30 bytes of SHA-256 over the DER
    SubjectPublicKeyInfo, no padding, 12 groups of 4 joined by ':'."""
    b32 = base64.b32encode(hashlib.sha256(spki_der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


def token_server(port, service, cert_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid = libtrust_kid(spki)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry-edge demo token signer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    tmp = cert_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    password = os.environ["DEMO_PASSWORD"]

    def jwt(sub, access):
        t = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "kid": kid}
        claims = {
            "iss": ISSUER,
            "sub": sub,
            "aud": service,
            "exp": t + 600,
            "nbf": t - 10,
            "iat": t,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        signing_input = (
            b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        )
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def grant(scope, user):
        parts = scope.split(":")
        if len(parts) < 3 or parts[0] != "repository":
            return None
        name, actions = ":".join(parts[1:-1]), parts[-1].split(",")
        allowed = ["pull", "push"] if user else ["pull"]
        return {"type": "repository", "name": name, "actions": [a for a in actions if a in allowed]}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def credentials(self, params):
            if params.get("grant_type") == ["password"]:
                return (params.get("username", [""])[0], params.get("password", [""])[0])
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                try:
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    return (u, p)
                except ValueError:
                    return ("", "")
            return None

        def token(self, params):
            if params.get("service", [service]) != [service]:
                return self.answer(400, {"errors": [{"code": "DENIED", "message": "unknown service"}]})
            creds = self.credentials(params)
            if creds is not None and creds != (USER, password):
                return self.answer(401, {"errors": [{"code": "UNAUTHORIZED"}]})
            user = USER if creds else None
            scopes = [s for v in params.get("scope", []) for s in v.split(" ") if s]
            access = [g for g in (grant(s, user) for s in scopes) if g]
            t = jwt(user or "", access)
            self.answer(200, {"token": t, "access_token": t, "expires_in": 600})

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/oauth2/token":
                return self.token(urllib.parse.parse_qs(url.query))
            self.answer(401 if url.path == "/v2/" else 404, {"errors": [{"code": "UNAUTHORIZED"}]})

        def do_POST(self):
            url = urllib.parse.urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if url.path != "/oauth2/token":
                return self.answer(404, {"errors": [{"code": "NOT_FOUND"}]})
            self.token(urllib.parse.parse_qs(body.decode("utf-8", "replace")))

        def log_message(self, fmt, *args):
            # The request line without its query (no credentials are in it, but scopes are long).
            sys.stderr.write("token server: %s\n" % (fmt % args).split("?")[0])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    os.rename(tmp, cert_path)  # the certificate appears once the port is bound
    server.serve_forever()


# ---------------------------------------------------------------------------------------------
# A MaxMind DB (format 2.0) with one network: 127.0.0.2/32 in North Korea (KP, Asia), so that a
# client on that loopback address meets the embargo. Every other address has no country, as
# loopback has none in a real database.


def mm_control(kind, size):
    first = (kind << 5) if kind <= 7 else 0
    if size < 29:
        first, ext = first | size, b""
    elif size < 285:
        first, ext = first | 29, bytes([size - 29])
    elif size < 65821:
        first, ext = first | 30, (size - 285).to_bytes(2, "big")
    else:
        first, ext = first | 31, (size - 65821).to_bytes(3, "big")
    return bytes([first]) + (bytes([kind - 7]) if kind > 7 else b"") + ext


def mm_encode(v):
    if isinstance(v, tuple):  # (type, unsigned integer): 5 uint16, 6 uint32, 9 uint64
        kind, n = v
        b = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return mm_control(kind, len(b)) + b
    if isinstance(v, str):
        b = v.encode()
        return mm_control(2, len(b)) + b
    if isinstance(v, dict):
        return mm_control(7, len(v)) + b"".join(mm_encode(k) + mm_encode(x) for k, x in v.items())
    if isinstance(v, list):
        return mm_control(11, len(v)) + b"".join(mm_encode(x) for x in v)
    raise TypeError(v)


def mmdb(out):
    def place(iso, name, continent):
        country = {"iso_code": iso, "names": {"en": name}}
        return {"continent": {"code": continent}, "country": country, "registered_country": country}

    networks = [(ipaddress.ip_network("127.0.0.2/32"), place("KP", "North Korea", "AS"))]
    data, offsets = b"", []
    for _, record in networks:
        offsets.append(len(data))
        data += mm_encode(record)
    nodes = [[None, None]]  # a child: ("node", index), ("data", offset) or None
    for (net, _), offset in zip(networks, offsets):
        addr, n = int(net.network_address), 0
        for depth in range(net.prefixlen):
            bit = (addr >> (31 - depth)) & 1
            if depth == net.prefixlen - 1:
                nodes[n][bit] = ("data", offset)
            else:
                if nodes[n][bit] is None:
                    nodes.append([None, None])
                    nodes[n][bit] = ("node", len(nodes) - 1)
                n = nodes[n][bit][1]
    count = len(nodes)

    def record(child):
        if child is None:
            return count
        return child[1] if child[0] == "node" else count + 16 + child[1]

    tree = b"".join(record(l).to_bytes(3, "big") + record(r).to_bytes(3, "big") for l, r in nodes)
    metadata = {
        "binary_format_major_version": (5, 2),
        "binary_format_minor_version": (5, 0),
        "build_epoch": (9, int(time.time())),
        "database_type": "registry-edge-demo-Country",
        "description": {"en": "registry-edge demo: 127.0.0.2 is placed in KP, nothing else"},
        "ip_version": (5, 4),
        "languages": ["en"],
        "node_count": (6, count),
        "record_size": (5, 24),
    }
    with open(out, "wb") as f:
        f.write(tree + bytes(16) + data + b"\xab\xcd\xefMaxMind.com" + mm_encode(metadata))


# ---------------------------------------------------------------------------------------------
# The image: an OCI layout with three gzipped tar layers (a text file, a script, 1 MiB of random
# bytes, so that every run pushes new blobs), its config and manifest, tagged in index.json.

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def blob(layout, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)
    return digest


def layer(files):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), mode, 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return tar_bytes, gzip.compress(tar_bytes, compresslevel=1, mtime=0)


def image(layout, tag):
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    layers = [
        layer([("etc/motd", b"Pulled through registry-edge.\n", 0o644)]),
        layer([("app/hello.sh", b"#!/bin/sh\necho hello from the demo image\n", 0o755)]),
        layer([("app/data.bin", os.urandom(1 << 20), 0o644)]),
    ]
    descriptors = []
    for tar_bytes, gz in layers:
        media = "application/vnd.oci.image.layer.v1.tar+gzip"
        descriptors.append({"mediaType": media, "digest": blob(layout, gz), "size": len(gz)})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/app/hello.sh"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t, _ in layers],
            },
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob(layout, config),
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": blob(layout, manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


def layout_image(layout):
    """(manifest digest, {blob digest: sha256 of its file}) of a layout's single image."""
    with open(os.path.join(layout, "index.json")) as f:
        digest = json.load(f)["manifests"][0]["digest"]

    def read(d):
        with open(os.path.join(layout, "blobs", "sha256", d[7:]), "rb") as f:
            return f.read()

    m = json.loads(read(digest))
    blobs = {}
    for d in [m["config"]["digest"]] + [l["digest"] for l in m["layers"]]:
        blobs[d] = "sha256:" + hashlib.sha256(read(d)).hexdigest()
    return digest, blobs


def same_image(layout, pulled):
    a, b = layout_image(layout), layout_image(pulled)
    if a != b:
        sys.exit(f"the pulled image differs from the pushed one: {a} != {b}")
    bad = [d for d, h in b[1].items() if d != h]
    if bad:
        sys.exit(f"pulled blobs do not match their digests: {bad}")
    print(f"{b[0]} (config and {len(b[1]) - 1} layers)")


# ---------------------------------------------------------------------------------------------
# The tap: clients talk to the edge through this relay, which records every byte each way (one
# file per connection and direction) and connects from the client's own loopback address, so
# that the edge sees the same client. It changes nothing.


def tap(port, target, out):
    server = socket.create_server(("127.0.0.1", port))
    n = 0

    def pump(src, dst, record):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                record.write(b)
                record.flush()
                dst.sendall(b)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve(client, n):
        try:
            upstream = socket.create_connection(
                ("127.0.0.1", target), source_address=(client.getpeername()[0], 0)
            )
        except OSError:
            client.close()
            return
        with open(os.path.join(out, f"{n:04d}.up"), "wb") as up, open(
            os.path.join(out, f"{n:04d}.down"), "wb"
        ) as down:
            t = threading.Thread(target=pump, args=(client, upstream, up), daemon=True)
            t.start()
            pump(upstream, client, down)
            t.join()
        client.close()
        upstream.close()

    while True:
        client, _ = server.accept()
        n += 1
        threading.Thread(target=serve, args=(client, n), daemon=True).start()


# ---------------------------------------------------------------------------------------------
# The report

HEAD = re.compile(rb"(?:^|\n)(HTTP/1\.[01] (\d{3})[^\r\n]*)\r\n((?:[^\r\n]+\r\n)*)\r\n")
REQUEST = re.compile(rb"(?:^|\n)((?:GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.[01])\r\n")


def exchanges(taps):
    """Every (request line, status, status line, [(name, value)]) clients received through the
    tap, interim responses left out of the pairing; requests without an answer are skipped."""
    out = []
    for name in sorted(os.listdir(taps)):
        if not name.endswith(".down"):
            continue
        with open(os.path.join(taps, name), "rb") as f:
            down = f.read()
        try:
            with open(os.path.join(taps, name[:-5] + ".up"), "rb") as f:
                up = f.read()
        except FileNotFoundError:
            up = b""
        requests = [m.group(1).decode("latin-1") for m in REQUEST.finditer(up)]
        i = 0
        for m in HEAD.finditer(down):
            status = int(m.group(2))
            headers = []
            for line in m.group(3).decode("latin-1").split("\r\n"):
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers.append((k.strip(), v.strip()))
            request = requests[i] if i < len(requests) else "(no request line)"
            if status >= 200:
                i += 1
            out.append((request, status, m.group(1).decode("latin-1"), headers))
    return out


def metrics(admin):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    text = opener.open(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    series = []
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            series.append((m.group(1), labels, float(m.group(3))))
    return series


def total(series, name, **want):
    return sum(v for n, l, v in series if n == name and all(l.get(k) == x for k, x in want.items()))


def size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def report(d):
    env = {}
    with open(os.path.join(d, "demo.env")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            env[k] = v
    public = env["TAP"]
    upstreams = [f"127.0.0.1:{env[k]}" for k in ("REGISTRY", "TOKEN", "DATA")]
    allowed = {f"registry.localhost:{public}", f"data.localhost:{public}"}
    seen = exchanges(os.path.join(d, "taps"))

    # The scan: no upstream authority (under any name for loopback) in any header a client
    # received or in any line skopeo logged, and every URL in a header on a public origin.
    upstream_re = re.compile(
        r"(?:127\.0\.0\.1|localhost|\[::1\]):(?:%s)(?!\d)" % "|".join(env[k] for k in ("REGISTRY", "TOKEN", "DATA"))
    )
    leaks = []
    n_headers = 0
    for request, _, line, headers in seen:
        for k, v in headers:
            n_headers += 1
            if upstream_re.search(v):
                leaks.append(f"{request} -> {line}: {k}: {v}")
                continue
            for authority in re.findall(r"://([^/?#\"'<>, ;]*)", v):
                if authority.lower() not in allowed:
                    leaks.append(f"{request} -> {line}: {k}: {v} (not a public origin)")
    logs = [n for n in sorted(os.listdir(d)) if n.startswith("skopeo-") and n.endswith(".log")]
    n_log_lines = 0
    for name in logs:
        with open(os.path.join(d, name), errors="replace") as f:
            for line in f:
                n_log_lines += 1
                if upstream_re.search(line):
                    leaks.append(f"{name}: {line.strip()}")

    def first(pred):
        return next((x for x in seen if pred(x)), None)

    def header(x, name):
        return next((v for k, v in x[3] if k.lower() == name.lower()), "")

    lines = [json.loads(l) for l in open(os.path.join(d, "access.log")) if l.startswith("{")]
    # The largest blob read from the data host, the redirect that sent the client there, and
    # that read's access-log line.
    reads = [l for l in lines if l.get("route") == "data" and l.get("method") == "GET"]
    read = max(reads, key=lambda l: l.get("bytes") or 0, default=None)
    path = read["path"] if read else "(none)"
    challenge = first(lambda x: x[1] == 401 and header(x, "WWW-Authenticate"))
    upload = first(lambda x: x[1] == 202 and header(x, "Location"))
    redirect = first(lambda x: 300 <= x[1] < 400 and header(x, "Location").endswith(path))
    blob_get = first(lambda x: x[0].startswith(f"GET {path} "))
    problems = list(leaks)
    for what, seen_it in [
        ("401 with a challenge", challenge),
        ("202 with an upload Location", upload),
        ("blob redirect to the data host", redirect),
        ("200 for the redirected blob read", blob_get and blob_get[1] == 200),
    ]:
        if not seen_it:
            problems.append(f"no {what} among the responses the clients received")

    w = sys.stdout.write
    w("What the clients saw (through the tap, on the public port %s):\n" % public)
    if challenge:
        w(f"  challenge  {challenge[0].split(' HTTP')[0]} -> {challenge[1]}\n")
        w(f"             WWW-Authenticate: {header(challenge, 'WWW-Authenticate')}\n")
    if upload:
        loc = header(upload, "Location")
        w(f"  upload     {upload[0].split(' HTTP')[0]} -> 202, Location: {loc[:60]}{'...' if len(loc) > 60 else ''}\n")
    if redirect:
        w(f"  blob       {redirect[0].split(' HTTP')[0][:76]}... -> {redirect[1]}\n")
        w(f"             Location: {header(redirect, 'Location')}\n")
    if blob_get:
        w(f"             then GET that URL -> {blob_get[1]}, {header(blob_get, 'Content-Length')} bytes from the data server\n")
    w(
        f"  scan       {len(seen)} responses, {n_headers} headers, {n_log_lines} lines of skopeo's debug logs: "
        + (f"no upstream authority ({', '.join(upstreams)})" if not leaks else f"{len(leaks)} LEAKS")
        + "\n"
    )

    w("Policy:\n")
    for line in open(os.path.join(d, "policy.txt")):
        w("  " + line)

    s = metrics(env["ADMIN"])
    by = {}
    for n, l, v in s:
        if n == "registry_edge_http_requests_total" and v:
            key = (l.get("route"), l.get("decision"))
            by[key] = by.get(key, 0) + v
    w("Metrics (GET http://127.0.0.1:%s/metrics):\n" % env["ADMIN"])
    w(
        "  registry_edge_http_requests_total  "
        + ", ".join(f"{r}/{dec} {v:.0f}" for (r, dec), v in sorted(by.items()))
        + "\n"
    )
    w(
        "  body bytes  received %s (request_body_bytes), sent %s (response_body_bytes)\n"
        % (
            size(total(s, "registry_edge_http_request_body_bytes_total")),
            size(total(s, "registry_edge_http_response_body_bytes_total")),
        )
    )
    refusals = [(l.get("reason"), v) for n, l, v in s if n == "registry_edge_access_refusals_total" and v]
    rewrites = total(s, "registry_edge_rewrites_applied_total")
    unmapped = total(s, "registry_edge_rewrite_unmapped_urls_total")
    if unmapped:
        problems.append(f"the edge counted {unmapped:.0f} upstream URLs it could not map")
    w(
        "  refusals    "
        + (", ".join(f"{r} {v:.0f}" for r, v in refusals) or "none")
        + f"; rewrites applied {rewrites:.0f}, unmapped upstream URLs {unmapped:.0f}\n"
    )

    if read:
        w("Access log (that read; %d lines in all):\n" % len(lines))
        w("  " + json.dumps(read, separators=(",", ":")) + "\n")
    for p in problems[:20]:
        w(f"PROBLEM: {p}\n")
    if len(problems) > 20:
        w(f"PROBLEM: ... and {len(problems) - 20} more\n")
    if problems:
        sys.exit(3)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ports":
        ports(int(args[0]))
    elif cmd == "token-server":
        token_server(int(args[0]), args[1], args[2])
    elif cmd == "mmdb":
        mmdb(args[0])
    elif cmd == "image":
        image(args[0], args[1])
    elif cmd == "tap":
        tap(int(args[0]), int(args[1]), args[2])
    elif cmd == "same-image":
        same_image(args[0], args[1])
    elif cmd == "report":
        report(args[0])
    else:
        sys.exit(f"demo.py: unknown command {cmd}")


if __name__ == "__main__":
    main()
