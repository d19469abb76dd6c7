#!/usr/bin/env python3
"""llama.cpp's answers on one random-weight GGUF, for the architecture parity test.

Usage: arch_reference.py MODEL.gguf OUT_PREFIX N_GREEDY ID ID ...
Writes
  OUT_PREFIX.logits.f32  little-endian fp32 [n_prompt, vocab]: llama.cpp's logits at every prompt
                         position (default batched prefill)
  OUT_PREFIX.txt         "<spread> | <greedy ids> | <top-1 minus top-2 margins>"
<spread> is llama.cpp's own noise floor, as in llama_reference.py: the largest |difference| of the
last logits between the default prefill, flash attention, and one token per batch.
"""
import itertools
import os
import sys

import numpy as np
import llama_cpp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_reference import greedy, last_logits  # noqa: E402


def main():
    model, prefix, n_greedy = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ids = [int(x) for x in sys.argv[4:]]
    common = dict(model_path=model, n_ctx=512, n_threads=1, n_threads_batch=1, logits_all=True,
                  verbose=False)
    llm = llama_cpp.Llama(n_batch=512, **common)
    llm.reset()
    llm.eval(ids)
    np.array(llm.scores[:len(ids)], dtype=np.float32).tofile(prefix + ".logits.f32")
    last, cont, margins = greedy(llm, ids, n_greedy)
    others = [llama_cpp.Llama(n_batch=512, flash_attn=True, **common),
              llama_cpp.Llama(n_batch=1, n_ubatch=1, **common)]
    runs = [last] + [last_logits(o, ids) for o in others]
    spread = max(float(np.abs(a - b).max()) for a, b in itertools.combinations(runs, 2))
    with open(prefix + ".txt", "w") as f:
        f.write(f"{spread:.6f} | {' '.join(map(str, cont))} | "
                f"{' '.join(f'{m:.6f}' for m in margins)}\n")


if __name__ == "__main__":
    main()
