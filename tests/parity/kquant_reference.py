#!/usr/bin/env python3
"""References for xkv's K-quant support (tests/parity/kquant_parity_test.cc).

  kquant_reference.py dequant OUTDIR
      For each of Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: random super-blocks (every byte random, the fp16
      scales random finite values, plus blocks with zero, subnormal and the largest scales) in
      OUTDIR/<TYPE>.blocks, and their dequantization by the `gguf` package's numpy code
      (gguf.quants.dequantize, an implementation independent of xkv's and of ggml's C) in
      OUTDIR/<TYPE>.f32 (little-endian fp32).

  kquant_reference.py quantize SRC DST FTYPE
      llama.cpp's own quantizer (llama_model_quantize, ggml's quantize_row_*_ref and llama.cpp's
      per-tensor type choice) from the F32 GGUF SRC to DST with the llama_ftype number FTYPE
      (15 = Q4_K_M, 10 = Q2_K, 18 = Q6_K, ...).

  kquant_reference.py logits MODEL OUTFILE ID...
      llama.cpp's logits (llama-cpp-python) at every position of the prompt ID... on MODEL, as
      little-endian fp32 [n_ids, vocab] in OUTFILE, and in OUTFILE.spread llama.cpp's own spread:
      the largest |logit difference| between three configurations of llama.cpp itself (batched
      prefill, the same with flash attention, one token per batch), as in llama_reference.py.
"""
import itertools
import os
import sys

import numpy as np

BLOCKS = 96
# Type name -> (ggml type number, super-block bytes, byte offsets of its fp16 scales).
K_TYPES = {
    "Q2_K": (10, 84, [80, 82]),
    "Q3_K": (11, 110, [108]),
    "Q4_K": (12, 144, [0, 2]),
    "Q5_K": (13, 176, [0, 2]),
    "Q6_K": (14, 210, [208]),
}


def random_fp16(rng, n):
    """Finite fp16 values of both signs over the whole exponent range (subnormals included)."""
    bits = rng.integers(0, 0x7C00, size=n, dtype=np.uint16)  # below the inf/NaN exponent
    bits |= (rng.integers(0, 2, size=n, dtype=np.uint16) << 15).astype(np.uint16)
    return bits


def dequant(outdir):
    from gguf import quants, GGMLQuantizationType

    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20261206)
    for name, (number, size, scale_offsets) in K_TYPES.items():
        blocks = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
        for off in scale_offsets:
            half = random_fp16(rng, BLOCKS)
            half[0] = 0x0000          # zero scale
            half[1] = 0x0001          # smallest subnormal
            half[2] = 0x7BFF          # largest finite, 65504
            half[3] = 0x8000          # -0
            blocks[:, off:off + 2] = half.view(np.uint8).reshape(BLOCKS, 2)
        qtype = GGMLQuantizationType(number)
        assert qtype.name == name, (qtype.name, name)
        values = quants.dequantize(blocks.reshape(-1), qtype).astype(np.float32)
        assert values.size == BLOCKS * 256 and np.all(np.isfinite(values)), name
        blocks.tofile(os.path.join(outdir, name + ".blocks"))
        values.astype("<f4").tofile(os.path.join(outdir, name + ".f32"))
        print(f"gguf {name}: {BLOCKS} blocks, max |x| {np.abs(values).max():.4g}", file=sys.stderr)


def quantize(src, dst, ftype):
    import ctypes
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count()
    status = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if status != 0:
        sys.exit(f"llama_model_quantize({src}, {dst}, ftype {ftype}) failed: {status}")


def logits(model, outfile, ids):
    import llama_cpp

    common = dict(model_path=model, n_ctx=256, n_threads=os.cpu_count(), logits_all=True,
                  verbose=False)
    configs = [dict(n_batch=512), dict(n_batch=512, flash_attn=True), dict(n_batch=1, n_ubatch=1)]
    runs = []
    for config in configs:
        llm = llama_cpp.Llama(**config, **common)
        llm.eval(ids)
        runs.append(np.array(llm.scores[:len(ids)], dtype=np.float32))
        llm.close()
    spread = max(float(np.abs(a - b).max()) for a, b in itertools.combinations(runs, 2))
    runs[0].astype("<f4").tofile(outfile)
    with open(outfile + ".spread", "w") as f:
        f.write(f"{spread:.9g}\n")
    print(f"llama.cpp {os.path.basename(model)}: {len(ids)} positions, own spread {spread:.4g}",
          file=sys.stderr)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "dequant":
        dequant(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "quantize":
        quantize(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) >= 5 and sys.argv[1] == "logits":
        logits(sys.argv[2], sys.argv[3], [int(t) for t in sys.argv[4:]])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
