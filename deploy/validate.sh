#!/usr/bin/env bash
# Validates deploy/ and the YAML examples in docs/, without a cluster and
# without kustomize:
#
#   1. kustomization.yaml files: every listed resource exists, and every
#      manifest under deploy/ is listed (templates named *.example.yaml are
#      validated but need not be listed);
#   2. every manifest against the Kubernetes JSON schemas shipped by the PyPI
#      package kubernetes-validate (strict: unknown fields are errors), for
#      Kubernetes ${K8S_VERSION:-1.30.0};
#   3. consistency of the agent's ConfigMap with the DaemonSet (the paths the
#      config uses are mounted, the node's cgroup hierarchy and bpffs are,
#      the agent runs privileged as uid 0, the CA Secret is mounted 0400, ...);
#   4. every ```yaml block in docs/*.md parses; blocks preceded by
#      `<!-- egret-config -->` are egret configs, blocks preceded by
#      `<!-- k8s-manifest -->` are validated like step 2;
#   5. with EGRET_BIN set (an `egret` binary): `egret config check` on the
#      ConfigMap's egret.yaml and on every egret-config block of the docs.
#
# kubernetes-validate is installed into the repo venv ${EGRET_VENV:-.venv}
# when missing (the only network access: PyPI). Exit status: 0 valid,
# 1 invalid, 77 the tooling could not be set up (nothing was checked).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${EGRET_VENV:-$repo/.venv}
case $venv in /*) ;; *) venv=$repo/$venv ;; esac
k8s_version=${K8S_VERSION:-1.30.0}
kv_pin=1.37.0

unavailable() {
    echo "validate.sh: cannot set up the validator: $*" >&2
    exit 77
}

py=$venv/bin/python
if ! { [ -x "$py" ] && "$py" -c 'import kubernetes_validate, yaml' 2>/dev/null; }; then
    command -v python3 >/dev/null 2>&1 || unavailable "python3 not found"
    if [ ! -x "$py" ]; then
        echo "validate.sh: creating venv $venv"
        python3 -m venv "$venv" >&2 || unavailable "python3 -m venv $venv failed (Debian: apt-get install python3-venv)"
    fi
    echo "validate.sh: installing kubernetes-validate==$kv_pin into $venv"
    "$py" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$kv_pin" >&2 ||
        unavailable "pip install kubernetes-validate==$kv_pin failed"
    "$py" -c 'import kubernetes_validate, yaml' || unavailable "kubernetes_validate does not import"
fi

if [ -n "${EGRET_BIN:-}" ] && [ ! -x "$EGRET_BIN" ]; then
    echo "validate.sh: EGRET_BIN=$EGRET_BIN is not an executable" >&2
    exit 1
fi

exec "$py" - "$repo" "$k8s_version" <<'PY'
import glob
import os
import re
import subprocess
import sys
import tempfile

import yaml
from kubernetes_validate import utils as kv

repo, k8s_version = sys.argv[1], sys.argv[2]
deploy = os.path.join(repo, "deploy")
egret_bin = os.environ.get("EGRET_BIN") or None
failures = []
checked = 0


def rel(p):
    return os.path.relpath(p, repo)


def fail(where, msg):
    failures.append(f"{where}: {msg}")
    print(f"FAIL {where}: {msg}")


def ok(where, msg):
    global checked
    checked += 1
    print(f"ok   {where}: {msg}")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def validate_resource(doc, where):
    """Strict schema validation of one Kubernetes object."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        fail(where, "not a Kubernetes object (apiVersion/kind missing)")
        return
    name = f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
    try:
        v = kv.validate(doc, k8s_version, strict=True)
        ok(where, f"{name} valid against Kubernetes {v} (strict)")
    except kv.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(root)"
        fail(where, f"{name}: {path}: {e.message}")
    except kv.SchemaNotFoundError as e:
        fail(where, e.message)
    except kv.VersionNotSupportedError as e:
        fail(where, e.message)


def egret_check(text, where):
    """`egret config check` on one config text."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        env = {k: v for k, v in os.environ.items() if k != "EGRET_CONFIG"}
        r = subprocess.run(
            [egret_bin, "config", "check", path],
            capture_output=True, text=True, env=env,
        )
        if r.returncode == 0:
            ok(where, "egret config check")
        else:
            msg = (r.stderr or r.stdout).strip().replace(path, "<config>")
            fail(where, f"egret config check: {msg}")
    finally:
        os.unlink(path)


# 1. kustomizations ----------------------------------------------------------
manifests = sorted(
    p for p in glob.glob(os.path.join(deploy, "**", "*.yaml"), recursive=True)
    if os.path.basename(p) != "kustomization.yaml"
)
listed = set()
for kfile in sorted(glob.glob(os.path.join(deploy, "**", "kustomization.yaml"), recursive=True)):
    base = os.path.dirname(kfile)
    k = load_all(kfile)[0]
    if k.get("kind") != "Kustomization":
        fail(rel(kfile), "kind is not Kustomization")
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(base, r))
        if os.path.isdir(p):
            if not os.path.exists(os.path.join(p, "kustomization.yaml")):
                fail(rel(kfile), f"resource {r} is a directory without kustomization.yaml")
        elif os.path.isfile(p):
            listed.add(p)
        else:
            fail(rel(kfile), f"resource {r} does not exist")
    ok(rel(kfile), f"{len(k.get('resources', []))} resources exist")
for m in manifests:
    if m not in listed and not m.endswith(".example.yaml"):
        fail(rel(m), "not listed in any kustomization.yaml (name templates *.example.yaml)")

# 2. schemas -------------------------------------------------------------------
docs_by_kind = {}
for m in manifests:
    for doc in load_all(m):
        validate_resource(doc, rel(m))
        docs_by_kind.setdefault((doc.get("kind"), doc.get("metadata", {}).get("name")), doc)

# 3. ConfigMap <-> DaemonSet ---------------------------------------------------
ds = docs_by_kind.get(("DaemonSet", "egret"))
cm = docs_by_kind.get(("ConfigMap", "egret-config"))
agent_cfg_text = None
if ds is None or cm is None:
    fail("deploy/", "DaemonSet egret or ConfigMap egret-config missing")
else:
    agent_cfg_text = cm.get("data", {}).get("egret.yaml")
    spec = ds["spec"]["template"]["spec"]
    agent = next(c for c in spec["containers"] if c["name"] == "egret")
    mounts = {m["mountPath"]: m for m in agent.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    env = {e["name"]: e for e in agent.get("env", [])}
    where = "deploy/daemonset.yaml"
    before_checks = len(failures)

    def mounted(path):
        return any(path == mp or path.startswith(mp.rstrip("/") + "/") for mp in mounts)

    try:
        cfg = yaml.safe_load(agent_cfg_text or "") or {}
    except yaml.YAMLError as e:
        cfg = {}
        fail("deploy/configmap.yaml", f"egret.yaml does not parse: {e}")
    node = cfg.get("node", {})
    for key, default in [("stateDir", "/var/lib/egret"), ("bpffsDir", "/sys/fs/bpf/egret"),
                         ("apiSocket", "/run/egret/api.sock")]:
        path = node.get(key, default)
        if not mounted(path):
            fail(where, f"node.{key} {path} is not on a mounted volume")
    # What the image needs from the node (docs/operations.md, "The image"):
    # the cgroup v2 hierarchy and bpffs from the host, uid 0, privileged.
    cgroup_mount = node.get("cgroupMount") or "/sys/fs/cgroup"
    for path, what in [(cgroup_mount, "the cgroup v2 hierarchy"), ("/sys/fs/bpf", "bpffs")]:
        vol = volumes.get(mounts.get(path, {}).get("name"), {})
        if vol.get("hostPath", {}).get("path") != path:
            fail(where, f"{what}: {path} is not mounted from the node's {path} (hostPath)")
    sc = agent.get("securityContext", {})
    if sc.get("privileged") is not True or sc.get("runAsUser") != 0:
        fail(where, "the agent container must be privileged and run as uid 0 (deploy/daemonset.yaml says why)")
    spool_dir = (cfg.get("store", {}).get("spool") or {}).get("dir", "/var/lib/egret/spool")
    if not mounted(spool_dir):
        fail(where, f"store.spool.dir {spool_dir} is not on a mounted volume")
    cfg_path = env.get("EGRET_CONFIG", {}).get("value", "")
    if not mounted(cfg_path) or volumes.get(mounts.get(os.path.dirname(cfg_path), {}).get("name"), {}).get("configMap", {}).get("name") != "egret-config":
        fail(where, f"EGRET_CONFIG {cfg_path!r} is not the mounted egret-config ConfigMap")
    if "${CLICKHOUSE_PASSWORD}" in (agent_cfg_text or "") and "CLICKHOUSE_PASSWORD" not in env:
        fail(where, "the config expands ${CLICKHOUSE_PASSWORD} but the container does not set it")
    ca = volumes.get("ca-secret", {}).get("secret", {})
    if ca.get("defaultMode") != 0o400:
        fail(where, "the CA Secret volume must have defaultMode 0400 (the agent refuses a group/other-readable key)")
    if spec.get("securityContext", {}).get("fsGroup") is not None:
        fail(where, "pod fsGroup would add group permissions to the CA key")
    if not spec.get("hostNetwork") or spec.get("dnsPolicy") != "ClusterFirstWithHostNet":
        fail(where, "hostNetwork: true needs dnsPolicy: ClusterFirstWithHostNet")
    admin = node.get("adminListen", "127.0.0.1:9464")
    port = int(admin.rsplit(":", 1)[1])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        p = agent.get(probe, {}).get("httpGet", {})
        if p.get("port") != port:
            fail(where, f"{probe} port {p.get('port')} is not node.adminListen's {port}")
        if admin.startswith("127.") and p.get("host") != "127.0.0.1":
            fail(where, f"{probe} must use host 127.0.0.1 while adminListen is loopback")
    if len(failures) == before_checks:
        ok(where, "config paths, cgroup and bpffs mounted, privileged uid 0, CA mode 0400, probes on node.adminListen")

# 4. YAML blocks in docs --------------------------------------------------------
fence = re.compile(r"^```yaml[^\n]*\n(.*?)^```", re.S | re.M)
marker = re.compile(r"<!--\s*(egret-config|k8s-manifest)\s*-->\s*$")
doc_configs = []
for md in sorted(glob.glob(os.path.join(repo, "docs", "*.md"))):
    text = open(md).read()
    for m in fence.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        where = f"{rel(md)}:{line}"
        body = m.group(1)
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mk = marker.search(before)
        kind = mk.group(1) if mk else None
        try:
            docs = [d for d in yaml.safe_load_all(body) if d is not None]
        except yaml.YAMLError as e:
            fail(where, f"yaml block does not parse: {e}")
            continue
        if kind == "egret-config":
            doc_configs.append((where, body))
        elif kind == "k8s-manifest":
            for d in docs:
                validate_resource(d, where)
        else:
            ok(where, "yaml parses")

# 5. egret config check ----------------------------------------------------------
if egret_bin:
    if agent_cfg_text is not None:
        egret_check(agent_cfg_text, "deploy/configmap.yaml egret.yaml")
    for where, body in doc_configs:
        egret_check(body, where)
else:
    print(f"skip egret config check of the ConfigMap and {len(doc_configs)} docs block(s): set EGRET_BIN")

print(f"{checked} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
PY
