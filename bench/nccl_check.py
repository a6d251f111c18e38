"""The executor's tensor-parallel collectives as it issues them (c10d functional op + wait) against plain
torch.distributed calls, alone and while the other stream computes (a benchmark).

    torchrun --nproc-per-node 2 bench/nccl_check.py [--sizes-mb 1,16,32]

Prints, per size (of the full activation) and dtype: time and bus bandwidth of the all-reduce (TP) and of the
sequence-parallel pair, all-gather of the shards and reduce-scatter of the full tensor, each issued plainly
and as executor.parallelize's functional ops. The sequence-parallel pair moves the all-reduce's bytes, so
each of its two should take about half the all-reduce's time.
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
            shard = x[: x.numel() // n].clone()
            gathered, scattered = torch.empty_like(x), torch.empty_like(shard)
            ways = {  # name: (issue it, bus-bandwidth factor of the full tensor's bytes)
                "dist.all_reduce": (lambda: dist.all_reduce(x), 2 * (n - 1) / n),
                "functional all_reduce": (lambda: _C10D.wait_tensor(_C10D.all_reduce(x, "sum", name)), 2 * (n - 1) / n),
                "functional ar+matmul": (lambda: (_C10D.wait_tensor(_C10D.all_reduce(x, "sum", name)), a @ a),
                                         2 * (n - 1) / n),
                "dist.all_gather": (lambda: dist.all_gather_into_tensor(gathered, shard), (n - 1) / n),
                "functional all_gather": (lambda: _C10D.wait_tensor(_C10D.all_gather_into_tensor(shard, n, name)),
                                          (n - 1) / n),
                "dist.reduce_scatter": (lambda: dist.reduce_scatter_tensor(scattered, x), (n - 1) / n),
                "functional reduce_scatter": (lambda: _C10D.wait_tensor(_C10D.reduce_scatter_tensor(x, "sum", n, name)),
                                              (n - 1) / n),
            }
            for way, (fn, factor) in ways.items():
                t = _time(fn, args.iters)
                busbw = factor * x.numel() * x.element_size() / t / 1e9
                rows.append(f"{mb:6.0f} MB {str(dtype)[6:]:>9} {way:<26} {t * 1e3:8.3f} ms {busbw:7.1f} GB/s")
    mm = _time(lambda: a @ a, args.iters)
    if dist.get_rank() == 0:
        print("\n".join(rows))
        print(f"4096^3 bf16 matmul alone {mm * 1e3:.3f} ms")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
