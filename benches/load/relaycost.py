#!/usr/bin/env python3
"""What relaying a file over loopback TCP costs the relaying process on this machine, with
nothing else in the way: the floor under any proxy's blob transfer, and with SHA-256 the floor
under any verified cache fill (harness.py prints both beside the blob cache figures;
docs/performance.md).

    python3 relaycost.py FILE RELAY_CORE OTHER_CORE [--one-copy ROUNDS]

Two child processes pinned to OTHER_CORE stand where the origin and curl stand in the harness:
one sends FILE (already in the page cache) over a loopback connection with sendfile(2), the
other reads everything from a second connection (1 MiB reads, like curl). This process, pinned
to RELAY_CORE, receives into a 4 MiB buffer (a fill's chunk) and sends each buffer on, twice:
`relay` does nothing else; `relay_sha256` also hashes each buffer with Python's hashlib, which
runs OpenSSL's SHA-256 (the code `openssl speed -evp sha256` measures). Prints one JSON object:
the relay's CPU (user + system) per GiB and the seconds, for each way.

With `--one-copy ROUNDS` it measures instead whether a fill could cost less by copying the
bytes once instead of twice, ROUNDS times each, alternating: the two-copy relay above, with
and without the hash, against a one-copy relay that moves the bytes to the reader without
bringing them into user space (splice(2) from the socket into a pipe, tee(2) into a second
pipe, splice(2) from that one to the reader's socket) and reads them from the first pipe into
a buffer, the one copy a verified fill needs for its hash and its disk write. Prints the CPU
per GiB of every round of each way.
"""
import ctypes
import fcntl
import hashlib
import json
import os
import socket
import sys

from sendcost import listener, mark, read_all, since, warm

CHUNK = 4 << 20
# The one-copy relay's pipes: 1 MiB each (F_SETPIPE_SZ; /proc/sys/fs/pipe-max-size's default).
PIPE = 1 << 20
F_SETPIPE_SZ = 1031
SPLICE_F_MOVE = 1


def relay_once(path, sha, relay_core, other_core, one_copy=False):
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
    h = hashlib.sha256() if sha else None
    start = mark()
    (splice_relay if one_copy else copy_relay)(up, down, size, h)
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


def copy_relay(up, down, size, h):
    """Receives into a 4 MiB buffer, hashes it (with `h`), sends it on: two copies."""
    view = memoryview(bytearray(CHUNK))
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


LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
LIBC.tee.restype = ctypes.c_ssize_t


def splice_relay(up, down, size, h):
    """Moves what one splice(2) takes from the socket into pipe `a`, tee(2)s it into pipe `b`,
    splices `b` to the reader and reads `a` into a buffer, which it hashes (with `h`): one
    copy. (Each splice takes what the socket holds, up to the pipe's 1 MiB.)"""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    for p in (a_w, b_w):
        fcntl.fcntl(p, F_SETPIPE_SZ, PIPE)
    view = memoryview(bytearray(PIPE))
    moved = 0
    try:
        while moved < size:
            n = os.splice(up.fileno(), a_w, min(PIPE, size - moved), flags=SPLICE_F_MOVE)
            if not n:
                raise SystemExit(f"relaycost: the feeder stopped after {moved} bytes")
            t = 0
            while t < n:
                k = LIBC.tee(a_r, b_w, n - t, 0)
                if k <= 0:
                    raise SystemExit(f"relaycost: tee: {os.strerror(ctypes.get_errno())}")
                t += k
            s = 0
            while s < n:
                s += os.splice(b_r, down.fileno(), n - s, flags=SPLICE_F_MOVE)
            r = 0
            while r < n:
                r += os.readv(a_r, [view[r:n]])
            if h is not None:
                h.update(view[:n])
            moved += n
    finally:
        for fd in (a_r, a_w, b_r, b_w):
            os.close(fd)


def main():
    path, relay, other = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    warm(path)
    if sys.argv[4:5] == ["--one-copy"]:
        rounds = int(sys.argv[5])
        ways = (("relay", False, False), ("one_copy", False, True),
                ("relay_sha256", True, False), ("one_copy_sha256", True, True))
        out = {name: [] for name, _, _ in ways}
        for _ in range(rounds):
            for name, sha, one in ways:
                out[name].append(relay_once(path, sha, relay, other, one)["cpu_ms_per_gib"])
    else:
        out = {name: relay_once(path, sha, relay, other)
               for name, sha in (("relay", False), ("relay_sha256", True))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
