"""External evaluation prompts in JSONL: the format of `xkv eval --prompts` / `--export-prompts`
(bench/eval_prompts.h), read the same way.

One JSON object per line (blank lines are skipped):
  id             string, unique in the file
  task           string (e.g. "niah_number")
  split          "dev" | "test"
  length         int >= 1: target tokens of context + question
  context        string: the start of the user message (instructions + document)
  question       string: appended to context in the same user message
  answer_prefix  string, optional (default ""): the start of the assistant turn
  answers        non-empty list of non-empty strings: the prediction (the greedy text after the
                 prefix) is correct when it contains any of them (RULER's string match,
                 case-sensitive as in xkv)
  messages       optional chat messages [{"role", "content"}] replacing context + question; the
                 last one's content ends with `question`
  context_ids,   optional token ids (both or neither), used as they are (no chat template, no
  question_ids   answer_prefix added)
  continuation   optional string (xkv's fidelity text; not used here)
Any other field is an error. Text prompts are rendered with the model's chat template (one user
message context + question, or the messages, plus the generation prompt) and split where the
question starts: the context span before it, the question span from it on plus answer_prefix.

Pure Python (no torch, no transformers): bench/kvpress_eval.py and tests/kvpress use it.
"""
import collections
import json
import random

SPLITS = ("dev", "test")
_STRING_FIELDS = ("id", "task", "context", "question")
_FIELDS = frozenset(_STRING_FIELDS + ("split", "length", "answer_prefix", "answers", "messages",
                                      "context_ids", "question_ids", "continuation"))


class PromptError(ValueError):
    """A prompt file that cannot be used; the message names the line, the field and the rule."""


def _fail(where, message):
    raise PromptError(f"{where}: {message}")


def _check_ids(where, obj, name):
    ids = obj[name]
    if not isinstance(ids, list) or not ids or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
        _fail(where, f"field '{name}' must be a non-empty list of token ids >= 0")
    return ids


def parse_prompt(obj, where="prompt"):
    """Validates one decoded JSON object and returns it with defaults filled in (a new dict)."""
    if not isinstance(obj, dict):
        _fail(where, f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        _fail(where, f"unknown field '{unknown[0]}'; allowed: {', '.join(sorted(_FIELDS))}")
    for name in _STRING_FIELDS + ("split", "length", "answers"):
        if name not in obj:
            _fail(where, f"missing field '{name}'")
    for name in _STRING_FIELDS:
        if not isinstance(obj[name], str):
            _fail(where, f"field '{name}' must be a string, got {type(obj[name]).__name__}")
    if not obj["id"]:
        _fail(where, "field 'id' is empty")
    if obj["split"] not in SPLITS:
        _fail(where, f"field 'split' is {obj['split']!r}; allowed: {', '.join(SPLITS)}")
    length = obj["length"]
    if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
        _fail(where, f"field 'length' is {length!r}; allowed: an integer >= 1")
    prefix = obj.get("answer_prefix", "")
    if not isinstance(prefix, str):
        _fail(where, "field 'answer_prefix' must be a string")
    if not isinstance(obj.get("continuation", ""), str):
        _fail(where, "field 'continuation' must be a string")
    answers = obj["answers"]
    if not isinstance(answers, list) or not answers or not all(
            isinstance(a, str) and a for a in answers):
        _fail(where, "field 'answers' must be a non-empty list of non-empty strings")
    out = dict(obj, answer_prefix=prefix)
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and
                isinstance(m.get("content"), str) for m in messages):
            _fail(where, "field 'messages' must be a non-empty list of {role, content} strings")
        if not messages[-1]["content"].endswith(obj["question"]):
            _fail(where, "the last message's content must end with field 'question'")
    has_ids = ("context_ids" in obj, "question_ids" in obj)
    if any(has_ids) and not all(has_ids):
        _fail(where, "fields 'context_ids' and 'question_ids' go together (both or neither)")
    if all(has_ids):
        _check_ids(where, obj, "context_ids")
        _check_ids(where, obj, "question_ids")
    return out


def load_prompts(path):
    """Reads and validates a JSONL file. Blank lines are skipped; ids must be unique."""
    prompts, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptError(f"{where}: not JSON ({e.msg})") from None
            prompt = parse_prompt(obj, where)
            if prompt["id"] in seen:
                _fail(where, f"duplicate id {prompt['id']!r}")
            seen.add(prompt["id"])
            prompts.append(prompt)
    if not prompts:
        raise PromptError(f"{path}: no prompts")
    return prompts


def split_rendered(rendered, question, answer_prefix, where="prompt"):
    """Splits a chat rendering at the last occurrence of the question: (context, question)."""
    i = rendered.rfind(question) if question else -1
    if i < 0:
        _fail(where, "the question does not occur in the rendered messages")
    return rendered[:i], rendered[i:] + answer_prefix


def prompt_texts(prompt, render_chat):
    """(context text, question text) for a prompt without ids. `render_chat(messages)` renders
    chat messages with the generation prompt appended (the tokenizer's chat template)."""
    messages = prompt.get("messages") or [
        {"role": "user", "content": prompt["context"] + prompt["question"]}]
    return split_rendered(render_chat(messages), prompt["question"], prompt["answer_prefix"],
                          f"prompt {prompt['id']}")


def is_correct(prediction, answers):
    """RULER's string match as xkv scores it: the prediction contains any answer (case-sensitive)."""
    return any(a in prediction for a in answers)


def interleave_strata(prompts, seed):
    """Seeded order that cycles through the (task, length) strata: each round takes one prompt of
    every stratum, the first |tasks| of a round cover every task with lengths rotating, so that
    any prefix (a --limit or a deadline) spans the tasks and lengths about equally."""
    strata = collections.defaultdict(list)
    for p in prompts:
        strata[(p["task"], p["length"])].append(p)
    rng = random.Random(seed)
    for key in sorted(strata):
        rng.shuffle(strata[key])
    tasks = sorted({t for t, _ in strata})
    lengths = sorted({n for _, n in strata})
    cycle = [(tasks[j % len(tasks)], lengths[(j % len(tasks) + j // len(tasks)) % len(lengths)])
             for j in range(len(tasks) * len(lengths))]
    rounds = max((len(g) for g in strata.values()), default=0)
    return [strata[key][r] for r in range(rounds) for key in cycle
            if key in strata and r < len(strata[key])]
