"""Per-prompt results in `xkv eval`'s CSV format, and the goal table of issue 12 over any number
of such files (bench/kvpress_eval.py's and xkv eval's results.csv side by side).

The interval is the one `xkv eval` reports (bench/eval_metrics.cc BootstrapMeanCi, used by
bench/eval_report.cc): a percentile bootstrap of the mean over prompts, 2000 resamples,
std::mt19937_64 seeded with 1 and libstdc++'s uniform_int_distribution (Lemire's method), the
means sorted and read at floor(0.025 * 2000) and floor(0.975 * 2000). It is reimplemented here
draw for draw, so the same per-prompt values give the same interval as xkv's report.

Usage: bench/kvpress_report.py [LABEL=]RESULTS.csv ...   (prints the goal table over the prompts
that every file's every method ran; a LABEL prefixes that file's methods, full included, e.g.
cpu=... for an xkv run on the CPU engine beside the CUDA one)

Pure Python (no torch): tests/kvpress checks it.
"""
import csv
import sys

# xkv eval's results.csv columns (bench/eval_report.cc). kvpress rows leave the fidelity columns
# empty; a cell that raised has an empty `correct` and the error as its answer.
CSV_FIELDS = ("prompt_id", "task", "mode", "target_tokens", "prompt_tokens", "depth", "method",
              "budget", "kv_bytes_held", "kv_bytes_full", "kv_percent", "retention", "answers",
              "answer", "correct", "agreement", "kl", "nll", "fidelity_steps")
# Query modes: the question inside the compressed context (aware: the whole prompt compressed;
# question: context + question compressed, the template tail and answer prefix after), and the
# question after compression (agnostic). kvpress_eval.py runs aware and agnostic.
MODES = ("aware", "question", "agnostic")
MODE_TITLES = {"aware": "inside", "question": "inside, tail after", "agnostic": "after"}
KVPRESS_PREFIX = "kvpress:"
_MASK64 = (1 << 64) - 1


class Mt19937_64:
    """std::mt19937_64 (the C++ standard's 64-bit Mersenne Twister)."""

    def __init__(self, seed):
        mt = [seed & _MASK64]
        for i in range(1, 312):
            mt.append((6364136223846793005 * (mt[-1] ^ (mt[-1] >> 62)) + i) & _MASK64)
        self._mt, self._i = mt, 312

    def _twist(self):
        mt = self._mt
        for i in range(312):
            y = (mt[i] & 0xFFFFFFFF80000000) | (mt[(i + 1) % 312] & 0x7FFFFFFF)
            v = mt[(i + 156) % 312] ^ (y >> 1)
            mt[i] = v ^ 0xB5026F5AA96619E9 if y & 1 else v
        self._i = 0

    def __call__(self):
        if self._i >= 312:
            self._twist()
        y = self._mt[self._i]
        self._i += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        return y ^ (y >> 43)


def uniform_index(rng, n):
    """libstdc++'s uniform_int_distribution<size_t>(0, n - 1) on a 64-bit engine (GCC >= 11)."""
    product = rng() * n
    low = product & _MASK64
    if low < n:
        threshold = ((1 << 64) - n) % n
        while low < threshold:
            product = rng() * n
            low = product & _MASK64
    return product >> 64


_DRAWS = {}  # (n, resamples, seed) -> the resamples' index lists: the same for every cell of n


def _draws(n, resamples, seed):
    key = (n, resamples, seed)
    if key not in _DRAWS:
        rng = Mt19937_64(seed)
        _DRAWS[key] = [[uniform_index(rng, n) for _ in range(n)] for _ in range(resamples)]
    return _DRAWS[key]


def bootstrap_ci(values, resamples=2000, seed=1):
    """(low, high) of the percentile bootstrap 95% interval of the mean; (0, 0) when empty."""
    n = len(values)
    if n == 0 or resamples < 1:
        return 0.0, 0.0
    means = sorted(sum(values[i] for i in draw) / n for draw in _draws(n, resamples, seed))
    return means[min(resamples - 1, int(0.025 * resamples))], \
        means[min(resamples - 1, int(0.975 * resamples))]


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def read_csv(path):
    """Rows of a results.csv: budget as float, correct as 0/1 or None (a failed cell)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in ("prompt_id", "task", "mode", "method", "budget", "correct")
               if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: not a results.csv (no column {missing[0]})")
    for r in rows:
        r["budget"] = float(r["budget"])
        r["correct"] = int(r["correct"]) if r["correct"] != "" else None
    return rows


def _mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


class Table:
    """Accuracy per (method, budget, mode) with intervals, over the rows given (restrict them to
    shared prompts first: restrict_to_common)."""

    def __init__(self, rows, prefixes=(KVPRESS_PREFIX,)):
        """`prefixes`: engines other than xkv's CUDA/CPU run, whose methods are named
        PREFIX + method and whose full cache is PREFIX + "full"."""
        self.prefixes = prefixes
        per = {}  # (method, budget, mode) -> {prompt: correct}
        self.failed = {}
        for r in rows:
            key = (r["method"], 1.0 if r["method"] == self.reference(r["method"]) else r["budget"],
                   r["mode"])
            if r["correct"] is None:
                self.failed[r["method"]] = self.failed.get(r["method"], 0) + 1
                continue
            per.setdefault(key, {})[r["prompt_id"]] = r["correct"]
        self.methods = list(dict.fromkeys(r["method"] for r in rows))
        self.budgets = sorted({b for (m, b, _) in per if m != self.reference(m)})
        self.modes = [m for m in MODES if any(k[2] == m for k in per)]
        self.per = per
        self._ci = {}

    def reference(self, method):
        """The full-cache method a method is measured against: its engine's own."""
        for prefix in self.prefixes:
            if method.startswith(prefix):
                return prefix + "full"
        return "full"

    def values(self, method, budget, mode):
        cell = self.per.get((method, budget, mode))
        return None if cell is None else [cell[p] for p in sorted(cell)]

    def accuracy(self, method, budget, mode):
        v = self.values(method, budget, mode)
        return None if v is None else _mean(v)

    def ci(self, method, budget, mode):
        v = tuple(self.values(method, budget, mode) or ())
        if v not in self._ci:  # many cells share a vector (all wrong, all right)
            self._ci[v] = bootstrap_ci(list(v))
        return self._ci[v]

    def cell(self, method, budget, mode):
        acc = self.accuracy(method, budget, mode)
        if acc is None:
            return "—"
        lo, hi = self.ci(method, budget, mode)
        return f"{acc:.3f} [{lo:.2f}, {hi:.2f}]"

    def markdown(self):
        cols = [(b, m) for b in self.budgets for m in self.modes]
        out = ["| method | full cache | " + " | ".join(
            f"{100 * b:.0f}% {MODE_TITLES[m]}" for b, m in cols) + " |",
            "|---|---|" + "---|" * len(cols)]
        for method in self.methods:
            if method == self.reference(method):
                continue
            full = self.reference(method)
            out.append(f"| {method} | " + " / ".join(
                f"{self.accuracy(full, 1.0, m):.3f}" if self.accuracy(full, 1.0, m) is not None
                else "—" for m in self.modes) + " | " +
                " | ".join(self.cell(method, b, m) for b, m in cols) + " |")
        for full in dict.fromkeys(self.reference(m) for m in self.methods):
            out.append(f"| **{full}** | " + " / ".join(
                self.cell(full, 1.0, m) for m in self.modes) + " |" + " |" * len(cols))
        return "\n".join(out) + "\n"

    def share(self, method, budget, mode):
        """The method's accuracy as a share of its engine's full cache in that mode."""
        acc = self.accuracy(method, budget, mode)
        full = self.accuracy(self.reference(method), 1.0, mode)
        return None if acc is None or not full else acc / full

    def engine_of(self, method):
        """(engine prefix, base name): ("kvpress:", "snapkv"), ("cpu:", "xkv"), ("", "xkv")."""
        for prefix in self.prefixes:
            if method.startswith(prefix):
                return prefix, method[len(prefix):]
        return "", method

    def is_xkv(self, method):
        """xkv's own modes (not a baseline, not a peer): xkv, xkv:..., paper (on any engine)."""
        engine, base = self.engine_of(method)
        return engine != KVPRESS_PREFIX and (base == "xkv" or base.startswith("xkv:") or
                                             base == "paper")

    def _versus(self, method, rivals):
        """The (budget, mode) cells, aware and agnostic, where a rival scores above `method`:
        (cells compared, ["20% agnostic (0.545 < kvzip 0.727)", ...])."""
        compared, below = 0, []
        for b in self.budgets:
            for mode in ("aware", "agnostic"):
                mine = self.accuracy(method, b, mode)
                scores = [(self.accuracy(r, b, mode), r) for r in rivals]
                scores = [(a, r) for a, r in scores if a is not None]
                if mine is None or not scores:
                    continue
                compared += 1
                above = sorted((a, r) for a, r in scores if a > mine)
                if above:
                    below.append(f"{100 * b:.0f}% {mode} ({mine:.3f} < " + ", ".join(
                        f"{r} {a:.3f}" for a, r in reversed(above)) + ")")
        return compared, below

    def goal_check(self):
        """Issue 12's goal: every xkv-side method's share of its full cache at 20% (>= 99% with
        the question inside, >= 95% after) and the columns where a kvpress press scores higher;
        the best xkv mode against every press; the default xkv against snapkv, pyramidkv,
        streaming (its engine's and kvpress's) and kvpress's AdaKV(SnapKV)."""
        presses = [m for m in self.methods
                   if m.startswith(KVPRESS_PREFIX) and m != self.reference(m)]
        out = []
        for method in self.methods:
            if method.startswith(KVPRESS_PREFIX) or method == self.reference(method):
                continue  # xkv's methods only, on any engine
            shares = []
            for mode, goal in (("aware", 0.99), ("question", 0.99), ("agnostic", 0.95)):
                s = self.share(method, 0.2, mode)
                if s is not None:
                    shares.append(f"{mode} {100 * s:.0f}% ({'meets' if s >= goal else 'misses'} "
                                  f"{100 * goal:.0f}%)")
            below = []
            for b in self.budgets:
                for mode in ("aware", "agnostic"):
                    mine = self.accuracy(method, b, mode)
                    if mine is None or not presses:
                        continue
                    best = max(presses, key=lambda p: self.accuracy(p, b, mode) or 0)
                    if (self.accuracy(best, b, mode) or 0) > mine:
                        below.append(f"{100 * b:.0f}% {mode} ({mine:.3f} < "
                                     f"{best[len(KVPRESS_PREFIX):]} "
                                     f"{self.accuracy(best, b, mode):.3f})")
            versus = ("" if not presses else "; at or above every kvpress press" if not below
                      else "; below the best kvpress press at " + ", ".join(below))
            out.append(f"- {method}: at 20% of the bytes, " + ", ".join(shares) + " of full" +
                       versus + ".")
        xkv = [m for m in self.methods if self.is_xkv(m) and m != self.reference(m)]
        if xkv and presses:
            def mean(m):
                cells = [self.accuracy(m, b, mode) for b in self.budgets
                         for mode in ("aware", "agnostic")]
                return _mean([c for c in cells if c is not None])
            best = max(xkv, key=mean)
            n, below = self._versus(best, presses)
            out.append(f"- **Best xkv mode**: {best} (mean {mean(best):.3f} over the cells): at "
                       f"or above every kvpress press in {n - len(below)} of {n} cells" +
                       ("" if not below else "; below at " + "; ".join(below)) + ".")
        for method in xkv:
            engine, base = self.engine_of(method)
            if base != "xkv":
                continue
            rivals = [m for m in self.methods if m in
                      [engine + b for b in ("snapkv", "pyramidkv", "streaming")] +
                      [KVPRESS_PREFIX + b for b in ("snapkv", "pyramidkv", "streaming",
                                                    "adakv-snapkv")]]
            if not rivals:
                continue
            n, below = self._versus(method, rivals)
            out.append(f"- **Default {method}** against {', '.join(rivals)}: at or above all in "
                       f"{n - len(below)} of {n} cells" +
                       ("" if not below else "; below at " + "; ".join(below)) + ".")
        return "\n".join(out) + "\n"


def restrict_to_common(rows):
    """The rows of the prompts that every method has at least one row for."""
    by_method = {}
    for r in rows:
        by_method.setdefault(r["method"], set()).add(r["prompt_id"])
    common = set.intersection(*by_method.values()) if by_method else set()
    return [r for r in rows if r["prompt_id"] in common], len(common)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(__doc__)
    rows, prefixes = [], [KVPRESS_PREFIX]
    for arg in argv:
        label, _, path = arg.rpartition("=")
        part = read_csv(path)
        if label:  # another run of xkv (say the CPU engine): its methods get LABEL:
            prefixes.append(label + ":")
            for r in part:
                r["method"] = f"{label}:{r['method']}"
        rows += part
    rows, n = restrict_to_common(rows)
    table = Table(rows, tuple(prefixes))
    modes = ", ".join(f"{m} = question {MODE_TITLES[m]}" for m in table.modes)
    print(f"{n} prompts that every method ran; each cell: accuracy [95% bootstrap CI over "
          f"prompts]; the full cache column lists {' / '.join(table.modes)} ({modes}).\n")
    print(table.markdown())
    print(table.goal_check(), end="")
    for method, count in table.failed.items():
        print(f"\n{method}: {count} cells raised and are left out")


if __name__ == "__main__":
    main(sys.argv[1:])
