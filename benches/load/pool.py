#!/usr/bin/env python3
"""Pools several runs of the load harness and of the pull bench: every target line of every run,
and each target's figure over all the runs together, with a 95 % confidence interval.

    python3 benches/load/pool.py                      # every run kept in target/load/runs/
    python3 benches/load/pool.py --since 20261207T0300 # the runs written from then on
    python3 benches/load/pool.py FILE...              # these runs (harness.py or pull.py JSON)

harness.py and pull.py keep a copy of each run's JSON in target/load/runs/ (`<UTC time>-blob.json`,
`<UTC time>-pull.json`). One run says whether its figures met their targets on that run; on a
machine whose cores drift by a fifth within minutes (docs/performance.md) a figure that sits a
few per cent from its target is met in some runs and missed in others. Pooled, the question is
what the figure is: its mean over the runs (over every paired round, for the fill), and the
interval that holds the true mean with 95 % confidence (Student's t; the rounds and runs are
taken as independent samples of the same cost). A target is **met** when the whole interval is
on its side, **missed** when the whole interval is on the other, **not decided** when the
interval straddles it (more runs narrow it). Lines marked (reference) are printed, not judged.
Nothing here measures; it reads what the runs wrote.
"""

import argparse
import glob
import json
import math
import os
import statistics
import sys

from common import ROOT, RUNS_DIR

# Student's t, two-sided 95 %, by degrees of freedom (1-30); 1.96 beyond.
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042]

# The pull bench's target (the blob cache issue's acceptance): a second pull with the cache on at
# least 3 × faster than the first.
PULL_TARGET = 3.0


def interval(values):
    """Mean and the 95 % confidence interval of the mean; None for fewer than two values."""
    if len(values) < 2:
        return None
    m = statistics.mean(values)
    df = len(values) - 1
    t = T95[df - 1] if df <= len(T95) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def verdict(ci, target, better):
    """met / missed / not decided: where the interval lies against the target."""
    if ci is None:
        return "one value"
    _, lo, hi = ci
    good, bad = (hi <= target, lo > target) if better == "le" else (lo >= target, hi < target)
    return "met" if good else "missed" if bad else "not decided"


def parse_target(text):
    """'≤ 1.0' -> ('le', 1.0); None for a target that is not a bound on a ratio."""
    for sign, better in (("≤", "le"), ("≥", "ge")):
        if text.startswith(sign):
            try:
                return better, float(text[len(sign):].strip())
            except ValueError:
                return None
    return None


def fmt(values):
    return ", ".join(f"{v:.2f}" for v in values)


def report(name, values, target, better, met_runs=None, unit="run"):
    ci = interval(values)
    sign = "≤" if better == "le" else "≥"
    print(f"\n{name}")
    print(f"  target {sign} {target:g}; {len(values)} {unit}(s): {fmt(values)}")
    if met_runs is not None:
        print(f"  met in {met_runs[0]} run(s) of {met_runs[1]}")
    if ci is None:
        return
    m, lo, hi = ci
    judged = "printed, not judged" if name.startswith("(reference)") else verdict(ci, target,
                                                                                  better)
    print(f"  mean {m:.3f}, median {statistics.median(values):.3f}, 95 % interval of the mean "
          f"{lo:.3f}-{hi:.3f}, range {min(values):.2f}-{max(values):.2f}: {judged}")


def load(paths):
    runs = []
    for p in paths:
        try:
            with open(p) as f:
                runs.append((p, json.load(f)))
        except (OSError, ValueError) as e:
            sys.exit(f"pool.py: {p}: {e}")
    return runs


def pool_blob(runs):
    """The harness's target lines over the runs; the fill's paired rounds pooled as rounds."""
    names = []
    for _, r in runs:
        for name in r.get("ratios", {}):
            if name not in names:
                names.append(name)
    for name in names:
        rows = [r["ratios"][name] for _, r in runs if name in r.get("ratios", {})]
        target = parse_target(rows[0]["target"])
        if target is None:
            continue
        better, bound = target
        report(name, [x["value"] for x in rows], bound, better,
               (sum(1 for x in rows if x["met"]), len(rows)))
    for key, suffix in (("blob_cache", ""), ("blob_cache_tls", ", TLS on both sides")):
        rounds = [rd["ratio"] for _, r in runs
                  for rd in (r.get("results", {}).get("registry-edge", {}).get(key, {})
                             .get("paired", {}).get("rounds", []))]
        if rounds:
            report("blob cache fill CPU per GiB, registry-edge / (nginx proxying + SHA-256), "
                   f"every paired round of every run{suffix}", rounds, 1.0, "le", unit="round")
            print(f"  rounds over the target: {sum(1 for v in rounds if v > 1.0)} of "
                  f"{len(rounds)}")


def pool_pull(runs):
    for key, label in (("plain", "plain HTTP"), ("tls", "TLS on both sides")):
        on = [r["results"][key]["on"]["speedup_pull1_over_pull2"] for _, r in runs
              if key in r.get("results", {})]
        if not on:
            continue
        report(f"skopeo pull, second pull / first with the cache on, {label}", on, PULL_TARGET,
               "ge", (sum(1 for v in on if v >= PULL_TARGET), len(on)))
        asked = [r["results"][key]["on"]["pull2"]["data_requests"] for _, r in runs
                 if key in r.get("results", {})]
        print(f"  data endpoint requests on the cached pulls: {asked}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="run JSON files (default: target/load/runs/*)")
    ap.add_argument("--since", default="",
                    help="only the kept runs whose name (UTC time, e.g. 20261207T0300) sorts "
                         "at or after this")
    args = ap.parse_args()
    paths = args.files or sorted(p for p in glob.glob(os.path.join(RUNS_DIR, "*.json"))
                                 if os.path.basename(p) >= args.since)
    if not paths:
        sys.exit("pool.py: no runs (harness.py and pull.py keep them in target/load/runs/)")
    runs = load(paths)
    blob = [(p, r) for p, r in runs if "ratios" in r]
    pull = [(p, r) for p, r in runs if "ratios" not in r and "results" in r]
    builds = sorted({r.get("environment", {}).get("registry-edge", "?") for _, r in runs})
    print(f"{len(blob)} harness run(s), {len(pull)} pull run(s); registry-edge: "
          + "; ".join(builds))
    for p, _ in runs:
        print(f"  {os.path.relpath(p, ROOT)}")
    if blob:
        pool_blob(blob)
    if pull:
        pool_pull(pull)


if __name__ == "__main__":
    main()
