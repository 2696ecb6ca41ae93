#!/usr/bin/env python3
"""What relaying a file over loopback TCP costs the relaying process on this machine, with
nothing else in the way: the floor under any proxy's blob transfer, and with SHA-256 the floor
under any verified cache fill (harness.py prints both beside the blob cache figures;
docs/performance.md).

    python3 relaycost.py FILE RELAY_CORE OTHER_CORE

Two child processes pinned to OTHER_CORE stand where the origin and curl stand in the harness:
one sends FILE (already in the page cache) over a loopback connection with sendfile(2), the
other reads everything from a second connection (1 MiB reads, like curl). This process, pinned
to RELAY_CORE, receives into a 4 MiB buffer (a fill's chunk) and sends each buffer on, twice:
`relay` does nothing else; `relay_sha256` also hashes each buffer with Python's hashlib, which
runs OpenSSL's SHA-256 (the code `openssl speed -evp sha256` measures). Prints one JSON object:
the relay's CPU (user + system) per GiB and the seconds, for each way.
"""
import hashlib
import json
import os
import socket
import sys

from sendcost import mark, read_all, since, warm

CHUNK = 4 << 20


def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


def relay_once(path, sha, relay_core, other_core):
    size = os.path.getsize(path)
    src, src_port = listener()
    dst, dst_port = listener()
    children = []
    for role in ("feeder", "reader"):
        pid = os.fork()
        if pid == 0:
            os.sched_setaffinity(0, {other_core})
            if role == "feeder":
                c, _ = src.accept()
                fd = os.open(path, os.O_RDONLY)
                at = 0
                while at < size:
                    at += os.sendfile(c.fileno(), fd, at, min(4 << 20, size - at))
                c.close()
                os._exit(0)
            read_all(dst_port, size)
        children.append(pid)
    os.sched_setaffinity(0, {relay_core})
    up = socket.create_connection(("127.0.0.1", src_port))
    down, _ = dst.accept()
    view = memoryview(bytearray(CHUNK))
    h = hashlib.sha256() if sha else None
    start = mark()
    moved = 0
    while moved < size:
        n = 0
        while n < CHUNK and moved + n < size:
            k = up.recv_into(view[n:])
            if not k:
                raise SystemExit(f"relaycost: the feeder stopped after {moved + n} bytes")
            n += k
        if h is not None:
            h.update(view[:n])
        down.sendall(view[:n])
        moved += n
    down.close()
    spent = since(start, size)
    up.close()
    src.close()
    dst.close()
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise SystemExit(f"relaycost: a child failed (status {status})")
    return spent


def main():
    path, relay, other = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    warm(path)
    out = {name: relay_once(path, sha, relay, other)
           for name, sha in (("relay", False), ("relay_sha256", True))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
