#!/usr/bin/env python3
"""Plots `xkv eval` results: quality against KV bytes (% of the full cache), one line per method.

usage: plot_quality.py results.csv quality.png [--exclude task1,task2]

Four panels: answer accuracy in the query-aware and in the query-agnostic mode, greedy agreement
and mean KL (teacher-forced on real text, both modes, vs the full cache). The full cache is a
dashed reference line. --exclude leaves out tasks (xkv eval passes those the full cache solves less
than half of the time). Needs matplotlib (the scripts venv: ~/.cache/xkv/venv/bin/python).
"""
import argparse
import csv
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "xkv": dict(color="tab:red", marker="o", linewidth=2.2),
    "snapkv": dict(color="tab:blue", marker="s"),
    "pyramidkv": dict(color="tab:green", marker="^"),
    "streaming": dict(color="tab:gray", marker="v"),
}


def load(path, exclude):
    groups = defaultdict(lambda: defaultdict(list))
    with open(path, newline="", errors="replace") as f:  # answers may end mid-character
        for row in csv.DictReader(f):
            if row["task"] in exclude:
                continue
            key = (row["method"], float(row["budget"]))
            g = groups[key]
            g["kv"].append(float(row["kv_percent"]))
            g["acc_" + row["mode"]].append(float(row["correct"]))
            if row["agreement"]:  # prompts without a continuation have no fidelity metrics
                g["agree"].append(float(row["agreement"]))
                g["kl"].append(float(row["kl"]))
    out = defaultdict(list)
    nan = float("nan")
    for (method, budget), g in groups.items():
        mean = {k: sum(v) / len(v) for k, v in g.items() if v}
        out[method].append((mean["kv"], mean.get("acc_aware", 0.0), mean.get("acc_agnostic", 0.0),
                            mean.get("agree", nan), mean.get("kl", nan)))
    for method in out:
        out[method].sort()
    return out


def main():
    parser = argparse.ArgumentParser(usage=__doc__)
    parser.add_argument("csv")
    parser.add_argument("png")
    parser.add_argument("--exclude", default="")
    args = parser.parse_args()
    data = load(args.csv, set(filter(None, args.exclude.split(","))))
    full = data.pop("full", None)
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.5))
    panels = [(1, "accuracy, question in the context"), (2, "accuracy, question after compression"),
              (3, "greedy agreement (teacher-forced)"), (4, "mean KL(full || method), nats")]
    for ax, (col, title) in zip(axes, panels):
        for method, points in sorted(data.items()):
            xs = [p[0] for p in points]
            ys = [p[col] for p in points]
            ax.plot(xs, ys, label=method, **STYLE.get(method, {}))
        if full and col != 4:
            ax.axhline(full[0][col], color="black", linestyle="--", linewidth=1, label="full cache")
        ax.set_xlabel("KV bytes, % of full cache")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if col in (1, 2):
            ax.set_ylim(-0.03, 1.03)
        if col == 4:
            ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle("xkv eval: quality vs KV memory (SmolLM2-135M-Instruct)")
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
