#!/usr/bin/env python3
"""The short table of bench/serve_vs_llama_cpp_gpu.sh: decode tokens/s per batch size B.

usage: llama_cpp_compare.py OUT_DIR

Reads from OUT_DIR (missing files give "-"):
  llama_batched.tsv     lines "fa B S_TG S_PP" (bench/llama_cpp_batched_gpu.sh)
  xkv_batched.json      `xkv bench gpu --batched-decode --json` ("batched": decode_tps, prefill_tps)
  serve_B.json          `xkv bench serve --json` at B concurrent requests (results[0])
Prints a Markdown table. "serve decode" is B x 1000 / mean TPOT: the aggregate decode rate of B
requests that decode together (each request's TPOT is its decode time per token after the first);
"serve out tok/s" is vLLM's output throughput (all output tokens over the whole run, prefill
included). The last column is serve decode over llama.cpp's better S_TG (flash attention on or off).
"""
import json
import os
import sys


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(v):
    return "-" if v is None else f"{v:,.0f}"


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
    xkv = {}
    j = load_json(os.path.join(out, "xkv_batched.json"))
    for row in (j or {}).get("batched", []):
        xkv[int(row["batch"])] = (row["decode_tps"], row["prefill_tps"])
    batches = sorted({b for _, b in llama} | set(xkv) |
                     {int(n[6:-5]) for n in os.listdir(out)
                      if n.startswith("serve_") and n.endswith(".json") and n[6:-5].isdigit()})
    print("| B | llama.cpp S_TG, FA on | llama.cpp S_TG, FA off | xkv batched S_TG | "
          "xkv serve decode (B/TPOT) | xkv serve out tok/s | TPOT mean / p99 ms | "
          "serve decode / llama.cpp |")
    print("|---|---|---|---|---|---|---|---|")
    for b in batches:
        on = llama.get(("on", b), (None, None))[0]
        off = llama.get(("off", b), (None, None))[0]
        mine = xkv.get(b, (None, None))[0]
        s = load_json(os.path.join(out, f"serve_{b}.json"))
        r = s["results"][0] if s and s.get("results") else None
        decode = b * 1000.0 / r["mean_tpot_ms"] if r and r["mean_tpot_ms"] > 0 else None
        best = max([v for v in (on, off) if v is not None], default=None)
        ratio = f"{decode / best:.2f}x" if decode and best else "-"
        tpot = f"{r['mean_tpot_ms']:.2f} / {r['p99_tpot_ms']:.2f}" if r else "-"
        print(f"| {b} | {fmt(on)} | {fmt(off)} | {fmt(mine)} | {fmt(decode)} | "
              f"{fmt(r['output_throughput'] if r else None)} | {tpot} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
