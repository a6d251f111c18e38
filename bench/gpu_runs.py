"""Run plans on the local GPUs with the executor and collect measured beside predicted (a benchmark).

    PYTHONPATH=. python bench/gpu_runs.py OUT_DIR [--set issue5] [--steps 6] [--warmup 2]

For each layout of the set it writes the plan (predicted with the cost model as it stands), runs it with
torchrun (one process per GPU of the layout), and keeps the executor's RunReport as OUT_DIR/run_<label>.json.
Prints a table of measured step time, MFU and measured / predicted. NVLink multicast stays off
(NCCL_NVLS_ENABLE=0). A failing layout is reported and the others still run.

Sets:
  issue5: the ~1.5B Llama-style model (28 layers, hidden 2048, seq 4096, global batch 8, micro-batch 1,
          bf16) as single GPU, DP2, TP2 and PP2 (1F1B), plus variants used to check calibration
          (ZeRO-3/FSDP, sequence parallel, GPipe, two micro-batches, full recompute).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
sys.path.insert(0, str(Path(__file__).parent.parent))

import costmodel as cm  # noqa: E402
from hardware_profiles import Cluster  # noqa: E402
from executor.loop import run_local  # noqa: E402
from executor.parallelize import COMPILE_SCOPES  # noqa: E402
from planner.plan import Plan  # noqa: E402

MODEL = "llama-1.5b"
TRAIN = cm.Training(global_batch=8, seq_len=4096, dtype="bf16")

SETS = {
    "issue5": [
        ("single", 1, cm.Strategy(micro_batch=1)),
        ("dp2", 2, cm.Strategy(dp=2, micro_batch=1)),
        ("tp2", 2, cm.Strategy(tp=2, micro_batch=1)),
        ("pp2", 2, cm.Strategy(pp=2, micro_batch=1, schedule="1f1b")),
        ("dp2_zero3", 2, cm.Strategy(dp=2, micro_batch=1, zero=3)),
        ("tp2_sp", 2, cm.Strategy(tp=2, micro_batch=1, sequence_parallel=True)),
        ("pp2_gpipe_mb2", 2, cm.Strategy(pp=2, micro_batch=2, schedule="gpipe")),
        ("single_recompute", 1, cm.Strategy(micro_batch=1, recompute="full")),
    ],
}


def gpu_name() -> str:
    """Catalog name of the local GPU (the plans price this GPU)."""
    import torch

    from hardware_profiles import get_gpu

    return get_gpu(torch.cuda.get_device_name(0)).name if torch.cuda.is_available() else "H100"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--set", default="issue5", choices=sorted(SETS))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated labels")
    ap.add_argument("--timeout-s", type=float, default=240.0)
    ap.add_argument("--model", default=MODEL, help="smoke tests: a tiny catalog model")
    ap.add_argument("--seq", type=int, default=TRAIN.seq_len)
    ap.add_argument("--compile", action="store_true", help="pass --compile to the executor (torch.compile per block)")
    ap.add_argument("--tag", default="", help="suffix for labels (e.g. _compiled)")
    ap.add_argument("--compile-scope", default="blocks", choices=COMPILE_SCOPES)
    ap.add_argument("--cuda-graphs", action="store_true", help="with --compile: pass --cuda-graphs to the executor")
    args = ap.parse_args()
    train = cm.Training(global_batch=TRAIN.global_batch, seq_len=args.seq, dtype=TRAIN.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = gpu_name()
    rows = []
    for label, n, strategy in SETS[args.set]:
        if args.only and label not in args.only.split(","):
            continue
        cluster = Cluster.parse(f"1x{n}x{name}")
        try:
            plan = Plan.from_strategy(args.model, cluster, strategy, train)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
            rows.append((label, "plan failed", str(exc)[:120]))
            continue
        label = label + args.tag
        run = run_local(plan, out, label, steps=args.steps, warmup=args.warmup, timeout_s=args.timeout_s,
                        extra_args=((f"--compile={args.compile_scope}",) + (("--cuda-graphs",) if args.cuda_graphs else ())
                                    if args.compile else ()))
        if run.report is None:
            rows.append((label, "run failed", f"see log_{label}.txt ({run.wall_s:.0f} s)"))
            continue
        r = run.report
        rows.append((label, r["step_time_s"], r.get("predicted_step_time_s"), r.get("mfu"),
                     max(r.get("peak_memory_bytes_per_rank") or [0]) / 1e9, run.wall_s))
    print(f"\n{args.model} on {name}, global batch {train.global_batch} x {train.seq_len}")
    print(f"{'layout':<18} {'step s':>8} {'pred s':>8} {'meas/pred':>9} {'MFU':>6} {'mem GB':>7} {'wall s':>7}")
    for row in rows:
        if isinstance(row[1], str):
            print(f"{row[0]:<18} {row[1]}: {row[2]}")
            continue
        label, step, pred, mfu, mem, wall = row
        ratio = f"{step / pred:9.2f}" if pred else "      n/a"
        mfu_s = f"{mfu:6.1%}" if mfu is not None else "   n/a"
        print(f"{label:<18} {step:8.3f} {pred or float('nan'):8.3f} {ratio} {mfu_s} {mem:7.1f} {wall:7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
