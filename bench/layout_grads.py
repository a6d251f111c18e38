"""First-step gradients of a layout on the local GPUs, compared with another layout's (a diagnostic).

    torchrun --nproc-per-node N bench/layout_grads.py save OUT.pt --tp 2 [--sp] [--compile model] [--layers 4]
    python bench/layout_grads.py compare REF.pt OTHER.pt [OTHER2.pt ...]

`save` runs one training step of the ~1.5B Llama-style model of issue 5 cut to `--layers` blocks (bf16
autocast on GPU, the executor's own code path) and rank 0 writes the loss and every parameter's full
gradient. `compare` prints, per file, the relative difference of each gradient from the reference's,
worst first: a layout whose gradients are wrong shows differences of order one where rounding gives ~1e-2.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import costmodel as cm  # noqa: E402
from costmodel.catalog import get_model  # noqa: E402
from hardware_profiles import Cluster  # noqa: E402


def _spec(layers: int) -> cm.ModelSpec:
    """The catalog's llama-1.5b with its first `layers` blocks (embedding and head kept)."""
    full = get_model("llama-1.5b")
    return dataclasses.replace(full, name=f"llama-1.5b-{layers}l",
                               layers=(full.layers[0], *full.layers[1:1 + layers], full.layers[-1]))


def save(args: argparse.Namespace) -> int:
    from executor.check import validate
    from executor.run import Trainer, setup
    from planner.plan import Plan

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    strategy = cm.Strategy(tp=args.tp, pp=args.pp, dp=world // (args.tp * args.pp), micro_batch=1,
                           sequence_parallel=args.sp)
    gpu = "H100"
    if cuda:
        from hardware_profiles import get_gpu
        gpu = get_gpu(torch.cuda.get_device_name(0)).name
    plan = Plan.from_strategy(_spec(args.layers), Cluster.parse(f"1x{world}x{gpu}"), strategy,
                              cm.Training(global_batch=args.batch, seq_len=args.seq, dtype="bf16"))
    shape = validate(plan, world)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29513")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=_dt.timedelta(seconds=300),
                            rank=shape.rank_for_process(int(os.environ.get("RANK", "0"))), world_size=world)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    for item in args.inductor_config:
        key, value = item.split("=", 1)
        import torch._inductor.config as inductor_config
        setattr(inductor_config, key, {"true": True, "false": False}.get(value.lower(), value))
    backend = args.backend if args.backend else True
    session = setup(plan, device=device, shape=shape, compile_blocks=backend if args.compile else False,
                    compile_scope=args.compile or "blocks")
    loss, grads = Trainer(session).step(0, capture_grads=True)
    if dist.get_rank() == 0:
        torch.save({"layout": plan.strategy.describe(),
                    "compile": " ".join([str(args.compile), args.backend or "inductor", *args.inductor_config]), "loss": loss,
                    "grads": {k: v.float().cpu() for k, v in grads.items()}}, args.out)
        print(f"{plan.strategy.describe()} compile={args.compile} {args.backend}: loss {loss:.6f} -> {args.out}")
    dist.barrier()
    dist.destroy_process_group()
    return 0


def compare(args: argparse.Namespace) -> int:
    ref = torch.load(args.ref)
    for path in args.others:
        other = torch.load(path)
        rows = []
        for name, g in ref["grads"].items():
            h = other["grads"].get(name)
            rows.append((float((h - g).norm() / g.norm().clamp_min(1e-30)) if h is not None else float("inf"), name))
        rows.sort(reverse=True)
        print(f"{other['layout']} (compile {other['compile']}, loss {other['loss']:.6f}) vs {ref['layout']} "
              f"(compile {ref['compile']}, loss {ref['loss']:.6f}): median gradient difference "
              f"{sorted(r for r, _ in rows)[len(rows) // 2]:.2e}")
        for r, name in rows[:args.rows]:
            print(f"  {r:9.2e}  {name}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("out")
    s.add_argument("--tp", type=int, default=1)
    s.add_argument("--pp", type=int, default=1)
    s.add_argument("--sp", action="store_true")
    s.add_argument("--compile", nargs="?", const="blocks", default=None, choices=("blocks", "model"))
    s.add_argument("--backend", default="", help="torch.compile backend (default inductor), e.g. aot_eager")
    s.add_argument("--inductor-config", action="append", default=[], metavar="KEY=VALUE",
                   help="set torch._inductor.config.KEY before compiling (true/false for flags)")
    s.add_argument("--layers", type=int, default=4)
    s.add_argument("--batch", type=int, default=2)
    s.add_argument("--seq", type=int, default=4096)
    c = sub.add_parser("compare")
    c.add_argument("ref")
    c.add_argument("others", nargs="+")
    c.add_argument("--rows", type=int, default=12)
    args = ap.parse_args()
    return save(args) if args.cmd == "save" else compare(args)


if __name__ == "__main__":
    sys.exit(main())
