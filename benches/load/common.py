"""What the load harness (harness.py) and the pull bench (pull.py) share: logging, the processes
they start (recorded by PID, stopped on exit or signal), short commands, /proc readings, free
ports and rendered templates."""

import json
import multiprocessing
import os
import random
import re
import signal
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg=""):
    print(msg, flush=True)


class BenchError(Exception):
    pass


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return f"({e})"


# --------------------------------------------------------------------------------------------
# Processes: every one started here is recorded by PID and stopped on exit.


class Processes:
    def __init__(self):
        self.running = {}  # pid -> [name, Popen or Process, stop signal, extra pids (nginx workers)]

    def start(self, name, argv, stop_signal, log_path):
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
        self.running[proc.pid] = [name, proc, stop_signal, []]
        return proc

    def adopt_children(self, pid):
        """nginx workers: recorded so that they are stopped even if their master is lost."""
        if pid in self.running:
            self.running[pid][3] = children(pid)

    def stop(self, pid, timeout=15.0):
        entry = self.running.pop(pid, None)
        if entry is None:
            return
        name, proc, stop_signal, extra = entry
        if isinstance(proc, multiprocessing.process.BaseProcess):
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout)
            return
        if proc.poll() is None:
            try:
                os.kill(pid, stop_signal)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"  {name} (pid {pid}) did not stop in {timeout:.0f}s: SIGKILL")
                os.kill(pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        for child in extra:  # still there only if the master died without them
            if proc_name(child).startswith("nginx") and proc_ppid(child) in (pid, 1):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop_all(self):
        for pid in list(reversed(list(self.running))):
            self.stop(pid)


PROCS = Processes()


def run(argv, timeout=None, check=True, env=None, log_path=None):
    """A short-lived command, recorded while it runs so that a signal also stops it. With
    log_path its output goes there (not kept in memory)."""
    if log_path:
        out = open(log_path, "ab")
        kw = {"stdout": out, "stderr": subprocess.STDOUT}
    else:
        out = None
        kw = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=ROOT, env=env, **kw)
    PROCS.running[proc.pid] = [argv[0], proc, signal.SIGTERM, []]
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        PROCS.stop(proc.pid)
        raise BenchError(f"{' '.join(argv)}: not done within {timeout}s")
    except BaseException:  # Ctrl-C, SIGTERM: stop it before unwinding
        PROCS.stop(proc.pid)
        raise
    finally:
        if out:
            out.close()
    PROCS.running.pop(proc.pid, None)
    if check and proc.returncode != 0:
        detail = (f"its output: {log_path}\n{tail(log_path)}" if log_path
                  else f"{stdout}{stderr}")
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}:\n{detail}")
    return proc.returncode, stdout, stderr


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------------------------
# /proc


def proc_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()  # from field 3 (state) on


def proc_ppid(pid):
    try:
        return int(proc_fields(pid)[1])
    except (OSError, ValueError):
        return -1


def proc_name(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return [p for p in (int(d) for d in os.listdir("/proc") if d.isdigit())
                if proc_ppid(p) == pid]


def cpu_seconds(pids):
    """utime + stime (fields 14, 15 of /proc/PID/stat) of the processes, all threads."""
    total = 0
    for pid in pids:
        f = proc_fields(pid)
        total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def minor_faults(pids):
    """Minor page faults (field 10 of /proc/PID/stat) of the processes, all threads: a page
    first touched, as a freshly allocated buffer's are."""
    return sum(int(proc_fields(pid)[7]) for pid in pids)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --------------------------------------------------------------------------------------------
# Ports and templates


def free_port(_taken=set()):
    """A free loopback port below the ephemeral range (32768-60999 here), so that none of the
    many client connections can hold it when a server is restarted."""
    low, _ = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(max(1024, low - 12000), low)
        if port in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise BenchError("no free port below the ephemeral range")


def render(template, out, subs):
    """`template` (a file beside this one) with every @NAME@ replaced by subs[NAME], written to
    `out`; a placeholder left unfilled is an error."""
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for key, value in subs.items():
        text = text.replace(f"@{key}@", str(value))
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise BenchError(f"{template}: unfilled placeholders {left}")
    with open(out, "w") as f:
        f.write(text)
    return out


# --------------------------------------------------------------------------------------------
# Results


RUNS_DIR = os.path.join(ROOT, "target", "load", "runs")


def write_result(path, out, kind):
    """Writes a run's figures to `path` (the last run of its kind) and keeps a copy in
    target/load/runs/, named by the time it was written and `kind` ("blob" for harness.py,
    "pull" for pull.py), for pool.py to pool over several runs. Returns the copy's path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.makedirs(RUNS_DIR, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    copy = os.path.join(RUNS_DIR, f"{stamp}-{kind}.json")
    for p in (path, copy):
        with open(p, "w") as f:
            json.dump(out, f, indent=2, sort_keys=False, default=str)
    return copy
