#!/usr/bin/env python3
"""Writes llama.cpp's tokenizations of the parity strings for each vocabulary (llama-cpp-python,
vocab_only=True), for the tokenizer_llama_vocabs test.

Usage: vocab_reference.py VOCAB_DIR OUT_DIR STRINGS_FILE NAME...
For each NAME (ggml-vocab-NAME.gguf in VOCAB_DIR) writes to OUT_DIR:
  tokens-NAME.txt  one line per string: "<hex of the UTF-8 bytes> <id> <id> ..." (add_special=False,
                   parse_special=True), then one line "bos <ids of 'Hello' with add_special=True>"
  pieces-NAME.bin  every token's llama_token_to_piece(special=True): little-endian uint32 length,
                   then the bytes, in id order
The strings file is the one of llama_reference.py (same comment and escape rules).
"""
import ctypes
import os
import struct
import sys

import llama_cpp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from llama_reference import read_strings  # noqa: E402


def piece(vocab, token):
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, True)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def main():
    vocab_dir, out_dir, strings_path, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    os.makedirs(out_dir, exist_ok=True)
    strings = read_strings(strings_path)
    for name in names:
        llm = llama_cpp.Llama(model_path=os.path.join(vocab_dir, f"ggml-vocab-{name}.gguf"),
                              vocab_only=True, verbose=False)
        with open(os.path.join(out_dir, f"tokens-{name}.txt"), "w") as f:
            for s in strings:
                ids = llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
                f.write(s.encode("utf-8").hex() + " " + " ".join(map(str, ids)) + "\n")
            ids = llm.tokenize(b"Hello", add_bos=True, special=True)
            f.write("bos " + " ".join(map(str, ids)) + "\n")
        vocab = llm._model.vocab
        with open(os.path.join(out_dir, f"pieces-{name}.bin"), "wb") as f:
            for token in range(llm.n_vocab()):
                p = piece(vocab, token)
                f.write(struct.pack("<I", len(p)) + p)
        print(f"llama.cpp vocabulary reference: {name}: {len(strings)} strings, "
              f"{llm.n_vocab()} pieces", file=sys.stderr)


if __name__ == "__main__":
    main()
