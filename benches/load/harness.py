#!/usr/bin/env python3
"""Side-by-side load harness: the origin direct, nginx and registry-edge doing the same job.

Started by benches/load/run (which installs what is missing and builds the release binaries);
see benches/load/README.md for what each figure means and how it is measured. Everything runs
on loopback; every process this script starts is recorded by PID and stopped on exit, Ctrl-C or
error. Prints a table and writes the same figures to target/load/last-run.json.
"""

import argparse
import functools
import hashlib
import http.client
import json
import multiprocessing
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
import types

from common import (PROCS, BenchError, children, cpu_seconds, free_port, loadavg, log,
                    minor_faults, on_signal, proc_name, render, run, write_result)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# REGISTRY_EDGE_BIN: another build to measure (an A/B of two commits), instead of this tree's.
EDGE_BIN = os.environ.get("REGISTRY_EDGE_BIN") or os.path.join(ROOT, "target", "release", "registry-edge")
MMDB_BIN = os.path.join(ROOT, "target", "release", "examples", "load_mmdb")
RESULT_JSON = os.path.join(ROOT, "target", "load", "last-run.json")

# Upstream names (sent as Host to the origin) and the public names clients use.
LOGIN_HOST = "contosoacr.azurecr.io"
DATA_HOST = "contosoacr.eastus.data.azurecr.io"
PUBLIC_HOST = "registry.example.test"
PUBLIC_DATA_HOST = "data.example.test"
EMBARGO = ["CU", "IR", "KP", "SY", "RU"]

LOAD_CORE = 0  # wrk, curl, the TLS and idle-connection clients, the origin
PROXY_CORE = 1  # nginx's worker and registry-edge, one at a time
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 1 << 30
# Open files for the servers and the harness: 65536, or the hard limit when that is lower
# (a container without CAP_SYS_RESOURCE cannot raise it). Set in main().
NOFILE = 65536

LABELS = {"origin": "origin direct", "nginx": "nginx", "edge": "registry-edge",
          "floor": "pingora's floor"}
# `--floor`: a ProxyHttp whose only phase is upstream_peer (floor.rs), built by `run --floor`.
FLOOR_BIN = os.path.join(ROOT, "target", "release", "examples", "pingora_floor")


def floor_argv(ports):
    """pingora's floor on registry-edge's port (they never run at once), to the plain origin."""
    return [FLOOR_BIN, f"127.0.0.1:{ports['EDGE_PORT']}", f"127.0.0.1:{ports['ORIGIN_PORT']}"]

# curl's TLS in the TLS blob cases: TLS 1.3, AES-128-GCM offered first, as Go's crypto/tls
# (docker, containerd) does on hardware with AES instructions. With OpenSSL's default order
# (AES-256-GCM first) nginx, which follows the client's order, would encrypt with another suite
# than registry-edge, which picks AES-128-GCM itself: a difference in cost per byte that is the
# client's doing, not the proxies'.
CURL_TLS = ["--tlsv1.3", "--tls13-ciphers",
            "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"]
TLS_CASE = "TLS/TLS"  # the label of the TLS blob cases: TLS on the client's side and upstream


# --------------------------------------------------------------------------------------------
# Processes: every one started here is recorded by PID and stopped on exit.


# --------------------------------------------------------------------------------------------
# /proc


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def core_busy(core):
    """(busy, total) jiffies of one core from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return sum(v[:8]) - idle, sum(v[:8])
    return 0, 0


class Meter:
    """A server's CPU time over an interval, and what else kept its core busy meanwhile (other
    processes on this machine: the figures are only as clean as that share is small)."""

    def __init__(self, server):
        self.server = server
        self.core = PROXY_CORE if server.key != "origin" else LOAD_CORE
        self.cpu_s = self.others_s = self.elapsed_s = 0.0
        self.faults = 0

    def __enter__(self):
        self.t0 = time.time()
        self.faults0 = minor_faults(self.server.pids)
        self.cpu0 = self.server.cpu()
        self.busy0 = core_busy(self.core)[0]
        return self

    def __exit__(self, *exc):
        self.elapsed_s += time.time() - self.t0
        cpu = self.server.cpu() - self.cpu0
        self.cpu_s += cpu
        self.faults += minor_faults(self.server.pids) - self.faults0
        busy = (core_busy(self.core)[0] - self.busy0) / CLK_TCK
        self.others_s += max(0.0, busy - cpu)
        return False

    def note(self, what):
        """For proxies: one line on the interval; a warning when others took over 5 %."""
        if self.server.key == "origin":
            return {}
        share = self.others_s / max(1e-9, self.elapsed_s)
        if share > 0.05:
            log(f"  WARNING: other processes took {share:.0%} of core {self.core} during the "
                f"{what} ({self.others_s:.1f} s of {self.elapsed_s:.1f} s): figures disturbed")
        return {"core_others_s": self.others_s, "core_others_share": share}


def wait_quiet(max_wait):
    """Waits (up to max_wait s) until both cores are under 10 % busy over a second: another
    build or test run on the machine would be measured with the proxy."""
    waited = 0
    while True:
        a = [core_busy(c) for c in (LOAD_CORE, PROXY_CORE)]
        time.sleep(1.0)
        b = [core_busy(c) for c in (LOAD_CORE, PROXY_CORE)]
        shares = [(b[i][0] - a[i][0]) / max(1, b[i][1] - a[i][1]) for i in (0, 1)]
        if max(shares) < 0.10 or waited >= max_wait:
            if waited:
                log(f"  (waited {waited} s for a quiet machine; cores now "
                    f"{shares[0]:.0%} / {shares[1]:.0%} busy)")
            return waited
        waited += 1


# --------------------------------------------------------------------------------------------
# Set-up


def wait_http(port, host, path, expect, what, timeout=20.0):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path, headers={"Host": host})
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == expect:
                return
            last = f"status {r.status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError(f"{what} not ready on port {port}: {last}")


class Env:
    """The run directory, ports, generated files and rendered configurations."""

    def __init__(self, args):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="registry-edge-load.")
        os.chmod(self.dir, 0o755)  # nginx workers run as www-data and read www/
        for d in ("www", "tls", "origin-tmp", "nginx-tmp"):
            os.makedirs(os.path.join(self.dir, d))
        self.ports = {k: free_port() for k in
                      ("ORIGIN_PORT", "ORIGIN_TLS_PORT", "NGINX_PORT", "NGINX_TLS_PORT",
                       "EDGE_PORT", "EDGE_TLS_PORT", "EDGE_ADMIN_PORT")}
        self.mmdb = os.path.join(self.dir, "geo.mmdb")
        self.addresses_file = os.path.join(self.dir, "addresses.txt")
        self.blob = os.path.join(self.dir, "www", "blob.bin")
        self.notes = {}

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def prepare(self):
        a = self.args
        _, _, err = run([MMDB_BIN, self.mmdb, self.addresses_file, str(a.addresses)])
        self.notes["mmdb"] = err.strip().removeprefix("load_mmdb: ").replace(self.dir + "/", "")
        self.addresses = []
        with open(self.addresses_file) as f:
            for line in f:
                ip, country = line.split()
                self.addresses.append((ip, country))

        # The blob: a sparse file (reads as zeros, from no disk), so the figures are the
        # proxies' and the loopback's, not a disk's.
        with open(self.blob, "wb") as f:
            f.truncate(a.blob_mib << 20)
        self.blob_size = a.blob_mib << 20
        # Read once: the first read of a hole fills the page cache (zeroed pages), several
        # times slower than the reads that follow; no transfer measured should pay for it.
        buf = bytearray(1 << 20)
        sha = hashlib.sha256()
        with open(self.blob, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                sha.update(memoryview(buf)[:n])
        # Its real digest: the blob cache stores only bytes that hash to the digest they were
        # asked by (the proxies without a cache do not look).
        self.blob_digest_hex = sha.hexdigest()

        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": "sha256:" + hashlib.sha256(b"config").hexdigest(),
                       "size": 1469},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": "sha256:" + hashlib.sha256(bytes([i])).hexdigest(),
                        "size": 3_000_000 + 7919 * i} for i in range(6)],
            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
        }
        body = json.dumps(manifest, indent=3).encode()
        with open(self.path("www", "manifest.json"), "wb") as f:
            f.write(body)
        self.manifest_len = len(body)
        self.manifest_digest = "sha256:" + hashlib.sha256(body).hexdigest()

        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", self.path("tls", "key.pem"),
             "-out", self.path("tls", "cert.pem"), "-days", "7", "-subj", f"/CN={PUBLIC_HOST}",
             "-addext", f"subjectAltName=DNS:{PUBLIC_HOST},DNS:{PUBLIC_DATA_HOST}"])
        self.cert = self.path("tls", "cert.pem")  # what curl trusts on the proxies' TLS listeners
        self.origin_ca = make_origin_cert(self.path("tls"))

        subs = dict({k: str(v) for k, v in self.ports.items()},
                    DIR=self.dir, LOGIN_HOST=LOGIN_HOST, DATA_HOST=DATA_HOST,
                    LOGIN_HOST_RE=re.escape(LOGIN_HOST).replace("\\-", "-"),
                    MANIFEST_DIGEST=self.manifest_digest, MMDB=self.mmdb,
                    EMBARGO_MAP="\n".join(f"        {c} 1;" for c in EMBARGO),
                    EMBARGO_YAML=", ".join(EMBARGO), NOFILE=str(NOFILE),
                    HTTP1=a.http1)
        # The proxies' upstream: plain HTTP to the origin's plain listener (every case but the
        # TLS blob cases), or TLS to its TLS listener, verified against the run's CA.
        plain = dict(subs, UPSTREAM_SCHEME="http", UPSTREAM_DEFAULT_PORT="80",
                     UPSTREAM_PORT=subs["ORIGIN_PORT"], UPSTREAM_TLS="false",
                     UPSTREAM_CA="  # plain HTTP to the origin")
        tls = dict(subs, UPSTREAM_SCHEME="https", UPSTREAM_DEFAULT_PORT="443",
                   UPSTREAM_PORT=subs["ORIGIN_TLS_PORT"], UPSTREAM_TLS="true",
                   UPSTREAM_CA=f"  ca_file: {self.origin_ca}")
        self.origin_conf = render("origin.nginx.conf", self.path("origin.nginx.conf"), subs)
        self.nginx_conf = render("nginx.conf", self.path("nginx.conf"), plain)
        self.nginx_tls_conf = render("nginx.conf", self.path("nginx-tls.conf"), tls)
        self.edge_conf = render("registry-edge.yaml", self.path("registry-edge.yaml"), plain)
        self.edge_tls_conf = render("registry-edge.yaml", self.path("registry-edge-tls.yaml"), tls)
        # Each cache case (plain, TLS) fills a cache of its own, empty when it starts.
        self.nginx_cache_conf = self.nginx_with_cache(self.nginx_conf, "nginx-cache.conf",
                                                      "nginx-cache")
        self.nginx_cache_tls_conf = self.nginx_with_cache(self.nginx_tls_conf,
                                                          "nginx-cache-tls.conf", "nginx-cache-tls")
        for conf in (self.origin_conf, self.nginx_conf, self.nginx_tls_conf,
                     self.nginx_cache_conf, self.nginx_cache_tls_conf):
            run(["nginx", "-t", "-q", "-c", conf, "-p", self.dir + "/", "-g", "daemon off;"])
        for conf in (self.edge_conf, self.edge_tls_conf):
            run([EDGE_BIN, "check", "-q", "-c", conf])
        with open(self.path("blob-cache.key"), "wb") as f:
            f.write(os.urandom(32))
        self.edge_cache_conf = self.edge_with_cache(self.edge_conf, "registry-edge-cache.yaml",
                                                    "blob-cache")
        self.edge_cache_tls_conf = self.edge_with_cache(self.edge_tls_conf,
                                                        "registry-edge-cache-tls.yaml",
                                                        "blob-cache-tls")

    def nginx_with_cache(self, conf, name, cache_dir):
        """nginx with proxy_cache on the data host, the reference for registry-edge's blob cache:
        keyed by the blob's path (the SAS query left out), so a hit needs no authorization at
        all: what registry-edge's cache must not do, and the speed it is compared with."""
        with open(conf) as f:
            cached = f.read()
        os.makedirs(self.path(cache_dir))
        cached = cached.replace(
            "    proxy_temp_path", f"    proxy_cache_path {self.path(cache_dir)} levels=1:2 "
            f"keys_zone=blobs:10m max_size={2 * self.args.blob_mib + 64}m inactive=1h "
            "use_temp_path=off;\n    proxy_temp_path", 1)
        data_location = re.findall(r"\n            proxy_pass https?://data;\n", cached)
        if len(data_location) != 1:
            raise BenchError("nginx.conf: the data host's proxy_pass is not where expected")
        cached = cached.replace(data_location[0], data_location[0] +
                                "            proxy_cache blobs;\n"
                                "            proxy_cache_key $uri;\n"
                                "            proxy_cache_valid 200 1h;\n"
                                "            proxy_cache_lock on;\n"
                                "            proxy_ignore_headers Cache-Control Expires Set-Cookie;\n")
        out = self.path(name)
        with open(out, "w") as f:
            f.write(cached)
        return out

    def edge_with_cache(self, conf, name, cache_dir):
        """registry-edge with its blob cache (docs/blob-cache.md): the same file plus the block,
        a cache directory of its own and the run's key; validated with `registry-edge check`."""
        with open(conf) as f:
            cached = f.read()
        cached += (f"blob_cache:\n  path: {self.path(cache_dir)}\n  max_size: "
                   f"{2 * self.args.blob_mib + 64}MiB\n  min_blob_size: 1MiB\n"
                   f"  key_file: {self.path('blob-cache.key')}\n")
        out = self.path(name)
        with open(out, "w") as f:
            f.write(cached)
        run([EDGE_BIN, "check", "-q", "-c", out])
        return out


def make_origin_cert(tls_dir):
    """A CA for the run and, signed by it, the origin's certificate for both upstream names
    (ECDSA P-256), which the proxies verify when they reach the origin over TLS. Not a
    self-signed certificate, as the proxies' listeners have: that one is its own CA (CA:TRUE),
    and webpki (registry-edge's rustls) refuses a CA certificate as a server's. Returns the CA's
    file (nginx's proxy_ssl_trusted_certificate, registry-edge's ca_file, curl's --cacert to
    the origin)."""
    def p(name):
        return os.path.join(tls_dir, name)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", p("origin-ca.key"), "-out",
         p("origin-ca.pem"), "-days", "7", "-subj", "/CN=registry-edge load harness origin CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    with open(p("origin.ext"), "w") as f:
        f.write(f"subjectAltName=DNS:{LOGIN_HOST},DNS:{DATA_HOST}\n"
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n")
    run(["openssl", "req", *ec, "-keyout", p("origin.key"), "-out", p("origin.csr"),
         "-subj", f"/CN={LOGIN_HOST}"])
    run(["openssl", "x509", "-req", "-in", p("origin.csr"), "-CA", p("origin-ca.pem"),
         "-CAkey", p("origin-ca.key"), "-set_serial",
         str(int.from_bytes(os.urandom(8), "big") >> 1), "-days", "7",
         "-extfile", p("origin.ext"), "-out", p("origin.pem")])
    return p("origin-ca.pem")


# --------------------------------------------------------------------------------------------
# Servers


def pinned(core, argv):
    return ["taskset", "-c", str(core), "prlimit", f"--nofile={NOFILE}:{NOFILE}"] + argv


class Server:
    """One running server: its PIDs for CPU and RSS, its ports and Host names."""

    def __init__(self, key, env, conf=None):
        self.key = key
        self.env = env
        self.conf = conf
        self.master = None
        self.pids = []
        self.worker = None

    def start(self):
        env = self.env
        p = env.ports
        if self.key == "origin":
            argv = pinned(LOAD_CORE, ["nginx", "-c", env.origin_conf, "-p", env.dir + "/",
                                      "-g", "daemon off;"])
            proc = PROCS.start("origin nginx", argv, signal.SIGTERM, env.path("origin.out"))
            self.port, self.host, self.data_host = p["ORIGIN_PORT"], LOGIN_HOST, DATA_HOST
            wait_http(self.port, LOGIN_HOST, "/v2/", 401, "origin", timeout=20)
        elif self.key == "nginx":
            argv = pinned(PROXY_CORE, ["nginx", "-c", self.conf or env.nginx_conf,
                                       "-p", env.dir + "/", "-g", "daemon off;"])
            proc = PROCS.start("nginx", argv, signal.SIGTERM, env.path("nginx.out"))
            self.port, self.tls_port = p["NGINX_PORT"], p["NGINX_TLS_PORT"]
            self.host = f"{PUBLIC_HOST}:{self.port}"
            self.data_host = f"{PUBLIC_DATA_HOST}:{self.port}"
            wait_http(self.port, self.host, "/v2/", 401, "nginx", timeout=20)
        elif self.key == "floor":
            argv = pinned(PROXY_CORE, floor_argv(p))
            proc = PROCS.start(LABELS["floor"], argv, signal.SIGINT, env.path("floor.out"))
            self.port, self.tls_port = p["EDGE_PORT"], None
            self.host = f"{PUBLIC_HOST}:{self.port}"
            self.data_host = None
            wait_http(self.port, self.host, "/v2/", 401, LABELS["floor"], timeout=20)
        else:
            argv = pinned(PROXY_CORE, [EDGE_BIN, "run", "-c", self.conf or env.edge_conf])
            proc = PROCS.start("registry-edge", argv, signal.SIGINT, env.path("edge.out"))
            self.port, self.tls_port = p["EDGE_PORT"], p["EDGE_TLS_PORT"]
            self.host = f"{PUBLIC_HOST}:{self.port}"
            self.data_host = f"{PUBLIC_DATA_HOST}:{self.port}"
            wait_http(p["EDGE_ADMIN_PORT"], "127.0.0.1", "/readyz", 200, "registry-edge", 30)
            wait_http(self.port, self.host, "/v2/", 401, "registry-edge", timeout=20)
        self.master = proc.pid
        if self.key in ("origin", "nginx"):
            # With proxy_cache, nginx also runs a cache manager (and for a while a loader):
            # counted in its CPU, not taken for the worker.
            deadline = time.time() + 5
            while True:
                kids = children(self.master)
                workers = [k for k in kids if "worker process" in proc_name(k)]
                if len(workers) == 1 or time.time() > deadline:
                    break
                time.sleep(0.1)
            if len(workers) != 1:
                raise BenchError(f"{self.key}: expected one worker, found {kids}")
            self.worker = workers[0]
            PROCS.adopt_children(self.master)
            self.pids = [self.master] + kids
        else:
            self.worker = self.master
            self.pids = [self.master]
        want = {LOAD_CORE if self.key == "origin" else PROXY_CORE}
        for pid in self.pids:
            got = os.sched_getaffinity(pid)
            if got != want:
                raise BenchError(f"{self.key} pid {pid} runs on cores {got}, not {want}")
        return self

    def stop(self):
        if self.master:
            PROCS.stop(self.master)
            self.master = None

    def cpu(self):
        return cpu_seconds(self.pids)

    def rss(self):
        return {"total": sum(rss_bytes(p) for p in self.pids), "worker": rss_bytes(self.worker)}


# --------------------------------------------------------------------------------------------
# Checks: both proxies do the job before anything is measured.


def request(port, method, path, headers, tls=False):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, headers=headers)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r, body


def functional_checks(server, env, origin_location):
    h = {"Host": server.host, "X-Forwarded-For": "8.8.8.8", "User-Agent": "registry-edge-load/check"}
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)

    r, _ = request(server.port, "GET", "/v2/", h)
    realm = f'realm="http://{server.host}/oauth2/token"'
    expect(r.status == 401 and realm in (r.getheader("WWW-Authenticate") or ""),
           f"/v2/: want 401 with {realm}, got {r.status} {r.getheader('WWW-Authenticate')}")
    r, body = request(server.port, "GET", "/v2/library/app/manifests/latest", h)
    expect(r.status == 200 and r.getheader("Docker-Content-Digest") == env.manifest_digest
           and "sha256:" + hashlib.sha256(body).hexdigest() == env.manifest_digest,
           f"manifest: {r.status} digest {r.getheader('Docker-Content-Digest')}")
    r, _ = request(server.port, "HEAD", "/v2/library/app/manifests/latest", h)
    expect(r.status == 200 and r.getheader("Docker-Content-Digest") == env.manifest_digest,
           f"HEAD manifest: {r.status}")
    r, _ = request(server.port, "GET", env.blob_path, h)
    location = r.getheader("Location") or ""
    want = origin_location.replace(f"http://{DATA_HOST}/", f"http://{server.data_host}/")
    expect(r.status == 307 and location == want,
           f"blob: want 307 to {want}, got {r.status} {location}")
    # Clients echo the challenge's service (the edge names its public host, without a port).
    r, _ = request(server.port, "GET", f"/oauth2/token?service={server.host.split(':')[0]}", h)
    expect(r.status == 200, f"token: {r.status}")
    embargoed = next(ip for ip, c in env.addresses if c in EMBARGO)
    r, _ = request(server.port, "GET", "/v2/", dict(h, **{"X-Forwarded-For": embargoed}))
    expect(r.status == 451, f"embargoed {embargoed}: {r.status}")
    # Through a second trusted hop, the embargoed client is still found.
    r, _ = request(server.port, "GET", "/v2/",
                   dict(h, **{"X-Forwarded-For": f"{embargoed}, 127.0.0.9"}))
    expect(r.status == 451, f"embargoed {embargoed} behind 127.0.0.9: {r.status}")
    r, _ = request(server.port, "GET", "/v2/", {"Host": "other.example.test"})
    expect(r.status == 421, f"other host: {r.status}")
    if failures:
        raise BenchError(f"{LABELS[server.key]} does not do the job:\n  " + "\n  ".join(failures))
    return location


def geo_check(server, env, sample):
    """Each sampled address in X-Forwarded-For: 451 exactly for the embargoed countries, and
    the country in the proxy's access log is the one load_mmdb assigned."""
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    wrong = []
    for ip, country in sample:
        c.request("GET", "/v2/", headers={"Host": server.host, "X-Forwarded-For": ip,
                                          "User-Agent": "registry-edge-load/geo-check"})
        r = c.getresponse()
        r.read()
        want = 451 if country in EMBARGO else 401
        if r.status != want:
            wrong.append(f"{ip} ({country}): {r.status}, want {want}")
    c.close()
    time.sleep(1.6)  # nginx flushes its buffered log within 1 s; registry-edge when idle
    log_file = env.path("nginx-access.log" if server.key == "nginx" else "edge-access.log")
    seen = {}
    with open(log_file) as f:
        for line in f:
            if "geo-check" not in line:
                continue
            e = json.loads(line)
            seen[e.get("client")] = e.get("country") or "--"
    mismatched = [f"{ip}: log {seen.get(ip)}, mmdb {country}" for ip, country in sample
                  if seen.get(ip, "?") != country]
    return {"addresses": len(sample), "decisions_wrong": wrong, "countries_wrong": mismatched}


def tls_details(port):
    _, out, _ = run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                     PUBLIC_HOST, "-tls1_3"], timeout=10, check=False)
    got = {}
    for key, pattern in (("protocol", r"New, (\S+), Cipher is"),
                         ("cipher", r"Cipher is (\S+)"),
                         ("signature", r"Peer signature type: (\S+)"),
                         ("key_exchange", r"Server Temp Key: ([^\n]+)"),
                         ("public_key_bits", r"Server public key is (\d+) bit")):
        m = re.search(pattern, out)
        got[key] = m.group(1) if m else None
    return got


# --------------------------------------------------------------------------------------------
# Measurements


def wrk_mix(server, env, duration, connections, host=None, tls=False):
    """The mix on `server`'s plain listener, or with `tls` on its TLS listener (wrk over
    HTTPS, one handshake per connection, then keep-alive as over plain HTTP)."""
    if tls:
        url = f"https://127.0.0.1:{server.tls_port}/"
        host = host or f"{PUBLIC_HOST}:{server.tls_port}"
    else:
        url = f"http://127.0.0.1:{server.port}/"
    argv = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
            "--latency", "-s", os.path.join(HERE, "mix.lua"), url,
            "--", env.addresses_file, host or server.host, ",".join(EMBARGO), "1"]
    _, out, _ = run(argv, timeout=duration + 60)
    line = next((l for l in out.splitlines() if l.startswith("MIX ")), None)
    if line is None:
        raise BenchError(f"wrk printed no MIX line:\n{out}")
    mix = json.loads(line[4:])
    mix["rps"] = mix["requests"] / (mix["duration_us"] / 1e6)
    return mix


def measure_mix(server, env, args):
    wait_quiet(args.wait_quiet)
    tls = args.mix_tls
    warm = wrk_mix(server, env, args.warmup, args.connections, tls=tls)
    log(f"  warm-up ({args.warmup}s, not measured): {warm['rps']:,.0f} requests/s")
    with Meter(server) as meter:
        mix = wrk_mix(server, env, args.duration, args.connections, tls=tls)
    rss = server.rss()
    statuses = {int(k): v for k, v in mix["statuses"].items()}
    unexpected = {k: v for k, v in statuses.items() if k not in (200, 307, 401, 451)}
    errors = {k: v for k, v in mix["errors"].items() if v and k != "status"}
    cpu = meter.cpu_s
    result = {
        "requests": mix["requests"], "duration_s": mix["duration_us"] / 1e6,
        "requests_per_s": mix["rps"], "latency_us": mix["latency_us"],
        "statuses": statuses, "unexpected_statuses": unexpected, "socket_errors": errors,
        "share_451": statuses.get(451, 0) / max(1, mix["requests"]),
        "cpu_s": cpu, "cpu_us_per_request": cpu * 1e6 / max(1, mix["requests"]),
        "warmup_requests_per_s": warm["rps"],
        "rss_bytes": rss["total"], "rss_worker_bytes": rss["worker"],
    }
    st = " ".join(f"{k}:{v}" for k, v in sorted(statuses.items()))
    log(f"  mix{' over TLS' if tls else ''} ({args.duration}s, {args.connections} connections): "
        f"{mix['rps']:,.0f} requests/s, "
        f"p50 {mix['latency_us']['p50'] / 1000:.2f} ms, p99 {mix['latency_us']['p99'] / 1000:.2f} ms, "
        f"statuses {st}")
    if unexpected or errors:
        log(f"  WARNING: unexpected statuses {unexpected} socket errors {errors}")
    result.update(meter.note("mix"))
    return result


def measure_blob(server, env, url, resolve, runs, core=LOAD_CORE, quiet_wait=0, cacert=None):
    """`runs` transfers of the blob with curl; with `cacert`, an https:// URL over TLS 1.3 with
    that CA trusted (CURL_TLS)."""
    # Dirty pages an earlier case left (nginx's proxy_cache writes its files through the page
    # cache; the kernel writes them back up to 30 s later) go to disk now, not in the middle of
    # this measurement.
    os.sync()
    wait_quiet(quiet_wait)
    results = []
    meter = Meter(server)
    for _ in range(runs):
        argv = ["taskset", "-c", str(core), "curl", "-s", "-o", "/dev/null", "-w",
                "%{http_code} %{time_total} %{size_download}"]
        if cacert:
            argv += ["--cacert", cacert] + CURL_TLS
        if resolve:
            argv += ["--resolve", resolve]
        else:
            argv += ["-H", f"Host: {DATA_HOST}"]
        argv.append(url)
        cpu0, faults0 = meter.cpu_s, meter.faults
        with meter:
            _, out, _ = run(argv, timeout=600)
        code, seconds, size = out.split()
        if code != "200" or int(size) != env.blob_size:
            raise BenchError(f"blob through {LABELS[server.key]}: status {code}, {size} bytes")
        results.append({"seconds": float(seconds), "cpu_s": meter.cpu_s - cpu0,
                        "minor_faults": meter.faults - faults0})
    secs = [r["seconds"] for r in results]
    cpus = [r["cpu_s"] for r in results]
    gib = env.blob_size / GIB
    median_s = statistics.median(secs)
    return dict({
        "curl_core": core, "runs": results, "seconds_median": median_s,
        "mb_per_s": env.blob_size / 1e6 / median_s,
        "cpu_ms_per_gib": statistics.median(cpus) * 1000 / gib,
        "minor_faults_per_gib": statistics.median(r["minor_faults"] for r in results) / gib,
    }, **meter.note("blob transfers"))


def sha256_once(seconds=1):
    """This machine's SHA-256 cost on the proxy's core now (`openssl speed -evp sha256`, 16 KiB
    blocks), ms per GiB: what a verified fill must spend on top of moving the bytes."""
    _, out, _ = run(["taskset", "-c", str(PROXY_CORE), "openssl", "speed", "-evp", "sha256",
                     "-bytes", "16384", "-seconds", str(seconds)], timeout=60)
    line = [ln for ln in out.splitlines() if ln.lower().startswith("sha256")][-1]
    kbytes_per_s = float(line.split()[-1].rstrip("k"))
    return GIB / (kbytes_per_s * 1000) * 1000


@functools.cache
def sha256_ms_per_gib():
    """sha256_once's median of three, taken once a run (the unpaired fill ratios of the plain
    and the TLS case use the same figure); the three are in the JSON
    (`sha256_samples_ms_per_gib`)."""
    samples = tuple(sha256_once() for _ in range(3))
    return statistics.median(samples), samples


def send_floor(path):
    """What the kernel alone costs a process that sends `path` (the cached blob, in the page
    cache) over loopback from the proxy's core to a reader on the load core (sendcost.py):
    sendfile in 4 MiB calls and pread + send through a 256 KiB buffer. The floor under any
    proxy's cache hit on this machine, printed beside the hit."""
    _, out, _ = run([sys.executable, os.path.join(HERE, "sendcost.py"), path, str(PROXY_CORE),
                     str(LOAD_CORE)], timeout=120)
    return json.loads(out)


def relay_floor(path):
    """What one process costs on the proxy's core that receives the blob over loopback into a
    4 MiB buffer and sends it on, with nothing else; and the same hashing each buffer with
    OpenSSL's SHA-256 (relaycost.py; the sender and the reader on the load core, where the
    origin and curl are). The floor under any proxying, and under any verified fill, on this
    machine: printed beside the fill."""
    _, out, _ = run([sys.executable, os.path.join(HERE, "relaycost.py"), path, str(PROXY_CORE),
                     str(LOAD_CORE)], timeout=180)
    return json.loads(out)


def curl_get(url, resolve, cacert):
    """One GET over TLS with curl on the load core (TLS 1.3, CURL_TLS, `cacert` trusted, SNI
    from the URL): the status, the response headers (names in lower case) and the protocol and
    suite curl reports. For the small answers of the login host only: the body is discarded."""
    argv = ["taskset", "-c", str(LOAD_CORE), "curl", "-sS", "-v", "-o", "/dev/null", "-D", "-",
            "--cacert", cacert, *CURL_TLS, "--resolve", resolve,
            "-H", "X-Forwarded-For: 8.8.8.8", "-H", "User-Agent: registry-edge-load/check", url]
    _, out, err = run(argv, timeout=30)
    lines = out.splitlines()  # run() reads text: the CRLFs are newlines by now
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    m = re.search(r"SSL connection using (\S+) / (\S+)", err)
    return status, headers, {"protocol": m and m.group(1), "cipher": m and m.group(2)}


def origin_tls_mark(env):
    """Where the origin's TLS access log ends now (origin.nginx.conf: one line per request on
    its TLS listener)."""
    try:
        return os.path.getsize(env.path("origin-tls-access.log"))
    except OSError:
        return 0


def origin_tls_summary(env, mark, expect=True):
    """How the proxy reached the origin's data host over TLS since `mark`, from the origin's
    TLS access log: requests, the connections they came on, how many of those connections
    resumed a TLS session, and the protocols and suites. `expect`: a request is due (cache
    hits expect none)."""
    path = env.path("origin-tls-access.log")
    # nginx writes the line once it has sent the response, before curl has the last bytes.
    deadline = time.time() + (2 if expect else 0.3)
    lines = []
    while time.time() < deadline:
        with open(path) as f:
            f.seek(mark)
            lines = [ln.split() for ln in f.read().splitlines()]
        lines = [ln for ln in lines if len(ln) == 8 and ln[5] == DATA_HOST]
        if lines:
            break
        time.sleep(0.1)
    conns = {ln[3] for ln in lines}
    return {
        "requests": len(lines), "connections": len(conns),
        "new_connections_resumed": sum(1 for ln in lines if ln[4] == "1" and ln[2] == "r"),
        "requests_on_reused_connections": sum(1 for ln in lines if ln[4] != "1"),
        "protocols": sorted({f"{ln[0]} {ln[1]}" for ln in lines}),
        "bytes": sum(int(ln[7]) for ln in lines),
    }


def upstream_note(u):
    if not u["requests"]:
        return "upstream: no request to the origin's data host"
    return (f"upstream: {u['requests']} request(s) to the origin's data host on "
            f"{u['connections']} TLS connection(s) ({u['new_connections_resumed']} resumed a "
            f"session), {', '.join(u['protocols'])}")


def edge_cache_verdict(env, mark):
    """The `cache` field of registry-edge's access-log line for the data-host request logged
    after `mark` (the log's size before it): `fill`, `miss` (given up), ... The writer thread
    writes the log out every 100 ms."""
    deadline = time.time() + 3
    while time.time() < deadline:
        with open(env.path("edge-access.log")) as f:
            f.seek(mark)
            for line in f.read().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:  # a line still being written
                    break
                if (entry.get("host") or "").startswith(PUBLIC_DATA_HOST):
                    return entry.get("cache")
        time.sleep(0.1)
    return None


class Prober:
    """While active, a thread on the load core asks the proxy for `/v2/` on one kept-alive
    connection, one request at a time, and times each answer: what other clients of the proxy's
    worker wait while something else (a cold cache hit) runs on it."""

    def __init__(self, server):
        self.server = server
        self.latencies = []
        self.errors = 0
        self.stop = False

    def run(self):
        os.sched_setaffinity(0, {LOAD_CORE})
        headers = {"Host": self.server.host, "X-Forwarded-For": "8.8.8.8",
                   "User-Agent": "registry-edge-load/probe"}
        c = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        while not self.stop:
            t = time.perf_counter()
            try:
                c.request("GET", "/v2/", headers=headers)
                r = c.getresponse()
                r.read()
                self.latencies.append(time.perf_counter() - t)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
            time.sleep(0.002)
        c.close()

    def __enter__(self):
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()

    def summary(self):
        ms = sorted(x * 1000 for x in self.latencies) or [0.0]
        return {"requests": len(self.latencies), "errors": self.errors,
                "p50_ms": ms[len(ms) // 2], "p99_ms": ms[min(len(ms) - 1, len(ms) * 99 // 100)],
                "max_ms": ms[-1]}


def measure_cold_hit(server, env, location, resolve, entry):
    """One hit of an entry dropped from the page cache (as the first hit after a fill finds
    it: fills are written around the page cache), then one warm hit, each with a Prober
    asking the proxy for small answers meanwhile."""
    out = {}
    for name in ("cold", "warm"):
        if name == "cold":
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        with Prober(server) as probe:
            b = measure_blob(server, env, location, resolve, 1, LOAD_CORE)
        out[name] = dict(b, others=probe.summary())
        o = out[name]["others"]
        log(f"  {name} hit: {b['seconds_median']:.2f} s, proxy CPU {b['cpu_ms_per_gib']:,.0f} "
            f"ms/GiB; meanwhile {o['requests']} requests to /v2/: p50 {o['p50_ms']:.2f} ms, "
            f"p99 {o['p99_ms']:.2f} ms, max {o['max_ms']:.1f} ms, {o['errors']} errors")
    return out


def blob_location(server, env, tls):
    """A proxy's redirect to the blob, on its data host (with `tls`, asked on its TLS
    listener): the Location, curl's --resolve for it and (with `tls`) the client handshake."""
    handshake = None
    if tls:
        public = f"{PUBLIC_HOST}:{server.tls_port}"
        status, headers, handshake = curl_get(f"https://{public}{env.blob_path}",
                                              f"{public}:127.0.0.1", env.cert)
        location = headers.get("location", "")
    else:
        r, _ = request(server.port, "GET", env.blob_path,
                       {"Host": server.host, "X-Forwarded-For": "8.8.8.8"})
        status, location = r.status, r.getheader("Location") or ""
    if status != 307 or not location:
        raise BenchError(f"{LABELS[server.key]}: want a 307 for the blob, got {status} "
                         f"{location}")
    return location, f"{location.split('/')[2]}:127.0.0.1", handshake


def edge_cache_location(server, env, tls):
    """blob_location for registry-edge with its blob cache: the redirect must carry the
    edge's cache token, and over TLS name the TLS listener's data host."""
    location, resolve, handshake = blob_location(server, env, tls)
    if "&_rec=" not in location:
        raise BenchError(f"blob cache: want a 307 with a cache token, got {location}")
    if tls and not location.startswith(f"https://{PUBLIC_DATA_HOST}:{server.tls_port}/"):
        raise BenchError(f"blob cache, {TLS_CASE}: Location {location} is not on the TLS "
                         f"listener's data host")
    return location, resolve, handshake


def measure_edge_fill(server, env, args, location, resolve, cacert, tls, entry):
    """One fill of the blob through a registry-edge whose cache does not hold it: the transfer
    (measure_blob), made again when the edge gave it up, then waited for until `entry` (the
    cache file it fills) is stored. Returns the transfer and, with `tls`, the origin's TLS
    summary."""
    # A fill the edge gives up stores nothing (its access log says `cache: miss`: the fill's
    # writer thread fell 64 MiB behind the transfer, docs/blob-cache.md). On this 2-core VM
    # it happened to every plain fill that came right after nginx's proxy_cache case, and
    # not to the next fill: so the fill is made again, at most 3 times in all, each given
    # up one printed and counted (`given_up` in the JSON), never hidden.
    given_up = []
    upstream = None
    for attempt in range(3):
        mark = origin_tls_mark(env)
        log_mark = os.path.getsize(env.path("edge-access.log"))
        fill = measure_blob(server, env, location, resolve, 1, LOAD_CORE, args.wait_quiet,
                            cacert)
        if tls:
            upstream = fill["upstream_tls"] = origin_tls_summary(env, mark)
        verdict = edge_cache_verdict(env, log_mark)
        if verdict != "miss":
            break
        given_up.append(fill)
        log(f"  WARNING: registry-edge gave the fill up (access log: cache {verdict}, "
            f"{fill['mb_per_s']:,.0f} MB/s): nothing stored"
            + ("; filling again" if attempt < 2 else ""))
    fill["given_up"] = len(given_up)
    fill["given_up_transfers"] = given_up
    # The writer thread syncs the bytes to disk and renames the file after the transfer.
    deadline = time.time() + 120
    while not (os.path.exists(entry) and os.path.getsize(entry) == env.blob_size):
        if time.time() > deadline:
            raise BenchError("blob cache: the fill did not store the blob")
        time.sleep(0.2)
    return fill, upstream


def median_fill(env, fills):
    """Several fills' transfers as one case, like measure_blob's several runs: the median time
    and the median proxy CPU, every fill kept (`fills`); the share others took of the core is
    the largest of any fill, so that one disturbed fill marks the case."""
    runs = [r for f in fills for r in f["runs"]]
    median_s = statistics.median(r["seconds"] for r in runs)
    cpu = statistics.median(f["cpu_ms_per_gib"] for f in fills)
    faults = statistics.median(f["minor_faults_per_gib"] for f in fills)
    out = dict(fills[-1])
    out.update({"runs": runs, "seconds_median": median_s,
                "mb_per_s": env.blob_size / 1e6 / median_s,
                "cpu_ms_per_gib": cpu, "minor_faults_per_gib": faults, "fills": fills,
                "given_up": sum(f["given_up"] for f in fills),
                "core_others_share": max(f.get("core_others_share", 0) for f in fills),
                "core_others_s": max(f.get("core_others_s", 0) for f in fills)})
    return out


def measure_blob_cache(env, args, tls=False):
    """registry-edge with its blob cache: the registry's redirect signed by the edge, then the
    blob through the data host: `fill_runs` times as the fill (from the origin, hashed and
    stored), each by a registry-edge started afresh on an emptied cache, then `blob_runs`
    times from the cache of the last one. With `tls`, TLS on both sides: curl to the edge's
    TLS listener, the edge to the origin's (registry-edge-cache-tls.yaml), a cache of its own.

    Each fill is one round of three measurements taken one after the other, so that the
    fill's target is measured when the fill is: the blob through nginx proxying (running idle
    beside the edge meanwhile, on its own port), the fill, and `openssl speed`'s SHA-256. The
    CPU of this machine's cores drifts by a fifth within minutes, which measurements made
    minutes apart compare as a difference between the proxies. The ratio of each round is
    kept, and their median compared (`paired` in the JSON)."""
    conf, cache_dir = ((env.edge_cache_tls_conf, "blob-cache-tls") if tls
                       else (env.edge_cache_conf, "blob-cache"))
    log(f"\n== registry-edge with blob_cache{', ' + TLS_CASE if tls else ''} (core {PROXY_CORE}), "
        f"load average {loadavg()}")
    entry = env.path(cache_dir, "sha256", env.blob_digest_hex)
    server = None
    upstream = {}
    cacert = env.cert if tls else None
    nginx = Server("nginx", env, conf=env.nginx_tls_conf if tls else env.nginx_conf).start()
    try:
        n_location, n_resolve, _ = blob_location(nginx, env, tls)
        fills, rounds = [], []
        for n in range(args.fill_runs):
            proxied = measure_blob(nginx, env, n_location, n_resolve, 1, LOAD_CORE,
                                   args.wait_quiet, cacert)
            if server is not None:
                # The next fill: a new process on an empty cache, as the first one had.
                server.stop()
                shutil.rmtree(env.path(cache_dir))
            server = Server("edge", env, conf=conf).start()
            location, resolve, handshake = edge_cache_location(server, env, tls)
            fill, up = measure_edge_fill(server, env, args, location, resolve, cacert, tls,
                                         entry)
            sha = sha256_once()
            target = proxied["cpu_ms_per_gib"] + sha
            rounds.append({"nginx_proxying": proxied, "fill_cpu_ms_per_gib":
                           fill["cpu_ms_per_gib"], "sha256_ms_per_gib": sha,
                           "target_ms_per_gib": target,
                           "ratio": fill["cpu_ms_per_gib"] / target})
            log(f"  round {n + 1} of {args.fill_runs}: nginx proxying "
                f"{proxied['cpu_ms_per_gib']:,.0f} ms/GiB, SHA-256 {sha:,.0f} ms/GiB, fill "
                f"{fill['cpu_ms_per_gib']:,.0f} ms/GiB ({fill['seconds_median']:.2f} s, "
                f"{fill['minor_faults_per_gib']:,.0f} minor page faults per GiB): fill / "
                f"(nginx proxying + SHA-256) {rounds[-1]['ratio']:.2f}")
            fills.append(fill)
        nginx.stop()
        fill = median_fill(env, fills)
        if tls:
            # Each fill is one request on one new TLS connection: the last one's, as it was.
            upstream["fill"] = up
        mark = origin_tls_mark(env)
        hit = measure_blob(server, env, location, resolve, args.blob_runs, LOAD_CORE,
                           args.wait_quiet, cacert)
        if tls:
            upstream["hit"] = hit["upstream_tls"] = origin_tls_summary(env, mark, False)
        else:
            # A hit sent by sendfile(2) waits for the disk where it runs: what does that cost
            # the worker's other clients?
            cold = measure_cold_hit(server, env, location, resolve, entry)
    finally:
        nginx.stop()
        if server is not None:
            server.stop()
    floor = None if tls else send_floor(entry)
    relay = None if tls else relay_floor(env.blob)
    sha, sha_samples = sha256_ms_per_gib()
    if tls:
        log(f"  curl → registry-edge: {handshake['protocol']} {handshake['cipher']}")
    for name, b in (("fill", fill), ("hit", hit)):
        log(f"  cache {name}: {b['seconds_median']:.2f} s, {b['mb_per_s']:,.0f} MB/s, proxy CPU "
            f"{b['cpu_ms_per_gib']:,.0f} ms/GiB, {b['minor_faults_per_gib']:,.0f} minor page "
            f"faults per GiB")
        if tls:
            log(f"    {upstream_note(upstream[name])}")
    log(f"  SHA-256 on core {PROXY_CORE} (openssl speed -evp sha256, median of 3): {sha:,.0f} "
        f"ms/GiB ({', '.join(f'{x:,.0f}' for x in sha_samples)})")
    result = {"fill": fill, "hit": hit, "sha256_ms_per_gib": sha,
              "sha256_samples_ms_per_gib": list(sha_samples),
              "paired": {"rounds": rounds,
                         "ratio_median": statistics.median(r["ratio"] for r in rounds)}}
    each = ", ".join(f"{r['ratio']:.2f}" for r in rounds)
    log(f"  fill / (nginx proxying + SHA-256), round by round: {each}; median "
        f"{result['paired']['ratio_median']:.2f}")
    if floor:
        log(f"  the kernel alone sending the entry over loopback from core {PROXY_CORE} "
            f"(sendcost.py): sendfile {floor['sendfile']['cpu_ms_per_gib']:,.0f} ms/GiB, "
            f"pread + send {floor['copy']['cpu_ms_per_gib']:,.0f} ms/GiB")
        result["send_floor"] = floor
    if relay:
        log(f"  one process relaying the blob over loopback on core {PROXY_CORE} (relaycost.py): "
            f"receive + send {relay['relay']['cpu_ms_per_gib']:,.0f} ms/GiB, receive + SHA-256 "
            f"(OpenSSL) + send {relay['relay_sha256']['cpu_ms_per_gib']:,.0f} ms/GiB")
        result["relay_floor"] = relay
    if tls:
        result["client_tls"] = handshake
    else:
        result["cold_hit"] = cold
    return result


def measure_nginx_cache(env, args, location, tls=False):
    """nginx with proxy_cache on the data host (a reference, without authorization): the blob
    once as the fill, then `blob_runs` times from its cache. With `tls`, TLS on both sides
    (nginx-cache-tls.conf, a cache of its own); `location` is then the https:// one of its TLS
    listener."""
    conf = env.nginx_cache_tls_conf if tls else env.nginx_cache_conf
    log(f"\n== nginx with proxy_cache{', ' + TLS_CASE if tls else ''} (core {PROXY_CORE}), "
        f"load average {loadavg()}")
    server = Server("nginx", env, conf=conf).start()
    upstream = {}
    try:
        resolve = f"{location.split('/')[2]}:127.0.0.1"
        cacert = env.cert if tls else None
        mark = origin_tls_mark(env)
        fill = measure_blob(server, env, location, resolve, 1, LOAD_CORE, args.wait_quiet, cacert)
        if tls:
            upstream["fill"] = fill["upstream_tls"] = origin_tls_summary(env, mark)
        mark = origin_tls_mark(env)
        hit = measure_blob(server, env, location, resolve, args.blob_runs, LOAD_CORE,
                           args.wait_quiet, cacert)
        if tls:
            upstream["hit"] = hit["upstream_tls"] = origin_tls_summary(env, mark, False)
    finally:
        server.stop()
    for name, b in (("fill", fill), ("hit", hit)):
        log(f"  proxy_cache {name}: {b['seconds_median']:.2f} s, {b['mb_per_s']:,.0f} MB/s, "
            f"proxy CPU {b['cpu_ms_per_gib']:,.0f} ms/GiB")
        if tls:
            log(f"    {upstream_note(upstream[name])}")
    return {"fill": fill, "hit": hit}


def blob_tls_cases(env, args, results, only, origin, origin_location):
    """The blob cases again with TLS on both sides: curl over HTTPS (TLS 1.3) to the origin's
    TLS listener (the reference) or to the proxy's, each proxy to the origin's TLS listener with
    the certificate verified (nginx-tls.conf, registry-edge-tls.yaml, and their blob-cache
    variants). Each proxy is first checked over TLS: the realm and the 307's Location rewritten
    to the public https:// names, the SAS query unchanged."""
    p = env.ports
    log(f"\n== {TLS_CASE}: curl → proxy over HTTPS, proxy → origin over HTTPS "
        f"(origin TLS port {p['ORIGIN_TLS_PORT']})")
    # The origin's own redirect on its TLS listener names the data host with https://: what
    # the TLS configurations look for and rewrite.
    login = f"{LOGIN_HOST}:{p['ORIGIN_TLS_PORT']}"
    status, headers, handshake = curl_get(f"https://{login}{env.blob_path}",
                                          f"{login}:127.0.0.1", env.origin_ca)
    tls_location = origin_location.replace(f"http://{DATA_HOST}/", f"https://{DATA_HOST}/", 1)
    if status != 307 or headers.get("location") != tls_location:
        raise BenchError(f"origin over TLS: want 307 to {tls_location}, got {status} "
                           f"{headers.get('location')}")
    log(f"  origin over TLS: {handshake['protocol']} {handshake['cipher']}, 307 to https://"
        f"{DATA_HOST}/...")
    locations = {}

    if "origin" in only:
        log(f"\n== origin direct, {TLS_CASE} (nginx on core {LOAD_CORE}, port "
            f"{p['ORIGIN_TLS_PORT']})")
        data = f"{DATA_HOST}:{p['ORIGIN_TLS_PORT']}"
        url = f"https://{data}" + tls_location.split(DATA_HOST, 1)[1]
        b = results["origin"]["blob_tls"] = measure_blob(
            origin, env, url, f"{data}:127.0.0.1", args.blob_runs, LOAD_CORE, args.wait_quiet,
            env.origin_ca)
        b["client_tls"] = handshake
        log(f"  blob: {b['seconds_median']:.2f} s, {b['mb_per_s']:,.0f} MB/s")

    for key, conf in (("nginx", env.nginx_tls_conf), ("edge", env.edge_tls_conf)):
        if key not in only:
            continue
        log(f"\n== {LABELS[key]}, {TLS_CASE} (core {PROXY_CORE}), load average {loadavg()}")
        server = Server(key, env, conf=conf).start()
        try:
            public = f"{PUBLIC_HOST}:{server.tls_port}"
            resolve = f"{public}:127.0.0.1"
            failures, handshake = tls_realm_check(server, env)
            status, headers, _ = curl_get(f"https://{public}{env.blob_path}", resolve, env.cert)
            want = tls_location.replace(f"https://{DATA_HOST}/",
                                        f"https://{PUBLIC_DATA_HOST}:{server.tls_port}/")
            location = locations[key] = headers.get("location", "")
            if status != 307 or location != want:
                failures.append(f"blob: want 307 to {want}, got {status} {location}")
            if failures:
                raise BenchError(f"{LABELS[key]} ({TLS_CASE}) does not do the job:\n  "
                                   + "\n  ".join(failures))
            log(f"  checks over TLS: 401 realm, 307 Location (https://, SAS query unchanged): "
                f"ok; curl → {LABELS[key]}: {handshake['protocol']} {handshake['cipher']}")
            mark = origin_tls_mark(env)
            b = results[key]["blob_tls"] = measure_blob(
                server, env, location, f"{location.split('/')[2]}:127.0.0.1", args.blob_runs,
                LOAD_CORE, args.wait_quiet, env.cert)
            b["client_tls"] = handshake
            b["upstream_tls"] = origin_tls_summary(env, mark)
            log(f"  blob: {b['seconds_median']:.2f} s, {b['mb_per_s']:,.0f} MB/s, proxy CPU "
                f"{b['cpu_ms_per_gib']:,.0f} ms/GiB")
            log(f"    {upstream_note(b['upstream_tls'])}")
        finally:
            server.stop()

    if args.skip_cache:
        return
    if "nginx" in only:
        results["nginx"]["proxy_cache_tls"] = measure_nginx_cache(env, args, locations["nginx"],
                                                                  tls=True)
    if "edge" in only:
        results["edge"]["blob_cache_tls"] = measure_blob_cache(env, args, tls=True)


def callgrind_mix(key, env, seconds, connections, tls=False):
    """Instructions per request of one proxy, counted by callgrind over a wrk mix: repeatable
    for the same binaries and inputs whatever else the machine does (the CPU figures are not).
    User space only: the kernel's share (about half, the same work for both) is not counted."""
    p = env.ports
    out_pattern = env.path(f"callgrind.{key}.%p")
    # Names written in full in every dump: compressed names are defined once per process, so a
    # dump after `callgrind_control -z` refers to names it never defines.
    vg = ["valgrind", "--tool=callgrind", "--compress-strings=no",
          f"--callgrind-out-file={out_pattern}"]
    if key == "nginx":
        port = p["NGINX_PORT"]
        conf = env.nginx_tls_conf if tls else env.nginx_conf
        argv = pinned(PROXY_CORE, vg + ["nginx", "-c", conf, "-p", env.dir + "/",
                                        "-g", "daemon off; master_process off;"])
        stop_signal = signal.SIGTERM
    elif key == "floor":
        port = p["EDGE_PORT"]
        argv = pinned(PROXY_CORE, vg + floor_argv(p))
        stop_signal = signal.SIGINT
    else:
        port = p["EDGE_PORT"]
        argv = pinned(PROXY_CORE, vg + [EDGE_BIN, "run", "-c",
                                        env.edge_tls_conf if tls else env.edge_conf])
        stop_signal = signal.SIGINT
    proc = PROCS.start(f"{LABELS[key]} under callgrind", argv, stop_signal,
                       env.path(f"callgrind.{key}.out"))
    tls_port = p["NGINX_TLS_PORT"] if key == "nginx" else p["EDGE_TLS_PORT"]
    server = types.SimpleNamespace(port=port, tls_port=tls_port, host=f"{PUBLIC_HOST}:{port}")
    try:
        wait_http(port, server.host, "/v2/", 401, f"{LABELS[key]} under callgrind", timeout=180)
        # Start-up and first connections (with TLS, their handshakes), not counted.
        wrk_mix(server, env, 3, connections, tls=tls)
        run(["callgrind_control", "-z", str(proc.pid)])
        mix = wrk_mix(server, env, seconds, connections, tls=tls)
        run(["callgrind_control", "-d", str(proc.pid)])
    finally:
        PROCS.stop(proc.pid, timeout=60)
    dump = env.path(f"callgrind.{key}.{proc.pid}.1")
    with open(dump) as f:
        total = next(int(line.split()[1]) for line in f if line.startswith("summary:"))
    statuses = ", ".join(f"{k}:{v}" for k, v in sorted(mix["statuses"].items()))
    return {"requests": mix["requests"], "instructions": total,
            "per_request": total / max(1, mix["requests"]), "statuses": statuses}


def tls_realm_check(server, env):
    """`GET /v2/` on the proxy's TLS listener: a 401 with the realm rewritten to the public
    https:// name, over TLS 1.3. What failed (empty when nothing did), and curl's handshake."""
    public = f"{PUBLIC_HOST}:{server.tls_port}"
    status, headers, handshake = curl_get(f"https://{public}/v2/", f"{public}:127.0.0.1",
                                          env.cert)
    failures = []
    realm = f'realm="https://{public}/oauth2/token"'
    if status != 401 or realm not in headers.get("www-authenticate", ""):
        failures.append(f"/v2/: want 401 with {realm}, got {status} "
                        f"{headers.get('www-authenticate')}")
    if handshake["protocol"] != "TLSv1.3":
        failures.append(f"TLS: {handshake}")
    return failures, handshake


def tls_mix_checks(server, env):
    """Before the mix over TLS: the realm check on the proxy's TLS listener, while the proxy
    speaks TLS to the origin."""
    failures, handshake = tls_realm_check(server, env)
    if failures:
        raise BenchError(f"{LABELS[server.key]} over TLS does not do the job:\n  "
                         + "\n  ".join(failures))
    log(f"  checks over TLS: 401 realm (https://): ok; {handshake['protocol']} "
        f"{handshake['cipher']}; upstream: the origin's TLS listener")


def callgrind_compare(env, args):
    """`--callgrind N`: nginx and registry-edge, one after the other, under callgrind."""
    results = {}
    for key in ("nginx", "edge", "floor"):
        if key not in (args.only or ["nginx", "edge"]) + (["floor"] if args.floor else []):
            continue
        over = " over TLS (both sides)" if args.mix_tls else ""
        log(f"\n== {LABELS[key]} under callgrind (core {PROXY_CORE}), {args.callgrind}s of the "
            f"mix{over}")
        r = results[key] = callgrind_mix(key, env, args.callgrind, args.connections,
                                         tls=args.mix_tls)
        log(f"  {r['requests']:,} requests ({r['statuses']}): {r['instructions']:,} instructions, "
            f"{r['per_request']:,.0f} per request")
    for key in ("edge", "floor"):
        if key in results and "nginx" in results:
            ratio = results[key]["per_request"] / results["nginx"]["per_request"]
            log(f"\ninstructions per request (user space), {LABELS[key]} / nginx: {ratio:.2f}")
    return results


def read_responses(socks, sel, deadline):
    """Reads one HTTP response (headers + Content-Length body) on each socket."""
    pending = {s.fileno(): [s, b""] for s in socks}
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    statuses = {}
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=1.0):
            fd = key.fd
            s, buf = pending[fd]
            try:
                data = s.recv(65536)
            except ConnectionError:
                data = b""
            if not data:
                statuses["closed"] = statuses.get("closed", 0) + 1
                sel.unregister(s)
                del pending[fd]
                continue
            buf += data
            pending[fd][1] = buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", buf[:end], re.I)
            if len(buf) - end - 4 >= (int(m.group(1)) if m else 0):
                status = int(buf[9:12])
                statuses[status] = statuses.get(status, 0) + 1
                sel.unregister(s)
                del pending[fd]
    for fd, (s, _) in pending.items():
        sel.unregister(s)
    statuses["unanswered"] = len(pending)
    return statuses


def measure_idle(server, env, n, quiet_wait=0):
    """RSS of the proxy per idle client connection: n fresh connections, then the same after
    one keepalive request each."""
    pid = server.worker
    wait_quiet(quiet_wait)
    base = rss_bytes(pid)
    base_fds = open_fds(pid)
    socks = []
    t0 = time.time()
    try:
        sources = [f"127.0.0.{i}" for i in range(1, 9)]
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind((sources[i % len(sources)], 0))
            s.connect(("127.0.0.1", server.port))
            socks.append(s)
        opened_s = time.time() - t0
        # Wait until the proxy holds them all (or 10 s), then 2 s more to settle.
        deadline = time.time() + 10
        while open_fds(pid) - base_fds < n and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)
        fresh = rss_bytes(pid)
        fresh_fds = open_fds(pid) - base_fds
        req = (f"GET /v2/ HTTP/1.1\r\nHost: {server.host}\r\n"
               f"User-Agent: registry-edge-load/idle\r\n\r\n").encode()
        # In waves of 100, so that the figure is what stays per connection, not the
        # high-water mark of 8,000 requests in flight at once.
        sel = selectors.DefaultSelector()
        statuses = {}
        for i in range(0, n, 100):
            wave = socks[i:i + 100]
            for s in wave:
                s.sendall(req)
            for k, v in read_responses(wave, sel, time.time() + 30).items():
                statuses[k] = statuses.get(k, 0) + v
        sel.close()
        time.sleep(2.0)
        after = rss_bytes(pid)
        after_fds = open_fds(pid) - base_fds
    finally:
        for s in socks:
            s.close()
    time.sleep(1.0)
    closed = rss_bytes(pid)
    result = {
        "connections": n, "open_seconds": opened_s,
        "rss_before_bytes": base, "rss_fresh_bytes": fresh, "rss_after_request_bytes": after,
        "rss_after_close_bytes": closed,
        "proxy_fds_fresh": fresh_fds, "proxy_fds_after_request": after_fds,
        "bytes_per_connection_fresh": (fresh - base) / n,
        "bytes_per_connection_after_request": (after - base) / n,
        "responses": statuses,
    }
    log(f"  idle: {n} connections opened in {opened_s:.1f}s (proxy fds +{fresh_fds}); RSS "
        f"{base / 2**20:.1f} -> {fresh / 2**20:.1f} MiB fresh -> {after / 2**20:.1f} MiB after "
        f"one request each (responses {statuses}) -> {closed / 2**20:.1f} MiB closed")
    return result


def tls_client(port, host, seconds, queue):
    """Full TLS 1.3 handshakes, one GET /v2/ each with Connection: close; never offers a
    session back (a new SSLContext session each time: no resumption)."""
    os.sched_setaffinity(0, {LOAD_CORE})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    req = (f"GET /v2/ HTTP/1.1\r\nHost: {host}\r\nUser-Agent: registry-edge-load/tls\r\n"
           f"Connection: close\r\n\r\n").encode()
    done = failed = reused = 0
    statuses = {}
    versions = set()
    end = time.time() + seconds
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname=PUBLIC_HOST) as s:
                    s.sendall(req)
                    buf = b""
                    while True:
                        d = s.recv(65536)
                        if not d:
                            break
                        buf += d
                    versions.add(s.version())
                    reused += int(s.session_reused)
            status = int(buf[9:12]) if buf.startswith(b"HTTP/1.1 ") else 0
            statuses[status] = statuses.get(status, 0) + 1
            done += 1
        except (OSError, ValueError):
            failed += 1
    queue.put({"connections": done, "failed": failed, "reused": reused,
               "statuses": statuses, "versions": sorted(v for v in versions if v)})


def measure_tls(server, seconds, clients, quiet_wait=0):
    wait_quiet(quiet_wait)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=tls_client, args=(server.tls_port, server.host.replace(
        str(server.port), str(server.tls_port)), seconds, queue)) for _ in range(clients)]
    with Meter(server) as meter:
        for p in procs:
            p.start()
            PROCS.running[p.pid] = ["tls client", p, signal.SIGTERM, []]
        parts = [queue.get(timeout=seconds + 60) for _ in procs]
        for p in procs:
            p.join()
            PROCS.running.pop(p.pid, None)
    total = {"connections": 0, "failed": 0, "reused": 0, "statuses": {}, "versions": set()}
    for part in parts:
        for k in ("connections", "failed", "reused"):
            total[k] += part[k]
        for k, v in part["statuses"].items():
            total["statuses"][k] = total["statuses"].get(k, 0) + v
        total["versions"].update(part["versions"])
    total["versions"] = sorted(total["versions"])
    cpu = meter.cpu_s
    total.update(seconds=seconds, clients=clients, cpu_s=cpu,
                 connections_per_s=total["connections"] / seconds,
                 cpu_us_per_connection=cpu * 1e6 / max(1, total["connections"]))
    log(f"  TLS: {total['connections']} full handshakes in {seconds}s ({total['connections_per_s']:,.0f}/s, "
        f"{clients} clients on core {LOAD_CORE}), versions {total['versions']}, resumed "
        f"{total['reused']}, failed {total['failed']}, statuses {total['statuses']}")
    total.update(meter.note("TLS connections"))
    return total


# --------------------------------------------------------------------------------------------
# Report


def print_table(table):
    """Rows of cells: two heading rows, then the figures; the first column left-aligned, the
    others right-aligned, framed by rules."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    rule = sum(widths) + 2 * len(widths)
    log()
    log("=" * rule)
    for i, r in enumerate(table):
        log("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(r)))
        if i == 1:
            log("-" * rule)
    log("=" * rule)


def fmt(v, spec, dash="—"):
    return dash if v is None else format(v, spec)


def get(d, *keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k)
    return d


def blob_table(results, args, disturbed):
    """The blob transfers side by side: each case over plain HTTP on both sides, and with TLS on
    both sides (curl → proxy over HTTPS, proxy → origin over HTTPS). Medians of `blob_runs`
    transfers (a fill: one); CPU per GiB is the proxy's."""
    o, n, e = results.get("origin"), results.get("nginx"), results.get("edge")
    cases = [
        ("origin direct", "origin", get(o, "blob"), get(o, "blob_tls")),
        ("nginx proxying", "nginx", get(n, "blob"), get(n, "blob_tls")),
        ("registry-edge proxying", "edge", get(e, "blob"), get(e, "blob_tls")),
        ("nginx proxy_cache fill", "nginx", get(n, "proxy_cache", "fill"),
         get(n, "proxy_cache_tls", "fill")),
        ("nginx proxy_cache hit", "nginx", get(n, "proxy_cache", "hit"),
         get(n, "proxy_cache_tls", "hit")),
        ("registry-edge blob_cache fill", "edge", get(e, "blob_cache", "fill"),
         get(e, "blob_cache_tls", "fill")),
        ("registry-edge blob_cache hit", "edge", get(e, "blob_cache", "hit"),
         get(e, "blob_cache_tls", "hit")),
    ]
    cases = [c for c in cases if c[2] or c[3]]
    if not cases:
        return

    retried = []

    def cells(key, b):
        star = ""
        if (get(b, "core_others_share") or 0) > 0.05:
            disturbed.append(key)
            star = "*"
        if get(b, "given_up"):
            retried.append(b["given_up"])
            star += "†"
        return [fmt(get(b, "seconds_median"), ".2f") + star, fmt(get(b, "mb_per_s"), ",.0f") + star,
                fmt(get(b, "cpu_ms_per_gib") if key != "origin" else None, ",.0f") + star]

    def upstream(b):
        u = get(b, "upstream_tls")
        return "—" if u is None else f"{u['requests']} / {u['connections']}"

    with_tls = any(c[3] for c in cases)  # not with --skip-blob-tls
    head1 = [f"blob, {args.blob_mib} MiB", "plain", "plain", "plain"]
    head2 = ["", "s", "MB/s", "CPU ms/GiB"]
    if with_tls:
        head1 += [TLS_CASE, TLS_CASE, TLS_CASE, "TLS upstream"]
        head2 += ["s", "MB/s", "CPU ms/GiB", "req / conn"]
    table = [head1, head2] + [[label] + cells(key, plain)
                              + (cells(key, tls) + [upstream(tls)] if with_tls else [])
                              for label, key, plain, tls in cases]
    print_table(table)
    log("plain: curl → proxy → origin over HTTP" + (
        f"; {TLS_CASE}: curl → proxy over HTTPS (TLS 1.3), proxy → origin over HTTPS (TLS 1.3, "
        "verified, keepalive)" if with_tls else "") + f". Median of {args.blob_runs} runs "
        f"(registry-edge's fill: median of {args.fill_runs}, each by a new process on an empty cache; "
        f"nginx's proxy_cache fill: 1); CPU = the proxy's." + (
        " TLS upstream = requests to the origin's data host / the TLS connections they came on "
        "(its TLS access log)." if with_tls else ""))
    if retried:
        log("† registry-edge gave up the fill before this one (access log: cache miss, nothing "
            "stored; see the WARNING lines): the figure is the fill that stored the blob.")


def report(results, env, args, environment):
    rows = [k for k in ("origin", "nginx", "edge", "floor") if k in results]
    kb = 1024.0

    disturbed = []

    def row(k):
        r = results[k]
        mix, blob, idle, tls = r.get("mix"), r.get("blob"), r.get("idle"), r.get("tls")
        mix = mix or r.get("mix_tls")  # --mix-tls: the mix columns are the mix over TLS
        proxy = k != "origin"

        def star(phase):
            if (get(phase, "core_others_share") or 0) > 0.05:
                disturbed.append(k)
                return "*"
            return ""

        m, b, t = star(mix), star(blob), star(tls)
        return [
            LABELS[k],
            fmt(get(mix, "requests_per_s"), ",.0f") + m,
            fmt(get(mix, "latency_us", "p50") and mix["latency_us"]["p50"] / 1000, ".2f") + m,
            fmt(get(mix, "latency_us", "p99") and mix["latency_us"]["p99"] / 1000, ".2f") + m,
            fmt(get(mix, "cpu_us_per_request") if proxy else None, ".1f") + m,
            fmt(get(blob, "seconds_median"), ".2f") + b,
            fmt(get(blob, "mb_per_s"), ",.0f") + b,
            fmt(get(blob, "cpu_ms_per_gib") if proxy else None, ",.0f") + b,
            fmt(get(mix, "rss_bytes") / 2**20 if proxy and mix else None, ".1f")
            + (f" ({mix['rss_worker_bytes'] / 2**20:.1f})" if k == "nginx" and mix else ""),
            fmt(get(idle, "bytes_per_connection_fresh") and idle["bytes_per_connection_fresh"] / kb, ".2f"),
            fmt(get(idle, "bytes_per_connection_after_request") and idle["bytes_per_connection_after_request"] / kb, ".2f"),
            fmt(get(tls, "cpu_us_per_connection"), ",.0f") + t,
        ]

    head1 = ["", "requests/s", "p50", "p99", "CPU/req", "1 GiB", "blob", "CPU/GiB", "RSS mix",
             "idle/conn", "idle/conn", "TLS CPU"]
    head2 = ["", "(mix)", "ms", "ms", "µs", "s", "MB/s", "ms", "MiB", "fresh KiB", "1 req KiB",
             "µs/conn"]
    table = [head1, head2] + [row(k) for k in rows]
    print_table(table)
    log("CPU = the proxy's utime+stime from /proc (nginx: master + worker) over the measured "
        "interval; RSS mix = VmRSS after the mix (nginx: master + worker (worker alone)).")
    blob_table(results, args, disturbed)
    if disturbed:
        log("* other processes took over 5 % of the proxy's core during this measurement "
            "(see the WARNING lines): read it as disturbed.")

    ratios = {}

    def ratio(name, a, b, target, better):
        if a is None or b is None or b == 0:
            return
        v = a / b
        met = v <= target if better == "le" else v >= target
        ratios[name] = {"value": v, "target": f"{'≤' if better == 'le' else '≥'} {target}",
                        "met": met}

    e, n, o = results.get("edge"), results.get("nginx"), results.get("origin")
    ratio("CPU per request, registry-edge / nginx", get(e, "mix", "cpu_us_per_request"),
          get(n, "mix", "cpu_us_per_request"), 1.0, "le")
    ratio("p99 latency, registry-edge / nginx", get(e, "mix", "latency_us", "p99"),
          get(n, "mix", "latency_us", "p99"), 1.0, "le")
    ratio("requests/s, registry-edge / nginx", get(e, "mix", "requests_per_s"),
          get(n, "mix", "requests_per_s"), 1.0, "ge")
    fl = results.get("floor")
    ratio("(reference) CPU per request, pingora's floor (no job done) / nginx",
          get(fl, "mix", "cpu_us_per_request"), get(n, "mix", "cpu_us_per_request"), 1.0, "le")
    ratio("(reference) p99 latency, pingora's floor (no job done) / nginx",
          get(fl, "mix", "latency_us", "p99"), get(n, "mix", "latency_us", "p99"), 1.0, "le")
    ratio("CPU per request over TLS (both sides), registry-edge / nginx",
          get(e, "mix_tls", "cpu_us_per_request"), get(n, "mix_tls", "cpu_us_per_request"),
          1.0, "le")
    ratio("p99 latency over TLS (both sides), registry-edge / nginx",
          get(e, "mix_tls", "latency_us", "p99"), get(n, "mix_tls", "latency_us", "p99"),
          1.0, "le")
    ratio("blob CPU per GiB, registry-edge / nginx", get(e, "blob", "cpu_ms_per_gib"),
          get(n, "blob", "cpu_ms_per_gib"), 1.0, "le")
    ratio("TLS CPU per new connection, registry-edge / nginx",
          get(e, "tls", "cpu_us_per_connection"), get(n, "tls", "cpu_us_per_connection"), 0.7, "le")
    ratio("blob throughput, registry-edge / origin direct", get(e, "blob", "mb_per_s"),
          get(o, "blob", "mb_per_s"), 0.95, "ge")
    ratio("blob throughput, nginx / origin direct", get(n, "blob", "mb_per_s"),
          get(o, "blob", "mb_per_s"), 0.95, "ge")

    def cache_ratios(suffix, blob, blob_cache, proxy_cache):
        """The blob cache against its targets, plain (suffix "") or TLS/TLS: each figure
        against the same case's nginx proxying, origin direct and nginx proxy_cache."""
        c = get(e, blob_cache)
        if not c:
            return
        ratio("blob cache hit CPU per GiB, registry-edge / nginx proxying" + suffix,
              get(c, "hit", "cpu_ms_per_gib"), get(n, blob, "cpu_ms_per_gib"), 0.6, "le")
        floor = get(c, "send_floor", "sendfile", "cpu_ms_per_gib")
        if floor is not None:
            ratio("(reference) the kernel's sendfile of the entry alone / nginx proxying",
                  floor, get(n, blob, "cpu_ms_per_gib"), 0.6, "le")
        ratio("blob cache hit throughput, registry-edge / origin direct" + suffix,
              get(c, "hit", "mb_per_s"), get(o, blob, "mb_per_s"), 1.0, "ge")
        nginx_gib = get(n, blob, "cpu_ms_per_gib")
        pc = get(n, proxy_cache)
        if pc:
            ratio("blob cache hit CPU per GiB, registry-edge / nginx proxy_cache hit (reference)"
                  + suffix,
                  get(c, "hit", "cpu_ms_per_gib"), get(pc, "hit", "cpu_ms_per_gib"), 1.0, "le")
        fill_target = nginx_gib + c["sha256_ms_per_gib"] if nginx_gib is not None else None
        paired = get(c, "paired", "ratio_median")
        if paired is not None:
            ratio("blob cache fill CPU per GiB, registry-edge / (nginx proxying + SHA-256), "
                  "median of paired rounds" + suffix, paired, 1.0, 1.0, "le")
        ratio("(reference) blob cache fill CPU per GiB, registry-edge / (nginx proxying + "
              "SHA-256), unpaired" + suffix,
              get(c, "fill", "cpu_ms_per_gib"), fill_target, 1.0, "le")
        relay = get(c, "relay_floor", "relay_sha256", "cpu_ms_per_gib")
        if relay is not None:
            ratio("(reference) one process's receive + SHA-256 + send alone / (nginx proxying + "
                  "SHA-256)", relay, fill_target, 1.0, "le")
            ratio("(reference) registry-edge fill / one process's receive + SHA-256 + send alone",
                  get(c, "fill", "cpu_ms_per_gib"), relay, 1.0, "le")

    cache_ratios("", "blob", "blob_cache", "proxy_cache")
    # The same blob ratios with TLS on both sides, each against the TLS/TLS figures.
    tls = f" ({TLS_CASE})"
    ratio("blob CPU per GiB, registry-edge / nginx" + tls, get(e, "blob_tls", "cpu_ms_per_gib"),
          get(n, "blob_tls", "cpu_ms_per_gib"), 1.0, "le")
    ratio("blob throughput, registry-edge / origin direct" + tls, get(e, "blob_tls", "mb_per_s"),
          get(o, "blob_tls", "mb_per_s"), 0.95, "ge")
    ratio("blob throughput, nginx / origin direct" + tls, get(n, "blob_tls", "mb_per_s"),
          get(o, "blob_tls", "mb_per_s"), 0.95, "ge")
    cache_ratios(tls, "blob_tls", "blob_cache_tls", "proxy_cache_tls")
    absolute = {}
    if get(e, "mix", "rss_bytes") is not None:
        v = e["mix"]["rss_bytes"] / 2**20
        absolute["registry-edge RSS under the mix (MiB)"] = {"value": v, "target": "< 64 MB",
                                                             "met": v * 2**20 < 64e6}
    for key, label in (("bytes_per_connection_fresh", "fresh"),
                       ("bytes_per_connection_after_request", "after one request")):
        v = get(e, "idle", key)
        if v is not None:
            absolute[f"registry-edge RSS per idle connection, {label} (KiB)"] = {
                "value": v / kb, "target": "≤ 4 KB", "met": v <= 4000}
    if ratios or absolute:
        log()
        width = max(len(k) for k in list(ratios) + list(absolute))
        log("Ratios".ljust(width) + "   value  target   met")
        for k, v in ratios.items():
            log(f"{k.ljust(width)}  {v['value']:6.2f}  {v['target']:<7}  {'yes' if v['met'] else 'no'}")
        for k, v in absolute.items():
            log(f"{k.ljust(width)}  {v['value']:6.2f}  {v['target']:<7}  {'yes' if v['met'] else 'no'}")

    log()
    log("Environment")
    for k, v in environment.items():
        log(f"  {k}: {v}")

    out = {"environment": environment,
           "results": {LABELS[k]: results[k] for k in rows},
           "ratios": ratios, "absolute": absolute}
    copy = write_result(RESULT_JSON, out, "blob")
    log(f"  figures as JSON: {os.path.relpath(RESULT_JSON, ROOT)} (and "
        f"{os.path.relpath(copy, ROOT)}, for pool.py)")


# --------------------------------------------------------------------------------------------


def environment_notes(env, args):
    def first_line(argv):
        try:
            _, out, err = run(argv, timeout=10, check=False)
            return (out or err).strip().splitlines()[0]
        except (BenchError, OSError, IndexError):
            return "?"

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    _, status, _ = run(["git", "status", "--porcelain", "--", "crates", "Cargo.lock"],
                       check=False)
    commit = first_line(["git", "rev-parse", "--short", "HEAD"])
    notes = {
        "registry-edge": f"{first_line([EDGE_BIN, '--version'])}, git {commit}"
                         + (" + uncommitted changes under crates/" if status.strip() else ""),
        "nginx": first_line(["nginx", "-v"]) + " (Debian), modules geoip2 + headers-more",
        "wrk": first_line(["wrk", "-v"]),
        "machine": f"{os.cpu_count()} cores, {cpu}, Linux {platform.release()}",
        "pinning": f"proxies (nginx master+worker, registry-edge all threads) on core {PROXY_CORE}; "
                   f"origin nginx, wrk, curl and the Python clients on core {LOAD_CORE}",
        "workers": "nginx worker_processes 1; registry-edge server.threads 1",
        "mix": f"wrk -t1 -c{args.connections}, {args.warmup}s warm-up then {args.duration}s "
               f"measured, mix.lua (25% HEAD + 20% GET manifest, 30% blob 307, 15% /v2/ 401, "
               f"10% token), X-Forwarded-For from {args.addresses} addresses (HEAD: "
               f"Content-Length 0 from the origin and no embargoed address, for wrk; README)",
        "blob": f"{args.blob_mib} MiB sparse file (zeros, read once into the page cache), curl "
                f"on core {LOAD_CORE} (with the origin) to the origin and through each proxy's "
                f"data host, {args.blob_runs} runs each (registry-edge's "
                f"blob cache fill: {args.fill_runs}), median time and median proxy CPU",
        "idle": f"{args.idle_connections} connections from 127.0.0.1-8 to a restarted proxy, "
                f"RSS (nginx: worker) 2 s after opening, then 2 s after one GET /v2/ each",
        "blob tls": f"{TLS_CASE}: curl over HTTPS (TLS 1.3, AES-128-GCM offered first as by "
                    f"Go clients) to the proxy's TLS listener (origin direct: the origin's); "
                    f"the proxy to the origin's TLS listener over TLS 1.3, certificate verified "
                    f"against the run's CA, SNI, upstream keepalive (nginx: proxy_ssl_session_"
                    f"reuse on; registry-edge: tls: true, ca_file)",
        "tls": f"TLS 1.3, ECDSA P-256 certificate, Python ssl clients ({args.tls_clients} "
               f"processes) for {args.tls_seconds}s, full handshake + GET /v2/ + close each",
        "geoip": env.notes.get("mmdb", "?"),
        "load average": loadavg(),
    }
    if args.skip_blob or args.skip_blob_tls:
        del notes["blob tls"]
    return notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", default="15s", help="measured wrk run (default 15s)")
    ap.add_argument("--warmup", default="5s", help="unmeasured wrk run before it (default 5s)")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    ap.add_argument("--only", action="append", choices=["origin", "nginx", "edge"],
                    help="measure only this (repeatable; default all three)")
    ap.add_argument("--skip-blob", action="store_true")
    ap.add_argument("--skip-idle", action="store_true")
    ap.add_argument("--skip-tls", action="store_true")
    ap.add_argument("--skip-cache", action="store_true",
                    help="no blob-cache cases (registry-edge with blob_cache, and nginx with "
                         "proxy_cache as a reference: fill, then hits)")
    ap.add_argument("--mix-tls", action="store_true",
                    help="the mix (timed, or under --callgrind) with TLS on both sides: wrk over "
                         "HTTPS to each proxy's TLS listener, each proxy to the origin's TLS "
                         "listener (the TLS blob cases' configurations); only the mix is measured")
    ap.add_argument("--skip-blob-tls", action="store_true",
                    help="no TLS blob cases (the blob cases again with TLS on both sides: curl to "
                         "the proxy over HTTPS, the proxy to the origin over HTTPS)")
    ap.add_argument("--blob-mib", type=int, default=1024, help="blob size (default 1024 MiB)")
    ap.add_argument("--blob-runs", type=int, default=3)
    ap.add_argument("--fill-runs", type=int, default=5,
                    help="registry-edge blob cache fills measured, each by a new process on an "
                         "empty cache and each in a round with nginx proxying the blob and "
                         "openssl speed's SHA-256 (default 5; the rounds' median ratio is "
                         "compared)")
    ap.add_argument("--idle-connections", type=int, default=8000)
    ap.add_argument("--tls-seconds", default="10s")
    ap.add_argument("--tls-clients", type=int, default=3)
    ap.add_argument("--addresses", type=int, default=4096, help="X-Forwarded-For addresses")
    ap.add_argument("--wait-quiet", type=int, default=120, metavar="S",
                    help="before each measurement, wait up to S seconds for both cores to be "
                         "under 10%% busy (other builds, tests); default 120, 0 to skip")
    ap.add_argument("--callgrind", type=int, metavar="SECONDS",
                    help="instead of the timed measurements: each proxy under valgrind's callgrind "
                         "for SECONDS of the mix, instructions per request (repeatable figures)")
    ap.add_argument("--http1", choices=["pingora", "lean"], default="pingora",
                    help="registry-edge's HTTP/1 session (server.http1; default pingora)")
    ap.add_argument("--floor", action="store_true",
                    help="also pingora's floor in the mix (timed, or under --callgrind): a "
                         "ProxyHttp whose only phase is upstream_peer, pingora's HTTP/1 session, "
                         "no job done (floor.rs); `run --floor` builds it. Plain HTTP only")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, configs)")
    args = ap.parse_args()
    if args.fill_runs < 1 or args.blob_runs < 1:
        raise BenchError("--fill-runs and --blob-runs: at least 1")
    if args.floor and args.mix_tls:
        raise BenchError("--floor: the floor speaks plain HTTP only (not with --mix-tls)")
    if args.floor and not os.path.exists(FLOOR_BIN):
        raise BenchError(f"--floor: {FLOOR_BIN} is missing (benches/load/run --floor builds it)")
    if args.mix_tls:
        # Only the mix, over TLS: the blob, idle and handshake cases have their own TLS forms.
        args.skip_blob = args.skip_idle = args.skip_tls = True
        args.skip_cache = args.skip_blob_tls = True
    for k in ("duration", "warmup", "tls_seconds"):
        setattr(args, k, int(str(getattr(args, k)).rstrip("s")))
    only = args.only or ["origin", "nginx", "edge"]

    if os.cpu_count() < 2:
        raise BenchError("needs two cores: one for the proxies, one for the load")
    # Also SIGINT: a shell starts background jobs with it ignored, and Python then leaves it so.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    global NOFILE
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, max(hard, NOFILE)))
    except (ValueError, OSError):
        NOFILE = hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if NOFILE < 2 * args.idle_connections + 1000:
        raise BenchError(f"open files limited to {NOFILE}: too few for "
                           f"{args.idle_connections} idle connections (and their upstreams)")
    os.sched_setaffinity(0, {LOAD_CORE})

    env = Env(args)
    log(f"registry-edge load harness: run directory {env.dir}")
    results = {}
    try:
        env.prepare()
        log(f"  {env.notes['mmdb']}")
        environment = environment_notes(env, args)
        origin = Server("origin", env).start()
        # The blob path, and the Location the origin gives for it (the SAS query must come back
        # unchanged through both proxies).
        digest = env.blob_digest_hex
        env.blob_path = f"/v2/library/app/blobs/sha256:{digest}"
        r, _ = request(origin.port, "GET", env.blob_path, {"Host": LOGIN_HOST})
        origin_location = r.getheader("Location")
        if r.status != 307 or not origin_location:
            raise BenchError(f"origin blob redirect: {r.status}")
        if args.callgrind:
            cg = callgrind_compare(env, args)
            os.makedirs(os.path.dirname(RESULT_JSON), exist_ok=True)
            with open(RESULT_JSON, "w") as f:
                json.dump({"callgrind": cg, "environment": environment}, f, indent=2)
            log(f"  figures as JSON: {os.path.relpath(RESULT_JSON, ROOT)}")
            return
        sample = [a for a in env.addresses if a[1] in EMBARGO][:100]
        sample += [a for a in env.addresses if a[1] not in EMBARGO][:100]

        if "origin" in only and args.mix_tls:
            log("\n== origin direct: not measured with --mix-tls (its mix is plain HTTP)")
        elif "origin" in only:
            log(f"\n== origin direct (nginx on core {LOAD_CORE}, port {origin.port})")
            res = results["origin"] = {}
            res["mix"] = measure_mix(origin, env, args)
            res["mix"]["note"] = "cpu is the origin's own"
            log(f"  origin CPU per request: {res['mix']['cpu_us_per_request']:.1f} µs")
            if not args.skip_blob:
                # curl where it is when a proxy is measured: on core 0 with the origin, so the
                # only difference through a proxy is the proxy on core 1. Once more with curl
                # on core 1 instead, for reference (not used in the ratios).
                url = f"http://127.0.0.1:{origin.port}" + origin_location.split(DATA_HOST, 1)[1]
                res["blob"] = measure_blob(origin, env, url, None, args.blob_runs, LOAD_CORE,
                                           args.wait_quiet)
                other = measure_blob(origin, env, url, None, 1, PROXY_CORE)
                res["blob_curl_on_proxy_core"] = other
                log(f"  blob: {res['blob']['seconds_median']:.2f} s, {res['blob']['mb_per_s']:,.0f} "
                    f"MB/s (curl on core {PROXY_CORE} instead: {other['seconds_median']:.2f} s, "
                    f"{other['mb_per_s']:,.0f} MB/s, not used in the ratios)")

        for key in ("nginx", "edge"):
            if key not in only:
                continue
            log(f"\n== {LABELS[key]} (core {PROXY_CORE}), load average {loadavg()}")
            if args.mix_tls:
                conf = env.nginx_tls_conf if key == "nginx" else env.edge_tls_conf
                server = Server(key, env, conf=conf).start()
                results[key] = {}
                try:
                    tls_mix_checks(server, env)
                    results[key]["mix_tls"] = measure_mix(server, env, args)
                finally:
                    server.stop()
                continue
            server = Server(key, env).start()
            res = results[key] = {}
            try:
                location = functional_checks(server, env, origin_location)
                res["tls_handshake"] = tls_details(server.tls_port)
                res["geo"] = geo_check(server, env, sample)
                g = res["geo"]
                log("  checks: 401 realm, 307 Location (SAS query unchanged), manifest digest, "
                    "451 embargo (also behind a second trusted hop), 421 other host: ok")
                log(f"  geo: {g['addresses']} addresses ({sum(1 for a in sample if a[1] in EMBARGO)} "
                    f"embargoed): {len(g['decisions_wrong'])} wrong decisions, "
                    f"{len(g['countries_wrong'])} access-log countries differing from the MMDB")
                for w in (g["decisions_wrong"] + g["countries_wrong"])[:5]:
                    log(f"    {w}")
                t = res["tls_handshake"]
                log(f"  TLS: {t['protocol']} {t['cipher']}, {t['signature']} "
                    f"({t['public_key_bits']}-bit key), key exchange {t['key_exchange']}")
                res["mix"] = measure_mix(server, env, args)
                if not args.skip_blob:
                    host_port = location.split("/")[2]
                    res["blob"] = measure_blob(server, env, location, f"{host_port}:127.0.0.1",
                                               args.blob_runs, LOAD_CORE, args.wait_quiet)
                    log(f"  blob: {res['blob']['seconds_median']:.2f} s, "
                        f"{res['blob']['mb_per_s']:,.0f} MB/s, proxy CPU "
                        f"{res['blob']['cpu_ms_per_gib']:,.0f} ms/GiB")
                if not args.skip_tls:
                    res["tls"] = measure_tls(server, args.tls_seconds, args.tls_clients,
                                             args.wait_quiet)
                if not args.skip_idle:
                    # On a new process, so that memory the mix freed is not what the
                    # connections reuse; a few requests first for lazy start-up allocations.
                    server.stop()
                    server.start()
                    geo_check(server, env, sample[:20] + sample[-20:])
                    res["idle"] = measure_idle(server, env, args.idle_connections,
                                               args.wait_quiet)
            finally:
                server.stop()
        if args.floor:
            log(f"\n== {LABELS['floor']}: a ProxyHttp with only upstream_peer, no job done "
                f"(core {PROXY_CORE}), load average {loadavg()}")
            server = Server("floor", env).start()
            try:
                results["floor"] = {"mix": measure_mix(server, env, args)}
            finally:
                server.stop()
        if "nginx" in only and not args.skip_blob and not args.skip_cache:
            nginx_location = origin_location.replace(f"http://{DATA_HOST}/",
                                                     f"http://{PUBLIC_DATA_HOST}:"
                                                     f"{env.ports['NGINX_PORT']}/")
            results["nginx"]["proxy_cache"] = measure_nginx_cache(env, args, nginx_location)
        if "edge" in only and not args.skip_blob and not args.skip_cache:
            results["edge"]["blob_cache"] = measure_blob_cache(env, args)
        if not args.skip_blob and not args.skip_blob_tls:
            blob_tls_cases(env, args, results, only, origin, origin_location)
        origin.stop()

        # A geo cross-check from registry-edge's own command line.
        if "edge" in only:
            picks = [a for a in env.addresses if a[1] in EMBARGO][:2] + \
                    [a for a in env.addresses if a[1] not in EMBARGO and a[1] != "--"][:2] + \
                    [a for a in env.addresses if a[1] == "--"][:1]
            agree = 0
            for ip, country in picks:
                _, out, _ = run([EDGE_BIN, "geo", "lookup", ip, "-c", env.edge_conf], check=False)
                m = re.search(r"country\s+(\S+)", out)
                got = m.group(1) if m else "?"
                agree += (got == country) or (got == "unknown" and country == "--")
            environment["geo lookup"] = (f"registry-edge geo lookup agrees with the generated "
                                         f"list on {agree}/{len(picks)} addresses")
        environment["load average at the end"] = loadavg()
        report(results, env, args, environment)
    finally:
        PROCS.stop_all()
        if args.keep:
            log(f"run directory kept: {env.dir}")
        else:
            shutil.rmtree(env.dir, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        PROCS.stop_all()
        print(f"harness: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        PROCS.stop_all()
        print("harness: interrupted; everything it started is stopped", file=sys.stderr)
        sys.exit(130)
