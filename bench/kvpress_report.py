"""Results of bench/kvpress_eval.py: the CSV and the Markdown summary with bootstrap intervals.

The interval is the one `xkv eval` reports (bench/eval_metrics.cc BootstrapMeanCi, used by
bench/eval_report.cc): a percentile bootstrap of the per-prompt accuracy (a prompt's two query
modes averaged, so they stay together), 2000 resamples, std::mt19937_64 seeded with 1 and
libstdc++'s uniform_int_distribution (Lemire's method), the means sorted and read at
floor(0.025 * 2000) and floor(0.975 * 2000). It is reimplemented here draw for draw, so the same
per-prompt values give the same interval as xkv's report.

Pure Python (no torch): tests/kvpress checks it.
"""
import csv

CSV_FIELDS = ("id", "task", "length", "split", "press", "keep", "mode", "prediction", "correct")
MODES = ("aware", "agnostic")  # question inside the compressed context / after compression
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


def bootstrap_ci(values, resamples=2000, seed=1):
    """(low, high) of the percentile bootstrap 95% interval of the mean; (0, 0) when empty."""
    n = len(values)
    if n == 0 or resamples < 1:
        return 0.0, 0.0
    rng = Mt19937_64(seed)
    means = []
    for _ in range(resamples):
        total = 0.0
        for _ in range(n):
            total += values[uniform_index(rng, n)]
        means.append(total / n)
    means.sort()
    return means[min(resamples - 1, int(0.025 * resamples))], \
        means[min(resamples - 1, int(0.975 * resamples))]


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, correct=int(bool(r["correct"]))))


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [dict(r, length=int(r["length"]), keep=float(r["keep"]), correct=int(r["correct"]))
                for r in csv.DictReader(f)]


def _cells(rows):
    """(press, keep) cells in first-appearance order."""
    order = []
    for r in rows:
        key = (r["press"], float(r["keep"]))
        if key not in order:
            order.append(key)
    return order


def per_prompt_accuracy(rows, press, keep):
    """Accuracy of one cell per prompt (its modes averaged), in first-appearance order."""
    ok, n = {}, {}
    for r in rows:
        if r["press"] != press or float(r["keep"]) != keep:
            continue
        ok[r["id"]] = ok.get(r["id"], 0) + int(bool(r["correct"]))
        n[r["id"]] = n.get(r["id"], 0) + 1
    return [ok[i] / n[i] for i in ok]


def _mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def _budget(press, keep):
    return "—" if press == "full" else f"{100 * keep:.0f}%"


def summary_markdown(rows, prefix="kvpress:"):
    """The main table (the shape of docs/quality.md: accuracy per mode, overall, its 95% CI, % of
    the full cache's score) and the accuracy by prompt length. Method names get `prefix`."""
    cells = _cells(rows)
    full = [r for r in rows if r["press"] == "full"]
    full_acc = _mean([int(bool(r["correct"])) for r in full])
    out = ["| method | budget | accuracy (aware) | accuracy (agnostic) | accuracy (all) | 95% CI "
           "| % of full score |", "|---|---|---|---|---|---|---|"]
    for press, keep in cells:
        cell = [r for r in rows if r["press"] == press and float(r["keep"]) == keep]
        acc = {m: _mean([int(bool(r["correct"])) for r in cell if r["mode"] == m]) for m in MODES}
        total = _mean([int(bool(r["correct"])) for r in cell])
        lo, hi = bootstrap_ci(per_prompt_accuracy(rows, press, keep))
        rel = f"{100 * total / full_acc:.1f}%" if full_acc > 0 else "n/a"
        name = press if press == "full" else prefix + press
        out.append(f"| {name} | {_budget(press, keep)} | {acc['aware']:.3f} | "
                   f"{acc['agnostic']:.3f} | {total:.3f} | [{lo:.3f}, {hi:.3f}] | {rel} |")
    lengths = sorted({int(r["length"]) for r in rows})
    out += ["", "| method | budget | " + " | ".join(f"{n} tok" for n in lengths) + " |",
            "|---|---|" + "---|" * len(lengths)]
    for press, keep in cells:
        name = press if press == "full" else prefix + press
        accs = [_mean([int(bool(r["correct"])) for r in rows if r["press"] == press and
                       float(r["keep"]) == keep and int(r["length"]) == n]) for n in lengths]
        out.append(f"| {name} | {_budget(press, keep)} | " +
                   " | ".join(f"{a:.3f}" for a in accs) + " |")
    return "\n".join(out) + "\n"


def read_xkv_csv(path):
    """`xkv eval`'s results.csv as rows of this module (method -> press, budget -> keep)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{"id": r["prompt_id"], "task": r["task"], "length": int(r["target_tokens"]),
                 "split": "", "press": r["method"], "keep": float(r["budget"]),
                 "mode": r["mode"], "prediction": r["answer"], "correct": int(r["correct"])}
                for r in csv.DictReader(f)]


def main(argv):
    """kvpress_report.py KVPRESS.csv [XKV_RESULTS.csv]: the kvpress summary; with xkv's
    results.csv, both summaries over the prompts the two files share (each % of full is of its
    own engine's full cache)."""
    if len(argv) not in (1, 2):
        raise SystemExit(main.__doc__)
    rows = read_csv(argv[0])
    if len(argv) == 1:
        print(summary_markdown(rows), end="")
        return
    xkv = read_xkv_csv(argv[1])
    common = {r["id"] for r in rows} & {r["id"] for r in xkv}
    print(f"{len(common)} prompts in both files\n\nkvpress (transformers):\n")
    print(summary_markdown([r for r in rows if r["id"] in common]))
    print("xkv:\n")
    print(summary_markdown([r for r in xkv if r["id"] in common], prefix=""), end="")


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
