"""Fuzz every public entry point with many examples and count what comes out.

    python bench/fuzz.py                         # 2,000 inputs per entry point
    python bench/fuzz.py --examples 500 --target plan --target "Cluster.parse"
    python bench/fuzz.py --seed 7 --show 3       # another random stream; print 3 inputs per failure kind

Runs the targets of tests/test_fuzz.py (same input strategies, same checks) without stopping at a failure:
for each entry point it counts the inputs tried, the outcomes ("ok", each typed error, and failures:
UNTYPED:<exception>, HANG, EMPTY-MESSAGE, WRONG-RESULT) and prints a table, then one example input per
failure kind. Inputs that hit a bug listed in test_fuzz.KNOWN_BUGS are run and counted like the others,
under their own outcome. A benchmark: it reports, it does not assert.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import test_fuzz as fz  # noqa: E402


def run_target(target: fz.Target, examples: int, rng_seed: int, show: int) -> tuple[collections.Counter, dict, float]:
    counts: collections.Counter = collections.Counter()
    samples: dict[str, list[str]] = collections.defaultdict(list)
    known = fz.KNOWN_BUGS.get(target.name)

    @seed(rng_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        x = data.draw(target.inputs())
        out = fz.classify(lambda: target.call(x))
        label = out.label
        if not out.passed and known is not None and known(x):
            label = f"known bug ({label})"
        counts[label] += 1
        if not out.passed and len(samples[label]) < show:
            samples[label].append(f"{x!r:.300} -> {out.error!r:.300}")

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run()
    return counts, samples, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000, help="inputs per entry point (default 2000)")
    ap.add_argument("--target", action="append", choices=[t.name for t in fz.TARGETS], help="only these")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=1, help="example inputs to print per failure kind")
    args = ap.parse_args(argv)
    targets = [t for t in fz.TARGETS if args.target is None or t.name in args.target]
    total: collections.Counter = collections.Counter()
    all_samples: list[tuple[str, str, list[str]]] = []
    print(f"{'entry point':<26} {'inputs':>7} {'ok':>6} {'typed':>6} {'failed':>6} {'time':>8}  outcomes")
    for t in targets:
        counts, samples, elapsed = run_target(t, args.examples, args.seed, args.show)
        n = sum(counts.values())
        ok = sum(v for k, v in counts.items() if k.startswith("ok") or k == "python:unknown-keyword")
        typed = sum(v for k, v in counts.items() if k.startswith("typed:"))
        failed = n - ok - typed
        detail = ", ".join(f"{k.removeprefix('typed:')} {v}" for k, v in counts.most_common())
        print(f"{t.name:<26} {n:>7,} {ok:>6,} {typed:>6,} {failed:>6,} {elapsed:>7.1f}s  {detail}", flush=True)
        total.update(counts)
        all_samples += [(t.name, label, s) for label, s in samples.items()]
    n = sum(total.values())
    ok = sum(v for k, v in total.items() if k.startswith("ok") or k == "python:unknown-keyword")
    typed = sum(v for k, v in total.items() if k.startswith("typed:"))
    print(f"{'all':<26} {n:>7,} {ok:>6,} {typed:>6,} {n - ok - typed:>6,}")
    print("\ntyped errors by type, all entry points:")
    for k, v in sorted(((k, v) for k, v in total.items() if k.startswith("typed:")), key=lambda kv: -kv[1]):
        print(f"  {k.removeprefix('typed:'):<28} {v:>7,}")
    if all_samples:
        print("\nfailures (one line per example input):")
        for name, label, lines in all_samples:
            for line in lines:
                print(f"  [{name}] {label}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
