#!/usr/bin/env python3
"""llama.cpp's CPU speed on a GGUF (through llama-cpp-python), for `xkv bench cpu`.

usage: llama_cpp_speed.py MODEL THREADS PREFILL_LENGTHS(comma) DECODE_CONTEXT DECODE_TOKENS REPEATS
Prints one line per measurement: "prefill <tokens> <tokens_per_s>" / "decode <context> <tokens_per_s>",
each the best of REPEATS runs. Token ids are a fixed pseudo-random sequence (the same one xkv uses).
"""
import sys
import time

import llama_cpp


def ids(n, vocab):
    # Same LCG as bench/cpu_bench.cc: x = x * 6364136223846793005 + 1442695040888963407 (mod 2^64).
    x, out = 42, []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append(int((x >> 33) % (vocab - 1000)) + 100)
    return out


def main():
    model, threads = sys.argv[1], int(sys.argv[2])
    lengths = [int(v) for v in sys.argv[3].split(",")]
    ctx, decode_tokens, repeats = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    n_ctx = max(lengths + [ctx]) + decode_tokens + 16
    llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_batch=2048, n_ubatch=512,
                          n_threads=threads, n_threads_batch=threads, logits_all=False,
                          verbose=False)
    vocab = llm.n_vocab()
    for n in lengths:
        best = 0.0
        for _ in range(repeats):
            llm.reset()
            llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
            t = time.perf_counter()
            llm.eval(ids(n, vocab))
            best = max(best, n / (time.perf_counter() - t))
        print(f"prefill {n} {best:.1f}", flush=True)
    best = 0.0
    prompt = ids(ctx, vocab)
    for _ in range(repeats):
        llm.reset()
        llm.eval(prompt)
        t = time.perf_counter()
        for i in range(decode_tokens):
            llm.eval([prompt[i]])
        best = max(best, decode_tokens / (time.perf_counter() - t))
    print(f"decode {ctx} {best:.1f}", flush=True)


if __name__ == "__main__":
    main()
