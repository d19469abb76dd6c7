#!/usr/bin/env python3
"""The tables of bench/serve_vs_llama_cpp_gpu.sh: decode tokens/s per batch size B.

usage: llama_cpp_compare.py OUT_DIR

Reads from OUT_DIR (missing files give "-"):
  llama_batched.tsv          lines "fa B S_TG S_PP" (bench/llama_cpp_batched_gpu.sh)
  xkv_batched.json           `xkv bench gpu --batched-decode --json` ("batched": decode_tps, ...)
  serve_S_bB_POLICY.json     `xkv bench serve --json`: a burst of B requests, policy POLICY, on
                             server S (mM: `xkv serve --micro-batches M`; base: XKV_BASE's)
  serve_S.log                that server's stderr: `--log-step-timing` lines after a marker
                             "=== serve_vs_llama_cpp_gpu: B=.. policy=.." per run
Prints two Markdown tables. The first: llama.cpp's S_TG (flash attention on, off) and xkv's engine
alone (`bench gpu --batched-decode`) per B. The second, per B, server and policy: "decode tok/s (all B
decoding)" of `xkv bench serve` (tokens streamed from the last request's first token to the first
request's last, over that window: llama-batched-bench's S_TG for the service), its ratio to
llama.cpp's better S_TG, vLLM's output throughput (prefill included), and the mean of the
step-timing lines whose steps were pure decode (B sequences, B rows): the loop's time per step,
the wait for the stage, the stage's own step and its engine compute.
"""
import json
import os
import re
import sys

LINE = re.compile(r"xkv coordinator: (\d+) steps, ([\d.]+) sequences / ([\d.]+) rows each: one "
                  r"every ([\d.]+) ms = plan ([\d.]+) \+ launch ([\d.]+) \+ wait ([\d.]+) "
                  r"\(stages ([\d.]+), compute ([\d.]+)\) \+ apply ([\d.]+) \+ other (-?[\d.]+) ms")
MARK = re.compile(r"=== serve_vs_llama_cpp_gpu: B=(\d+) policy=(\S+)")


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


def step_timing(path):
    """(B, policy) -> mean per step of [step, plan, launch, wait, stages, compute, apply, other]
    over the lines of pure decode steps (sequences == rows == B)."""
    sums = {}
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return {}
    key = None
    for line in lines:
        m = MARK.search(line)
        if m:
            key = (int(m.group(1)), m.group(2))
            continue
        m = LINE.search(line)
        if not m or key is None:
            continue
        seqs, rows = float(m.group(2)), float(m.group(3))
        if seqs != key[0] or rows != key[0]:
            continue
        n = int(m.group(1))
        vals = [float(m.group(i)) for i in range(4, 12)]
        acc = sums.setdefault(key, [0, [0.0] * 8])
        acc[0] += n
        acc[1] = [a + v * n for a, v in zip(acc[1], vals)]
    return {k: [v / n for v in s] for k, (n, s) in sums.items() if n > 0}


def main():
    out = sys.argv[1]
    llama = {}  # (fa, B) -> (S_TG, S_PP)
    try:
        with open(os.path.join(out, "llama_batched.tsv")) as f:
            for line in f:
                fa, b, s_tg, s_pp = line.split()
                llama[(fa, int(b))] = (float(s_tg), float(s_pp))
    except OSError:
        pass
    engine = {}
    j = load_json(os.path.join(out, "xkv_batched.json"))
    for row in (j or {}).get("batched", []):
        if row.get("kernels", "default") == "default":  # not the 8-row GEMV A/B rows
            engine[int(row["batch"])] = row["decode_tps"]
    runs = []  # (server, B, policy)
    for n in os.listdir(out):
        m = re.fullmatch(r"serve_([a-z0-9]+)_b(\d+)_(\w+)\.json", n)
        if m:
            runs.append((m.group(1), int(m.group(2)), m.group(3)))
    order = {"full": 0, "xkv": 1, "snapkv": 2}
    runs.sort(key=lambda r: (r[1], r[0] == "base", r[0], order.get(r[2], 9), r[2]))
    batches = sorted({b for _, b in llama} | set(engine) | {b for _, b, _ in runs})

    print("| B | llama.cpp S_TG, FA on | llama.cpp S_TG, FA off | xkv engine alone S_TG |")
    print("|---|---|---|---|")
    for b in batches:
        on = llama.get(("on", b), (None, None))[0]
        off = llama.get(("off", b), (None, None))[0]
        print(f"| {b} | {fmt(on)} | {fmt(off)} | {fmt(engine.get(b))} |")
    print()
    print("| B | server | policy | xkv serve decode tok/s (all B decoding) | / llama.cpp "
          "(better FA) | out tok/s | TPOT mean ms | decode step ms: loop / wait / stage / "
          "compute |")
    print("|---|---|---|---|---|---|---|---|")
    timings = {}
    for m, b, policy in runs:
        if m not in timings:
            timings[m] = step_timing(os.path.join(out, f"serve_{m}.log"))
        s = load_json(os.path.join(out, f"serve_{m}_b{b}_{policy}.json"))
        r = s["results"][0] if s and s.get("results") else None
        decode = r.get("decode_throughput_all_decoding") if r else None
        decode = decode if decode else None
        best = max([v for v in (llama.get(("on", b), (None,))[0],
                                llama.get(("off", b), (None,))[0]) if v is not None],
                   default=None)
        ratio = f"{decode / best:.2f}x" if decode and best else "-"
        t = timings[m].get((b, policy))
        steps = f"{t[0]:.2f} / {t[3]:.2f} / {t[4]:.2f} / {t[5]:.2f}" if t else "-"
        print(f"| {b} | {m} | {policy} | {fmt(decode)} | {ratio} | "
              f"{fmt(r['output_throughput'] if r else None)} | "
              f"{fmt(r['mean_tpot_ms'] if r else None, 2)} | {steps} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
