"""Where one training step's time goes: torch.profiler over a plan's step, per rank (a benchmark).

    torchrun --nproc-per-node N bench/profile_step.py PLAN.json OUT_DIR [--warmup 2] [--compile]

Runs `--warmup` steps, then one step under torch.profiler, and writes OUT_DIR/profile_rank<R>.txt: the top
operations by device time and by host time, and the step's host time against its device-busy time (a step
whose host time exceeds its device time is waiting for Python, not for the GPU).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from executor.check import validate  # noqa: E402
from executor.parallelize import COMPILE_SCOPES  # noqa: E402
from executor.run import Trainer, setup  # noqa: E402
from planner.plan import Plan  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("plan")
    ap.add_argument("out")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", nargs="?", const="blocks", default=None, choices=COMPILE_SCOPES)
    ap.add_argument("--trace", action="store_true", help="also write the step's Chrome trace (trace_rank<R>.json.gz)")
    ap.add_argument("--rows", type=int, default=40, help="rows of each table")
    args = ap.parse_args()
    plan = Plan.load(args.plan)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    shape = validate(plan, world)
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=_dt.timedelta(seconds=300),
                            rank=shape.rank_for_process(int(os.environ.get("RANK", "0"))), world_size=world)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    session = setup(plan, device=device, shape=shape, compile_blocks=args.compile is not None,
                    compile_scope=args.compile or "blocks")
    trainer = Trainer(session)
    for step in range(args.warmup):
        trainer.step(step)
    if cuda:
        torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        trainer.step(args.warmup)
        host_s = time.perf_counter() - t0
        if cuda:
            torch.cuda.synchronize()
        wall_s = time.perf_counter() - t0
    events = prof.key_averages()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    device_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank = dist.get_rank()
    text = [f"{plan.describe()} rank {rank}",
            f"step wall {wall_s:.4f} s; host returned after {host_s:.4f} s; device busy (sum of kernel self time, "
            f"all streams) {device_us / 1e6:.4f} s",
            events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=60),
            events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60)]
    (out / f"profile_rank{rank}.txt").write_text("\n\n".join(text))
    if args.trace:
        prof.export_chrome_trace(str(out / f"trace_rank{rank}.json.gz"))
    if rank == 0:
        print(text[1])
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
