#!/usr/bin/env python3
"""Checks deploy/docker/Dockerfile without a container engine (called by deploy/check.sh).

usage: dockerfile.py REPO_ROOT

No engine runs on the CI machines, so the image is never built there. What is checked instead:
  - the file parses (dockerfile-parse) and every exec-form instruction is a JSON string array;
  - two stages: rust:1-bookworm (named build, installs cmake) and debian:bookworm-slim;
  - the final stage runs as a numeric non-root user, exposes 8443 8080 9901, has a HEALTHCHECK,
    ENTRYPOINT ["registry-edge"] and CMD ["run","-c","/etc/registry-edge/registry-edge.yaml"];
  - every COPY source from the build context exists in the repository and is not excluded by
    deploy/docker/Dockerfile.dockerignore, and the context keeps what `cargo build` needs;
  - every `COPY --from` names an earlier stage.
"""

import fnmatch
import json
import os
import shlex
import sys

from dockerfile_parse import DockerfileParser

errors = []


def fail(message):
    errors.append(message)


def ignore_patterns(path):
    patterns = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            patterns.append((negate, line.lstrip("!").strip("/")))
    return patterns


def pattern_matches(pattern, path):
    """Docker's rule, close enough for these patterns: a pattern matches a path or any parent
    directory of it; `**` matches any number of directories."""
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if fnmatch.fnmatchcase(prefix, pattern):
            return True
        if pattern.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], pattern[3:]):
            return True
    return False


def excluded(patterns, path):
    result = False
    for negate, pattern in patterns:
        if pattern_matches(pattern, path):
            result = not negate
    return result


def main(root):
    dockerfile = os.path.join(root, "deploy/docker/Dockerfile")
    patterns = ignore_patterns(os.path.join(root, "deploy/docker/Dockerfile.dockerignore"))
    parser = DockerfileParser(path=dockerfile)
    structure = parser.structure
    if not structure:
        fail("Dockerfile: no instructions")

    stages = []  # (image, name)
    final = {}
    for ins in structure:
        kind, value, line = ins["instruction"], ins["value"], ins["startline"] + 1
        if kind == "COMMENT" or (kind == "ARG" and not stages):
            continue
        if kind == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append((words[0], name))
            final = {}
            continue
        if not stages:
            fail(f"Dockerfile:{line}: {kind} before FROM")
            continue
        if kind in ("ENTRYPOINT", "CMD") or (kind == "HEALTHCHECK" and "CMD [" in value) or (
            kind == "RUN" and value.lstrip().startswith("[")
        ):
            text = value[value.index("[") :] if kind == "HEALTHCHECK" else value
            try:
                parsed = json.loads(text)
                if not (isinstance(parsed, list) and all(isinstance(x, str) for x in parsed)):
                    raise ValueError("not a list of strings")
                final[kind] = parsed
            except ValueError as e:
                fail(f"Dockerfile:{line}: {kind} exec form is not a JSON string array ({e})")
        else:
            final.setdefault(kind, []).append(value)
        if kind == "COPY":
            words = shlex.split(value)
            flags = [w for w in words if w.startswith("--")]
            sources = [w for w in words if not w.startswith("--")][:-1]
            frm = [f.split("=", 1)[1] for f in flags if f.startswith("--from=")]
            if frm:
                if frm[0] not in [n for _, n in stages[:-1]]:
                    fail(f"Dockerfile:{line}: COPY --from={frm[0]} names no earlier stage")
                continue
            for src in sources:
                if src in (".", "./"):
                    continue
                if not os.path.exists(os.path.join(root, src)):
                    fail(f"Dockerfile:{line}: COPY source {src} does not exist in the repository")
                elif excluded(patterns, src.rstrip("/")):
                    fail(f"Dockerfile:{line}: COPY source {src} is excluded by Dockerfile.dockerignore")

    if [s[0] for s in stages] != ["rust:1-bookworm", "debian:bookworm-slim"]:
        fail(f"stages {stages}: expected rust:1-bookworm then debian:bookworm-slim")
    build_runs = " ".join(
        i["value"] for i in structure if i["instruction"] == "RUN"
    )
    if "cmake" not in build_runs or "cargo build --release --locked -p registry-edge" not in build_runs:
        fail("the build stage must install cmake and run cargo build --release --locked -p registry-edge")
    user = (final.get("USER") or ["0"])[-1].split(":")[0]
    if not user.isdigit() or int(user) == 0:
        fail(f"final stage USER {user!r}: must be a numeric non-root user (Kubernetes runAsNonRoot checks the number)")
    exposed = " ".join(final.get("EXPOSE", [])).split()
    for port in ("8443/tcp", "8080/tcp", "9901/tcp"):
        if port not in exposed:
            fail(f"final stage does not EXPOSE {port}")
    if "HEALTHCHECK" not in final:
        fail("final stage has no HEALTHCHECK")
    if final.get("ENTRYPOINT") != ["registry-edge"]:
        fail(f"ENTRYPOINT {final.get('ENTRYPOINT')}: expected [\"registry-edge\"]")
    if final.get("CMD") != ["run", "-c", "/etc/registry-edge/registry-edge.yaml"]:
        fail(f"CMD {final.get('CMD')}: expected [\"run\", \"-c\", \"/etc/registry-edge/registry-edge.yaml\"]")

    # The context must keep the workspace.
    for needed in ["Cargo.toml", "Cargo.lock", "crates/registry-edge/src/main.rs", "benches/Cargo.toml"]:
        if excluded(patterns, needed):
            fail(f"Dockerfile.dockerignore excludes {needed}, which the build needs")
    for unwanted in ["target/debug/registry-edge", ".git/HEAD"]:
        if not excluded(patterns, unwanted):
            fail(f"Dockerfile.dockerignore lets {unwanted} into the context")

    if errors:
        print("\n".join(["FAILED:"] + errors), file=sys.stderr)
        return 1
    count = len([i for i in structure if i["instruction"] != "COMMENT"])
    print(f"  deploy/docker/Dockerfile: {count} instructions, stages {[s[0] for s in stages]}, "
          f"user {user}, exposes {' '.join(exposed)}, entrypoint {final['ENTRYPOINT']} {final['CMD']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
