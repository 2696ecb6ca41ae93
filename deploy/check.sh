#!/usr/bin/env bash
# Validates everything under deploy/ without a container engine or a cluster (.ci/run calls it
# after the tests; run it by hand the same way: bash deploy/check.sh).
#
#   1. tools        installs what is missing: kubectl (for `kubectl kustomize`), promtool,
#                   systemd-analyze, shellcheck from Debian; kubernetes-validate and
#                   dockerfile-parse from PyPI
#   2. configs      registry-edge check --no-files on every configuration under conf/ and deploy/
#   3. scripts      shellcheck on the shell scripts under deploy/
#   4. dockerfile   deploy/docker/Dockerfile parsed and checked (deploy/checks/dockerfile.py)
#   5. kustomize    kubectl kustomize of the base and each overlay
#   6. kubernetes   schema validation of the core kinds (two Kubernetes versions, strict), the
#                   objects checked against each other and against the configuration they carry,
#                   and that configuration checked by registry-edge (deploy/checks/k8s.py)
#   7. prometheus   promtool check rules and promtool test rules (deploy/monitoring)
#   8. grafana      the dashboard's JSON structure and queries (deploy/checks/monitoring.py)
#   9. systemd      systemd-analyze verify of the units, any warning is a failure
#
# The registry-edge binary: $REGISTRY_EDGE_BIN, else target/debug/registry-edge when it exists
# (CI has just built it for the tests), else `cargo run -q -p registry-edge --`.
# Nothing is contacted but Debian's and PyPI's package archives, and only for missing tools.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/deploy-check
TOOLS=$ROOT/target/deploy-tools
mkdir -p "$OUT" "$TOOLS/bin"
export PATH="$TOOLS/bin:$PATH"

CURRENT="start"
step() {
  CURRENT=$1
  printf '\n--- deploy/check.sh: %s\n' "$1"
}
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    printf '\ndeploy/check.sh: FAILED in step "%s" (exit %s)\n' "$CURRENT" "$rc" >&2
  fi
}
trap on_exit EXIT
die() {
  echo "deploy/check.sh: $*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
step "tools"
apt_updated=0
apt_ready() {
  [ "$(id -u)" = 0 ] || die "missing $1 and not root: install Debian package $1 (apt-get install $1)"
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
}
apt_install() { # package: installed as usual
  apt_ready "$1"
  echo "installing Debian package $1"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}
apt_extract() { # package binary: the binary unpacked from the package into target/deploy-tools,
  # without installing the package (prometheus would start a server where systemd runs, and
  # kubernetes-client would replace another kubectl)
  apt_ready "$1"
  echo "unpacking $2 from Debian package $1 into $TOOLS"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq "$1" 2>/dev/null && dpkg-deb -x ./*.deb root)
  install -m 0755 "$tmp/root/usr/bin/$2" "$TOOLS/bin/$2"
  rm -rf "$tmp"
}
if ! kubectl kustomize --help >/dev/null 2>&1; then apt_extract kubernetes-client kubectl; fi
command -v promtool >/dev/null 2>&1 || apt_extract prometheus promtool
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd
command -v shellcheck >/dev/null 2>&1 || apt_install shellcheck

PY=python3
if ! "$PY" -c 'import kubernetes_validate, dockerfile_parse, yaml' 2>/dev/null; then
  pkgs=(kubernetes-validate==1.37.0 dockerfile-parse==2.0.1 PyYAML)
  echo "installing ${pkgs[*]} from PyPI"
  if ! "$PY" -m pip install -q --disable-pip-version-check "${pkgs[@]}" 2>/dev/null; then
    # an externally managed Python (Debian's): a virtual environment under target/
    [ -x "$TOOLS/venv/bin/python" ] || "$PY" -m venv "$TOOLS/venv" ||
      { apt_install python3-venv && "$PY" -m venv "$TOOLS/venv"; }
    "$TOOLS/venv/bin/python" -m pip install -q --disable-pip-version-check "${pkgs[@]}"
    PY=$TOOLS/venv/bin/python
  fi
fi
"$PY" -c 'import kubernetes_validate, dockerfile_parse, yaml' || die "Python modules missing"

if [ -n "${REGISTRY_EDGE_BIN:-}" ]; then
  EDGE=("$REGISTRY_EDGE_BIN")
elif [ -x target/debug/registry-edge ]; then
  EDGE=("$ROOT/target/debug/registry-edge")
else
  EDGE=(cargo run -q -p registry-edge --)
fi
echo "kubectl:         $(kubectl version --client 2>/dev/null | head -n 2 | tr '\n' ' ')"
echo "promtool:        $(promtool --version 2>&1 | head -n 1)"
echo "systemd-analyze: $(systemd-analyze --version | head -n 1)"
echo "shellcheck:      $(shellcheck --version | sed -n 's/^version: //p')"
echo "python:          $("$PY" --version) kubernetes-validate $("$PY" -c 'import kubernetes_validate; print(kubernetes_validate.__version__)')"
echo "registry-edge:   ${EDGE[*]} ($("${EDGE[@]}" --version))"

# ---------------------------------------------------------------------------------------------
step "configs"
configs=()
while IFS= read -r f; do configs+=("$f"); done < <(
  { ls conf/*.yaml; find deploy -name '*.yaml' -print; } | sort -u |
    while IFS= read -r f; do grep -q '^registry:' "$f" && grep -q '^version:' "$f" && echo "$f"; done
)
[ "${#configs[@]}" -ge 4 ] || die "expected the configurations of conf/ and deploy/, found: ${configs[*]}"
for f in "${configs[@]}"; do
  "${EDGE[@]}" check --no-files --quiet -c "$f"
  echo "  $f: valid"
done

# ---------------------------------------------------------------------------------------------
step "scripts"
shellcheck deploy/check.sh deploy/docker/healthcheck.sh
echo "  deploy/check.sh deploy/docker/healthcheck.sh: shellcheck clean"

# ---------------------------------------------------------------------------------------------
step "dockerfile"
"$PY" deploy/checks/dockerfile.py "$ROOT"

# ---------------------------------------------------------------------------------------------
step "kustomize"
rendered=()
for k in base overlays/eastus overlays/westus; do
  name=$(basename "$k")
  # Newer kustomize warns that `bases` and `patchesStrategicMerge` are deprecated: they are
  # kept so that Debian's kubectl (kustomize v2.0.3) builds the same files.
  kubectl kustomize "deploy/kubernetes/$k" >"$OUT/$name.yaml" 2>"$OUT/$name.stderr" ||
    { cat "$OUT/$name.stderr" >&2; die "kubectl kustomize deploy/kubernetes/$k failed"; }
  if grep -v -e "'bases' is deprecated" -e "'patchesStrategicMerge' is deprecated" "$OUT/$name.stderr" | grep -q .; then
    cat "$OUT/$name.stderr" >&2
    die "kubectl kustomize deploy/kubernetes/$k printed warnings"
  fi
  echo "  deploy/kubernetes/$k: $(grep -c '^kind:' "$OUT/$name.yaml") objects ($(grep '^kind:' "$OUT/$name.yaml" | awk '{print $2}' | sort | tr '\n' ' '))"
  rendered+=("$name=$OUT/$name.yaml")
done

# ---------------------------------------------------------------------------------------------
step "kubernetes"
"$PY" deploy/checks/k8s.py "$OUT" "${rendered[@]}" --plain deploy/kubernetes/extras/*.yaml
for r in "${rendered[@]}"; do
  name=${r%%=*}
  "${EDGE[@]}" check --no-files --quiet -c "$OUT/$name.registry-edge.yaml"
  echo "  $name: the configuration in its ConfigMap is valid"
done

# ---------------------------------------------------------------------------------------------
step "prometheus"
promtool check rules deploy/monitoring/prometheus-rules.yaml
promtool test rules deploy/monitoring/prometheus-rules.test.yaml

# ---------------------------------------------------------------------------------------------
step "grafana"
"$PY" deploy/checks/monitoring.py "$ROOT" "$OUT"
promtool check rules "$OUT/dashboard-exprs.rules.yaml"

# ---------------------------------------------------------------------------------------------
step "systemd"
# systemd-analyze verify wants every Exec path to exist and be executable: a copy of the units
# in a temporary directory points them at the binary checked above (or, with `cargo run`, at a
# stub) and geoipupdate at /bin/true. It parses every directive; unknown keys and bad values are
# only warnings there, so any output fails this step.
units=$(mktemp -d)
bin=${EDGE[0]}
if [ "${#EDGE[@]}" -ne 1 ]; then
  bin=$units/registry-edge
  printf '#!/bin/sh\nexit 0\n' >"$bin"
  chmod +x "$bin"
fi
for u in deploy/systemd/*.service deploy/systemd/*.timer; do
  sed -e "s#/usr/local/bin/registry-edge#$bin#g" -e "s#/usr/bin/geoipupdate#/bin/true#g" "$u" >"$units/$(basename "$u")"
done
(cd "$units" && systemd-analyze verify --man=no --generators=no ./*.service ./*.timer) >"$OUT/systemd.out" 2>&1 ||
  { cat "$OUT/systemd.out" >&2; die "systemd-analyze verify failed"; }
if [ -s "$OUT/systemd.out" ]; then
  cat "$OUT/systemd.out" >&2
  die "systemd-analyze verify printed warnings"
fi
rm -rf "$units"
echo "  $(cd deploy/systemd && echo *.service *.timer): systemd-analyze verify clean"
grep -q '^ExecReload=/usr/local/bin/registry-edge reload -c ' deploy/systemd/registry-edge.service ||
  die "registry-edge.service must reload with ExecReload=/usr/local/bin/registry-edge reload -c FILE"
echo "  deploy/systemd/registry-edge.sysusers: $(grep -c '^u ' deploy/systemd/registry-edge.sysusers) user"

CURRENT="done"
printf '\ndeploy/check.sh: all deploy checks passed\n'
