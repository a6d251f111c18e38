"""Planner at scale: 100,000-GPU clusters and 1,000-layer models.

    python bench/scale.py                      # every case, each in a fresh process
    python bench/scale.py --case 405b-100k     # one case
    python bench/scale.py --timeout 120 --memory-gb 8

Each case runs in its own Python process so its peak resident memory (`ru_maxrss`) is its own, under a
wall-clock limit and an address-space limit (a case that would take tens of gigabytes stops with a
MemoryError instead of swapping the machine). Prints, per case: wall time, peak RSS, the outcome (the best
strategy, or the typed error the planner refused with) and the number of candidates. A benchmark: it
reports, it does not assert (tests/test_scale.py runs some of these cases through `run_child` and asserts
the behaviour).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _deep_model(num_layers: int, moe_every: int = 0):
    """A decoder with `num_layers` blocks; with `moe_every`, every that-many-th block is MoE (blocks differ,
    so the planner cannot use the closed-form split of uniform models)."""
    from costmodel.model import ModelSpec

    kw = dict(num_experts=8, top_k=2, expert_ffn_hidden=2048, moe_layer_interval=moe_every) if moe_every else {}
    return ModelSpec.decoder(f"deep-{num_layers}{'-moe' if moe_every else ''}", num_layers=num_layers, hidden=1024,
                             num_heads=16, num_kv_heads=8, ffn_hidden=4096, vocab=32000, seq_len=2048, **kw)


# name -> (model, cluster, workload kind, workload arguments, note)
CASES: dict[str, tuple] = {
    "405b-100k": ("llama-3-405b", "12500x8xH100", "train", dict(global_batch=25000, seq_len=8192),
                  "100,000 H100, batch a multiple of 5^5 so dp can use the GPUs"),
    "405b-100k-batch2048": ("llama-3-405b", "12500x8xH100", "train", dict(global_batch=2048, seq_len=8192),
                            "no tp x pp x dp of 100,000 GPUs divides 2048: must refuse clearly"),
    "405b-98k": ("llama-3-405b", "12288x8xH100", "train", dict(global_batch=2048, seq_len=8192),
                 "98,304 H100, the usual 2048 x 8k batch"),
    "405b-100k-mixed": ("llama-3-405b", "6250x8xH100+6250x8xA100", "train", dict(global_batch=25000, seq_len=8192),
                        "100,000 GPUs of two types"),
    "405b-100k-infer": ("llama-3-405b", "12500x8xH100", "infer", dict(prompt_tokens=2048, output_tokens=256,
                                                                       batch=64),
                        "inference: GPU counts 1, 2, 4, ... 65,536 and 100,000"),
    "deepseek-v3-100k": ("deepseek-v3", "12500x8xH100", "train", dict(global_batch=25000, seq_len=4096),
                         "MoE with 3 dense layers first (non-uniform)"),
    "1000-layers-uniform-256": (("deep", 1000, 0), "32x8xH100", "train", dict(global_batch=512),
                                "identical blocks: closed-form split"),
    "1000-layers-moe-256": (("deep", 1000, 2), "32x8xH100", "train", dict(global_batch=512),
                            "MoE every 2nd block: the general stage-split DP"),
    "1000-layers-moe-64": (("deep", 1000, 2), "8x8xH100", "train", dict(global_batch=512),
                           "same model on 64 GPUs"),
    "cluster-parse-1M": (None, "125000x8xH100", "parse", {}, "parse a 1,000,000-GPU cluster string"),
    # the parts that the slow cases above spend their time in
    "first-gpus-65536": (None, "12500x8xH100", "first_gpus", dict(count=65536),
                         "the sub-cluster inference planning prices for 65,536 GPUs"),
    "partition-8x1002": (None, "1x8xH100", "partition", dict(stages=8, layers=1002),
                         "one stage split of 1,002 uneven layers into 8 stages, memory-capped"),
}


def run_case(name: str) -> dict:
    """Run one case in this process; return what happened: `plan` (the best strategy), `fits` (every stage of
    the best plan fits memory), `candidates`; or `error` (the exception's type) and `message`; and
    `wall_s`, `peak_rss_mb`."""
    import resource

    import costmodel as cm
    import planner
    from hardware_profiles import Cluster
    from hardware_profiles.errors import ParplanError

    model_ref, cluster_spec, kind, kwargs, _ = CASES[name]
    t0 = time.perf_counter()
    out: dict = {"case": name}
    try:
        cluster = Cluster.parse(cluster_spec)
        out["gpus"] = cluster.num_gpus
        if kind == "parse":
            out["plan"] = f"parsed: {cluster.num_gpus:,} GPUs in {cluster.num_nodes:,} nodes"
        elif kind == "first_gpus":
            out["plan"] = f"first {cluster.first_gpus(kwargs['count']).num_gpus:,} GPUs"
        elif kind == "partition":
            import numpy as np

            from costmodel.partition import partition

            p, n = kwargs["stages"], kwargs["layers"]
            rng = np.random.default_rng(0)
            res = partition(rng.uniform(1, 2, (p, n)), weight=15.0, layer_mem=rng.uniform(1, 2, (p, n)),
                            mem_fixed=np.zeros(p), mem_cap=np.full(p, 3.0 * n / p))
            out["plan"] = f"split {res.boundaries[:3]}...{res.boundaries[-2:]}, feasible={res.feasible}"
        else:
            model = _deep_model(*model_ref[1:]) if isinstance(model_ref, tuple) else model_ref
            workload = cm.Training(**kwargs) if kind == "train" else cm.Inference(**kwargs)
            r = planner.plan(model, cluster, workload)
            e = r.best.estimate
            out.update(plan=r.best.strategy.describe(), candidates=len(r.candidates), step_s=e.time_s,
                       fits=bool(e.fits and all(s.fits for s in e.stages)), plan_gpus=r.best.cluster.num_gpus)
    except (ParplanError, MemoryError) as exc:
        out.update(error=type(exc).__name__, message=str(exc))
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(name: str, timeout_s: float, memory_gb: float) -> dict:
    """Run one case in a fresh process under a wall-clock and an address-space limit (tests/test_scale.py
    uses this too). A case that runs out of time comes back as {"error": "Timeout"}."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", name, "--memory-gb",
                               str(memory_gb)], capture_output=True, text=True, timeout=timeout_s, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"case": name, "error": "Timeout", "message": f"did not finish in {timeout_s:.0f} s",
                "wall_s": time.perf_counter() - t0}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"case": name, "error": "Crash", "message": f"exit {proc.returncode}: {' | '.join(tail)}",
                "wall_s": time.perf_counter() - t0}
    return json.loads(lines[-1])


def _child(name: str, memory_gb: float) -> None:
    import resource

    if memory_gb > 0:
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps(run_case(name)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", choices=sorted(CASES), help="run only these cases")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per case (default 300)")
    ap.add_argument("--memory-gb", type=float, default=16.0, help="address-space limit per case, 0 = none")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.memory_gb)
        return 0
    names = args.case or list(CASES)
    print(f"{'case':<26} {'GPUs':>9} {'wall':>9} {'peak RSS':>10}  outcome")
    for name in names:
        res = run_child(name, args.timeout, args.memory_gb)
        gpus = f"{res['gpus']:,}" if "gpus" in res else "-"
        rss = f"{res['peak_rss_mb']:,.0f} MB" if "peak_rss_mb" in res else "-"
        if "error" in res:
            outcome = f"refused/failed ({res['error']}): {res['message']}"
        else:
            outcome = res["plan"]
            if "candidates" in res:
                outcome += f" [{res['candidates']:,} candidates, fits={res['fits']}, on {res['plan_gpus']:,} GPUs]"
        print(f"{name:<26} {gpus:>9} {res['wall_s']:>8.2f}s {rss:>10}  {outcome[:200]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
