#!/usr/bin/env python3
"""Hugging Face transformers' GPU decode speed on a GGUF, for `xkv bench gpu`.

usage: hf_decode_speed.py MODEL_GGUF PROMPT_IDS(comma) DECODE_TOKENS REPEATS

Loads the GGUF through transformers' GGUF support (dequantized, then bf16 on cuda:0), and times
greedy generate() at batch 1 on the given prompt ids (the same ids xkv uses): a generate of 1 new
token (prefill + first token) and one of DECODE_TOKENS + 1 new tokens (min_new_tokens forces the
length); decode tokens/s = DECODE_TOKENS / (difference), after torch.cuda.synchronize(); median of
REPEATS after one warm-up. Prints "decode_tps X", "tokens a,b,..." (the DECODE_TOKENS + 1 greedy
tokens) and "note ..." lines. Needs torch, transformers and the gguf package.
"""
import os
import statistics
import sys
import time
from importlib import metadata


def note(text):
    print(f"note {text}", flush=True)


def load(path, torch, transformers):
    kwargs = dict(gguf_file=os.path.basename(path))
    try:  # transformers >= 4.56 says dtype=, older versions torch_dtype=
        model = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(path)), dtype=torch.bfloat16, **kwargs)
    except TypeError:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            os.path.dirname(os.path.abspath(path)), torch_dtype=torch.bfloat16, **kwargs)
    return model.to(device="cuda", dtype=torch.bfloat16).eval()


def timed_generate(model, ids, new_tokens, torch):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                         pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - t, out[0, ids.shape[1]:].tolist()


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    path, prompt = sys.argv[1], [int(v) for v in sys.argv[2].split(",") if v]
    decode_tokens, repeats = int(sys.argv[3]), int(sys.argv[4])
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it)
        import torch
        import transformers
    except ImportError as e:
        note(f"missing package: {e}")
        sys.exit(1)
    model = load(path, torch, transformers)
    attn = getattr(model.config, "_attn_implementation", "?")
    try:
        gguf_version = metadata.version("gguf")
    except metadata.PackageNotFoundError:
        gguf_version = "?"
    note(f"transformers {transformers.__version__}, torch {torch.__version__}, gguf "
         f"{gguf_version}, bf16, attention {attn}, default cache, eager (no torch.compile)")
    ids = torch.tensor([prompt], dtype=torch.long, device="cuda")
    with torch.inference_mode():
        timed_generate(model, ids, decode_tokens + 1, torch)  # warm-up
        rates, tokens = [], []
        for _ in range(max(repeats, 1)):
            t1, _ = timed_generate(model, ids, 1, torch)
            tn, tokens = timed_generate(model, ids, decode_tokens + 1, torch)
            rates.append(decode_tokens / (tn - t1))
    print(f"decode_tps {statistics.median(rates):.2f}", flush=True)
    print("tokens " + ",".join(str(t) for t in tokens), flush=True)


if __name__ == "__main__":
    main()
