#!/usr/bin/env python3
"""Runs the pods of a rendered overlay as local processes and checks what Kubernetes would check.

The overlay (default stages-2) is rendered with scripts/kustomize_render.py; the coordinator and
the worker pods are started with exactly the args and env of their containers (envFrom ConfigMap,
fieldRef, $(VAR) expansion as the kubelet does it), with only these substitutions:
  - listen addresses -> 127.0.0.1:0 (ephemeral ports, read back from the processes' logs),
  - the workers' stable DNS names (xkv-worker-<i>.xkv-worker.<ns>.svc.cluster.local:PORT) ->
    127.0.0.1:<port of process i>,
  - volume mount paths -> local folders (model PVC -> models/, Secret -> its keys as files; the
    placeholder kubernetes.io/tls Secrets xkv-<role>-tls -> scripts/make-dev-ca's <role> files),
  - the image's /opt/xkv/bin/xkv -> $XKV_BIN,
  - the workers' --device=cuda:0 (each pod holds one GPU; ConfigMap XKV_WORKER_DEVICE) ->
    --device=cpu, since this machine has no GPU (the GPU worker itself is tested in tests/gpu).
Then it checks: an unloaded worker fails its
readiness probe and passes liveness; after the coordinator started, every probe of every container
passes (grpc.health.v1 Check over grpcio, tcpSocket connect); a Generate through `xkv client
generate`; a /metrics scrape of every process (--metrics-listen from the manifests); the Admin
API with the Secret's token (and refused without it); the coordinator's
preStop hook (Admin Drain); SIGTERM stops every process with status 0 within its grace period.
Every process is killed at the end, whatever happens; every wait is bounded.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import kustomize_render  # noqa: E402

XKV_BIN = os.environ.get("XKV_BIN", os.path.join(ROOT, "build", "xkv"))
MODEL = os.environ.get("XKV_MODEL",
                       os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
OVERLAY = os.environ.get("XKV_K8S_OVERLAY", os.path.join(ROOT, "k8s", "overlays", "stages-2"))
START_TIMEOUT_S = 180
HEALTH_SERVING = 1
HEALTH_NOT_SERVING = 2


def expand(value, env):
    """Kubernetes $(VAR) expansion: defined vars are replaced, $$ escapes, others stay as is."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def health_check(address, service=""):
    """grpc.health.v1.Health/Check; returns the status enum (0 UNKNOWN, 1 SERVING, 2 NOT_SERVING)."""
    name = service.encode()
    request = (b"\x0a" + bytes([len(name)]) + name) if name else b""
    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        try:
            reply = check(request, timeout=5)
        except grpc.RpcError:
            return -1
    return reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0


def tcp_open(address):
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return True
    except OSError:
        return False


class Pod:
    """One container of a rendered pod template, run as a local process."""

    def __init__(self, resources, workload, ordinal, tmp):
        self.resources = resources
        self.spec = workload["spec"]["template"]["spec"]
        self.container = self.spec["containers"][0]
        self.name = f"{workload['metadata']['name']}-{ordinal}"
        self.namespace = workload["metadata"]["namespace"]
        self.tmp = tmp
        self.mounts = self._mounts()
        self.env = self._env()
        self.proc = None
        self.log_path = os.path.join(tmp, f"{self.name}.log")

    def _find(self, kind, name):
        hits = [r for r in self.resources
                if r["kind"] == kind and r["metadata"]["name"] == name]
        assert len(hits) == 1, f"{kind}/{name}"
        return hits[0]

    def _mounts(self):
        """mountPath -> local folder."""
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        out = {}
        for m in self.container.get("volumeMounts", []):
            v = volumes[m["name"]]
            if "persistentVolumeClaim" in v:
                out[m["mountPath"]] = os.path.dirname(MODEL)  # the model PVC
            elif "secret" in v:
                d = os.path.join(self.tmp, f"{self.name}-{m['name']}")
                os.makedirs(d, exist_ok=True)
                secret = self._find("Secret", v["secret"]["secretName"])
                for key, value in secret.get("stringData", {}).items():
                    if secret.get("type") == "kubernetes.io/tls":  # a dev CA's, not placeholders
                        role = re.fullmatch(r"xkv-(\w+)-tls", secret["metadata"]["name"]).group(1)
                        with open(os.path.join(self.tmp, "certs", role, key)) as f:
                            value = f.read()
                    with open(os.path.join(d, key), "w") as f:
                        f.write(value)
                out[m["mountPath"]] = d
            else:
                d = os.path.join(self.tmp, f"{self.name}-{m['name']}")
                os.makedirs(d, exist_ok=True)
                out[m["mountPath"]] = d
        return out

    def local_path(self, text):
        """Maps mount paths (longest first, one pass) and the image's binary to local ones."""
        table = {**self.mounts, "/opt/xkv/bin/xkv": XKV_BIN}
        keys = sorted(table, key=len, reverse=True)
        pattern = "|".join(re.escape(k) + r"(?=/|\b|$)" for k in keys)
        return re.sub(pattern, lambda m: table[m.group(0)], text)

    def _env(self):
        env = {}
        for ef in self.container.get("envFrom", []):
            env.update(self._find("ConfigMap", ef["configMapRef"]["name"])["data"])
        for e in self.container.get("env", []):
            if "value" in e:
                env[e["name"]] = expand(e["value"], env)
            elif e["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                env[e["name"]] = self.namespace
            elif e["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[e["name"]] = self.name
            else:
                raise AssertionError(f"unsupported env source {e}")
        self.raw_env = env  # as the kubelet sets it: args expand $(VAR) from these, mapped once
        return {k: self.local_path(v) for k, v in env.items()}

    def args(self, substitutions):
        out = []
        for a in self.container["args"]:
            a = self.local_path(expand(a, self.raw_env))
            for old, new in substitutions.items():
                a = a.replace(old, new)
            out.append(a)
        return out

    def start(self, substitutions):
        args = self.args(substitutions)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.tmp, **self.env}
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([XKV_BIN] + args, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return args

    def wait_log(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path) as f:
                m = re.search(pattern, f.read())
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.read_log()}")
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no /{pattern}/ within {timeout}s: {self.read_log()}")

    def read_log(self):
        with open(self.log_path) as f:
            return f.read()[-3000:]

    def probes(self):
        return {p: self.container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")
                if p in self.container}

    def probe_ok(self, probe, ports):
        """Runs one probe the way the kubelet would, against this process's real ports."""
        ctr_ports = {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}
        if "grpc" in probe:
            port = ports[probe["grpc"]["port"]]
            return health_check(f"127.0.0.1:{port}", probe["grpc"].get("service", "")) == \
                HEALTH_SERVING
        if "tcpSocket" in probe:
            port = probe["tcpSocket"]["port"]
            port = ports[ctr_ports.get(port, port)]
            return tcp_open(f"127.0.0.1:{port}")
        if "httpGet" in probe:
            port = probe["httpGet"]["port"]
            port = ports[ctr_ports.get(port, port)]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['httpGet']['path']}",
                                            timeout=5) as r:
                    return 200 <= r.status < 400
            except OSError:  # refused, or an HTTP error status (HTTPError is an OSError)
                return False
        raise AssertionError(f"unsupported probe {probe}")

    def stop(self, grace):
        """SIGTERM, then SIGKILL after the pod's grace period (as the kubelet does)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


class RenderedPodsTest(unittest.TestCase):
    def setUp(self):
        if not os.path.exists(MODEL):
            self.skipTest(f"no model at {MODEL} (scripts/fetch-model)")
        self.tmpdir = tempfile.TemporaryDirectory(prefix="xkv-k8s-")
        subprocess.run([os.path.join(ROOT, "scripts", "make-dev-ca"), "--out",
                        os.path.join(self.tmpdir.name, "certs")], check=True, timeout=60,
                       capture_output=True)
        self.pods = []
        resources = kustomize_render.render(OVERLAY)
        self.resources = resources
        by_key = {(r["kind"], r["metadata"]["name"]): r for r in resources}
        self.sts = by_key[("StatefulSet", "xkv-worker")]
        self.dep = by_key[("Deployment", "xkv-coordinator")]
        self.secret = by_key[("Secret", "xkv-admin-token")]

    def tearDown(self):
        for p in self.pods:
            p.kill()
            if getattr(p, "log", None):
                p.log.close()
        self.tmpdir.cleanup()

    def test_rendered_pods_serve(self):
        tmp = self.tmpdir.name
        stages = self.sts["spec"]["replicas"]
        ns = self.sts["metadata"]["namespace"]
        service = self.sts["spec"]["serviceName"]
        workers = [Pod(self.resources, self.sts, i, tmp) for i in range(stages)]
        self.pods += workers
        worker_ports = []
        for w in workers:
            self.assertIn("--device=cuda:0", w.args({}))
            args = w.start({"0.0.0.0:50061": "127.0.0.1:0", "0.0.0.0:50062": "127.0.0.1:0",
                            "0.0.0.0:9464": "127.0.0.1:0", "--device=cuda:0": "--device=cpu"})
            self.assertIn("--device=cpu", args)
            port = int(w.wait_log(r"listening on \S+ \(port (\d+)\), mutual TLS",
                                  START_TIMEOUT_S).group(1))
            health = int(w.wait_log(r"grpc.health.v1 on port (\d+)", START_TIMEOUT_S).group(1))
            worker_ports.append(port)
            w.ports = {50061: port, 50062: health}
        # Unloaded workers: alive (liveness passes) but not ready (health NOT_SERVING).
        for w in workers:
            self.assertFalse(w.probe_ok(w.probes()["readinessProbe"], w.ports))
            self.assertTrue(w.probe_ok(w.probes()["livenessProbe"], w.ports))
            self.assertEqual(health_check(f"127.0.0.1:{w.ports[50062]}"), HEALTH_NOT_SERVING)
            # The Worker port itself serves no plaintext client (mutual TLS).
            self.assertEqual(health_check(f"127.0.0.1:{w.ports[50061]}"), -1)

        coordinator = Pod(self.resources, self.dep, 0, tmp)
        self.pods.append(coordinator)
        dns = {f"xkv-worker-{i}.{service}.{ns}.svc.cluster.local:50061": f"127.0.0.1:{port}"
               for i, port in enumerate(worker_ports)}
        subs = {"0.0.0.0:50051": "127.0.0.1:0", "0.0.0.0:50052": "127.0.0.1:0",
                "0.0.0.0:9464": "127.0.0.1:0", "0.0.0.0:8080": "127.0.0.1:0", **dns}
        args = coordinator.start(subs)
        workers_arg = [a for a in args if a.startswith("--workers=")]
        self.assertEqual(workers_arg, ["--workers=" + ",".join(dns.values())])
        m = coordinator.wait_log(r"serving Generation on port (\d+), Admin on port (\d+)",
                                 START_TIMEOUT_S)
        gen, admin = int(m.group(1)), int(m.group(2))
        http = int(coordinator.wait_log(r"serving the OpenAI API on port (\d+)",
                                        START_TIMEOUT_S).group(1))
        coordinator.ports = {50051: gen, 50052: admin, 8080: http}

        # Every probe of every container passes once the coordinator loaded the stages.
        deadline = time.monotonic() + 30
        for pod in [coordinator] + workers:
            for name, probe in pod.probes().items():
                while not pod.probe_ok(probe, pod.ports) and time.monotonic() < deadline:
                    time.sleep(0.2)
                self.assertTrue(pod.probe_ok(probe, pod.ports), f"{pod.name} {name}")

        out = subprocess.run([XKV_BIN, "client", "generate", "--server", f"127.0.0.1:{gen}",
                              "--chat", "--prompt", "What is a KV cache?", "--max-tokens", "8"],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(out.stdout.strip(), "Generate returned no text")

        # /metrics on every process, on the port the manifests give (--metrics-listen).
        for pod, wanted in [(w, "xkv_kv_cache_blocks_used") for w in workers] + [
                (coordinator, 'xkv_requests_total{code="OK"} 1')]:
            port = int(pod.wait_log(r"serving /metrics on port (\d+)", START_TIMEOUT_S).group(1))
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                self.assertEqual(r.status, 200)
                body = r.read().decode()
            self.assertIn(wanted, body, f"{pod.name} /metrics")
            if pod is not coordinator:  # its stage is loaded: /ready on the metrics port too
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=10) as r:
                    self.assertEqual(r.status, 200)
            if pod is coordinator:  # one inter-token gap per generated token after the first
                values = dict(line.rsplit(" ", 1) for line in body.splitlines()
                              if line and not line.startswith("#"))
                tokens = float(values["xkv_generation_tokens_total"])
                self.assertEqual(float(values["xkv_inter_token_latency_seconds_count"]),
                                 tokens - 1, body)
                # The ConfigMap's default profile mode (auto: one_pass) profiles every request.
                self.assertEqual(float(values["xkv_request_profile_seconds_count"]), 1.0, body)
                self.assertEqual(float(values["xkv_request_solve_seconds_count"]), 1.0, body)
                # Its wait for admission is part of its TTFT.
                self.assertEqual(float(values["xkv_request_queue_seconds_count"]), 1.0, body)
                self.assertLessEqual(float(values["xkv_request_queue_seconds_sum"]),
                                     float(values["xkv_time_to_first_token_seconds_sum"]), body)
                # Nothing runs any more: the planner expects no KV on any stage.
                for stage in range(len(workers)):
                    self.assertEqual(
                        float(values[f'xkv_kv_cache_bytes_predicted{{stage="{stage}"}}']), 0.0,
                        body)

        token = self.secret["stringData"]["token"]
        admin_addr = f"127.0.0.1:{admin}"
        client_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
        ok = subprocess.run([XKV_BIN, "client", "admin", "cluster", "--server", admin_addr,
                             "--token", token], capture_output=True, text=True, timeout=60,
                            env=client_env)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        cluster = json.loads(ok.stdout)
        self.assertEqual([s["address"] for s in cluster["stages"]], list(dns.values()))
        self.assertTrue(all(s["health"] == "HEALTH_STATE_SERVING" for s in cluster["stages"]))
        denied = subprocess.run([XKV_BIN, "client", "admin", "config", "--server", admin_addr],
                                capture_output=True, text=True, timeout=60, env=client_env)
        self.assertNotEqual(denied.returncode, 0, "Admin answered without the token")

        # Graceful stop: the preStop hook (Admin Drain, the token read from the mounted Secret),
        # then SIGTERM within terminationGracePeriodSeconds.
        hook = self.dep["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
        cmd = [coordinator.local_path(c) for c in hook["exec"]["command"]]
        cmd = [c.replace("127.0.0.1:50052", admin_addr) for c in cmd]
        pre = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=client_env)
        self.assertEqual(pre.returncode, 0, pre.stderr)
        self.assertTrue(json.loads(pre.stdout).get("drained"), pre.stdout + pre.stderr)
        readiness = coordinator.probes()["readinessProbe"]
        self.assertFalse(coordinator.probe_ok(readiness, coordinator.ports), "ready while drained")
        self.assertTrue(coordinator.probe_ok(coordinator.probes()["livenessProbe"],
                                             coordinator.ports))
        grace = self.dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        self.assertEqual(coordinator.stop(grace), 0, coordinator.read_log())
        grace = self.sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for w in workers:
            self.assertEqual(w.stop(grace), 0, w.read_log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
