#!/usr/bin/env python3
"""capacity_probe.py: the /metrics side of bench/capacity_8b_gpu.sh (standard library only).

  capacity_probe.py poll URL FILE    sample URL (xkv's /metrics) every 0.1 s into FILE
                                     (JSON lines) until killed
  capacity_probe.py scrape URL FILE  one sample into FILE (JSON)
  capacity_probe.py table OUT_DIR    the capacity / throughput / TTFT-share / balance tables of the
                                     runs listed in OUT_DIR/runs.tsv (label, requests, name and
                                     the run's first and last line of OUT_DIR/serve.log)

A sample holds the running and waiting requests, every stage's KV bytes held
(xkv_kv_cache_bytes_used) and the stage planner's predicted KV bytes at the live load
(xkv_kv_cache_bytes_predicted), and the sums of the request histograms (TTFT, queue wait,
profiling, solving). Definitions (docs/benchmarks-serving.md, "Capacity at a fixed KV pool"):
  held        the most requests running at once (admitted by the KV manager), over the run;
  decode tok/s  held x 1000 / ITL p50: the token rate of a decode step over the whole held batch
              (the ITL median is the decode step; prefill chunks make the ITL tail);
  decode tok/s  B x 1000 / the median time of the decode-only steps of B sequences, B the largest
              such batch: the token rate of a step that decodes the whole held batch and nothing
              else (from the run's `xkv serve --log-step-timing 1` lines; without them, the old
              held x 1000 / ITL p50, which is wrong once half the decode tokens come from steps
              shared with a prefill chunk: the median gap is then a mixed step);
  mixed share   decode tokens produced by steps that also carried prompt work, over all;
  preempted   requests preempted (recomputed later) by the KV manager during the run;
  profile share  sum(profile + solve) / sum(TTFT - queue wait) over the run's requests: the share
              of the time from admission to the first token spent deciding the allocation;
  balance     per stage, sum over samples of predicted / sum over samples of held, over the
              decode-only samples (every stage holds KV and no running request is still
              prefilling); "share error" compares each stage's part of the total.
"""
import json
import re
import sys
import time
import urllib.request

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')
STAGE = re.compile(r'stage="(\d+)"')
SUMS = {
    'ttft': 'xkv_time_to_first_token_seconds',
    'queue': 'xkv_request_queue_seconds',
    'profile': 'xkv_request_profile_seconds',
    'solve': 'xkv_request_solve_seconds',
}


def sample(url):
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    s = {'t': time.time(), 'running': 0, 'waiting': 0, 'prefilling': 0, 'held': {}, 'predicted': {},
         'capacity': {}}
    for key in SUMS:
        s[key + '_sum'] = 0.0
        s[key + '_count'] = 0.0
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or '', float(m.group(3))
        stage = STAGE.search(labels)
        if name == 'xkv_num_requests_running':
            s['running'] = value
        elif name == 'xkv_num_requests_waiting':
            s['waiting'] = value
        elif name == 'xkv_num_requests_prefilling':
            s['prefilling'] = value
        elif stage and name == 'xkv_kv_cache_bytes_used':
            s['held'][stage.group(1)] = value
        elif stage and name == 'xkv_kv_cache_bytes_predicted':
            s['predicted'][stage.group(1)] = value
        elif stage and name == 'xkv_kv_cache_bytes_capacity':
            s['capacity'][stage.group(1)] = value
        for key, family in SUMS.items():
            if name == family + '_sum':
                s[key + '_sum'] = value
            elif name == family + '_count':
                s[key + '_count'] = value
    return s


def poll(url, path, interval):
    with open(path, 'a') as f:
        while True:
            try:
                f.write(json.dumps(sample(url)) + '\n')
                f.flush()
            except OSError:
                pass  # the server is starting or stopping: skip this sample
            time.sleep(interval)


def load_samples(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    except OSError:
        return []


def fmt(x, digits=0):
    return '—' if x is None else f'{x:,.{digits}f}'


def balance(samples):
    """[(stage, predicted/held - 1, share error, mean predicted, mean held)] over the decode-only
    samples (every stage holds KV, no running request is still prefilling)."""
    stages = sorted({k for s in samples for k in s['held']}, key=int)
    pred = {k: 0.0 for k in stages}
    held = {k: 0.0 for k in stages}
    n = 0
    for s in samples:
        if not stages or s['prefilling'] > 0 or any(s['held'].get(k, 0) <= 0 for k in stages):
            continue
        n += 1
        for k in stages:
            pred[k] += s['predicted'].get(k, 0)
            held[k] += s['held'][k]
    if n == 0:
        return [], 0
    tp, th = sum(pred.values()), sum(held.values())
    rows = []
    for k in stages:
        share = (pred[k] / tp - held[k] / th) / (held[k] / th) if tp > 0 else None
        rows.append((k, pred[k] / held[k] - 1, share, pred[k] / n, held[k] / n))
    return rows, n


STEP = re.compile(r'xkv coordinator: 1 steps, ([\d.]+) sequences / ([\d.]+) rows each: one every '
                  r'([\d.]+) ms.*; (\d+) decode-only, \d+ with (\d+) prompt tokens, '
                  r'\d+ compacted \([\d.]+ ms on the loop\), (\d+) preempted')


def step_mix(path, first, last):
    """(peak decode-only batch B, median ms of the decode-only steps of B, share of the decode
    tokens made by steps with prompt work, decode-only steps, steps, preemptions) over lines
    first..last of the serve log (one `--log-step-timing 1` line per step); None without such
    lines."""
    only, mixed_tokens, all_tokens, n, preempted = [], 0.0, 0.0, 0, 0
    try:
        with open(path, errors='replace') as f:
            for i, line in enumerate(f, 1):
                m = STEP.search(line) if first < i <= last else None
                if not m:
                    continue
                n += 1
                preempted += int(m.group(6))
                seqs, rows, ms, pure, prompt = (float(m.group(1)), float(m.group(2)),
                                                float(m.group(3)), int(m.group(4)), int(m.group(5)))
                all_tokens += rows - prompt
                if pure:
                    only.append((seqs, ms))
                else:
                    mixed_tokens += rows - prompt
    except OSError:
        return None
    if not only or all_tokens <= 0:
        return None
    b = max(seqs for seqs, _ in only)
    times = sorted(ms for seqs, ms in only if seqs == b)
    return b, times[len(times) // 2], mixed_tokens / all_tokens, len(only), n, preempted


def table(out):
    runs = []
    with open(f'{out}/runs.tsv') as f:
        for line in f:
            label, conc, name, *lines = line.split()
            span = (int(lines[0]), int(lines[1])) if len(lines) == 2 else None
            runs.append((label, int(conc), name, span))
    print('| run | sent at once | held (peak running) | ok/failed | out tok/s | decode tok/s | '
          'decode-only steps, batch / ms | decode tokens in mixed steps | preempted | '
          'ITL p50 / p99 ms | TPOT p50 / p99 ms | TTFT p50 / p99 ms | queue share of TTFT | '
          'profile + solve / (TTFT − queue) | mean KV vs full |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    summary = {}
    for label, conc, name, span in runs:
        try:
            r = json.load(open(f'{out}/{name}.json'))['results'][0]
        except (OSError, ValueError, IndexError):
            print(f'| {label} | {conc} | (no result: see {name}.log) |')
            continue
        samples = load_samples(f'{out}/{name}.poll')
        before = json.load(open(f'{out}/{name}.before'))
        after = json.load(open(f'{out}/{name}.after'))
        d = {k: after[k + '_sum'] - before[k + '_sum'] for k in SUMS}
        held = max((s['running'] for s in samples), default=None)
        own = d['ttft'] - d['queue']
        prof = (d['profile'] + d['solve']) / own if own > 0 else None
        queue = d['queue'] / d['ttft'] if d['ttft'] > 0 else None
        mix = step_mix(f'{out}/serve.log', *span) if span else None
        if mix:
            decode = mix[0] * 1000 / mix[1] if mix[1] > 0 else None
            steps = f'{fmt(mix[0])} / {fmt(mix[1], 1)} ({mix[3]} of {mix[4]} steps)'
            mixed = f'{fmt(100 * mix[2], 0)}%'
            preempted = str(mix[5])
        else:
            decode = held * 1000 / r['median_itl_ms'] if held and r['median_itl_ms'] > 0 else None
            steps, mixed, preempted = '—', '—', '—'
        summary[label] = (held, r['output_throughput'], decode, r['p99_itl_ms'])
        print(f"| {label} | {conc} | {fmt(held)} | {r['completed']}/{r['failed']} | "
              f"{fmt(r['output_throughput'], 1)} | {fmt(decode, 1)} | {steps} | {mixed} | "
              f"{preempted} | "
              f"{fmt(r['median_itl_ms'], 1)} / "
              f"{fmt(r['p99_itl_ms'], 1)} | {fmt(r['median_tpot_ms'], 1)} / "
              f"{fmt(r['p99_tpot_ms'], 1)} | {fmt(r['median_ttft_ms'])} / {fmt(r['p99_ttft_ms'])} | "
              f"{fmt(None if queue is None else 100 * queue, 1)}% | "
              f"{fmt(None if prof is None else 100 * prof, 2)}% | "
              f"{fmt(100 * r['mean_kv_fraction'], 1)}% |")
    base = summary.get('full')
    if base and base[0]:
        print()
        for label, (held, tps, decode, itl) in summary.items():
            if label == 'full' or not held:
                continue
            print(f'{label} vs full: {held / base[0]:.2f}x the concurrent requests, '
                  f'{decode / base[2]:.2f}x the decode tok/s, {tps / base[1]:.2f}x the output '
                  f'tok/s (whole run), ITL p99 {itl:,.1f} vs {base[3]:,.1f} ms '
                  f'({itl / base[3]:.2f}x)')
    for label, conc, name, _ in runs:
        rows, n = balance(load_samples(f'{out}/{name}.poll'))
        if len(rows) < 2:
            continue
        print()
        print(f'Per-stage KV, {label} ({n} decode-only samples): predicted (the stage planner '
              'at the live load) vs held')
        print()
        print('| stage | mean predicted MiB | mean held MiB | predicted / held − 1 | '
              'share error |')
        print('|---|---|---|---|---|')
        for k, err, share, p, h in rows:
            print(f'| {k} | {p / 2**20:,.1f} | {h / 2**20:,.1f} | {100 * err:+.1f}% | '
                  f'{"—" if share is None else f"{100 * share:+.1f}%"} |')


def main(argv):
    if len(argv) == 4 and argv[1] == 'poll':
        poll(argv[2], argv[3], 0.1)
    elif len(argv) == 4 and argv[1] == 'scrape':
        with open(argv[3], 'w') as f:
            json.dump(sample(argv[2]), f)
    elif len(argv) == 3 and argv[1] == 'table':
        table(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main(sys.argv)
