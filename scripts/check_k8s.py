#!/usr/bin/env python3
"""Offline checks of k8s/: renders every overlay and validates what it renders.

For each k8s/overlays/<name>:
  1. render it with scripts/kustomize_render.py (and, when `kubectl` is on PATH, check that
     `kubectl kustomize` renders exactly the same resources);
  2. validate every built-in resource against the Kubernetes OpenAPI schemas of KUBE_VERSION
     (kubernetes-validate, strict: unknown fields are errors) -- offline, the schemas ship with it;
  3. check the two Prometheus Operator CRDs (ServiceMonitor, PrometheusRule) structurally;
  4. check the cross-references a schema cannot see: stages = worker replicas = the coordinator's
     --workers list (stable DNS names in order), selectors match pod labels, probe / Service /
     ServiceMonitor ports exist, ConfigMap / Secret / PVC names exist, every container has requests
     and limits and runs as non-root, each worker holds one GPU, and -- with --xkv BIN -- every
     flag in the containers' args exists in `xkv <command> --help`;
  5. static checks of k8s/Dockerfile (Debian 12 bases, non-root user, sources exist).
Exits non-zero listing every problem found.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kustomize_render  # noqa: E402

KUBE_VERSION = "1.33.0"  # pinned: kubernetes-validate ships its schemas (1.25 ... 1.37)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
WORKER_PORT = 50061


class Checker:
    def __init__(self, overlay):
        self.overlay = overlay
        self.errors = []

    def error(self, msg):
        self.errors.append(f"{self.overlay}: {msg}")

    def expect(self, cond, msg):
        if not cond:
            self.error(msg)
        return cond


def index(resources):
    return {(r["kind"], r["metadata"]["name"]): r for r in resources}


def compare_with_kubectl(c, directory, resources):
    out = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True,
                         timeout=60)
    if not c.expect(out.returncode == 0, f"kubectl kustomize failed: {out.stderr.strip()}"):
        return
    ref = index([d for d in yaml.safe_load_all(out.stdout) if d])
    mine = index(resources)
    c.expect(ref.keys() == mine.keys(),
             f"kubectl kustomize renders {sorted(ref)}, kustomize_render {sorted(mine)}")
    for key in ref.keys() & mine.keys():
        c.expect(ref[key] == mine[key], f"{key}: kustomize_render differs from kubectl kustomize")


def validate_schemas(c, resources):
    import kubernetes_validate
    for r in resources:
        if r["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(r, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            c.error(f"{r['kind']}/{r['metadata']['name']}: {e.message} at "
                    f"{'.'.join(str(p) for p in e.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            c.error(f"{r['kind']} ({r['apiVersion']}): no schema for Kubernetes {KUBE_VERSION}")


def check_crds(c, by_key):
    for (kind, name), r in by_key.items():
        if kind == "ServiceMonitor":
            spec = r.get("spec", {})
            c.expect(r["apiVersion"] == "monitoring.coreos.com/v1", f"{kind}/{name}: apiVersion")
            c.expect(isinstance(spec.get("selector", {}).get("matchLabels"), dict),
                     f"{kind}/{name}: spec.selector.matchLabels missing")
            eps = spec.get("endpoints")
            if c.expect(isinstance(eps, list) and eps, f"{kind}/{name}: no endpoints"):
                for ep in eps:
                    c.expect(set(ep) <= {"port", "path", "interval", "scrapeTimeout", "scheme"},
                             f"{kind}/{name}: unexpected endpoint fields {sorted(ep)}")
                    svc = [s for s in by_key.values() if s["kind"] == "Service" and
                           matches(spec["selector"]["matchLabels"], s["metadata"].get("labels"))]
                    c.expect(any(ep.get("port") in [p.get("name") for p in s["spec"]["ports"]]
                                 for s in svc),
                             f"{kind}/{name}: no selected Service has port {ep.get('port')}")
        elif kind == "PrometheusRule":
            groups = r.get("spec", {}).get("groups")
            if not c.expect(isinstance(groups, list) and groups, f"{kind}/{name}: no groups"):
                continue
            for g in groups:
                for rule in g.get("rules", []):
                    c.expect(isinstance(rule.get("alert"), str) and isinstance(rule.get("expr"), str),
                             f"{kind}/{name}: a rule without alert/expr")
                    c.expect(set(rule) <= {"alert", "expr", "for", "labels", "annotations"},
                             f"{kind}/{name}: unexpected rule fields {sorted(rule)}")
                    c.expect(rule.get("expr", "").count("(") == rule.get("expr", "").count(")"),
                             f"{kind}/{name}/{rule.get('alert')}: unbalanced parentheses")


def matches(selector, labels):
    return bool(selector) and all((labels or {}).get(k) == v for k, v in selector.items())


def pod_specs(by_key):
    for (kind, name), r in by_key.items():
        if kind in ("Deployment", "StatefulSet"):
            yield kind, name, r


def check_workloads(c, by_key, xkv_bin):
    pods = []
    for kind, name, w in pod_specs(by_key):
        tmpl = w["spec"]["template"]
        labels = tmpl["metadata"]["labels"]
        pods.append(labels)
        c.expect(matches(w["spec"]["selector"]["matchLabels"], labels),
                 f"{kind}/{name}: selector does not match the pod labels")
        spec = tmpl["spec"]
        c.expect(spec.get("securityContext", {}).get("runAsNonRoot") is True,
                 f"{kind}/{name}: pods must run as non-root")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for ctr in spec.get("initContainers", []) + spec["containers"]:
            where = f"{kind}/{name}/{ctr['name']}"
            res = ctr.get("resources", {})
            c.expect(res.get("requests") and res.get("limits"), f"{where}: requests and limits")
            for m in ctr.get("volumeMounts", []):
                c.expect(m["name"] in volumes, f"{where}: mounts unknown volume {m['name']}")
            ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                p = ctr.get(probe)
                if p is None:
                    continue
                port = (p.get("grpc") or p.get("tcpSocket") or p.get("httpGet") or {}).get("port")
                c.expect(port in ports or port in ports.values(),
                         f"{where}: {probe} port {port} is not a container port")
            for ef in ctr.get("envFrom", []):
                ref = ef.get("configMapRef", {}).get("name")
                c.expect(("ConfigMap", ref) in by_key, f"{where}: unknown ConfigMap {ref}")
            if xkv_bin and ctr.get("args"):
                check_flags(c, where, ctr["args"], xkv_bin)
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                c.expect(("PersistentVolumeClaim", claim) in by_key, f"{kind}/{name}: no PVC {claim}")
            if "secret" in v:
                c.expect(("Secret", v["secret"]["secretName"]) in by_key,
                         f"{kind}/{name}: no Secret {v['secret']['secretName']}")
    for (kind, name), r in by_key.items():
        if kind == "Service":
            c.expect(any(matches(r["spec"]["selector"], p) for p in pods),
                     f"Service/{name}: selects no pod")
        if kind == "PodDisruptionBudget" or kind == "NetworkPolicy":
            sel = (r["spec"].get("selector") or r["spec"].get("podSelector"))["matchLabels"]
            c.expect(any(matches(sel, p) for p in pods), f"{kind}/{name}: selects no pod")


_help_cache = {}


def check_flags(c, where, args, xkv_bin):
    command = args[0]
    if command not in _help_cache:
        out = subprocess.run([xkv_bin, command, "--help"], capture_output=True, text=True,
                             timeout=30)
        _help_cache[command] = set(re.findall(r"^\s+--([a-z0-9-]+)", out.stdout, re.M))
    known = _help_cache[command]
    for a in args[1:]:
        m = re.match(r"--([a-z0-9-]+)", a)
        c.expect(m and m.group(1) in known, f"{where}: `xkv {command}` has no flag {a}")


def check_stages(c, by_key, stages):
    sts = by_key.get(("StatefulSet", "xkv-worker"))
    dep = by_key.get(("Deployment", "xkv-coordinator"))
    cm = by_key.get(("ConfigMap", "xkv-config"))
    svc = by_key.get(("Service", "xkv-worker"))
    if not c.expect(sts and dep and cm and svc, "missing worker StatefulSet, coordinator, "
                    "ConfigMap or headless Service"):
        return
    c.expect(svc["spec"].get("clusterIP") == "None", "xkv-worker Service must be headless")
    c.expect(svc["spec"].get("publishNotReadyAddresses") is True,
             "xkv-worker Service must publish not-ready addresses (workers turn ready only after "
             "the coordinator loaded them)")
    c.expect(sts["spec"]["serviceName"] == "xkv-worker", "StatefulSet serviceName")
    c.expect(sts["spec"]["replicas"] == stages, f"worker replicas {sts['spec']['replicas']} != {stages}")
    c.expect(cm["data"].get("XKV_STAGES") == str(stages), "ConfigMap XKV_STAGES != stages")
    worker = sts["spec"]["template"]["spec"]["containers"][0]
    for part in ("requests", "limits"):
        c.expect(str(worker["resources"][part].get("nvidia.com/gpu")) == "1",
                 f"worker {part} must hold nvidia.com/gpu: 1")
    env = dep["spec"]["template"]["spec"]["containers"][0].get("env", [])
    names = [e["name"] for e in env]
    if not c.expect("XKV_WORKERS" in names, "coordinator has no XKV_WORKERS"):
        return
    workers = env[names.index("XKV_WORKERS")]["value"].split(",")
    want = [f"xkv-worker-{i}.xkv-worker.$(POD_NAMESPACE).svc.cluster.local:{WORKER_PORT}"
            for i in range(stages)]
    c.expect(workers == want, f"--workers list {workers} != {want}")
    c.expect("POD_NAMESPACE" in names and names.index("POD_NAMESPACE") < names.index("XKV_WORKERS"),
             "POD_NAMESPACE must be defined before XKV_WORKERS (for $(POD_NAMESPACE))")


def check_overlay(directory, xkv_bin):
    name = os.path.basename(os.path.normpath(directory))
    c = Checker(name)
    try:
        resources = kustomize_render.render(directory)
    except kustomize_render.RenderError as e:
        c.error(str(e))
        return c.errors, 0
    if shutil.which("kubectl"):
        compare_with_kubectl(c, directory, resources)
    validate_schemas(c, resources)
    by_key = index(resources)
    check_crds(c, by_key)
    check_workloads(c, by_key, xkv_bin)
    m = re.fullmatch(r"stages-(\d+)", name)
    if c.expect(m, "overlay names are stages-<N>"):
        check_stages(c, by_key, int(m.group(1)))
    return c.errors, len(resources)


def check_dockerfile(path):
    """Static checks of k8s/Dockerfile (no Docker engine here): bases, non-root, what it copies."""
    errors = []
    text = open(path).read()
    root = os.path.dirname(os.path.dirname(path))
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if not (len(froms) == 2 and all(f.startswith("debian:bookworm") for f in froms)):
        errors.append(f"Dockerfile: want a Debian 12 build stage and runtime stage, got {froms}")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not users or users[-1].split(":")[0] in ("0", "root"):
        errors.append("Dockerfile: the runtime stage must end as a non-root USER")
    for src in re.findall(r"^COPY\s+(?!--from)(\S+)\s", text, re.M):
        if src != "." and not os.path.exists(os.path.join(root, src)):
            errors.append(f"Dockerfile: COPY source {src} does not exist")
    for script in ("scripts/setup", "scripts/image/stage", "scripts/image/configure-rootfs"):
        if script not in text:
            errors.append(f"Dockerfile: does not use {script}")
    if '"/opt/xkv/bin/xkv"' not in text:
        errors.append("Dockerfile: ENTRYPOINT must be /opt/xkv/bin/xkv (the manifests' hooks use it)")
    return errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--k8s", default=os.path.join(root, "k8s"))
    ap.add_argument("--xkv", default=os.environ.get("XKV_BIN", ""),
                    help="xkv binary: check container args against its --help")
    args = ap.parse_args()
    overlays = sorted(os.path.join(args.k8s, "overlays", d)
                      for d in os.listdir(os.path.join(args.k8s, "overlays")))
    errors = []
    for d in overlays:
        errs, n = check_overlay(d, args.xkv)
        errors += errs
        print(f"check-k8s: {os.path.basename(d)}: {n} resources, "
              f"{'ok' if not errs else f'{len(errs)} problem(s)'}")
    docker = check_dockerfile(os.path.join(args.k8s, "Dockerfile"))
    print(f"check-k8s: Dockerfile: {'ok' if not docker else f'{len(docker)} problem(s)'}")
    errors += docker
    for e in errors:
        print(f"check-k8s: {e}", file=sys.stderr)
    kubectl = "and kubectl kustomize" if shutil.which("kubectl") else "(no kubectl to compare)"
    print(f"check-k8s: {len(overlays)} overlays rendered {kubectl}, validated against "
          f"Kubernetes {KUBE_VERSION}{', flags against ' + args.xkv if args.xkv else ''}: "
          f"{'ok' if not errors else 'FAILED'}")
    return 1 if errors or not overlays else 0


if __name__ == "__main__":
    sys.exit(main())
