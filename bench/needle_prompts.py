#!/usr/bin/env python3
"""Writes a small seeded needle-in-a-haystack prompt set in the JSONL of bench/prompts_jsonl.py.

A stand-in for `xkv eval --export-prompts` when testing bench/kvpress_eval.py: passkey (one needle)
and multikey (4 needles, one asked) prompts over Debian's license texts, with the answer primed by
"The pass key [for NAME] is". Lengths are targets in tokens, met approximately (about 4.5
characters a token); nothing is tokenized here.

Usage: bench/needle_prompts.py OUT.jsonl [--lengths 1024,2048,4096] [--depths 0.1,0.5,0.9]
                               [--seed 1] [--split test]
"""
import argparse
import json
import os
import random

TEXTS = ("LGPL-3", "Apache-2.0", "MPL-2.0", "MPL-1.1", "GFDL-1.3", "GFDL-1.2")
NAMES = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi")
CHARS_PER_TOKEN = 4.5
INSTRUCTION = ("There is important information hidden inside a lot of irrelevant text. "
               "Find it and memorize it.\n\n")


def paragraphs(folder="/usr/share/common-licenses"):
    out = []
    for name in TEXTS:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                out += [" ".join(p.split()) for p in f.read().split("\n\n") if len(p) >= 60]
    if len(out) < 20:
        raise SystemExit(f"needle_prompts: too few paragraphs under {folder} ({len(out)})")
    return out


def haystack(paras, rng, chars):
    start, text = rng.randrange(len(paras)), []
    while sum(len(p) + 1 for p in text) < chars:
        text.append(paras[(start + len(text)) % len(paras)])
    return text


def insert(text, depth, sentence):
    text.insert(min(len(text), round(depth * len(text))), sentence)


def make_prompt(paras, rng, task, length, depth, split, index):
    text = haystack(paras, rng, (length - 120) * CHARS_PER_TOKEN)
    if task == "passkey":
        key = str(rng.randrange(10000, 100000))
        insert(text, depth, f"The pass key is {key}. Remember it. {key} is the pass key.")
        question, prefix = "What is the pass key? Answer with the number only.", "The pass key is"
    else:
        names = rng.sample(NAMES, 4)
        keys = [str(rng.randrange(10000, 100000)) for _ in names]
        for name, key in list(zip(names, keys))[1:]:
            insert(text, rng.random(), f"The pass key for {name} is {key}. Remember it.")
        insert(text, depth, f"The pass key for {names[0]} is {keys[0]}. Remember it.")
        key = keys[0]
        question = f"What is the pass key for {names[0]}? Answer with the number only."
        prefix = f"The pass key for {names[0]} is"
    return {"id": f"{split}-{task}-{length}-{index}", "task": task, "split": split,
            "length": length, "context": INSTRUCTION + "\n".join(text) + "\n\n",
            "question": question, "answer_prefix": prefix, "answers": [key]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("out")
    p.add_argument("--lengths", default="1024,2048,4096")
    p.add_argument("--depths", default="0.1,0.5,0.9")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--split", default="test", choices=("dev", "test"))
    a = p.parse_args()
    rng, paras, prompts = random.Random(a.seed), paragraphs(), []
    for task in ("passkey", "multikey"):
        for length in (int(x) for x in a.lengths.split(",")):
            for i, depth in enumerate(float(x) for x in a.depths.split(",")):
                prompts.append(make_prompt(paras, rng, task, length, depth, a.split, i))
    with open(a.out, "w", encoding="utf-8") as f:
        for prompt in prompts:
            f.write(json.dumps(prompt) + "\n")
    print(f"wrote {len(prompts)} prompts to {a.out}")


if __name__ == "__main__":
    main()
