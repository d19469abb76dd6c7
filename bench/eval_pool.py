#!/usr/bin/env python3
"""Pools `xkv eval` results.csv files and compares every method with a reference method.

Prints Markdown tables: per query mode present (aware, question, agnostic) and over all modes,
each method's accuracy with a percentile bootstrap 95% interval over prompts (2000 resamples,
seeded; a prompt's query modes stay together, as in bench/eval_report.cc), and the paired
bootstrap interval of the reference's accuracy minus the method's at the same budget (same
prompts, so the difference is measured prompt by prompt).

Usage: bench/eval_pool.py [--ref METHOD] [--merge] [--tasks T1,T2] RESULTS.csv [RESULTS.csv ...]
  --ref     the reference method (default xkv)
  --merge   the files hold the same prompts (runs of different methods): a prompt id is the same
            prompt in every file; by default each file's prompts are distinct (e.g. other seeds)
  --tasks   keep only these tasks (e.g. the headline tasks the full cache solves)
"""
import argparse
import collections
import csv
import random

MODES = ("aware", "question", "agnostic")


def bootstrap(values, resamples=2000, seed=1):
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


def mean(xs):
    return sum(xs) / len(xs)


def main():
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--ref", default="xkv")
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--tasks", default="")
    a = ap.parse_args()
    tasks = set(filter(None, a.tasks.split(",")))
    rows, seen = [], set()
    for i, path in enumerate(a.paths):
        for r in csv.DictReader(open(path, newline="", errors="replace")):
            if tasks and r["task"] not in tasks:
                continue
            r["pid"] = r["prompt_id"] if a.merge else f"{i}:{r['prompt_id']}"
            key = (r["pid"], r["mode"], r["method"], r["budget"])
            if key not in seen:  # merged runs repeat the full cache's rows
                seen.add(key)
                rows.append(r)
    # cell[(method, budget)][mode][pid] = correct (0/1)
    cell = collections.defaultdict(lambda: collections.defaultdict(dict))
    order = []
    for r in rows:
        key = (r["method"], float(r["budget"]))
        cell[key][r["mode"]][r["pid"]] = int(r["correct"])
        if key not in order:
            order.append(key)
    modes = [m for m in MODES if any(m in c for c in cell.values())]
    pids = sorted({r["pid"] for r in rows})
    print(f"{len(pids)} prompts from {len(a.paths)} run(s), {len(rows)} rows; reference {a.ref}\n")

    def scores(key, mode):  # per prompt: 0/1 in one mode, the mean over modes for "all"
        c = cell[key]
        ms = modes if mode == "all" else [mode]
        if any(p not in c[m] for m in ms for p in pids):
            return None
        return [mean([c[m][p] for m in ms]) for p in pids]

    for mode in modes + ["all"]:
        print(f"**{mode}**\n")
        print(f"| method | budget | accuracy [95% CI] | {a.ref} − method (paired 95% CI) |")
        print("|---|---|---|---|")
        for method, budget in order:
            s = scores((method, budget), mode)
            if s is None:
                continue
            lo, hi = bootstrap(s)
            diff = ""
            ref = scores((a.ref, budget), mode)
            if method not in ("full", a.ref) and ref is not None:
                d = [x - y for x, y in zip(ref, s)]
                dlo, dhi = bootstrap(d)
                diff = f"{mean(d):+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
            label = "—" if method == "full" else f"{100 * budget:.0f}%"
            print(f"| {method} | {label} | {mean(s):.3f} [{lo:.2f}, {hi:.2f}] | {diff} |")
        print()


if __name__ == "__main__":
    main()
