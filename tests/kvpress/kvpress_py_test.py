"""CPU unit tests for the pure parts of bench/kvpress_eval.py (no torch, no kvpress needed):
prompt-file parsing and splitting, scoring, the bootstrap interval (checked against the values
xkv's C++ BootstrapMeanCi gives), the CSV and the summary, and the command line.

Run: PYTHONPATH=bench python3 -m unittest tests/kvpress/kvpress_py_test.py
"""
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import kvpress_eval  # noqa: E402  (imports nothing heavy at module level)
import kvpress_report  # noqa: E402
import needle_prompts  # noqa: E402
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
    def rows(self):
        out = []
        for i in range(4):
            for press, keep in (("full", 1.0), ("snapkv", 0.2)):
                for mode in kvpress_report.MODES:
                    ok = press == "full" or (mode == "aware" and i < 2)
                    out.append({"id": f"p{i}", "task": "t", "length": 1024 * (1 + i % 2),
                                "split": "test", "press": press, "keep": keep, "mode": mode,
                                "prediction": 'say "x",\nthen', "correct": ok})
        return out

    def test_csv_round_trip(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "r.csv")
            kvpress_report.write_csv(path, self.rows())
            back = kvpress_report.read_csv(path)
        self.assertEqual(len(back), 16)
        self.assertEqual(back[0]["prediction"], 'say "x",\nthen')
        self.assertEqual((back[-1]["keep"], back[-1]["correct"], back[-1]["length"]),
                         (0.2, 0, 2048))

    def test_summary_has_modes_interval_and_share_of_full(self):
        md = kvpress_report.summary_markdown(self.rows())
        lo, hi = kvpress_report.bootstrap_ci([0.5, 0.5, 0.0, 0.0])
        self.assertIn("| full | — | 1.000 | 1.000 | 1.000 | [1.000, 1.000] | 100.0% |", md)
        self.assertIn(f"| kvpress:snapkv | 20% | 0.500 | 0.000 | 0.250 | [{lo:.3f}, {hi:.3f}] "
                      "| 25.0% |", md)
        self.assertIn("| kvpress:snapkv | 20% | 0.250 | 0.250 |", md)  # by length


    def test_side_by_side_with_xkv_keeps_shared_prompts(self):
        with tempfile.TemporaryDirectory() as d:
            ours, theirs = os.path.join(d, "k.csv"), os.path.join(d, "x.csv")
            kvpress_report.write_csv(ours, self.rows())
            with open(theirs, "w", encoding="utf-8") as f:
                f.write("prompt_id,task,mode,target_tokens,method,budget,answer,correct\n"
                        "p0,t,aware,1024,full,1.0000,\"a, b\",1\n"
                        "p0,t,agnostic,1024,full,1.0000,x,1\n"
                        "p0,t,aware,1024,xkv,0.2000,x,1\np0,t,agnostic,1024,xkv,0.2000,x,0\n"
                        "p9,t,aware,1024,xkv,0.2000,x,1\n")
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                kvpress_report.main([ours, theirs])
        text = out.getvalue()
        self.assertIn("1 prompts in both files", text)
        self.assertIn("| kvpress:snapkv | 20% | 1.000 | 0.000 | 0.500 |", text)
        self.assertIn("| xkv | 20% | 1.000 | 0.000 | 0.500 | [0.500, 0.500] | 50.0% |", text)


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
                                (["--modes", "both"], "aware, agnostic"),
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


if __name__ == "__main__":
    unittest.main()
