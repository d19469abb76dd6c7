#!/usr/bin/env python3
"""Runs NVIDIA kvpress's presses on a prompt file (bench/prompts_jsonl.py), side by side with xkv.

Hugging Face transformers loads the same GGUF (`gguf_file=`, dequantized by the `gguf` package) and
kvpress compresses its cache. Every prompt runs the full cache and each press at each keep
fraction (kvpress's compression_ratio = 1 - keep), in both query modes:

  aware     question inside the context: context + question are prefilled under the press and
            compressed together; the first answer token comes from that prefill's logits (as in
            `xkv eval`), the rest are decoded on the compressed cache;
  agnostic  question after compression: the context alone is prefilled under the press (kvpress's
            pipeline with `question=`), then the question is prefilled on the compressed cache at
            its true positions, and the answer decoded.

Decoding is greedy (up to --max-new-tokens, stopping at <|im_end|> / end of text); a prediction is
correct when it contains any of the prompt's answers (RULER string match, case-sensitive as xkv).
Writes OUT/results.csv in `xkv eval`'s columns (one row per prompt x method x keep x mode; methods
named kvpress:PRESS, the full cache kvpress:full; kv_bytes_held is the cache really held after
compression, so AdaKV's and KVzip's masked caches show 100%; the fidelity columns stay empty) and
OUT/summary.md (the goal table of bench/kvpress_report.py, with bootstrap 95% intervals). A cell
that raises is recorded with an empty `correct` and the error as its answer; the run goes on.
Prompts run in the file's order (bench/peer_prompts.py interleaves the strata), sharded over the
workers, so a run cut short by --deadline-s keeps about the file's first prompts.

The tokenizer is built from the GGUF's vocabulary and merges with SmolLM2's pre-tokenizer (digits
split, byte-level BPE): transformers 5.2 converts a llama-architecture GGUF's gpt2 vocabulary with
its SentencePiece converter, which turns every space into <|endoftext|>. This one matches
llama.cpp's tokenization token for token.

By default each prompt and mode has ONE prefill shared by every press and keep (kvpress
compresses a layer after its attention ran, so the prefill does not depend on the press: each
press's compress() runs on the full cache of every layer in one hook) and its caches answer in a
batched greedy decode (Runner.answer_all); --per-cell runs one prefill and one decode per
cell instead (Runner.answer, the reference; the same answers on a CPU check).

Needs torch, transformers 5.2 and kvpress 0.5.5 (scripts/fetch-kvpress-wheels). Runs --workers
processes on one GPU (decoding a 135M model is launch-bound; the processes time-slice the GPU,
so the rate per worker falls as workers are added: docs/quality-peers.md has the measured rates);
--limit, --deadline-s and --stop-s bound the work (a prompt is recorded only with all its cells);
--start-after lets the workers load the model while another run still has the GPU.

Usage: bench/kvpress_eval.py --prompts FILE.jsonl --gguf MODEL.gguf --out DIR [options]
"""
import argparse
import collections
import os
import sys
import time
import traceback
import types

os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers share the host's cores
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvpress_report  # noqa: E402
import prompts_jsonl  # noqa: E402

PRESSES = ("snapkv", "pyramidkv", "streaming", "adakv-snapkv", "expected-attention",
           "adakv-expected-attention", "kvzip")
KEEPS = (0.1, 0.2, 0.4)
MODES = ("aware", "agnostic")  # question inside the compressed context / after compression


def make_press(name, keep):
    """A kvpress press keeping `keep` of the KV cache, with kvpress's default parameters."""
    import kvpress
    ratio = round(1.0 - keep, 6)
    factories = {
        "snapkv": lambda: kvpress.SnapKVPress(compression_ratio=ratio),
        "pyramidkv": lambda: kvpress.PyramidKVPress(compression_ratio=ratio),
        "streaming": lambda: kvpress.StreamingLLMPress(compression_ratio=ratio),
        "adakv-snapkv": lambda: kvpress.AdaKVPress(kvpress.SnapKVPress(compression_ratio=ratio)),
        "expected-attention": lambda: kvpress.ExpectedAttentionPress(compression_ratio=ratio),
        "adakv-expected-attention":
            lambda: kvpress.AdaKVPress(kvpress.ExpectedAttentionPress(compression_ratio=ratio)),
        "kvzip": lambda: kvpress.KVzipPress(compression_ratio=ratio),
    }
    return factories[name]()


def import_kvpress(tokenizer):
    """Imports kvpress. Its package __init__ imports every press; three we do not run need
    `datasets` and `fire` at import time only, so missing ones are replaced by stubs that fail if
    called. KVzip reloads the tokenizer from the model's name_or_path on every use: it gets the
    one already built."""
    for name in ("datasets", "fire"):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)

            def unavailable(*_args, _name=name, **_kwargs):
                raise RuntimeError(f"{_name} is not installed (stubbed by kvpress_eval.py)")
            stub.load_dataset = stub.Fire = unavailable
            sys.modules[name] = stub
    import kvpress
    from kvpress.presses import kvzip_press
    kvzip_press.AutoTokenizer = types.SimpleNamespace(from_pretrained=lambda *_a, **_k: tokenizer)
    return kvpress


def multi_keep_kvzip(kvpress, keeps):
    """kvpress's KVzipPress whose one re-reading of the context serves every keep: its scores do
    not depend on the ratio, so kvpress's own compress_post runs once per keep on them and each
    keep's masked keys (per layer) are kept in `.masks[keep]`; the modules are left unmasked."""

    class MultiKeepKVzip(kvpress.KVzipPress):
        def compress_post(self, model):
            self.masks = {}
            for keep in keeps:
                self.compression_ratio = round(1.0 - keep, 6)
                super().compress_post(model)  # sinks are raised again: still kept first
                self.masks[keep] = []
                for layer in model.model.layers:
                    self.masks[keep].append(layer.self_attn.masked_key_indices)
                    layer.self_attn.masked_key_indices = None

    return MultiKeepKVzip(compression_ratio=round(1.0 - keeps[0], 6))


def build_tokenizer(gguf_path):
    """A fast tokenizer from the GGUF's own vocabulary, merges, special tokens and chat template."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    fields = gguf.GGUFReader(gguf_path).fields

    def field(name):
        return fields[name].contents()
    if field("tokenizer.ggml.model") != "gpt2" or field("tokenizer.ggml.pre") != "smollm":
        raise SystemExit(f"kvpress_eval: {gguf_path}: only SmolLM2's tokenizer (gpt2 vocabulary, "
                         f"smollm pre-tokenizer) is supported")
    tokens, types_ = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                     merges=[tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")])
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types_) if ty == 3])  # 3: control tokens
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=tokens[field("tokenizer.ggml.bos_token_id")],
        eos_token=tokens[field("tokenizer.ggml.eos_token_id")],
        unk_token=tokens[field("tokenizer.ggml.unknown_token_id")])
    tok.chat_template = field("tokenizer.chat_template")
    return tok


def convert_model(gguf_path, hf_dir, dtype_name):
    """Loads the GGUF with transformers once and saves it (with the tokenizer) for the workers."""
    import torch
    from transformers import AutoModelForCausalLM
    t0 = time.time()
    tok = build_tokenizer(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(os.path.abspath(gguf_path)), gguf_file=os.path.basename(gguf_path),
        dtype=getattr(torch, dtype_name))
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    print(f"converted {gguf_path} -> {hf_dir} ({type(model).__name__}, {dtype_name}) in "
          f"{time.time() - t0:.1f} s", flush=True)


def token_ids(prompt, tok):
    if "context_ids" in prompt:
        return prompt["context_ids"], prompt["question_ids"]

    def render(messages):
        return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    context, question = prompts_jsonl.prompt_texts(prompt, render)
    return (tok.encode(context, add_special_tokens=False),
            tok.encode(question, add_special_tokens=False))


class Runner:
    """One model on one device; answers a prompt with a press in a query mode."""

    def __init__(self, hf_dir, device, dtype_name, max_new_tokens):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        import logging
        logging.getLogger("kvpress").setLevel(logging.ERROR)  # KVzip warns on every construction
        self.torch = torch
        torch.set_num_threads(1)
        torch.manual_seed(0)
        self.tok = AutoTokenizer.from_pretrained(hf_dir)
        self.kvpress = import_kvpress(self.tok)
        self.model = AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=getattr(torch, dtype_name), attn_implementation="sdpa").to(device)
        self.model.eval()
        self.device, self.max_new_tokens = device, max_new_tokens
        stop = self.model.generation_config.eos_token_id
        stop = set(stop if isinstance(stop, list) else [stop])
        stop |= {self.tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        self.stop_ids = {s for s in stop if s is not None}
        cfg = self.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.bytes_per_token = (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim *
                                torch.tensor([], dtype=self.model.dtype).element_size())

    def held_bytes(self, cache):
        """KV bytes the cache holds now (every layer's keys and values)."""
        return sum(t.numel() * t.element_size() for layer in cache.layers
                   for t in (layer.keys, layer.values) if t is not None)

    def answer(self, context_ids, question_ids, press, mode):
        """(answer text, KV bytes held right after compression, KV bytes of the full cache)."""
        import contextlib
        from transformers import DynamicCache
        torch, model = self.torch, self.model
        cache = DynamicCache()
        scope = press(model) if press is not None else contextlib.nullcontext()
        ctx = torch.tensor([context_ids], device=self.device)
        q = torch.tensor([question_ids], device=self.device)
        with torch.inference_mode():
            if mode == "aware":
                with scope:
                    out = model(input_ids=torch.cat([ctx, q], dim=1), past_key_values=cache,
                                logits_to_keep=1)
                position = ctx.shape[1] + q.shape[1]
                held, full = self.held_bytes(cache), position * self.bytes_per_token
            else:
                with scope:
                    model.model(input_ids=ctx, past_key_values=cache)
                start = ctx.shape[1]
                held, full = self.held_bytes(cache), start * self.bytes_per_token
                if len({cache.get_seq_length(i) for i in range(len(cache))}) == 1:
                    positions = torch.arange(start, start + q.shape[1], device=self.device)[None]
                    out = model(input_ids=q, past_key_values=cache, position_ids=positions,
                                logits_to_keep=1)
                else:  # layers of different lengths (PyramidKV): no shared mask; token by token
                    for i in range(q.shape[1]):
                        out = model(input_ids=q[:, i:i + 1], past_key_values=cache,
                                    position_ids=torch.tensor([[start + i]], device=self.device))
                position = start + q.shape[1]
            generated = [int(out.logits[0, -1].argmax())]
            while len(generated) < self.max_new_tokens and generated[-1] not in self.stop_ids:
                out = model(input_ids=torch.tensor([[generated[-1]]], device=self.device),
                            past_key_values=cache,
                            position_ids=torch.tensor([[position]], device=self.device))
                position += 1
                generated.append(int(out.logits[0, -1].argmax()))
        return self.tok.decode(generated, skip_special_tokens=True), held, full

    def answer_all(self, context_ids, question_ids, mode, presses, keeps):
        """{(press, keep): (answer text, KV bytes held, KV bytes full)} for the full cache
        ("full", 1.0) and every press x keep, from ONE prefill: kvpress compresses a layer's cache
        in a hook after that layer's attention ran, so the prefill's activations and logits do not
        depend on the press; each press's compress() runs on the full keys and values of every
        layer (a copy per press and keep; the model's cache stays full). KVzip re-reads the
        context once on that cache for all its keeps. Then every cache answers in one batched
        greedy decode (decode_batch). The same answers as `answer` per cell, up to
        floating-point reassociation."""
        import contextlib
        from kvpress.presses.base_press import is_prefilling
        from kvpress.utils import extract_keys_and_values
        from transformers import DynamicCache
        torch, model = self.torch, self.model
        ctx = torch.tensor([context_ids], device=self.device)
        q = torch.tensor([question_ids], device=self.device)
        scored = {(name, keep): make_press(name, keep) for name in presses if name != "kvzip"
                  for keep in keeps}
        for press in scored.values():
            press.post_init_from_model(model)
        layers = {key: [None] * len(model.model.layers) for key in scored}

        def hook(module, _input, kwargs, output):
            hidden = kwargs["hidden_states"]
            if not is_prefilling(kwargs["cache_position"], hidden.shape[1]):
                return output
            keys, values = extract_keys_and_values(kwargs["past_key_values"], module.layer_idx)
            for key, press in scored.items():
                module.masked_key_indices = None
                k, v = press.compress(module, hidden, keys, values, output[1], kwargs)
                layers[key][module.layer_idx] = (k, v, module.masked_key_indices)
                module.masked_key_indices = None
            return output

        kvzip = multi_keep_kvzip(self.kvpress, keeps) if "kvzip" in presses else None
        cache = DynamicCache()
        prefill = torch.cat([ctx, q], dim=1) if mode == "aware" else ctx
        with torch.inference_mode():
            with kvzip(model) if kvzip else contextlib.nullcontext():
                hooks = []
                for layer in model.model.layers:  # as BasePress.__call__ does
                    layer.self_attn.rotary_emb = model.model.rotary_emb
                    hooks.append(layer.self_attn.register_forward_hook(hook, with_kwargs=True))
                try:
                    out = model(input_ids=prefill, past_key_values=cache, logits_to_keep=1)
                finally:
                    for h in hooks:
                        h.remove()
            # (KVzip re-read the context on `cache` when its context closed, then cut it back.)
            full_layers = [(layer.keys, layer.values, None) for layer in cache.layers]
            variants = {("full", 1.0): full_layers, **layers}
            if kvzip:
                for keep in keeps:
                    variants[("kvzip", keep)] = [(k, v, m) for (k, v, _), m in
                                                 zip(full_layers, kvzip.masks[keep])]
            start = prefill.shape[1]
            full_bytes = start * self.bytes_per_token
            first = None if mode == "agnostic" else int(out.logits[0, -1].argmax())
            # One batch; should kvpress's fake-key search fail on it (it gives up after 1000
            # steps), the head-wise masked caches (AdaKV, KVzip) and the others go apart.
            keys = list(variants)
            try:
                batches = [(keys, self.decode_batch([variants[k] for k in keys], start,
                                                    None if first is not None else q, first))]
            except ValueError:
                masked = [k for k in keys if any(m is not None for _, _, m in variants[k])]
                batches = [(part, self.decode_batch([variants[k] for k in part], start,
                                                    None if first is not None else q, first))
                           for part in (masked, [k for k in keys if k not in masked]) if part]
            results = {}
            for part, texts in batches:
                for key, text in zip(part, texts):
                    held = sum(t.numel() * t.element_size() for k, v, _ in variants[key]
                               for t in (k, v))
                    results[key] = (text, held, full_bytes)
        return results

    def decode_batch(self, rows, start, question, first):
        """Greedy answers of several caches at once. rows: per cache, per layer (keys, values,
        masked key indices or None); start: the prefilled length (the next true position);
        question: token ids to prefill first (agnostic) or None with `first`, the first answer
        token (aware). Each layer is left-padded to its longest cache and gets its own attention
        mask (set by a pre-hook on its attention module) that hides the padding, so caches whose
        layers differ in length (PyramidKV) batch with the rest; head-wise masked keys (AdaKV,
        KVzip) get kvpress's fake keys."""
        from transformers import DynamicCache
        torch, model = self.torch, self.model
        attn = [layer.self_attn for layer in model.model.layers]
        n = len(rows)
        data, valid, masks = [], [], []
        for layer in range(len(attn)):
            k0 = rows[0][layer][0]
            width = max(lay[layer][0].shape[2] for lay in rows)
            keys = k0.new_zeros((n, k0.shape[1], width, k0.shape[3]))
            values = torch.zeros_like(keys)
            ok = torch.zeros((n, width), dtype=torch.bool, device=self.device)
            idx = [[], [], []]
            for b, lay in enumerate(rows):
                k, v, m = lay[layer]
                pad = width - k.shape[2]
                keys[b, :, pad:], values[b, :, pad:], ok[b, pad:] = k[0], v[0], True
                if m is not None:  # AdaKV's indices live on the GPU, KVzip's on the CPU
                    _, heads, seqs = (t.to(self.device) for t in m)
                    idx[0].append(torch.full_like(seqs, b))
                    idx[1].append(heads)
                    idx[2].append(seqs + pad)
            data.append((keys, values))
            valid.append(ok)
            masks.append(tuple(torch.cat(i) for i in idx) if idx[0] else None)
        cache = DynamicCache(ddp_cache_data=data)
        step_masks = [None] * len(attn)

        def set_mask(module, args, kwargs):
            kwargs["attention_mask"] = step_masks[module.layer_idx]
            return args, kwargs

        def step(ids, position):
            q = ids.shape[1]
            causal = torch.ones((q, q), dtype=torch.bool, device=self.device).tril()
            for layer, ok in enumerate(valid):
                step_masks[layer] = torch.cat([ok[:, None, None, :].expand(n, 1, q, ok.shape[1]),
                                               causal.expand(n, 1, q, q)], dim=-1)
                valid[layer] = torch.cat([ok, ok.new_ones((n, q))], dim=1)
            positions = torch.arange(position, position + q, device=self.device)
            return model(input_ids=ids, past_key_values=cache, logits_to_keep=1,
                         position_ids=positions[None].expand(n, -1))

        hooks = []
        try:
            for module, m in zip(attn, masks):
                module.masked_key_indices = m
                hooks.append(module.register_forward_pre_hook(set_mask, with_kwargs=True))
            position = start
            if question is not None:
                out = step(question.expand(n, -1), position)
                position += question.shape[1]
                tokens = out.logits[:, -1].argmax(-1)
            else:
                tokens = torch.full((n,), first, device=self.device)
            generated = [[int(t)] for t in tokens]
            done = [g[-1] in self.stop_ids for g in generated]
            for _ in range(self.max_new_tokens - 1):
                if all(done):
                    break
                out = step(tokens[:, None], position)
                position += 1
                tokens = out.logits[:, -1].argmax(-1)
                for b, t in enumerate(tokens.tolist()):
                    if not done[b]:
                        generated[b].append(t)
                        done[b] = t in self.stop_ids
        finally:
            for h in hooks:
                h.remove()
            for module in attn:
                module.masked_key_indices = None
        return [self.tok.decode(g, skip_special_tokens=True) for g in generated]


def cells(args):
    yield "full", 1.0
    for name in args.presses:
        for keep in args.keeps:
            yield name, keep


def run_shard(args, shard, shards, part_path, t_start):
    """Prompts shard, shard + shards, ... of the ordered list; writes rows to part_path. Returns
    how many prompts failed."""
    runner = Runner(args.hf_dir, args.device, args.dtype, args.max_new_tokens)
    prompts = order_prompts(args)[shard::shards]
    if args.start_after:  # the model is loaded; the GPU may still be busy with another run
        while not os.path.exists(args.start_after):
            time.sleep(0.2)
        print(f"[worker {shard}] starts at {time.time() - t_start:.1f} s", flush=True)
    done, failed = [], 0
    for n, prompt in enumerate(prompts):
        if args.deadline_s and time.time() - t_start > args.deadline_s:
            print(f"[worker {shard}] deadline: {n} of {len(prompts)} prompts done", flush=True)
            break
        t0 = time.time()
        seconds = collections.Counter()
        try:
            context_ids, question_ids = token_ids(prompt, runner.tok)
        except Exception:  # noqa: BLE001 -- one prompt's failure is reported, the run goes on
            failed += 1
            print(f"[worker {shard}] {prompt['id']} FAILED (no rows recorded):\n"
                  f"{traceback.format_exc()}", flush=True)
            continue
        answers = {}  # (press, keep, mode) -> (prediction, held, full)
        for mode in args.modes:
            t1 = time.time()
            shared = None
            if not args.per_cell:
                try:
                    shared = runner.answer_all(context_ids, question_ids, mode, args.presses,
                                               args.keeps)
                except Exception:  # noqa: BLE001 -- this mode falls back to one run per cell
                    print(f"[worker {shard}] {prompt['id']} {mode}: shared prefill FAILED, one "
                          f"run per cell instead:\n{traceback.format_exc()}", flush=True)
            for name, keep in cells(args):
                if shared is not None:
                    answers[(name, keep, mode)] = shared[(name, keep)]
                    continue
                try:
                    press = None if name == "full" else make_press(name, keep)
                    answers[(name, keep, mode)] = runner.answer(context_ids, question_ids, press,
                                                                mode)
                except Exception as e:  # noqa: BLE001 -- recorded as a failed cell
                    answers[(name, keep, mode)] = (f"ERROR {type(e).__name__}: {e}", 0, 0)
                    print(f"[worker {shard}] {prompt['id']} {name} {keep} {mode} FAILED:\n"
                          f"{traceback.format_exc()}", flush=True)
            seconds[mode] += time.time() - t1
        rows = []
        for name, keep in cells(args):
            for mode in args.modes:
                prediction, held, full = answers[(name, keep, mode)]
                failed_cell = prediction.startswith("ERROR ") and not full
                rows.append({
                    "prompt_id": prompt["id"], "task": prompt["task"], "mode": mode,
                    "target_tokens": prompt["length"],
                    "prompt_tokens": len(context_ids) + (len(question_ids) if mode == "aware"
                                                         else 0),  # the compressed part, as xkv
                    "depth": "-1.0000",
                    "method": kvpress_report.KVPRESS_PREFIX + name, "budget": f"{keep:.4f}",
                    "kv_bytes_held": held, "kv_bytes_full": full,
                    "kv_percent": f"{100 * held / full:.3f}" if full else "",
                    "answers": "|".join(prompt["answers"]),
                    "answer": prediction.replace("\n", "\\n"),  # as xkv eval writes it
                    "correct": "" if failed_cell else
                    int(prompts_jsonl.is_correct(prediction, prompt["answers"])),
                    "fidelity_steps": 0})
        done += rows
        kvpress_report.write_csv(part_path, done)
        full_ok = sum(r["correct"] == 1 for r in rows if r["method"].endswith(":full"))
        print(f"[worker {shard}] {prompt['id']} ({len(context_ids) + len(question_ids)} tok): "
              f"full {full_ok}/{len(args.modes)}, all cells "
              f"{sum(r['correct'] == 1 for r in rows)}/{len(rows)}, {time.time() - t0:.1f} s ("
              + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()) + ")", flush=True)
    return failed


def worker(args, shard, shards, part_path, t_start):
    """A worker process: exits non-zero when any of its prompts failed."""
    if run_shard(args, shard, shards, part_path, t_start):
        sys.exit(1)


def order_prompts(args):
    prompts = prompts_jsonl.load_prompts(args.prompts)
    if args.split:
        prompts = [p for p in prompts if p["split"] == args.split]
    return prompts[:args.limit] if args.limit else prompts


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", required=True, help="JSONL prompt file")
    p.add_argument("--gguf", required=True, help="the model (GGUF)")
    p.add_argument("--out", required=True, help="output folder (results.csv, summary.md)")
    p.add_argument("--work", default="/tmp/kvpress-work",
                   help="scratch folder: the converted model and the workers' partial CSVs")
    p.add_argument("--presses", default=",".join(PRESSES),
                   help=f"comma-separated subset of {','.join(PRESSES)}")
    p.add_argument("--keeps", default=",".join(str(k) for k in KEEPS),
                   help="kept fractions of the KV cache, each in (0, 1)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--split", choices=prompts_jsonl.SPLITS, help="only prompts of this split")
    p.add_argument("--limit", type=int, default=0, help="at most the file's first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="processes sharing the GPU")
    p.add_argument("--deadline-s", type=float, default=0,
                   help="start no new prompt after this many seconds (0: none)")
    p.add_argument("--stop-s", type=float, default=0,
                   help="stop the workers after this many seconds, keeping finished prompts "
                        "(0: none; needs --workers > 1)")
    p.add_argument("--per-cell", action="store_true",
                   help="one prefill and one decode per press x keep x mode (the reference "
                        "protocol; default: one shared prefill and batched decodes per mode)")
    p.add_argument("--start-after", default="",
                   help="workers load the model, then wait until this file exists")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    args = p.parse_args(argv)
    args.presses = [s for s in args.presses.split(",") if s]
    bad = [s for s in args.presses if s not in PRESSES]
    if bad:
        p.error(f"--presses: unknown {','.join(bad)}; allowed: {','.join(PRESSES)}")
    try:
        args.keeps = [float(k) for k in args.keeps.split(",")]
    except ValueError:
        p.error(f"--keeps: {args.keeps!r} is not a list of numbers")
    if not args.keeps or not all(0 < k < 1 for k in args.keeps):
        p.error(f"--keeps: {args.keeps} must each be in (0, 1)")
    args.modes = args.modes.split(",")
    if not args.modes or not set(args.modes) <= set(MODES):
        p.error(f"--modes: {args.modes}; allowed: aware, agnostic")
    for name in ("limit", "workers", "max_new_tokens"):
        value = getattr(args, name)
        if value < (0 if name == "limit" else 1) or value > 10**6:
            p.error(f"--{name.replace('_', '-')}: {value} out of range")
    return args


def main(argv):
    args = parse_args(argv)
    t_start = time.time()
    try:
        prompts = order_prompts(args)
    except (OSError, prompts_jsonl.PromptError) as e:
        raise SystemExit(f"kvpress_eval: {e}")
    if not prompts:
        raise SystemExit(f"kvpress_eval: no prompts of split {args.split} in {args.prompts}")
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    args.hf_dir = os.path.join(args.work, "hf-model")
    convert_model(args.gguf, args.hf_dir, args.dtype)
    import multiprocessing
    parts = [os.path.join(args.work, f"part{i}.csv") for i in range(args.workers)]
    for path in parts:
        if os.path.exists(path):
            os.remove(path)  # a previous run's
    if args.workers == 1:
        if run_shard(args, 0, 1, parts[0], t_start):
            print("kvpress_eval: some prompts failed; the finished ones are kept", file=sys.stderr)
    else:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=worker, args=(args, i, args.workers, parts[i], t_start))
                 for i in range(args.workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(max(0.0, t_start + args.stop_s - time.time()) if args.stop_s else None)
        for proc in procs:
            if proc.is_alive():  # past --stop-s: its prompt in flight is dropped
                proc.terminate()
                proc.join()
        failed = [i for i, proc in enumerate(procs) if proc.exitcode != 0]
        if failed:
            print(f"kvpress_eval: workers {failed} failed or were stopped; their finished "
                  "prompts are kept", file=sys.stderr)
    rows = [r for path in parts if os.path.exists(path) for r in kvpress_report.read_csv(path)]
    if not rows:
        raise SystemExit("kvpress_eval: no prompt finished")
    kvpress_report.write_csv(os.path.join(args.out, "results.csv"), rows)
    wall = time.time() - t_start
    n = len({r["prompt_id"] for r in rows})
    import importlib.metadata
    import torch
    header = (f"# kvpress side by side\n\n- prompts: {n} of {len(prompts)} from `{args.prompts}` "
              f"({len(rows)} rows)\n- model: `{args.gguf}` ({args.dtype})\n- device: "
              f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else args.device}\n"
              f"- versions: kvpress {importlib.metadata.version('kvpress')}, transformers "
              f"{importlib.metadata.version('transformers')}, torch {torch.__version__}\n- wall time: "
              f"{wall / 60:.1f} min, {args.workers} workers\n\n")
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
        table = kvpress_report.Table(rows)
        f.write(header + table.markdown())
    print(header + table.markdown(), flush=True)
    print(f"wall time {wall:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
