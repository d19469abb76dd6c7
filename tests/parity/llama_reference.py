#!/usr/bin/env python3
"""Writes llama.cpp's answers for the parity test (run through llama-cpp-python on the same GGUF).

Output folder (argv[2]):
  tokens.txt   one line per test string: "<hex of the UTF-8 bytes> <id> <id> ..." (special=True)
  prompts.txt  one line per prompt:
               "<name> <n_prompt> <spread> <ids...> | <64 greedy ids> | <64 top-2 margins>"
  <name>.logits.f32  little-endian fp32 [vocab]: llama.cpp's logits at the prompt's last position

<spread> is llama.cpp's own noise floor for that prompt: the largest |logit difference| between any
two of three configurations of llama.cpp itself (the default batched prefill without flash
attention, the same with flash attention, one token per batch). A margin is llama.cpp's top-1 minus
top-2 logit at each greedy step.

The strings file (argv[3]) holds one string per line; '#' lines are comments; escapes \\n \\t \\r
\\\\ \\uXXXX \\UXXXXXXXX are decoded, every other character is taken as is (UTF-8).
"""
import itertools
import os
import re
import sys

import numpy as np
import llama_cpp

GREEDY_TOKENS = 64


def decode_escapes(line: str) -> str:
    def repl(m):
        s = m.group(0)
        if s == "\\n":
            return "\n"
        if s == "\\t":
            return "\t"
        if s == "\\r":
            return "\r"
        if s == "\\\\":
            return "\\"
        return chr(int(s[2:], 16))

    return re.sub(r"\\U[0-9a-fA-F]{8}|\\u[0-9a-fA-F]{4}|\\[ntr\\]", repl, line)


def read_strings(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if raw.startswith("#") or raw == "":
                continue
            out.append(decode_escapes(raw))
    return out


def prose(path, words):
    """The first `words` whitespace-separated words of a text file shipped with Debian."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = " ".join(f.read().split())
    return " ".join(text.split(" ")[:words])


def prompts():
    lic = "/usr/share/common-licenses"
    gpl = os.path.join(lic, "GPL-3")
    apache = os.path.join(lic, "Apache-2.0")
    chat = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
            "<|im_start|>assistant\n")
    return [
        ("short", "The quick brown fox jumps over the lazy dog. Once upon a time, in a small village by the sea,"),
        ("chat", chat),
        ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n"
                 "        return n\n    a, b = 0, 1\n    for _ in range(n - 1):\n        a, b = b, a + b\n"),
        ("apache", "Summarize the following license.\n\n" + prose(apache, 380)),
        ("gpl", "Read the following text.\n\n" + prose(gpl, 1500) + "\n\nThe text above is the"),
    ]


def greedy(llm, ids, n):
    llm.reset()
    llm.eval(ids)
    last = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
    out, margins = [], []
    for _ in range(n):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        top2 = np.sort(np.partition(row, -2)[-2:])
        tok = int(np.argmax(row))
        out.append(tok)
        margins.append(float(top2[1] - top2[0]))
        llm.eval([tok])
    return last, out, margins


def last_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1], dtype=np.float32)


def main():
    model, outdir, strings_path = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(outdir, exist_ok=True)
    # One thread: the answers do not depend on it, and with os.cpu_count() threads llama.cpp's spin
    # barriers made this script 7x slower on a busy 2-core machine (it hit its ctest timeout).
    common = dict(model_path=model, n_ctx=4096, n_threads=1, n_threads_batch=1, logits_all=True,
                  verbose=False)
    llm = llama_cpp.Llama(n_batch=512, **common)
    others = [llama_cpp.Llama(n_batch=512, flash_attn=True, **common),
              llama_cpp.Llama(n_batch=1, n_ubatch=1, **common)]
    with open(os.path.join(outdir, "tokens.txt"), "w") as f:
        for s in read_strings(strings_path):
            ids = llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
            f.write(s.encode("utf-8").hex() + " " + " ".join(map(str, ids)) + "\n")
    with open(os.path.join(outdir, "prompts.txt"), "w") as f:
        for name, text in prompts():
            ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            last, cont, margins = greedy(llm, ids, GREEDY_TOKENS)
            runs = [last] + [last_logits(o, ids) for o in others]
            spread = max(float(np.abs(a - b).max()) for a, b in itertools.combinations(runs, 2))
            last.tofile(os.path.join(outdir, name + ".logits.f32"))
            f.write(f"{name} {len(ids)} {spread:.6f} {' '.join(map(str, ids))} | "
                    f"{' '.join(map(str, cont))} | {' '.join(f'{m:.6f}' for m in margins)}\n")
            print(f"llama.cpp reference: {name}: {len(ids)} prompt tokens, own spread "
                  f"{spread:.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()
