#!/usr/bin/env python3
"""Checks rendered Kubernetes manifests of deploy/kubernetes (called by deploy/check.sh).

usage: k8s.py OUT_DIR NAME=RENDERED.yaml... [--plain FILE.yaml...]

For every rendered kustomization (NAME=file, the output of `kubectl kustomize`):
  - every object of a core kind is validated against the Kubernetes OpenAPI schemas of
    kubernetes-validate (strict: unknown fields are errors), for each version in VERSIONS;
    kinds of CRDs (monitoring.coreos.com: ServiceMonitor) have no schema there and are skipped
    by name, after a structural check of their own;
  - the objects agree with each other and with the registry-edge configuration they carry:
    probes on the admin port and paths, container ports = listener and admin ports of the
    configuration, terminationGracePeriodSeconds > preStop sleep + grace_period +
    graceful_shutdown_timeout, Service/HPA/PDB/ServiceMonitor selectors and targets, security
    context, the pod's region label = local_region;
  - the configuration inside the generated ConfigMap is written to OUT_DIR/NAME.registry-edge.yaml
    for `registry-edge check --no-files` (deploy/check.sh runs it).
Files after --plain are single manifests (deploy/kubernetes/extras) and get the schema check only.
"""

import os
import re
import sys

import kubernetes_validate
import yaml

VERSIONS = ["1.30.0", "1.37.0"]
CRD_GROUPS = ("monitoring.coreos.com/",)

errors = []


def fail(where, message):
    errors.append(f"{where}: {message}")


def duration_seconds(text):
    """registry-edge durations: 500ms, 10s, 5m, 1h, 1d and sums such as 1m30s."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def port_of(address):
    return int(str(address).rsplit(":", 1)[1])


def schema_check(where, doc):
    kind = doc.get("kind", "?")
    name = doc.get("metadata", {}).get("name", "?")
    if doc.get("apiVersion", "").startswith(CRD_GROUPS):
        print(f"  {where}: {kind}/{name}: CRD kind, schema not checked (kubernetes-validate has core kinds only)")
        return
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{where}: {kind}/{name}", f"Kubernetes {version}: {e.message} at {'.'.join(str(p) for p in e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            fail(f"{where}: {kind}/{name}", f"Kubernetes {version}: no schema: {e}")
    print(f"  {where}: {kind}/{name}: valid for Kubernetes {', '.join(VERSIONS)} (strict)")


def one(objs, kind, name=None):
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if len(found) != 1:
        raise KeyError(f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
    return found[0]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def consistency(where, objs, out_dir):
    dep = one(objs, "Deployment", "registry-edge")
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    if not matches(dep["spec"]["selector"]["matchLabels"], pod_labels):
        fail(where, "Deployment selector does not match its pod labels")
    (c,) = [c for c in spec["containers"] if c["name"] == "registry-edge"]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

    # The configuration the pods read: the generated ConfigMap the Deployment mounts.
    vols = {v["name"]: v for v in spec["volumes"]}
    cm_name = vols["config"]["configMap"]["name"]
    cm = one(objs, "ConfigMap", cm_name)
    text = cm["data"]["registry-edge.yaml"]
    path = os.path.join(out_dir, f"{where}.registry-edge.yaml")
    with open(path, "w") as f:
        f.write(text)
    config = yaml.safe_load(text)
    mount = [m for m in c["volumeMounts"] if m["name"] == "config"][0]
    args = c.get("args", [])
    if args[:1] != ["run"] or "-c" not in args or args[args.index("-c") + 1] != mount["mountPath"]:
        fail(where, f"container args {args} do not run the mounted configuration {mount['mountPath']}")

    # Ports: container ports are the configuration's listeners and admin address.
    listener_ports = sorted(port_of(l["address"]) for l in config["listeners"])
    if sorted(v for k, v in ports.items() if k != "admin") != listener_ports:
        fail(where, f"container ports {ports} are not the listeners' ports {listener_ports}")
    admin = port_of(config["admin"]["address"])
    if ports.get("admin") != admin:
        fail(where, f"container port admin {ports.get('admin')} is not admin.address port {admin}")
    if not config["admin"]["address"].startswith(("0.0.0.0:", "[::]:")):
        fail(where, "admin.address must listen on the pod address (0.0.0.0 or [::]) for kubelet and Prometheus")

    # Probes on the admin app.
    rp, lp = c.get("readinessProbe", {}), c.get("livenessProbe", {})
    if rp.get("httpGet", {}).get("path") != "/readyz" or rp["httpGet"].get("port") not in ("admin", admin):
        fail(where, "readinessProbe must GET /readyz on the admin port")
    if lp.get("httpGet", {}).get("path") != "/healthz" or lp["httpGet"].get("port") not in ("admin", admin):
        fail(where, "livenessProbe must GET /healthz on the admin port")

    # Termination: preStop sleep + grace_period + graceful_shutdown_timeout < terminationGracePeriodSeconds.
    server = config.get("server", {})
    grace = duration_seconds(server.get("grace_period", "30s"))
    shutdown = duration_seconds(server.get("graceful_shutdown_timeout", "10s"))
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_sleep = int(pre[1]) if pre[:1] == ["sleep"] else 0
    if pre_sleep <= 0:
        fail(where, "preStop must sleep so that endpoints drain before SIGTERM")
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    if not tgps > pre_sleep + grace + shutdown:
        fail(where, f"terminationGracePeriodSeconds {tgps} <= preStop {pre_sleep} + grace_period {grace} + graceful_shutdown_timeout {shutdown}")

    # Security context.
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and psc.get("runAsUser", 0) != 0):
        fail(where, "pod must run as a non-root user")
    if not csc.get("readOnlyRootFilesystem"):
        fail(where, "readOnlyRootFilesystem must be true")
    if csc.get("allowPrivilegeEscalation") is not False:
        fail(where, "allowPrivilegeEscalation must be false")
    if csc.get("capabilities", {}).get("drop") != ["ALL"] or csc.get("capabilities", {}).get("add"):
        fail(where, "capabilities: drop ALL, add none")
    if min(listener_ports + [admin]) < 1024:
        fail(where, "ports below 1024 need a capability; use unprivileged ports")
    if not c.get("resources", {}).get("requests", {}).get("cpu"):
        fail(where, "a CPU request is needed for the HPA")

    # Writable paths on a read-only root: the directories of pid_file and upgrade_sock.
    mounted = [m["mountPath"] for m in c["volumeMounts"]]
    for key in ("pid_file", "upgrade_sock"):
        d = os.path.dirname(server.get(key, f"/run/registry-edge/{key}"))
        if d not in mounted:
            fail(where, f"server.{key} directory {d} is not a mounted (writable) volume")
    geo = config.get("geoip", {}).get("database")
    if geo and os.path.dirname(geo) not in mounted:
        fail(where, f"geoip.database directory {os.path.dirname(geo)} is not mounted")
    for l in config["listeners"]:
        for pair in (l.get("tls") or {}).get("certificates", []):
            for f in (pair["cert"], pair["key"]):
                d, base = os.path.split(f)
                tls = vols.get("tls", {}).get("projected", {}).get("sources", [])
                paths = [i["path"] for s in tls for i in s.get("secret", {}).get("items", [])]
                if d not in mounted or base not in paths:
                    fail(where, f"certificate file {f} is not provided by the tls volume")

    # Services.
    svc = one(objs, "Service", "registry-edge")
    admin_svc = one(objs, "Service", "registry-edge-admin")
    for s in (svc, admin_svc):
        if not matches(s["spec"]["selector"], pod_labels):
            fail(where, f"Service {s['metadata']['name']} selects no edge pod")
        for p in s["spec"]["ports"]:
            if p["targetPort"] not in ports and p["targetPort"] not in ports.values():
                fail(where, f"Service {s['metadata']['name']} port {p['name']} targets unknown port {p['targetPort']}")
    if any(p["targetPort"] in ("admin", admin) for p in svc["spec"]["ports"]):
        fail(where, "the public Service must not publish the admin port")
    if svc["spec"].get("externalTrafficPolicy") != "Local":
        fail(where, "the public Service needs externalTrafficPolicy: Local (client addresses for GeoIP)")

    # Autoscaler, disruption budget, ServiceMonitor.
    hpa = one(objs, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", dep["metadata"]["name"]):
        fail(where, "HPA does not scale the Deployment")
    if not any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"]["metrics"]):
        fail(where, "HPA must scale on CPU")
    pdb = one(objs, "PodDisruptionBudget")
    if not matches(pdb["spec"]["selector"]["matchLabels"], pod_labels):
        fail(where, "PodDisruptionBudget selects no edge pod")
    if hpa["spec"].get("minReplicas", 1) < 2:
        fail(where, "minReplicas below 2 leaves the PodDisruptionBudget nothing to keep")
    sm = one(objs, "ServiceMonitor")
    if not matches(sm["spec"]["selector"]["matchLabels"], admin_svc["metadata"]["labels"]):
        fail(where, "ServiceMonitor does not select the admin Service")
    admin_port_names = [p["name"] for p in admin_svc["spec"]["ports"]]
    for e in sm["spec"]["endpoints"]:
        if e.get("port") not in admin_port_names or e.get("path") != "/metrics":
            fail(where, "ServiceMonitor must scrape /metrics on the admin Service's port")

    # Region overlays: the pod label is the configuration's local_region.
    region = pod_labels.get("region")
    if region is not None and region != config.get("local_region"):
        fail(where, f"pod label region={region} but local_region={config.get('local_region')}")
    print(f"  {where}: objects consistent with {path}")


def main(argv):
    out_dir = argv[0]
    rest = argv[1:]
    plain = []
    if "--plain" in rest:
        i = rest.index("--plain")
        rest, plain = rest[:i], rest[i + 1 :]
    for arg in rest:
        where, path = arg.split("=", 1)
        with open(path) as f:
            objs = [d for d in yaml.safe_load_all(f) if d]
        for doc in objs:
            schema_check(where, doc)
        try:
            consistency(where, objs, out_dir)
        except (KeyError, IndexError, ValueError, TypeError) as e:
            fail(where, f"missing or malformed object: {e!r}")
    for path in plain:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    schema_check(os.path.relpath(path), doc)
    if errors:
        print("\n".join(["FAILED:"] + errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
