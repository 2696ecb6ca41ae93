#!/usr/bin/env python3
"""Per-request profile of a callgrind dump from `benches/load/run --callgrind N --keep`.

    benches/load/callgrind_profile.py DUMP REQUESTS                    # top functions by self cost
    benches/load/callgrind_profile.py DUMP REQUESTS --match 'ProxyHttp for|lean::'   # inclusive
    benches/load/callgrind_profile.py DUMP REQUESTS --callers __memcpy_avx_unaligned_erms
    benches/load/callgrind_profile.py DUMP REQUESTS --callees 'Edge>::upstream_head$'

DUMP is `callgrind.<proxy>.<pid>.1` in the kept run directory; REQUESTS is the request count
the harness printed for that run, so figures are instructions per request.

callgrind_annotate 3.19 (Debian 12) puts the whole count of such a dump (taken after
`callgrind_control -z`) on `clone`; this reads the format itself. Self cost: a function's own
cost lines. Inclusive: self plus the cost of its calls (a call's line after `calls=` is the
callee's inclusive cost), recursion not folded. Names must be written in full
(`--compress-strings=no`, as the harness runs valgrind).
"""

import argparse
import collections
import re


def read(path):
    self_cost = collections.Counter()
    call_cost = collections.Counter()  # (caller, callee) -> inclusive cost of the calls
    call_count = collections.Counter()
    fn = cfn = None
    pending = None  # the number of calls of a `calls=` line, until its cost line
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                fn = line[3:].rstrip("\n")
            elif line.startswith("cfn="):
                cfn = line[4:].rstrip("\n")
            elif line.startswith("calls="):
                pending = int(line[6:].split()[0])
            elif line[:1].isdigit() or line[:1] in ("+", "-", "*"):
                parts = line.split()
                if len(parts) < 2:
                    continue
                cost = int(parts[1])
                if pending is not None:
                    call_cost[(fn, cfn)] += cost
                    call_count[(fn, cfn)] += pending
                    pending = None
                else:
                    self_cost[fn] += cost
    return self_cost, call_cost, call_count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump")
    ap.add_argument("requests", type=float)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--match", help="inclusive cost of the functions whose name matches")
    ap.add_argument("--callers", help="who calls the functions whose name matches, and at what cost")
    ap.add_argument("--callees", help="what the functions whose name matches call, and at what cost")
    a = ap.parse_args()
    self_cost, call_cost, call_count = read(a.dump)
    total = sum(self_cost.values())
    print(f"{total:,} instructions, {total / a.requests:,.0f} per request")
    if a.callers or a.callees:
        # Calls into the matching functions, by caller; or out of them, by callee (calls of a
        # function to itself left out).
        into = bool(a.callers)
        pat = re.compile(a.callers or a.callees)
        by = collections.Counter()
        n = collections.Counter()
        for (caller, callee), c in call_cost.items():
            matched, other = (callee, caller) if into else (caller, callee)
            if matched and pat.search(matched) and (into or caller != callee):
                by[other] += c
                n[other] += call_count[(caller, callee)]
        print(f"{'per request':>12} {'calls/req':>9}  {'caller' if into else 'callee (inclusive)'}")
        for other, c in by.most_common(a.top):
            print(f"{c / a.requests:12,.0f} {n[other] / a.requests:9.2f}  {other}")
    elif a.match:
        pat = re.compile(a.match)
        outgoing = collections.Counter()
        for (caller, callee), c in call_cost.items():
            if caller != callee:
                outgoing[caller] += c
        rows = sorted(((self_cost[f] + outgoing[f], self_cost[f], f)
                       for f in set(self_cost) | set(outgoing) if f and pat.search(f)),
                      reverse=True)
        print(f"{'inclusive':>12} {'self':>8}  function (per request)")
        for inc, own, f in rows[:a.top]:
            print(f"{inc / a.requests:12,.0f} {own / a.requests:8,.0f}  {f}")
    else:
        print(f"{'self':>12} {'share':>6}  function (per request)")
        for f, c in self_cost.most_common(a.top):
            print(f"{c / a.requests:12,.0f} {100 * c / total:5.1f}%  {f}")


if __name__ == "__main__":
    main()
