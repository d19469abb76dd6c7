"""The OpenAI-compatible HTTP API of a live `xkv serve` (real model, loopback), driven by the
official `openai` Python package and by raw HTTP for the malformed requests the SDK cannot send.

Environment: XKV_BIN (the xkv binary) and XKV_MODEL (the GGUF file); ctest `openai_api` sets both.
The server listens on ephemeral ports read back from its log; every wait is bounded.
"""
import http.client
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import unittest

import openai

API_KEY = "sk-xkv-test"
MAX_BODY = 65536
PROMPT = "The capital of France is"


def _start_server(*extra):
    """Starts `xkv serve` with `extra` flags; returns (process, its stderr lines, HTTP port). A
    reader thread follows stderr, so the server never blocks on a full pipe; the wait for the port line is
    bounded (120 s) and ends early when the process exits."""
    binary, model = os.environ.get("XKV_BIN"), os.environ.get("XKV_MODEL")
    if not binary or not os.path.exists(binary) or not model or not os.path.exists(model):
        raise unittest.SkipTest("XKV_BIN / XKV_MODEL not set or missing")
    proc = subprocess.Popen(
        [binary, "serve", "--model", model, "--threads", "1", "--listen", "127.0.0.1:0",
         "--admin-listen", "127.0.0.1:0", "--admin-insecure-local", "--http-listen", "127.0.0.1:0",
         "--http-max-body-bytes", str(MAX_BODY), "--served-model-name", "smollm2",
         "--http-max-concurrent", "2", "--default-max-tokens", "8", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, XKV_API_KEY=API_KEY))
    lines, port = [], queue.Queue()

    def follow():
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"serving the OpenAI API on port (\d+)", line)
            if m:
                port.put(int(m.group(1)))
        proc.stderr.close()
        port.put(None)  # stderr closed: the process ended

    threading.Thread(target=follow, daemon=True).start()
    try:
        got = port.get(timeout=120)
    except queue.Empty:
        got = None
    if got is None:
        _stop(proc)
        raise RuntimeError("xkv serve did not start:\n" + "".join(lines))
    return proc, lines, got


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


class _HttpHelpers:
    """Raw HTTP against self.port (set by the test class)."""

    def raw(self, method, path, body=None, headers=None):
        """One request over a fresh connection: (status, parsed JSON or text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        h = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        h.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, data.decode(errors="replace")

    def metric(self, sample):
        """The value of one /metrics sample (e.g. 'xkv_requests_total{code="OK"}'); 0 if absent."""
        status, body = self.raw("GET", "/metrics")
        self.assertEqual(status, 200)
        m = re.search(r"^" + re.escape(sample) + r" (\S+)$", body, re.M)
        return float(m.group(1)) if m else 0.0

    def wait_metric(self, sample, done, timeout):
        """Polls /metrics until done(value of sample); returns (value, seconds waited)."""
        start = time.monotonic()
        while True:
            value = self.metric(sample)
            if done(value) or time.monotonic() - start > timeout:
                return value, time.monotonic() - start
            time.sleep(0.02)  # poll interval of a bounded wait

    def assert_error(self, status, body, want_status, want_param=None, says=None):
        self.assertEqual(status, want_status, body)
        err = body["error"]
        self.assertEqual(sorted(err), ["code", "message", "param", "type"], body)
        self.assertTrue(err["message"])
        if want_param is not None:
            self.assertEqual(err["param"], want_param, body)
        if says is not None:
            self.assertIn(says, err["message"])

class OpenAiApiTest(_HttpHelpers, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc, cls.server_log, cls.port = _start_server()
        cls.addClassCleanup(_stop, cls.proc)
        cls.client = openai.OpenAI(base_url=f"http://127.0.0.1:{cls.port}/v1", api_key=API_KEY,
                                   timeout=120, max_retries=0)
        cls.addClassCleanup(cls.client.close)

    def assert_serving(self):
        """The server still answers a real generation after a bad request."""
        r = self.client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=2)
        self.assertEqual(r.usage.completion_tokens, 2)

    # --- the happy paths ---

    def test_models(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], ["smollm2"])
        self.assertEqual(self.client.models.retrieve("smollm2").id, "smollm2")

    def test_chat_completion(self):
        r = self.client.chat.completions.create(
            model="smollm2", max_tokens=6, temperature=0,
            messages=[{"role": "system", "content": "You are brief."},
                      {"role": "user", "content": [{"type": "text", "text": "Name a color."}]}])
        self.assertEqual(r.object, "chat.completion")
        self.assertTrue(r.id.startswith("chatcmpl-"))
        self.assertEqual(len(r.choices), 1)
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertTrue(r.choices[0].message.content)
        self.assertIn(r.choices[0].finish_reason, ("stop", "length"))
        self.assertGreater(r.usage.prompt_tokens, 5)
        self.assertLessEqual(r.usage.completion_tokens, 6)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        kv = r.usage.model_extra["xkv"]
        self.assertGreater(kv["kv_bytes_full"], 0)
        self.assertGreater(kv["kv_bytes_held"], 0)
        self.assertLessEqual(kv["kv_bytes_held"], kv["kv_bytes_full"])

    def test_chat_stream_matches_non_stream_and_ends_with_usage(self):
        args = dict(model="smollm2", max_tokens=8, temperature=0,
                    messages=[{"role": "user", "content": "Count: one, two,"}])
        whole = self.client.chat.completions.create(**args)
        chunks = list(self.client.chat.completions.create(
            **args, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertTrue(all(c.object == "chat.completion.chunk" for c in chunks))
        self.assertEqual(len({c.id for c in chunks}), 1)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        self.assertEqual(finishes[-1], whole.choices[0].finish_reason)
        self.assertTrue(all(f is None for f in finishes[:-1]))
        self.assertEqual(chunks[-1].choices, [])  # the usage chunk
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertTrue(all(c.usage is None for c in chunks[:-1]))

    def test_completion_stream_and_raw_sse_framing(self):
        status, _ = 200, None
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"model": "smollm2", "prompt": PROMPT, "max_tokens": 4, "stream": True,
             "ignore_eos": True}),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertTrue(resp.getheader("Content-Type").startswith("text/event-stream"))
        events = resp.read().decode().split("\n\n")
        conn.close()
        self.assertEqual(events[-1], "")
        self.assertEqual(events[-2], "data: [DONE]")
        chunks = [json.loads(e[len("data: "):]) for e in events[:-2]]
        self.assertTrue(all(e.startswith("data: ") for e in events[:-2]))
        self.assertTrue(all(c["object"] == "text_completion" for c in chunks))
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "length")
        self.assertNotIn("usage", chunks[0])  # no include_usage: no usage field in chunks

    def test_completion_stop_string(self):
        full = self.client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=8,
                                              temperature=0, extra_body={"ignore_eos": True})
        text = full.choices[0].text
        words = text.split()
        self.assertGreater(len(words), 1, text)
        stop = words[1]
        r = self.client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=8,
                                           temperature=0, stop=[stop, "zzz-never"])
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.choices[0].text, text[:text.index(stop)])

    def test_seed_reproducibility_and_n(self):
        args = dict(model="smollm2", prompt="Once upon a time", max_tokens=8, temperature=1.0,
                    extra_body={"ignore_eos": True})
        a = self.client.completions.create(**args, seed=1234, n=3)
        b = self.client.completions.create(**args, seed=1234, n=3)
        self.assertEqual([c.index for c in a.choices], [0, 1, 2])
        self.assertEqual([c.text for c in a.choices], [c.text for c in b.choices])
        self.assertGreater(len({c.text for c in a.choices}), 1, "choices sample differently")
        self.assertEqual(a.usage.completion_tokens, 24)
        streamed = list(self.client.completions.create(**args, seed=1234, n=3, stream=True))
        texts = ["", "", ""]
        for c in streamed:
            for ch in c.choices:
                texts[ch.index] += ch.text
        self.assertEqual(texts, [c.text for c in a.choices])

    def test_min_p_and_penalties(self):
        args = dict(model="smollm2", prompt="one one one one one one one one", max_tokens=12)
        greedy = self.client.completions.create(
            **args, temperature=0, extra_body={"ignore_eos": True}).choices[0].text
        # min_p 1 keeps only the most likely token: sampling at any temperature is greedy.
        only_top = self.client.completions.create(
            **args, temperature=1.5, seed=3, extra_body={"ignore_eos": True, "min_p": 1.0})
        self.assertEqual(only_top.choices[0].text, greedy)
        # A frequency penalty steers greedy decoding away from what it generated already.
        penalized = self.client.completions.create(**args, temperature=0, frequency_penalty=2.0,
                                                   extra_body={"ignore_eos": True})
        self.assertNotEqual(penalized.choices[0].text, greedy)
        def repeats(text):
            words = re.findall(r"\w+", text)
            return len(words) - len(set(words))
        self.assertLess(repeats(penalized.choices[0].text), repeats(greedy),
                        (greedy, penalized.choices[0].text))
        # repetition_penalty (vLLM's) also counts the prompt: it moves the first token already,
        # in both endpoints; 1 is off.
        red = dict(model="smollm2", prompt="red, red, red, red, red,", max_tokens=4, temperature=0,
                   logprobs=0)
        first = lambda r: r.choices[0].logprobs.tokens[0]
        plain = self.client.completions.create(**red, extra_body={"ignore_eos": True})
        self.assertEqual(first(plain), " red")
        off = self.client.completions.create(
            **red, extra_body={"ignore_eos": True, "repetition_penalty": 1})
        self.assertEqual(off.choices[0].text, plain.choices[0].text)
        repeated = self.client.completions.create(
            **red, extra_body={"ignore_eos": True, "repetition_penalty": 2.0})
        self.assertNotEqual(first(repeated), " red", repeated)
        chat = self.client.chat.completions.create(
            model="smollm2", max_tokens=4, temperature=0, messages=[
                {"role": "user", "content": red["prompt"]}], extra_body={"repetition_penalty": 2.0})
        self.assertTrue(chat.choices[0].message.content)

    def test_logprobs(self):
        args = dict(model="smollm2", max_tokens=6, temperature=0,
                    messages=[{"role": "user", "content": "Name a fruit."}])
        r = self.client.chat.completions.create(**args, logprobs=True, top_logprobs=2,
                                                extra_body={"ignore_eos": True})
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), r.usage.completion_tokens)
        self.assertEqual("".join(t.token for t in content), r.choices[0].message.content)
        for t in content:
            self.assertLessEqual(t.logprob, 0)
            self.assertEqual(len(t.top_logprobs), 2)
            self.assertEqual(t.top_logprobs[0].token, t.token)  # greedy: the most likely
            self.assertAlmostEqual(t.top_logprobs[0].logprob, t.logprob, places=5)
            self.assertGreaterEqual(t.top_logprobs[0].logprob, t.top_logprobs[1].logprob)
            self.assertEqual(bytes(t.bytes).decode(), t.token)
        streamed = [lp for c in self.client.chat.completions.create(
            **args, logprobs=True, top_logprobs=2, stream=True, extra_body={"ignore_eos": True})
            if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.content]
        self.assertEqual([(t.token, round(t.logprob, 4)) for t in streamed],
                         [(t.token, round(t.logprob, 4)) for t in content])
        self.assertIsNone(self.client.chat.completions.create(**args).choices[0].logprobs)
        c = self.client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=5,
                                           temperature=0, logprobs=3,
                                           extra_body={"ignore_eos": True})
        lp = c.choices[0].logprobs
        self.assertEqual("".join(lp.tokens), c.choices[0].text)
        self.assertEqual(len(lp.token_logprobs), 5)
        self.assertEqual(lp.text_offset[0], 0)
        self.assertEqual(lp.text_offset[1], len(lp.tokens[0].encode()))
        self.assertTrue(all(1 <= len(alts) <= 3 for alts in lp.top_logprobs))

    def test_xkv_settings_and_layer_sizes(self):
        prompt = ("In a small village by the sea there lived an old fisherman who went out every "
                  "morning before dawn. One day he caught a golden fish that could speak. "
                  "What did the fish say?")
        r = self.client.completions.create(
            model="smollm2", prompt=prompt, max_tokens=3,
            extra_body={"xkv": {"policy": "snapkv", "budget_fraction": 0.5, "layers": True}})
        kv = r.usage.model_extra["xkv"]
        self.assertEqual(kv["policy"], "snapkv")
        self.assertLess(kv["kv_bytes_held"], kv["kv_bytes_full"])
        self.assertEqual(len(kv["layers"]), 30)
        self.assertEqual(sum(l["bytes"] for l in kv["layers"]), kv["kv_bytes_held"])

    # --- every error shape, and the server keeps serving ---

    def test_sdk_errors(self):
        with self.assertRaises(openai.NotFoundError) as e:
            self.client.chat.completions.create(model="gpt-4", messages=[
                {"role": "user", "content": "hi"}])
        self.assertEqual(e.exception.body["code"], "model_not_found")
        self.assertEqual(e.exception.body["param"], "model")
        bad = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="wrong",
                            max_retries=0, timeout=30)
        with self.assertRaises(openai.AuthenticationError):
            bad.models.list()
        bad.close()
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(model="smollm2", temperature=-1, messages=[
                {"role": "user", "content": "hi"}])
        self.assertEqual(e.exception.body["param"], "temperature")
        self.assert_serving()

    def test_bad_requests_get_openai_errors(self):
        chat = "/v1/chat/completions"
        user = [{"role": "user", "content": "hi"}]
        cases = [
            (b"{not json", 400, None, "not valid JSON"),
            (b'{"model": "smollm2", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400,
             None, "not valid JSON"),
            ({"model": "smollm2", "messages": "hi"}, 400, "messages", None),
            ({"model": "smollm2", "messages": user, "max_tokens": "8"}, 400, "max_tokens", None),
            ({"model": "smollm2", "messages": [{"role": "wizard", "content": "hi"}]}, 400,
             "messages", "wizard"),
            ({"model": "smollm2", "messages": []}, 400, "messages", None),
            ({"model": "smollm2", "messages": user, "top_p": 1.5}, 400, "top_p", None),
            ({"model": "smollm2", "messages": user, "max_tokens": 0}, 400, "max_tokens", None),
            ({"model": "smollm2", "messages": user, "max_tokens": 100000}, 400, "max_tokens",
             None),
            ({"model": "smollm2", "messages": user, "n": 99}, 400, "n", None),
            ({"model": "smollm2", "messages": user, "frequency_penalty": 2.5}, 400,
             "frequency_penalty", "[-2, 2]"),
            ({"model": "smollm2", "messages": user, "min_p": -0.5}, 400, "min_p", None),
            ({"model": "smollm2", "messages": user, "repetition_penalty": 0}, 400,
             "repetition_penalty", "> 0"),
            ({"model": "smollm2", "messages": user, "repetition_penalty": "1.1"}, 400,
             "repetition_penalty", "a number"),
            ({"model": "smollm2", "messages": user, "logprobs": True, "top_logprobs": 21}, 400,
             "logprobs", "[0, 20]"),
            ({"model": "smollm2", "messages": user, "xkv": {"policy": "magic"}}, 400,
             "xkv.policy", None),
            ({"model": "nope", "messages": user}, 404, "model", None),
        ]
        for body, status, param, says in cases:
            with self.subTest(body=body):
                got_status, got = self.raw("POST", chat, body)
                self.assert_error(got_status, got, status, param, says)
        status, body = self.raw("POST", chat, b"x" * (MAX_BODY + 1))
        self.assert_error(status, body, 413)
        status, body = self.raw("GET", "/v1/models", headers={"Authorization": "Bearer nope"})
        self.assert_error(status, body, 401)
        self.assertEqual(body["error"]["code"], "invalid_api_key")
        status, body = self.raw("GET", "/v1/nothing-here")
        self.assert_error(status, body, 404)
        self.assert_serving()

    def test_concurrency_limit_and_disconnect_cancels(self):
        """Two open streams hold both slots (--http-max-concurrent 2): the next request gets 429.
        Clients that go away get their requests cancelled and the slots back."""
        cancelled = self.metric('xkv_requests_total{code="CANCELLED"}')
        streams = []
        for _ in range(2):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            conn.request("POST", "/v1/completions", body=json.dumps(
                {"model": "smollm2", "prompt": PROMPT, "max_tokens": 4000, "ignore_eos": True,
                 "stream": True}),
                headers={"Authorization": f"Bearer {API_KEY}"})
            resp = conn.getresponse()
            self.assertEqual(resp.status, 200)
            self.assertTrue(resp.readline().startswith(b"data: {"))
            streams.append(conn)
        status, body = self.raw("POST", "/v1/completions",
                                {"model": "smollm2", "prompt": PROMPT, "max_tokens": 1})
        self.assert_error(status, body, 429)
        for conn in streams:
            conn.sock.shutdown(2)
            conn.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                self.assert_serving()
                break
            except openai.RateLimitError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # poll interval of a bounded wait
        # The coordinator counts a request once it ended there (the HTTP slot may come back first).
        now, _ = self.wait_metric('xkv_requests_total{code="CANCELLED"}',
                                  lambda v: v >= cancelled + 2, 10)
        self.assertEqual(now, cancelled + 2)

    def test_non_streamed_disconnect_cancels(self):
        """A client that closes its connection while it waits for a non-streamed completion: the
        coordinator cancels the request (within 5 s; it would run 4000 tokens) and frees it."""
        cancelled = self.metric('xkv_requests_total{code="CANCELLED"}')
        for path, body in (("/v1/completions", {"prompt": PROMPT}),
                           ("/v1/chat/completions",
                            {"messages": [{"role": "user", "content": "hi"}], "n": 2})):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            conn.request("POST", path, body=json.dumps(dict(
                body, model="smollm2", max_tokens=4000, ignore_eos=True)),
                headers={"Authorization": f"Bearer {API_KEY}"})
            running, _ = self.wait_metric("xkv_num_requests_running", lambda v: v >= 1, 30)
            self.assertGreaterEqual(running, 1)
            conn.sock.shutdown(2)
            conn.close()
            running, waited = self.wait_metric("xkv_num_requests_running", lambda v: v == 0, 10)
            self.assertEqual(running, 0)
            self.assertLess(waited, 5)
        now, _ = self.wait_metric('xkv_requests_total{code="CANCELLED"}',
                                  lambda v: v >= cancelled + 3, 10)
        self.assertEqual(now, cancelled + 3)
        self.assert_serving()

    def test_probes_and_metrics_need_no_key(self):
        self.assert_serving()  # a finished request for the request counters
        for path, want in (("/health", "ok"), ("/ready", "ready")):
            status, body = self.raw("GET", path, headers={"Authorization": ""})
            self.assertEqual((status, body.strip()), (200, want))
        status, body = self.raw("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertIn("xkv_requests_total", body)


def _varint(n):
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _generate_request(prompt, max_tokens):
    """xkv.v1.GenerateRequest bytes by hand (no generated stubs): prompt = 1, max_tokens = 3,
    ignore_eos = 5."""
    p = prompt.encode()
    return b"\x0a" + _varint(len(p)) + p + b"\x18" + _varint(max_tokens) + b"\x28\x01"


class LimitsTest(_HttpHelpers, unittest.TestCase):
    """429 only for load (a full queue, --http-max-concurrent); a request that can never be served
    (more KV than the pool holds, a prompt longer than the context) is a 400 that says why. Every
    outcome is counted by its real status in xkv_requests_total (a gRPC deadline included)."""

    def test_never_fits_is_400_a_full_queue_is_429_and_outcomes_are_counted(self):
        proc, log, port = _start_server("--kv-blocks", "32", "--max-batch", "1", "--max-queue",
                                        "1", "--http-max-concurrent", "8")
        self.addCleanup(_stop, proc)
        self.port = port
        user = [{"role": "user", "content": "hi"}]
        # 32 blocks of 16 tokens per layer: 1000 new tokens can never fit.
        status, body = self.raw("POST", "/v1/chat/completions",
                               {"model": "smollm2", "messages": user, "max_tokens": 1000})
        self.assert_error(status, body, 400, None, "never fit")
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        status, body = self.raw("POST", "/v1/completions",
                               {"model": "smollm2", "prompt": "go " * 9000, "max_tokens": 1})
        self.assert_error(status, body, 400, "prompt", "context length")
        # One request runs (--max-batch 1), one waits (--max-queue 1): the next one gets 429.
        headers = {"Authorization": f"Bearer {API_KEY}"}
        running = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        running.request("POST", "/v1/completions", json.dumps(
            {"model": "smollm2", "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True,
             "stream": True}), headers)
        self.assertTrue(running.getresponse().readline().startswith(b"data: {"))
        waiting = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        waiting.request("POST", "/v1/completions", json.dumps(
            {"model": "smollm2", "prompt": PROMPT, "max_tokens": 2}), headers)
        queued, _ = self.wait_metric("xkv_num_requests_waiting", lambda v: v >= 1, 30)
        self.assertEqual(queued, 1, "server log:\n" + "".join(log))
        status, body = self.raw("POST", "/v1/completions",
                               {"model": "smollm2", "prompt": PROMPT, "max_tokens": 2})
        self.assert_error(status, body, 429, None, "queue is full")
        self.assertEqual(body["error"]["type"], "rate_limit_error")
        running.sock.shutdown(2)
        running.close()
        answer = waiting.getresponse()
        self.assertEqual(answer.status, 200)
        usage = json.loads(answer.read())["usage"]
        self.assertEqual(usage["completion_tokens"], 2)
        waiting.close()
        # A gRPC client whose deadline passes while its request runs.
        import grpc  # the scripts venv has grpcio
        grpc_port = next(int(m.group(1)) for m in (
            re.search(r"serving Generation on port (\d+)", line) for line in log) if m)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            generate = channel.unary_stream("/xkv.v1.Generation/Generate")
            with self.assertRaises(grpc.RpcError) as e:
                list(generate(_generate_request(PROMPT, 400), timeout=1.0))
            self.assertEqual(e.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        want = {"OK": 1, "CANCELLED": 1, "DEADLINE_EXCEEDED": 1, "INVALID_ARGUMENT": 2,
                "RESOURCE_EXHAUSTED": 1}
        sample = lambda code: 'xkv_requests_total{code="%s"}' % code
        self.wait_metric(sample("DEADLINE_EXCEEDED"), lambda v: v >= 1, 10)
        self.assertEqual({code: self.metric(sample(code)) for code in want}, want,
                         "server log:\n" + "".join(log))
        # Only admitted prompts count (the OK, CANCELLED and DEADLINE_EXCEEDED requests).
        prompts, _ = self.wait_metric("xkv_prompt_tokens_total",
                                      lambda v: v >= 3 * usage["prompt_tokens"], 5)
        self.assertEqual(prompts, 3 * usage["prompt_tokens"])


class ShutdownTest(unittest.TestCase):
    def test_sigterm_ends_open_requests_with_openai_errors(self):
        """SIGTERM: an open stream that outlives the grace period ends with an error event and
        [DONE], a waiting request gets a 503 error object, and the process exits 0."""
        proc, log, port = _start_server("--shutdown-grace", "1")
        self.addCleanup(_stop, proc)
        body = {"model": "smollm2", "prompt": PROMPT, "max_tokens": 4000, "ignore_eos": True}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        stream = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        stream.request("POST", "/v1/completions", json.dumps(dict(body, stream=True)), headers)
        streamed = stream.getresponse()
        self.assertTrue(streamed.readline().startswith(b"data: {"))
        waiting = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        waiting.request("POST", "/v1/completions", json.dumps(body), headers)
        # The waiting request is in once the coordinator holds both requests (running or queued):
        # then both slots of --http-max-concurrent 2 are taken. (Probing before that could take
        # the second slot first and turn the waiting request away.)
        deadline = time.monotonic() + 30
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/metrics")
            metrics = conn.getresponse().read().decode()
            conn.close()
            held = sum(float(m) for m in re.findall(
                r"^xkv_num_requests_(?:running|waiting) (\S+)$", metrics, re.M))
            if held >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # poll interval of a bounded wait
        self.assertGreaterEqual(held, 2, "server log:\n" + "".join(log))
        probe = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        probe.request("POST", "/v1/completions", json.dumps(dict(body, max_tokens=1)), headers)
        status = probe.getresponse().status
        probe.close()
        self.assertEqual(status, 429, "server log:\n" + "".join(log))
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=30), 0)
        events = streamed.read().decode().split("\n\n")
        self.assertEqual(events[-2:], ["data: [DONE]", ""])
        self.assertEqual(json.loads(events[-3][len("data: "):])["error"]["type"],
                         "service_unavailable")
        answer = waiting.getresponse()
        self.assertEqual(answer.status, 503)
        self.assertEqual(json.loads(answer.read())["error"]["type"], "service_unavailable")


if __name__ == "__main__":
    unittest.main()
