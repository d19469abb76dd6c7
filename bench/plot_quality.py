#!/usr/bin/env python3
"""Plots `xkv eval` results: quality against KV bytes (% of the full cache), one line per method.

usage: plot_quality.py results.csv quality.png

Four panels: key accuracy in the query-aware and in the query-agnostic mode, greedy agreement and
mean KL (teacher-forced, both modes, vs the full cache). The full cache is a dashed reference line.
Needs matplotlib (the scripts venv: ~/.cache/xkv/venv/bin/python).
"""
import csv
import sys
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


def load(path):
    groups = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["method"], float(row["budget"]))
            g = groups[key]
            g["kv"].append(float(row["kv_percent"]))
            g["acc_" + row["mode"]].append(float(row["correct"]))
            g["agree"].append(float(row["agreement"]))
            g["kl"].append(float(row["kl"]))
    out = defaultdict(list)
    for (method, budget), g in groups.items():
        mean = {k: sum(v) / len(v) for k, v in g.items()}
        out[method].append((mean["kv"], mean.get("acc_aware", 0.0), mean.get("acc_agnostic", 0.0),
                            mean["agree"], mean["kl"]))
    for method in out:
        out[method].sort()
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    data = load(sys.argv[1])
    full = data.pop("full", None)
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.5))
    panels = [(1, "key accuracy, query-aware"), (2, "key accuracy, query-agnostic"),
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
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
