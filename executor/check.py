"""Check a plan against the model and the world size before anything starts.

`validate(plan, world_size)` is pure Python: it derives the `RunShape` (stage
cut points per pipeline stage, micro-batches, sequence length, ...) and refuses
a plan that cannot run, with a typed error saying why and what would work.
`dry_run(plan, world_size)` goes further in one process: for each rank it
starts torch's "fake" process-group backend (no communication), builds the
rank's pipeline chunks on the meta device and applies the real parallelization
(DTensor TP, expert slicing, FSDP2), which yields per-rank shard shapes and
parameter memory without allocating anything.

Interleaved pipelines: `strategy.stages` gives pp + 1 cut points, i.e. how many
layer entries each pipeline rank holds. With v virtual stages, rank r's count
is split into v parts as evenly as possible and the model is cut in order into
pp x v chunks, chunk j x pp + r taking part j of rank r. Each rank keeps the
number of entries the plan gave it; only their order is interleaved.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from costmodel.model import ModelSpec
from costmodel.workload import Training
from hardware_profiles.errors import ParplanError

from .errors import PlanMismatchError, UnsupportedPlanError
from .model import check_supported


@dataclass(frozen=True)
class RunShape:
    """What a run derives from a plan and a world size."""

    world_size: int
    training: bool
    pp: int
    dp: int
    tp: int
    ep: int
    ep_mode: str
    virtual_stages: int
    chunks: tuple[tuple[int, int], ...]  # entry range [start, end) of each pipeline stage, in stage order
    seq_len: int  # training sequence length, or prompt tokens
    output_tokens: int  # inference only
    batch: int  # global batch (training) or request batch (inference)
    micro_batch: int
    sequence_parallel: bool
    zero: int
    recompute: str
    schedule: str
    placement: tuple[int, ...]
    max_positions: int

    @property
    def batch_per_replica(self) -> int:
        return self.batch // self.dp

    @property
    def n_micro(self) -> int:
        return self.batch_per_replica // self.micro_batch if self.training else 1

    @property
    def num_stages(self) -> int:
        return len(self.chunks)

    @property
    def ep_in_dp(self) -> int:
        """Expert-parallel ranks carved out of data parallel (Megatron convention)."""
        return self.ep if self.ep_mode == "dp" else 1

    @property
    def ep_in_tp(self) -> int:
        """Expert-parallel ranks inside the tensor-parallel group (TensorRT-LLM convention)."""
        return self.ep if self.ep_mode == "tp" else 1

    @property
    def moe_tp(self) -> int:
        return self.tp // self.ep_in_tp

    def stage_owner(self, stage: int) -> int:
        return stage % self.pp

    def logical_rank(self, stage: int, replica: int, tp_rank: int) -> int:
        return (stage * self.dp + replica) * self.tp + tp_rank

    def process_rank(self, stage: int, replica: int, tp_rank: int) -> int:
        """Process-group rank that plays these mesh coordinates. The executor joins the process group
        with rank = logical rank (the process on GPU placement[r] takes rank r), so this is the logical
        rank: process groups made from mesh dimensions then list their ranks in coordinate order, which
        DeviceMesh needs (torch sorts the ranks of every group it creates)."""
        return self.logical_rank(stage, replica, tp_rank)

    def rank_for_process(self, process_rank: int) -> int:
        """The process-group rank a process takes: torchrun's RANK r (GPU r of the cluster, nodes in
        rendezvous order) plays logical rank placement.index(r)."""
        return self.placement.index(process_rank)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunks"] = [list(c) for c in self.chunks]
        d["placement"] = list(self.placement)
        return d


def chunk_ranges(spec: ModelSpec, pp: int, virtual_stages: int, stages: tuple[int, ...] | None) -> tuple[tuple[int, int], ...]:
    """Entry ranges of the pp x v pipeline chunks in model order (see module docstring)."""
    n = spec.num_entries
    v = virtual_stages
    c = pp * v
    if stages is None:
        blocks = [i for i, lay in enumerate(spec.layers) if lay.kind == "transformer"]
        if len(blocks) >= c:
            parts = np.array_split(np.arange(len(blocks)), c)
            sizes = [len(p) for p in parts]
            sizes[0] += 1  # embedding
            sizes[-1] += 1  # head
        elif n >= c:
            sizes = [len(p) for p in np.array_split(np.arange(n), c)]
        else:
            raise PlanMismatchError(
                f"model {spec.name!r} has {n} layer entries (embedding, {spec.num_layers} blocks, head) but the plan "
                f"needs {c} pipeline chunks (pp={pp} x virtual_stages={v}); lower pp or virtual_stages")
    else:
        if stages[-1] != n:
            raise PlanMismatchError(
                f"the plan's stage cut points {list(stages)} end at {stages[-1]}, but model {spec.name!r} has {n} layer "
                f"entries; the last cut point must be {n} (was the plan made for another model?)")
        per_rank = [b - a for a, b in zip(stages, stages[1:])]
        if any(k < v for k in per_rank):
            raise PlanMismatchError(
                f"interleaved schedule with virtual_stages={v} needs at least {v} layer entries per pipeline rank; "
                f"the plan's stages give {per_rank}")
        split = [[len(p) for p in np.array_split(np.arange(k), v)] for k in per_rank]
        sizes = [split[r][j] for j in range(v) for r in range(pp)]
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
    return tuple((bounds[i], bounds[i + 1]) for i in range(c))


def validate(plan: Any, world_size: int) -> RunShape:
    """Refuse a plan that cannot run on `world_size` processes; return what the run derives from it."""
    spec: ModelSpec = plan.model
    st = plan.strategy
    wl = plan.workload
    if not isinstance(world_size, int) or world_size < 1:
        raise PlanMismatchError(f"world size must be a whole number >= 1, got {world_size!r}")
    if st.num_gpus != world_size:
        raise PlanMismatchError(
            f"the plan needs tp x pp x dp = {st.tp} x {st.pp} x {st.dp} = {st.num_gpus} processes but "
            f"{world_size} were launched; launch with --nproc-per-node {st.num_gpus} (x nodes) or re-plan for "
            f"{world_size} GPUs")
    placement = st.placement if st.placement is not None else tuple(range(world_size))
    if len(placement) != world_size:
        raise PlanMismatchError(f"the plan's placement lists {len(placement)} GPUs but {world_size} processes run")
    check_supported(spec)
    tp, ep = st.tp, st.ep
    moe_tp = st.moe_tp
    for lay in spec.blocks:
        where = f"block {lay.name or '?'}"
        if lay.num_heads % tp or lay.num_kv_heads % tp:
            raise PlanMismatchError(
                f"tp={tp} must divide the attention heads ({lay.num_heads}) and KV heads ({lay.num_kv_heads}) of "
                f"{where} of model {spec.name!r}; use tp in {_divisors(np.gcd(lay.num_heads, lay.num_kv_heads))}")
        if lay.is_moe:
            if lay.num_experts % ep:
                raise PlanMismatchError(f"ep={ep} must divide the {lay.num_experts} experts of {where}; use ep in "
                                        f"{_divisors(lay.num_experts)}")
            if lay.expert_ffn_hidden % moe_tp:
                raise PlanMismatchError(f"each expert of {where} is split {moe_tp} ways (expert tensor parallel) but its "
                                        f"width {lay.expert_ffn_hidden} is not divisible by {moe_tp}")
            if lay.shared_experts and (lay.shared_experts * lay.shared_ffn_hidden) % tp:
                raise PlanMismatchError(f"tp={tp} must divide the shared-expert width of {where}")
            if lay.bias and moe_tp > 1:
                raise UnsupportedPlanError(
                    f"{where}: experts with biases split across tensor-parallel ranks are not supported; use "
                    f"ep_mode='tp' with ep=tp (whole experts per rank) or tp=1")
        elif lay.ffn_hidden % tp:
            raise PlanMismatchError(f"tp={tp} must divide the MLP width {lay.ffn_hidden} of {where}")
    if ep > 1 and not spec.is_moe:
        raise PlanMismatchError(f"the plan has ep={ep} but model {spec.name!r} has no experts; use ep=1")
    if spec.vocab % tp:
        raise PlanMismatchError(f"tp={tp} must divide the vocabulary ({spec.vocab}) for the vocab-parallel embedding and "
                                f"head; pad the vocabulary to a multiple of {tp}")
    chunks = chunk_ranges(spec, st.pp, st.virtual_stages, st.stages)
    emb_rows = spec.layers[0].seq_len or spec.seq_len
    learned = spec.layers[0].position == "learned"
    if isinstance(wl, Training):
        seq = wl.seq_len or spec.seq_len
        batch = wl.global_batch
        if batch % st.dp:
            raise PlanMismatchError(f"global batch {batch} is not divisible by dp={st.dp}")
        per_replica = batch // st.dp
        if per_replica % st.micro_batch:
            raise PlanMismatchError(f"the per-replica batch {per_replica} (global {batch} / dp {st.dp}) is not "
                                    f"divisible by micro_batch={st.micro_batch}")
        n_micro = per_replica // st.micro_batch
        if st.pp > 1 and st.schedule == "1f1b" and n_micro < st.pp:
            raise PlanMismatchError(f"the 1F1B schedule needs at least pp={st.pp} micro-batches, the plan has {n_micro} "
                                    f"(batch {per_replica} per replica / micro-batch {st.micro_batch}); use gpipe or "
                                    f"a smaller micro-batch")
        if st.schedule == "interleaved":
            rounds = max(1, n_micro // st.pp)
            if n_micro % rounds:
                raise PlanMismatchError(f"the interleaved schedule needs the {n_micro} micro-batches to be a multiple of "
                                        f"{rounds} (micro-batches // pp)")
        if st.sequence_parallel and seq % tp:
            raise PlanMismatchError(f"sequence parallel splits the sequence ({seq}) across tp={tp} ranks; it must divide")
        context = seq
        output_tokens = 0
    else:
        seq = wl.prompt_tokens
        batch = wl.batch
        if batch % st.dp:
            raise PlanMismatchError(f"request batch {batch} is not divisible by dp={st.dp}")
        context = wl.context_tokens
        output_tokens = wl.output_tokens
    if learned and context > emb_rows:
        raise PlanMismatchError(f"model {spec.name!r} has learned positions for {emb_rows} tokens but the workload needs "
                                f"{context}; shorten the sequence")
    return RunShape(world_size=world_size, training=isinstance(wl, Training), pp=st.pp, dp=st.dp, tp=tp, ep=ep,
                    ep_mode=st.ep_mode, virtual_stages=st.virtual_stages, chunks=chunks, seq_len=seq,
                    output_tokens=output_tokens, batch=batch, micro_batch=st.micro_batch,
                    sequence_parallel=st.sequence_parallel, zero=st.zero, recompute=st.recompute,
                    schedule=st.schedule, placement=tuple(placement),
                    max_positions=emb_rows if learned else max(context, spec.seq_len))


def _divisors(n: int) -> list[int]:
    n = int(n)
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class RankShards:
    """One rank's share of the model after parallelization (from the fake-backend dry run)."""

    rank: int
    stages: tuple[int, ...]
    param_numel: int
    param_bytes: int  # fp32 master weights held by this rank
    shapes: dict[str, tuple[int, ...]]  # local shard shape per parameter


def dry_run(plan: Any, world_size: int, ranks: list[int] | None = None) -> list[RankShards]:
    """Apply the plan's parallelization in this process with the fake backend and a meta-device
    model; return each rank's shard shapes and parameter memory. Nothing is allocated or sent."""
    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from .parallelize import build_meshes, build_parts

    shape = validate(plan, world_size)
    if dist.is_initialized():
        raise UnsupportedPlanError("dry_run needs a process without a process group (it starts the fake backend)")
    out = []
    for rank in (range(world_size) if ranks is None else ranks):
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
        try:
            meshes = build_meshes(shape, "cpu")
            parts = build_parts(plan.model, shape, meshes, seed=0, device=torch.device("meta"),
                                compute_dtype=torch.float32)
            shapes = {}
            numel = 0
            for part in parts:
                for name, p in part.module.named_parameters():
                    loc = p.to_local() if hasattr(p, "to_local") else p
                    shapes[canonical_name(name)] = tuple(loc.shape)
                    numel += loc.numel()
            out.append(RankShards(rank=rank, stages=tuple(p.stage for p in parts), param_numel=numel,
                                  param_bytes=4 * numel, shapes=shapes))
        finally:
            dist.destroy_process_group()
    return out


def canonical_name(name: str) -> str:
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def main(argv: list[str] | None = None) -> int:
    """`python -m executor.check plan.json --world-size N [--dry-run]`: exit 0 when the plan can run."""
    from planner.plan import Plan

    ap = argparse.ArgumentParser(prog="python -m executor.check", description=main.__doc__)
    ap.add_argument("plan")
    ap.add_argument("--world-size", type=int, required=True)
    ap.add_argument("--dry-run", action="store_true", help="also shard a meta model per rank with the fake backend")
    args = ap.parse_args(argv)
    try:
        plan = Plan.load(args.plan)
        shape = validate(plan, args.world_size)
        result: dict[str, Any] = {"ok": True, "shape": shape.to_dict()}
        if args.dry_run:
            result["param_bytes_per_rank"] = [r.param_bytes for r in dry_run(plan, args.world_size)]
    except ParplanError as exc:
        print(f"plan refused: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
