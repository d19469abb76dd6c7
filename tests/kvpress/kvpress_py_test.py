"""CPU unit tests for the pure parts of bench/kvpress_eval.py (no torch, no kvpress needed):
prompt-file parsing and splitting, scoring, the bootstrap interval (checked against the values
xkv's C++ BootstrapMeanCi gives), the CSV and the summary, and the command line.

Run: PYTHONPATH=bench python3 -m unittest tests/kvpress/kvpress_py_test.py
"""
import contextlib
import csv
import io
import json
import os
import random
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import dev_pick  # noqa: E402
import kvpress_eval  # noqa: E402  (imports nothing heavy at module level)
import kvpress_report  # noqa: E402
import needle_prompts  # noqa: E402
import peer_prompts  # noqa: E402
import prompts_jsonl  # noqa: E402


def record(**overrides):
    r = {"id": "p1", "task": "niah_number", "split": "test", "length": 1024,
         "context": "Some document. The number is 4821. ", "question": "What is the number?",
         "answer_prefix": "Answer:", "answers": ["4821"]}
    r.update(overrides)
    return r


def chatml(messages):
    """A stand-in for SmolLM2's chat template (ChatML with a default system prompt)."""
    out = "<|im_start|>system\nYou are helpful<|im_end|>\n"
    for m in messages:
        out += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return out + "<|im_start|>assistant\n"


class PromptFileTest(unittest.TestCase):
    def write(self, lines):
        f = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8")
        f.write("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")
        f.close()
        self.addCleanup(os.remove, f.name)
        return f.name

    def assertRejected(self, obj, *fragments):
        path = self.write([record(id="ok"), obj])
        with self.assertRaises(prompts_jsonl.PromptError) as e:
            prompts_jsonl.load_prompts(path)
        self.assertIn(f"{path}:2:", str(e.exception))
        for fragment in fragments:
            self.assertIn(fragment, str(e.exception))

    def test_reads_valid_records_with_defaults(self):
        no_prefix = record(id="p2")
        del no_prefix["answer_prefix"]
        ids = record(id="p3", context_ids=[1, 2, 3], question_ids=[4], continuation="text")
        prompts = prompts_jsonl.load_prompts(self.write([record(), "", no_prefix, ids]))
        self.assertEqual([p["id"] for p in prompts], ["p1", "p2", "p3"])
        self.assertEqual(prompts[1]["answer_prefix"], "")
        self.assertEqual(prompts[2]["question_ids"], [4])

    def test_rejects_bad_fields_naming_them(self):
        self.assertRejected(record(split="train"), "'split'", "'train'", "dev, test")
        self.assertRejected(record(length=0), "'length'", ">= 1")
        self.assertRejected(record(length=True), "'length'")
        self.assertRejected(record(answers=[]), "'answers'")
        self.assertRejected(record(answers=["4821", ""]), "'answers'")
        self.assertRejected(record(question=7), "'question'", "string")
        self.assertRejected(record(depth=0.5), "unknown field 'depth'")
        self.assertRejected(record(context_ids=[1, 2]), "'context_ids' and 'question_ids'")
        self.assertRejected(record(context_ids=[1, -2], question_ids=[3]), "'context_ids'")
        self.assertRejected(record(messages=[{"role": "user", "content": "no question"}]),
                            "end with field 'question'")
        self.assertRejected(record(id="ok"), "duplicate id 'ok'")
        bad = record()
        del bad["task"]
        self.assertRejected(bad, "missing field 'task'")

    def test_rejects_non_json_and_empty_files(self):
        with self.assertRaisesRegex(prompts_jsonl.PromptError, r":1: not JSON"):
            prompts_jsonl.load_prompts(self.write(["{oops"]))
        with self.assertRaisesRegex(prompts_jsonl.PromptError, "no prompts"):
            prompts_jsonl.load_prompts(self.write([""]))

    def test_text_prompt_is_one_user_message_split_at_the_question(self):
        context, question = prompts_jsonl.prompt_texts(record(), chatml)
        self.assertEqual(context, "<|im_start|>system\nYou are helpful<|im_end|>\n"
                                  "<|im_start|>user\nSome document. The number is 4821. ")
        self.assertEqual(question,
                         "What is the number?<|im_end|>\n<|im_start|>assistant\nAnswer:")

    def test_messages_replace_context_and_question(self):
        p = record(context="", messages=[{"role": "system", "content": "Be brief"},
                                         {"role": "user", "content": "Doc. What is the number?"}])
        context, question = prompts_jsonl.prompt_texts(p, chatml)
        self.assertTrue(context.endswith("<|im_start|>user\nDoc. "))
        self.assertIn("Be brief", context)
        self.assertTrue(question.startswith("What is the number?<|im_end|>"))

    def test_question_missing_from_rendering_is_an_error(self):
        with self.assertRaisesRegex(prompts_jsonl.PromptError, "does not occur"):
            prompts_jsonl.prompt_texts(record(), lambda messages: "a template that drops it")

    def test_string_match_is_case_sensitive_any(self):
        self.assertTrue(prompts_jsonl.is_correct(" 4821.", ["9999", "4821"]))
        self.assertFalse(prompts_jsonl.is_correct(" 482.", ["4821"]))
        self.assertFalse(prompts_jsonl.is_correct("Apple", ["apple"]))

    def test_strata_interleave_covers_every_stratum_first(self):
        prompts = [record(id=f"{t}{n}{i}", task=t, length=n)
                   for t in ("a", "b") for n in (1024, 2048) for i in range(3)]
        order = prompts_jsonl.interleave_strata(list(prompts), seed=1)
        self.assertEqual(sorted(p["id"] for p in order), sorted(p["id"] for p in prompts))
        self.assertEqual(len({(p["task"], p["length"]) for p in order[:4]}), 4)
        self.assertEqual({p["task"] for p in order[:2]}, {"a", "b"})
        self.assertEqual({p["length"] for p in order[:2]}, {1024, 2048})
        self.assertEqual(order, prompts_jsonl.interleave_strata(list(prompts), seed=1))
        self.assertEqual(prompts_jsonl.interleave_strata([], seed=1), [])


class BootstrapTest(unittest.TestCase):
    def test_engine_is_std_mt19937_64(self):
        rng = kvpress_report.Mt19937_64(5489)  # the standard's default seed
        for _ in range(9999):
            rng()
        self.assertEqual(rng(), 9981545732273789042)  # [rand.predef]: the 10000th output

    def test_intervals_equal_xkvs_cpp_bootstrap(self):
        # bench/eval_metrics.cc BootstrapMeanCi(values, 2000, 1), built with GCC 12's libstdc++.
        cases = [
            ([1, 0, 0.5, 1, 1, 0, 0.5, 1, 0, 1, 1, 0.5, 0, 0, 1, 1, 0.5, 1],
             (0.41666666666666669, 0.80555555555555558)),
            ([0.25, 0.75, 1, 0, 0.5, 0.5, 1], (0.32142857142857145, 0.8214285714285714)),
            ([1.0], (1.0, 1.0)),
            ([(i * 7919 % 13) / 12.0 for i in range(203)],
             (0.45443349753694579, 0.54187192118226601)),
        ]
        for values, expected in cases:
            self.assertEqual(kvpress_report.bootstrap_ci(values), expected)
        self.assertEqual(kvpress_report.bootstrap_ci([]), (0.0, 0.0))

    def test_uniform_index_stays_in_range(self):
        rng = kvpress_report.Mt19937_64(7)
        draws = [kvpress_report.uniform_index(rng, 3) for _ in range(3000)]
        self.assertEqual(set(draws), {0, 1, 2})


class ReportTest(unittest.TestCase):
    def rows(self, prefix="kvpress:", modes=("aware", "agnostic"), n=4):
        """Full right everywhere; snapkv at 20% right in the aware mode on the first two prompts."""
        out = []
        for i in range(n):
            for method, keep in (("full", 1.0), ("snapkv", 0.2)):
                for mode in modes:
                    ok = method == "full" or (mode == "aware" and i < 2)
                    out.append({"prompt_id": f"p{i}", "task": "t", "mode": mode,
                                "target_tokens": 1024, "method": prefix + method,
                                "budget": f"{keep:.4f}", "answer": 'say "x",\nthen',
                                "correct": int(ok)})
        return out

    def write(self, d, name, rows):
        path = os.path.join(d, name)
        kvpress_report.write_csv(path, rows)
        return path

    def test_csv_round_trip_in_xkv_columns(self):
        rows = self.rows()
        rows[-1]["correct"] = ""  # a failed cell
        with tempfile.TemporaryDirectory() as d:
            path = self.write(d, "r.csv", rows)
            with open(path, encoding="utf-8") as f:
                self.assertEqual(f.readline().strip(), ",".join(kvpress_report.CSV_FIELDS))
            back = kvpress_report.read_csv(path)
        self.assertEqual(len(back), 16)
        self.assertEqual(back[0]["answer"], 'say "x",\nthen')
        self.assertEqual((back[1]["budget"], back[1]["correct"]), (1.0, 1))
        self.assertIsNone(back[-1]["correct"])

    def test_rejects_a_file_without_xkv_columns(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "x.csv")
            with open(path, "w", encoding="utf-8") as f:
                f.write("id,press,keep\np1,snapkv,0.2\n")
            with self.assertRaisesRegex(ValueError, "no column prompt_id"):
                kvpress_report.read_csv(path)

    def test_cells_carry_accuracy_interval_and_own_full_cache(self):
        rows = self.rows() + self.rows(prefix="", modes=("aware", "question", "agnostic"))
        for r in rows:
            r["budget"] = float(r["budget"])
        rows[-1]["correct"] = None  # xkv's snapkv agnostic on p3 raised: left out of its cell
        table = kvpress_report.Table(rows)
        md = table.markdown()
        lo, hi = kvpress_report.bootstrap_ci([1, 1, 0, 0])
        self.assertIn("| method | full cache | 20% inside | 20% inside, tail after | 20% after |",
                      md)
        self.assertIn(f"| kvpress:snapkv | 1.000 / — / 1.000 | 0.500 [{lo:.2f}, {hi:.2f}] | — "
                      "| 0.000 [0.00, 0.00] |", md)
        self.assertIn("| snapkv | 1.000 / 1.000 / 1.000 | 0.500", md)
        self.assertIn("| **kvpress:full** | 1.000 [1.00, 1.00] / — / 1.000 [1.00, 1.00] |", md)
        self.assertEqual(table.values("snapkv", 0.2, "agnostic"), [0, 0, 0])
        self.assertEqual(table.failed, {"snapkv": 1})
        self.assertAlmostEqual(table.share("snapkv", 0.2, "aware"), 0.5)
        check = table.goal_check()
        self.assertIn("- snapkv: at 20% of the bytes, aware 50% (misses 99%), question 0% "
                      "(misses 99%), agnostic 0% (misses 95%) of full; at or above every "
                      "kvpress press.", check)
        self.assertNotIn("kvpress:snapkv:", check)
        alone = kvpress_report.Table([r for r in rows if not r["method"].startswith("kvpress:")])
        self.assertIn("(misses 95%) of full.", alone.goal_check())  # no presses: no comparison

    def test_goal_check_names_the_presses_above(self):
        rows = self.rows() + self.rows(prefix="")
        for r in rows:
            r["budget"] = float(r["budget"])
            if r["method"] == "snapkv" and r["mode"] == "aware" and r["prompt_id"] == "p1":
                r["correct"] = 0
        check = kvpress_report.Table(rows).goal_check()
        self.assertIn("below the best kvpress press at 20% aware (0.250 < snapkv 0.500).", check)

    def test_goal_check_best_xkv_mode_and_default_against_baselines(self):
        right = {  # method: prompts right (of 4) in the aware and the agnostic mode, at 20%
            "kvpress:full": (4, 4), "kvpress:kvzip": (3, 3), "kvpress:snapkv": (1, 1),
            "full": (4, 4), "snapkv": (3, 1), "xkv": (2, 2),
            "xkv:profile=reconstruct": (4, 2)}
        rows = []
        for method, (aware, agnostic) in right.items():
            for i in range(4):
                for mode, n in (("aware", aware), ("agnostic", agnostic)):
                    rows.append({"prompt_id": f"p{i}", "task": "t", "mode": mode,
                                 "method": method, "budget": 1.0 if "full" in method else 0.2,
                                 "correct": int(i < n)})
        check = kvpress_report.Table(rows).goal_check()
        self.assertIn("- **Best xkv mode**: xkv:profile=reconstruct (mean 0.750 over the cells): "
                      "at or above every kvpress press in 1 of 2 cells; below at 20% agnostic "
                      "(0.500 < kvpress:kvzip 0.750).", check)
        self.assertIn("- **Default xkv** against kvpress:snapkv, snapkv: at or above all in 1 of "
                      "2 cells; below at 20% aware (0.500 < snapkv 0.750).", check)
        self.assertIn("- xkv: at 20% of the bytes, aware 50% (misses 99%), agnostic 50% (misses "
                      "95%) of full; below the best kvpress press at 20% aware (0.500 < kvzip "
                      "0.750), 20% agnostic (0.500 < kvzip 0.750).", check)

    def test_join_keeps_prompts_every_method_ran_and_labels_engines(self):
        with tempfile.TemporaryDirectory() as d:
            ours = self.write(d, "k.csv", self.rows())
            xkv = self.write(d, "x.csv", self.rows(prefix="", n=3))
            cpu = self.write(d, "c.csv", self.rows(prefix="", n=4))
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                kvpress_report.main([ours, xkv, "cpu=" + cpu])
        text = out.getvalue()
        self.assertIn("3 prompts that every method ran", text)
        self.assertIn("| cpu:snapkv | 1.000 / 1.000 | 0.667", text)
        self.assertIn("| **cpu:full** |", text)
        self.assertIn("| **full** |", text)


class PeerPromptsTest(unittest.TestCase):
    def test_picks_cells_evenly_and_interleaves_them(self):
        lines = [record(id=f"{t}-{n}-r{r:02d}", task=t, length=n)
                 for t in ("a", "b") for n in (1024, 8000) for r in range(13)]
        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl")
            with open(src, "w", encoding="utf-8") as f:
                f.write("\n".join(json.dumps(x) for x in lines) + "\n")
            with contextlib.redirect_stdout(io.StringIO()):
                peer_prompts.main([src, dst, "--max-length", "4096", "--per-cell", "3"])
            got = [p["id"] for p in prompts_jsonl.load_prompts(dst)]
        self.assertEqual(sorted(got), ["a-1024-r00", "a-1024-r06", "a-1024-r12",
                                       "b-1024-r00", "b-1024-r06", "b-1024-r12"])
        self.assertEqual({g[0] for g in got[:2]}, {"a", "b"})  # each round covers every task


class CommandLineTest(unittest.TestCase):
    def test_defaults_are_the_full_press_set(self):
        a = kvpress_eval.parse_args(["--prompts", "p", "--gguf", "m", "--out", "o"])
        self.assertEqual(a.presses, list(kvpress_eval.PRESSES))
        self.assertEqual(a.keeps, [0.1, 0.2, 0.4])
        self.assertEqual(a.modes, ["aware", "agnostic"])

    def test_bad_values_exit_with_usage_naming_them(self):
        base = ["--prompts", "p", "--gguf", "m", "--out", "o"]
        for extra, fragment in ((["--presses", "snapkv,h2o"], "unknown h2o"),
                                (["--keeps", "0.2,1.5"], "(0, 1)"),
                                (["--keeps", "x"], "not a list"),
                                (["--modes", "question"], "aware, agnostic"),
                                (["--workers", "0"], "--workers")):
            err = io.StringIO()
            with self.assertRaises(SystemExit) as e, contextlib.redirect_stderr(err):
                kvpress_eval.parse_args(base + extra)
            self.assertEqual(e.exception.code, 2)
            self.assertIn(fragment, err.getvalue())

    def test_module_imports_no_torch(self):
        self.assertNotIn("torch", sys.modules)
        self.assertNotIn("kvpress", sys.modules)


class NeedlePromptsTest(unittest.TestCase):
    def test_generated_prompts_are_valid_records(self):
        paras = [f"Paragraph {i} of a license text, long enough to be kept as prose here."
                 for i in range(40)]
        rng = random.Random(1)
        for task in ("passkey", "multikey"):
            p = needle_prompts.make_prompt(paras, rng, task, 1024, 0.5, "dev", 0)
            prompts_jsonl.parse_prompt(p)
            self.assertEqual(p["context"].count(p["answers"][0]), 1 if task == "multikey" else 2)
            self.assertIn(p["answers"][0], p["context"])


class DevPickTest(unittest.TestCase):
    """bench/dev_pick.py: the dev split's selection rule."""

    @staticmethod
    def rows(method, results, mode="agnostic"):
        # results: {(prompt, budget): correct}; rows as kvpress_report.read_csv gives them
        return [{"prompt_id": p, "task": "t", "budget": float(b), "mode": mode, "method": method,
                 "correct": c} for (p, b), c in results.items()]

    def test_highest_mean_over_common_cells_ties_keep_the_current(self):
        cur = self.rows("cur", {("a", "0.1"): 1, ("b", "0.1"): 0, ("a", "0.2"): 1, ("b", "0.2"): 1})
        # better on the common cells; its extra (cut) prompt "c" is not counted
        new = self.rows("new", {("a", "0.1"): 1, ("b", "0.1"): 1, ("a", "0.2"): 1,
                                ("b", "0.2"): 1, ("c", "0.1"): 0})
        tie = self.rows("tie", {("a", "0.1"): 1, ("b", "0.1"): 0, ("a", "0.2"): 1, ("b", "0.2"): 1})
        other_mode = self.rows("new", {("a", "0.1"): 0}, mode="aware")
        best, stats = dev_pick.pick(cur + new + tie + other_mode, ["cur", "new", "tie"])
        self.assertEqual(best, "new")
        self.assertEqual(stats["new"][2], 4)
        self.assertAlmostEqual(stats["cur"][0], 0.75)
        self.assertEqual(stats["cur"][1], {0.1: 0.5, 0.2: 1.0})
        self.assertEqual(dev_pick.pick(cur + tie, ["cur", "tie"])[0], "cur")
        self.assertEqual(dev_pick.pick(cur + tie, ["tie", "cur"])[0], "tie")
        self.assertEqual(dev_pick.pick(cur + new, ["cur", "new"], mode="aware")[0], None)

    def test_command_line(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "r.csv")
            rows = (self.rows("cur", {("a", "0.1"): 0, ("b", "0.1"): 1}) +
                    self.rows("new", {("a", "0.1"): 1, ("b", "0.1"): 1}))
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                self.assertEqual(dev_pick.main([path, "cur,new"]), 0)
            self.assertEqual(out.getvalue().strip(), "new")
            self.assertIn("cur: 0.5000 over 2 cells", err.getvalue())
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                self.assertEqual(dev_pick.main([path, "cur,missing"]), 1)


if __name__ == "__main__":
    unittest.main()
