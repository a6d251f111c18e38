"""CPU benchmark of the executor's per-micro-batch framework overhead (a benchmark, not a test).

    python tests/executor_helpers/overhead.py [--steps 6] [--warmup 2] [--profile tp2] [--compile [blocks|model]]

A model so small that compute is negligible (hidden 64, 8 blocks, 4 heads, 2 KV heads, SwiGLU 128,
vocab 256, seq 16, global batch 16, micro-batch 1, fp32): what is left per micro-batch is Python,
dispatch and collective overhead, which on a GPU decides whether the GPU waits for the host. For
single / DP2 / TP2 / TP2+SP it prints, per micro-batch:

- host: rank 0's CPU time with torch's "fake" process-group backend, alone in one process (collectives
  return at once; results are garbage). This is the work a GPU run does on the host, where NCCL
  collectives do not block it; CPU time (least disturbed step) keeps other load on the machine out.
- collectives: how many collectives rank 0 issues (counted on the fake backend).
- wall: median step time of rank 0 with 2 gloo processes (1 for single). On CPU every gloo collective
  blocks for its latency (printed), so wall ~ host + collectives x latency.

`--profile LAYOUT` prints rank 0's cProfile of that layout's measured gloo steps.
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

MODEL = dict(num_layers=8, hidden=64, num_heads=4, num_kv_heads=2, ffn_hidden=128, vocab=256, seq_len=16)
WORKLOAD = {"kind": "training", "global_batch": 16, "seq_len": 16, "dtype": "fp32"}
LAYOUTS = {
    "single": {"micro_batch": 1},
    "dp2": {"dp": 2, "micro_batch": 1},
    "tp2": {"tp": 2, "micro_batch": 1},
    "tp2+sp": {"tp": 2, "micro_batch": 1, "sequence_parallel": True},
}


def _plan(name: str, world: int):
    from costmodel.model import ModelSpec
    from costmodel.strategy import Strategy
    from costmodel.workload import workload_from_dict
    from hardware_profiles.topology import Cluster
    from planner.plan import Plan

    return Plan(model=ModelSpec.decoder("overhead-probe", **MODEL), cluster=Cluster.parse(f"1x{world}xH100"),
                workload=workload_from_dict(WORKLOAD), strategy=Strategy.from_dict(LAYOUTS[name]))


def _collective_counter():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace in ("_c10d_functional", "c10d") and "wait" not in func.overloadpacket.__name__:
                self.n[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    return Count()


def _host_worker(args: argparse.Namespace) -> dict:
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from executor.check import validate
    from executor.run import Trainer, setup, train

    torch.set_num_threads(1)
    results = {}
    for name in args.layouts.split(","):
        plan = _plan(name, 1 if name == "single" else 2)
        shape = validate(plan, plan.strategy.num_gpus)
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=shape.world_size)
        try:
            session = setup(plan, seed=0, device="cpu", shape=shape, compile_blocks=bool(args.compile),
                            compile_scope=args.compile or "blocks")
            marks = [time.process_time()]
            train(session, args.warmup + args.steps, after_step=lambda step: marks.append(time.process_time()))
            per_step = [b - a for a, b in zip(marks, marks[1:])][args.warmup:]
            counter = _collective_counter()
            trainer = Trainer(session)
            with counter:
                trainer.step(0)
            results[name] = {"host_s": min(per_step) / shape.n_micro,
                             "collectives": sum(counter.n.values()) / shape.n_micro, "n_micro": shape.n_micro}
        finally:
            dist.destroy_process_group()
    return results


def _gloo_worker(args: argparse.Namespace) -> dict:
    import torch
    import torch.distributed as dist

    from executor.check import validate
    from executor.run import setup, train

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    world = dist.get_world_size()
    results: dict = {}
    if world > 1:
        probe = torch.ones(1024)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(200):
            dist.all_reduce(probe)
        results["gloo_latency_s"] = (time.perf_counter() - t0) / 200
    for name in args.layouts.split(","):
        plan = _plan(name, world)
        shape = validate(plan, world)
        session = setup(plan, seed=0, device="cpu", shape=shape, reuse_meshes=True, compile_blocks=bool(args.compile),
                        compile_scope=args.compile or "blocks")
        profiler = cProfile.Profile() if args.profile == name and dist.get_rank() == 0 else None

        def after_step(step: int, profiler=profiler) -> None:
            if profiler is not None and step == args.warmup - 1:
                profiler.enable()

        if profiler is not None and args.warmup == 0:
            profiler.enable()
        out = train(session, args.warmup + args.steps, after_step=after_step)
        if profiler is not None:
            profiler.disable()
            buf = io.StringIO()
            pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(30)
            print(buf.getvalue(), file=sys.stderr)
        results[name] = statistics.median(out.step_times_s[args.warmup:]) / shape.n_micro
        dist.barrier()
    dist.destroy_process_group()
    return results


def _run(cmd: list[str], show_stderr: bool = False) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if show_stderr:
        sys.stderr.write(proc.stderr[-20000:])
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def _child(mode: str, layouts: list[str], args: argparse.Namespace, nproc: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        tail = [str(Path(__file__)), f"--{mode}-worker", "--layouts", ",".join(layouts), "--out", str(out),
                "--steps", str(args.steps), "--warmup", str(args.warmup)]
        tail += (["--profile", args.profile] if args.profile else []) + (["--compile", args.compile] if args.compile else [])
        if mode == "gloo":
            _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *tail],
                 show_stderr=bool(args.profile))
        else:
            _run([sys.executable, *tail])
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--profile", choices=sorted(LAYOUTS), default=None)
    ap.add_argument("--compile", nargs="?", const="blocks", default=None, choices=("blocks", "model"),
                    help="torch.compile each block (default) or each chunk whole, as the executor's --compile does")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--host-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gloo-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.host_worker or args.gloo_worker:
        result = _host_worker(args) if args.host_worker else _gloo_worker(args)
        if os.environ.get("RANK", "0") == "0":
            Path(args.out).write_text(json.dumps(result))
        return
    wanted = args.layouts.split(",")
    host = _child("host", wanted, args)
    wall = _child("gloo", ["single"], args, nproc=1) if "single" in wanted else {}
    two = [n for n in wanted if n != "single"]
    if two:
        wall.update(_child("gloo", two, args, nproc=2))
    print(f"per micro-batch; gloo all-reduce latency {1e3 * wall.get('gloo_latency_s', float('nan')):.2f} ms")
    print(f"{'layout':8s} {'host ms':>8s} {'vs dp2':>7s} {'collectives':>12s} {'wall ms':>8s} {'vs dp2':>7s}")
    for name in wanted:
        h, w = host[name], wall[name]
        h_ratio = h["host_s"] / host["dp2"]["host_s"] if "dp2" in host else float("nan")
        w_ratio = w / wall["dp2"] if "dp2" in wall else float("nan")
        print(f"{name:8s} {1e3 * h['host_s']:8.2f} {h_ratio:7.2f} {h['collectives']:12.1f} {1e3 * w:8.2f} {w_ratio:7.2f}")


if __name__ == "__main__":
    main()
