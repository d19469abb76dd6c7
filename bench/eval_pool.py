#!/usr/bin/env python3
"""Pools several `xkv eval` results.csv files (e.g. runs with different --seed on one split).

Prints a Markdown table: accuracy per query mode and overall, a percentile bootstrap 95% interval
over prompts (2000 resamples, seeded; a prompt's two query modes stay together, as in
bench/eval_report.cc), and the paired bootstrap interval of `xkv` minus each other method at the
same budget (same prompts, so the difference is measured prompt by prompt).

Usage: bench/eval_pool.py RESULTS.csv [RESULTS.csv ...]
"""
import collections
import csv
import random
import sys


def bootstrap(values, resamples=2000, seed=1):
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


def main(paths):
    if not paths:
        sys.exit(__doc__)
    rows = []
    for i, path in enumerate(paths):
        for r in csv.DictReader(open(path, newline="", errors="replace")):
            r["pid"] = f"{i}:{r['prompt_id']}"
            rows.append(r)
    per = collections.defaultdict(lambda: collections.defaultdict(list))
    order = []
    for r in rows:
        key = (r["method"], float(r["budget"]))
        per[key][r["pid"]].append(int(r["correct"]))
        if key not in order:
            order.append(key)
    pids = sorted({r["pid"] for r in rows})
    print(f"{len(pids)} prompts from {len(paths)} run(s), {len(rows)} rows\n")
    print("| method | budget | accuracy (aware) | accuracy (agnostic) | accuracy (all) | 95% CI "
          "| xkv − method (paired 95% CI) |")
    print("|---|---|---|---|---|---|---|")
    for method, budget in order:
        cell = per[(method, budget)]
        acc = [sum(cell[p]) / len(cell[p]) for p in pids]
        modes = {m: [int(r["correct"]) for r in rows if r["method"] == method and
                     float(r["budget"]) == budget and r["mode"] == m] for m in ("aware", "agnostic")}
        lo, hi = bootstrap(acc)
        diff = ""
        if method not in ("full", "xkv") and ("xkv", budget) in per:
            x = per[("xkv", budget)]
            d = [sum(x[p]) / len(x[p]) - sum(cell[p]) / len(cell[p]) for p in pids]
            dlo, dhi = bootstrap(d)
            diff = f"{sum(d) / len(d):+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
        label = "—" if method == "full" else f"{100 * budget:.0f}%"
        aware = sum(modes["aware"]) / len(modes["aware"])
        agnostic = sum(modes["agnostic"]) / len(modes["agnostic"])
        print(f"| {method} | {label} | {aware:.3f} | {agnostic:.3f} | {sum(acc) / len(acc):.3f} "
              f"| [{lo:.3f}, {hi:.3f}] | {diff} |")


if __name__ == "__main__":
    main(sys.argv[1:])
