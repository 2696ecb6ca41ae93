#!/usr/bin/env python3
"""Checks deploy/monitoring against the metrics registry-edge really exports (deploy/check.sh).

usage: monitoring.py REPO_ROOT OUT_DIR

  - the metric names registry-edge registers are read from its sources (every
    "registry_edge_..." string literal in crates/*/src; histograms add _bucket, _sum, _count);
  - grafana-dashboard.json is JSON with the structure Grafana imports: title, uid, schemaVersion,
    templating (datasource, region, instance), panels with unique ids, gridPos, and targets whose
    `expr` names only known metrics; the panels cover the required subjects;
  - every PromQL expression of the dashboard, with Grafana's variables replaced, is written to
    OUT_DIR/dashboard-exprs.rules.yaml as a recording rule, for `promtool check rules` to parse;
  - prometheus-rules.yaml names only known metrics (promtool checks its syntax separately).
"""

import glob
import json
import os
import re
import sys

import yaml

errors = []


def fail(message):
    errors.append(message)


METRIC = re.compile(r"\bregistry_edge_[a-z0-9_]+")
# Prometheus' own series, usable in expressions.
BUILTIN = {"up"}


def exported_metrics(root):
    names = set()
    histograms = set()
    for path in glob.glob(os.path.join(root, "crates/*/src/**/*.rs"), recursive=True):
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r'"(registry_edge_[a-z0-9_]+)"', text):
            names.add(m.group(1))
        for m in re.finditer(r'HistogramOpts::new\(\s*"(registry_edge_[a-z0-9_]+)"', text):
            histograms.add(m.group(1))
    for h in histograms:
        names.update({h + "_bucket", h + "_sum", h + "_count"})
    return names


def used_metrics(expr):
    return set(METRIC.findall(expr))


def grafana_exprs(dash):
    for p in dash["panels"]:
        for t in p.get("targets", []):
            yield p, t


def main(root, out_dir):
    known = exported_metrics(root)
    if "registry_edge_http_requests_total" not in known:
        fail(f"could not read the exported metric names from {root}/crates (found {sorted(known)})")

    # Dashboard.
    path = os.path.join(root, "deploy/monitoring/grafana-dashboard.json")
    try:
        dash = json.load(open(path, encoding="utf-8"))
    except ValueError as e:
        fail(f"{path}: not JSON: {e}")
        dash = None
    if dash is not None:
        for key, kind in [("title", str), ("uid", str), ("schemaVersion", int), ("panels", list),
                          ("templating", dict), ("time", dict)]:
            if not isinstance(dash.get(key), kind):
                fail(f"dashboard: `{key}` missing or not a {kind.__name__}")
        variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
        for v in ("datasource", "region", "instance"):
            if v not in variables:
                fail(f"dashboard: template variable ${v} missing")
        if variables.get("datasource", {}).get("query") != "prometheus":
            fail("dashboard: $datasource must be a Prometheus data source variable")
        ids = [p.get("id") for p in dash.get("panels", [])]
        if len(ids) != len(set(ids)) or None in ids:
            fail(f"dashboard: panel ids must be present and unique: {ids}")
        rules = []
        covered = set()
        for p in dash.get("panels", []):
            where = f"dashboard panel {p.get('id')} {p.get('title')!r}"
            if not isinstance(p.get("type"), str) or not isinstance(p.get("title"), str):
                fail(f"{where}: type and title required")
            g = p.get("gridPos", {})
            if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")) or g.get("x", 0) + g.get("w", 0) > 24:
                fail(f"{where}: gridPos must hold integer h, w, x, y within 24 columns")
            if p.get("type") == "row":
                continue
            if not p.get("targets"):
                fail(f"{where}: no targets")
            if p.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"{where}: datasource must be ${{datasource}}")
        for p, t in grafana_exprs(dash):
            expr = t.get("expr", "")
            where = f"dashboard panel {p.get('id')} {p.get('title')!r} target {t.get('refId')}"
            if not expr:
                fail(f"{where}: empty expr")
                continue
            for m in used_metrics(expr) - known:
                fail(f"{where}: metric {m} is not exported by registry-edge")
            covered |= used_metrics(expr)
            concrete = (expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
                        .replace("$region", ".*").replace("$instance", ".*"))
            if "$" in concrete:
                fail(f"{where}: unknown Grafana variable in {expr}")
            rules.append({"record": f"dashboard:panel{p['id']}:{t.get('refId', 'A').lower()}", "expr": concrete})
        required = {
            "registry_edge_http_requests_total",
            "registry_edge_http_request_duration_seconds_bucket",
            "registry_edge_http_edge_responses_total",
            "registry_edge_access_refusals_total",
            "registry_edge_upstream_connect_errors_total",
            "registry_edge_upstream_retries_total",
            "registry_edge_upstream_peers",
            "registry_edge_upstream_healthy_peers",
            "registry_edge_geoip_build_timestamp_seconds",
            "registry_edge_tls_certificate_expiry_timestamp_seconds",
            "registry_edge_geoip_reloads_total",
            "registry_edge_access_log_dropped_lines_total",
            "registry_edge_blob_cache_requests_total",
            "registry_edge_blob_cache_bytes_total",
            "registry_edge_blob_cache_verification_failures_total",
            "registry_edge_blob_cache_evictions_total",
            "registry_edge_blob_cache_errors_total",
            "registry_edge_blob_cache_disk_bytes",
            "registry_edge_blob_cache_entries",
        }
        for m in sorted(required - covered):
            fail(f"dashboard: no panel shows {m}")
        with open(os.path.join(out_dir, "dashboard-exprs.rules.yaml"), "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard-exprs", "rules": rules}]}, f, sort_keys=False)
        print(f"  {path}: {len(dash['panels'])} panels, {len(rules)} queries, metrics known")

    # Alert rules: metric names only (syntax: promtool).
    path = os.path.join(root, "deploy/monitoring/prometheus-rules.yaml")
    doc = yaml.safe_load(open(path, encoding="utf-8"))
    n = 0
    for group in doc["groups"]:
        for rule in group["rules"]:
            n += 1
            for m in used_metrics(rule["expr"]) - known:
                fail(f"{path}: rule {rule.get('alert') or rule.get('record')}: metric {m} is not exported by registry-edge")
    print(f"  {path}: {n} rules, metrics known")

    if errors:
        print("\n".join(["FAILED:"] + errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
