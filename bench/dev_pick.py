#!/usr/bin/env python3
"""The dev split's pick, the rule every parameter search of docs/quality*.md fixed before its run:
among METHODS (in the listed order, the current choice first), the highest mean accuracy in MODE
(default agnostic: the question after compression) over every budget, counted only over the
(prompt, budget) cells that every listed method finished (a cut run compares like with like);
ties keep the earlier method. Prints the pick on stdout and each method's mean and per-budget
accuracy on stderr.

  dev_pick.py RESULTS.csv METHOD[,METHOD...] [--mode agnostic|aware]

RESULTS.csv: `xkv eval`'s results.csv (or results.partial.csv) rows, several files' rows
concatenated with one header; methods may carry a prefix naming their run (e.g. `c2048/xkv:...`).
"""
import argparse
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvpress_report import read_csv  # noqa: E402  (results.csv rows: budget float, correct 0/1/None)


def pick(rows, methods, mode="agnostic"):
    """(the pick or None, {method: (mean, {budget: accuracy}, cells)}) over read_csv's rows."""
    rows = [r for r in rows if r["mode"] == mode and r["method"] in methods and r["correct"] is not None]
    done = defaultdict(set)
    for r in rows:
        done[r["method"]].add((r["prompt_id"], r["budget"]))
    common = set.intersection(*(done[m] for m in methods)) if all(done[m] for m in methods) else set()
    stats, best, best_v = {}, None, None
    for m in methods:
        by_budget = defaultdict(list)
        for r in rows:
            if r["method"] == m and (r["prompt_id"], r["budget"]) in common:
                by_budget[r["budget"]].append(r["correct"])
        cells = sum(len(v) for v in by_budget.values())
        mean = sum(sum(v) for v in by_budget.values()) / cells if cells else None
        stats[m] = (mean, {b: sum(v) / len(v) for b, v in sorted(by_budget.items())}, cells)
        if mean is not None and (best_v is None or mean > best_v):
            best, best_v = m, mean
    return best, stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results")
    ap.add_argument("methods", help="comma-separated, the current choice first")
    ap.add_argument("--mode", default="agnostic", choices=["agnostic", "aware"])
    a = ap.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    if not methods:
        ap.error("no methods")
    best, stats = pick(read_csv(a.results), methods, a.mode)
    for m in methods:
        mean, per_budget, cells = stats[m]
        shown = "no common cells" if mean is None else f"{mean:.4f} over {cells} cells"
        print(f"{m}: {shown}; " + ", ".join(f"{b:g}: {v:.3f}" for b, v in per_budget.items()),
              file=sys.stderr)
    if best is None:
        print("dev_pick: no (prompt, budget) cell that every method finished", file=sys.stderr)
        return 1
    print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
