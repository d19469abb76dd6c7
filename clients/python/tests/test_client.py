"""xkv_client against a live `xkv serve` (embedded, 2 stages) that this module starts and stops.

Environment: XKV_BIN (the xkv binary) and XKV_MODEL (the GGUF file); ctest `python_client` sets
both. Ports are ephemeral (port 0, read back from the server's log); every wait is bounded.
"""
import os
import re
import signal
import subprocess
import tempfile
import time
import unittest

import grpc

from xkv_client import AdminClient, XkvClient, XkvError

TOKEN = "py-secret"
PROMPT = "The capital of France is"
LONG_PROMPT = ("The history of Paris begins with a small settlement of the Parisii on an island in "
               "the river Seine. The Romans built a town called Lutetia there, with a forum and "
               "baths. In the Middle Ages the city became the capital of the kings of France. "
               "Question: what was the Roman town called? Answer:")


def _start_server():
    binary, model = os.environ.get("XKV_BIN"), os.environ.get("XKV_MODEL")
    if not binary or not os.path.exists(binary) or not model or not os.path.exists(model):
        raise unittest.SkipTest("XKV_BIN / XKV_MODEL not set or missing")
    log = tempfile.NamedTemporaryFile(prefix="xkv-pyclient-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [binary, "serve", "--model", model, "--stages", "2", "--threads", "1",
         "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--admin-token", TOKEN,
         "--default-max-tokens", "6"],
        stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    pattern = re.compile(r"serving Generation on port (\d+), Admin on port (\d+)")
    while True:
        with open(log.name) as f:
            m = pattern.search(f.read())
        if m:
            return proc, log.name, int(m.group(1)), int(m.group(2))
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            with open(log.name) as f:
                raise RuntimeError("xkv serve did not start:\n" + f.read())
        time.sleep(0.05)  # poll interval of a bounded wait


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc, cls.log, port, admin_port = _start_server()
        cls.addClassCleanup(_stop, cls.proc)
        cls.client = XkvClient(f"127.0.0.1:{port}", timeout=120)
        cls.admin = AdminClient(f"127.0.0.1:{admin_port}", token=TOKEN)
        cls.admin_address = f"127.0.0.1:{admin_port}"
        cls.addClassCleanup(cls.client.close)
        cls.addClassCleanup(cls.admin.close)

    def test_generate_streams_deltas_and_ends_with_usage(self):
        chunks = list(self.client.generate(PROMPT, max_tokens=8, ignore_eos=True))
        self.assertGreater(len(chunks), 2, "the answer should arrive in several chunks")
        self.assertIsNone(chunks[0].usage)
        usage = chunks[-1].usage
        self.assertIsNotNone(usage)
        ids = [t for c in chunks for t in c.token_ids]
        self.assertEqual(len(ids), 8)
        self.assertEqual(usage.completion_tokens, 8)
        self.assertGreater(usage.prompt_tokens, 0)
        self.assertEqual(usage.finish_reason, 3)  # FINISH_REASON_LENGTH
        self.assertTrue(chunks[0].request_id)

    def test_greedy_is_deterministic_and_unset_max_tokens_is_the_default(self):
        a = self.client.complete(PROMPT, max_tokens=6, ignore_eos=True)
        b = self.client.complete(PROMPT, ignore_eos=True)  # --default-max-tokens 6
        self.assertEqual(a[0], b[0])
        self.assertEqual(a[1], b[1])
        self.assertEqual(b[2].completion_tokens, 6)

    def test_chat_messages(self):
        text, ids, usage = self.client.complete(
            messages=[{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8)
        self.assertTrue(ids)
        self.assertEqual(usage.completion_tokens, len(ids))
        self.assertIsInstance(text, str)

    def test_kv_policy_override_compresses(self):
        _, _, usage = self.client.complete(LONG_PROMPT, max_tokens=4, policy="xkv",
                                           budget_fraction=0.3)
        self.assertEqual(usage.policy, "xkv")
        self.assertLess(usage.kv_bytes_held, usage.kv_bytes_full)
        self.assertEqual(len(usage.layers), 30)

    def test_bad_requests_are_invalid_argument(self):
        cases = {
            "max_tokens 0": dict(prompt=PROMPT, max_tokens=0),
            "invalid UTF-8": dict(prompt=b"caf\xc3\x28 \xff"),
            "empty prompt": dict(prompt=""),
            "negative temperature": dict(prompt=PROMPT, temperature=-1.0),
            "top_p 0": dict(prompt=PROMPT, top_p=0.0),
            "unknown policy": dict(prompt=PROMPT, policy="magic"),
            "retention above 1": dict(prompt=PROMPT, policy="xkv", retention=1.5),
        }
        for name, kwargs in cases.items():
            with self.subTest(name):
                with self.assertRaises(XkvError) as err:
                    self.client.complete(**kwargs)
                self.assertEqual(err.exception.code, grpc.StatusCode.INVALID_ARGUMENT,
                                 err.exception.details)
                self.assertTrue(err.exception.details)
        self.assertTrue(self.client.complete(PROMPT, max_tokens=2)[1], "still serving")

    def test_closing_the_stream_cancels_and_frees_the_cache(self):
        stream = self.client.generate(LONG_PROMPT, max_tokens=500, ignore_eos=True)
        next(stream)
        next(stream)
        used = sum(s.blocks_used for s in self.admin.get_cluster_status().stages)
        self.assertGreater(used, 0)
        stream.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = self.admin.get_cluster_status()
            if st.running_requests == 0 and all(s.blocks_used == 0 for s in st.stages):
                break
            time.sleep(0.05)  # poll interval of a bounded wait
        st = self.admin.get_cluster_status()
        self.assertEqual(st.running_requests, 0)
        self.assertEqual([s.blocks_used for s in st.stages], [0, 0])

    def test_admin_calls(self):
        config = self.admin.get_config()
        self.assertEqual(config.n_layers, 30)
        self.assertEqual(config.num_stages, 2)
        previous = self.admin.set_retention_target(0.8).previous
        try:
            self.assertEqual(self.admin.get_config().default_policy.retention, 0.8)
        finally:
            self.admin.set_retention_target(previous)
        self.assertEqual(len(self.admin.get_cluster_status().stages), 2)
        self.assertFalse(self.admin.replan(dry_run=True).applied)
        self.assertGreaterEqual(self.admin.get_allocation().samples, 0)
        with self.assertRaises(XkvError) as err:
            self.admin.set_retention_target(1.5)
        self.assertEqual(err.exception.code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_admin_without_token_is_unauthenticated(self):
        for token in (None, "wrong"):
            with self.subTest(token=token), AdminClient(self.admin_address, token=token) as a:
                with self.assertRaises(XkvError) as err:
                    a.get_config()
                self.assertEqual(err.exception.code, grpc.StatusCode.UNAUTHENTICATED)


if __name__ == "__main__":
    unittest.main()
