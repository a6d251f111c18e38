"""All-reduce bandwidth as the executor issues it (c10d functional op + wait) against plain dist.all_reduce,
alone and while the other stream computes (a benchmark).

    torchrun --nproc-per-node 2 bench/nccl_check.py [--sizes-mb 1,16,32]

Prints, per size and dtype: time per all-reduce and bus bandwidth for each way of issuing it.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

_C10D = torch.ops._c10d_functional


def _time(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mb", default="1,16,32")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    n, name = dist.get_world_size(), dist.group.WORLD.group_name
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    rows = []
    for mb in (float(s) for s in args.sizes_mb.split(",")):
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.ones(int(mb * 2**20) // dtype.itemsize, device="cuda", dtype=dtype)
            ways = {
                "dist.all_reduce": lambda: dist.all_reduce(x),
                "functional": lambda: _C10D.wait_tensor(_C10D.all_reduce(x, "sum", name)),
                "functional+matmul": lambda: (_C10D.wait_tensor(_C10D.all_reduce(x, "sum", name)), a @ a),
            }
            for way, fn in ways.items():
                t = _time(fn, args.iters)
                busbw = 2 * (n - 1) / n * x.numel() * x.element_size() / t / 1e9
                rows.append(f"{mb:6.0f} MB {str(dtype)[6:]:>9} {way:<18} {t * 1e3:8.3f} ms {busbw:7.1f} GB/s")
    mm = _time(lambda: a @ a, args.iters)
    if dist.get_rank() == 0:
        print("\n".join(rows))
        print(f"4096^3 bf16 matmul alone {mm * 1e3:.3f} ms")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
