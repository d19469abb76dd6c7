#!/usr/bin/env python3
"""Picks the prompt file that xkv and its peers (bench/kvpress_eval.py) both run for the goal table.

Reads an `xkv eval --export-prompts` file, keeps the prompts of at most --max-length tokens and
--per-cell prompts of each (task, length) cell, spread evenly over the cell's repeats (so the
needle depths still sweep the document), and writes them in the strata-interleaved order of
bench/prompts_jsonl.py: any prefix of the file (a run cut short by a deadline) covers every task
and length about equally. The records are copied unchanged.

Usage: bench/peer_prompts.py IN.jsonl OUT.jsonl [--max-length 4096] [--per-cell 6] [--seed 1]
"""
import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prompts_jsonl  # noqa: E402


def spread(items, n):
    """n items evenly spaced over the list (its first and last included when n >= 2)."""
    if n >= len(items):
        return list(items)
    if n == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def pick(prompts, max_length, per_cell, seed):
    cells = collections.defaultdict(list)
    for p in prompts:
        if p["length"] <= max_length:
            cells[(p["task"], p["length"])].append(p)
    chosen = [p for key in sorted(cells) for p in spread(cells[key], per_cell)]
    return prompts_jsonl.interleave_strata(chosen, seed)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--max-length", type=int, default=4096, help="longest target length kept")
    ap.add_argument("--per-cell", type=int, default=6, help="prompts per (task, length) cell")
    ap.add_argument("--seed", type=int, default=1, help="order within the interleaving")
    args = ap.parse_args(argv)
    if args.max_length < 1 or args.per_cell < 1:
        ap.error(f"--max-length {args.max_length} and --per-cell {args.per_cell} must be >= 1")
    try:
        prompts = prompts_jsonl.load_prompts(args.input)
    except (OSError, prompts_jsonl.PromptError) as e:
        raise SystemExit(f"peer_prompts: {e}")
    # Raw records keep their field order and values: the file is read again, line by line.
    with open(args.input, encoding="utf-8") as f:
        raw = {json.loads(line)["id"]: line.rstrip("\n") for line in f if line.strip()}
    chosen = pick(prompts, args.max_length, args.per_cell, args.seed)
    if not chosen:
        raise SystemExit(f"peer_prompts: no prompt of at most {args.max_length} tokens")
    with open(args.output, "w", encoding="utf-8") as f:
        for p in chosen:
            f.write(raw[p["id"]] + "\n")
    cells = collections.Counter((p["task"], p["length"]) for p in chosen)
    print(f"peer_prompts: {len(chosen)} prompts in {len(cells)} (task, length) cells -> "
          f"{args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
