#!/usr/bin/env python3
"""What sending a file over loopback TCP costs the sender on this machine, with nothing else
in the way: the floor under any proxy's cache hit (harness.py prints it beside the blob cache
figures; docs/performance.md).

    python3 sendcost.py FILE SENDER_CORE RECEIVER_CORE

A child process pinned to RECEIVER_CORE reads everything from a loopback connection (1 MiB
reads, like curl); this process, pinned to SENDER_CORE, sends FILE (already in the page cache)
twice: with sendfile(2) in 4 MiB calls (what registry-edge does for a plain hit) and with
pread(2) into a 256 KiB buffer and send(2) (a copy through user space). Prints one JSON object:
the sender's CPU (user + system) per GiB and the seconds, for each way.
"""
import json
import os
import resource
import socket
import sys
import time

GIB = 1 << 30


def send_once(path, mode, sender_core, receiver_core):
    size = os.path.getsize(path)
    srv, port = listener()
    child = os.fork()
    if child == 0:
        os.sched_setaffinity(0, {receiver_core})
        read_all(port, size)
    os.sched_setaffinity(0, {sender_core})
    conn, _ = srv.accept()
    fd = os.open(path, os.O_RDONLY)
    start = mark()
    at = 0
    if mode == "sendfile":
        while at < size:
            at += os.sendfile(conn.fileno(), fd, at, min(4 << 20, size - at))
    else:
        view = memoryview(bytearray(256 << 10))
        while at < size:
            n = os.preadv(fd, [view], at)
            conn.sendall(view[:n])
            at += n
    conn.close()
    spent = since(start, size)
    os.close(fd)
    srv.close()
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise SystemExit(f"sendcost: the receiver did not get the {size} bytes ({mode})")
    return spent


def listener():
    """A listening socket on a free loopback port, and the port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


def read_all(port, size):
    """In a forked child: connects to `port`, reads to the end (1 MiB reads, like curl), and
    exits 0 if that was `size` bytes, 1 if not."""
    c = socket.create_connection(("127.0.0.1", port))
    buf = bytearray(1 << 20)
    got = 0
    while True:
        n = c.recv_into(buf)
        if not n:
            break
        got += n
    os._exit(0 if got == size else 1)


def mark():
    """This process's CPU time and the clock, now."""
    return resource.getrusage(resource.RUSAGE_SELF), time.monotonic()


def since(start, size):
    """This process's CPU (user + system) per GiB for `size` bytes and the seconds since
    `start` (`mark()`)."""
    (r0, t0), (r1, t1) = start, mark()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"cpu_ms_per_gib": cpu * 1000 * GIB / size, "seconds": t1 - t0}


def warm(path):
    """Reads `path` once, so that the measured runs find it in the page cache."""
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


def main():
    path, sender, receiver = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    warm(path)
    out = {mode: send_once(path, mode, sender, receiver) for mode in ("sendfile", "copy")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
