"""Apply a plan's parallelism to the reference transformer, torch-natively.

- Mesh: one root `DeviceMesh` per run with dims (pp, dpo, dpe, one, tpo, tpe)
  (those of size one left out), in the strategy's rank order (tp fastest, then
  dp, then pp). The placement is applied when joining the process group: the
  process on GPU placement[r] takes rank r, so mesh coordinates and group ranks
  agree. dp = dpo x dpe and tp = tpo x tpe are flattened views.
  Expert parallelism carved out of dp (ep_mode "dp", Megatron) is dpe = ep;
  inside tp (ep_mode "tp", TensorRT-LLM) it is tpe = ep; the other is 1.
- TP: `parallelize_module` with ColwiseParallel / RowwiseParallel (q, k, v,
  gate, up: column; out, down: row; embedding: vocab rows; head: vocab
  columns), SequenceParallel on the norms when planned. Attention and KV heads
  are split per rank.
- EP: routed experts are sliced per rank (which experts: ep; their width:
  expert TP). ep_mode "dp": token copies travel to the experts' owners with
  `all_to_all_single` (autograd version) and back. ep_mode "tp": tokens are
  already replicated in the TP group, so each rank runs its experts on the
  copies routed to them and one all-reduce combines (TensorRT-LLM's scheme).
  The TP collectives around expert shards are DTensor redistributions
  (Replicate with Partial gradients in, Partial -> Replicate out).
- PP: each rank keeps the chunks it owns (chunk s on pipeline rank s % pp) and
  runs them with `torch.distributed.pipelining` (GPipe, 1F1B, interleaved 1F1B).
- DP (when dp > 1): FSDP2 `fully_shard` per block and per chunk. zero 3:
  sharded, resharded after forward; zero 1 and 2: sharded parameters, gradients
  and optimizer states, kept unsharded between forward and backward
  (reshard_after_forward=False: ZeRO-2 memory, more all-gather traffic than
  Megatron's ZeRO-1/2); zero 0: FSDP2 in hybrid mode with a shard group of one,
  i.e. DDP semantics (every rank holds everything, gradients all-reduced). FSDP2
  is used for zero 0 too because it is the data-parallel wrapper that composes
  with DTensor TP and with experts reduced over a different group. Experts are
  wrapped separately over their expert-data-parallel group.
  bf16/fp16 workloads on GPU: FSDP2 MixedPrecisionPolicy (fp32 master weights,
  compute in the workload dtype, fp32 gradient reduction); with dp = 1 the run
  uses torch.autocast instead.
- Recompute: "full" wraps each block with non-reentrant activation checkpointing;
  "selective" keeps matmul and attention outputs and recomputes the rest
  (torch's selective checkpoint policy).
"""
from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from costmodel.model import ModelSpec

from .check import RunShape, canonical_name
from .errors import UnsupportedPlanError
from .model import Block, Embedding, Experts, Head, MoE, Transformer, combine, init_weights

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
except ImportError:  # pragma: no cover - torch 2.4
    from torch.distributed._tensor import DTensor, Partial, Replicate, Shard  # type: ignore
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, PrepareModuleOutput,
                                               RowwiseParallel, SequenceParallel, parallelize_module)

try:  # torch >= 2.6
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:  # pragma: no cover
    from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard  # type: ignore


@dataclass
class Meshes:
    root: DeviceMesh
    pp: DeviceMesh | None  # None where the degree is 1
    dp: DeviceMesh | None
    tp: DeviceMesh | None
    dense_fsdp: DeviceMesh | None  # data-parallel mesh for FSDP2 of non-expert weights (2-D for zero 0)
    expert_fsdp: DeviceMesh | None  # the same for experts: ranks that hold the same expert shard
    ep_group: Any  # ProcessGroup of the ranks holding different experts (None when ep == 1)
    ep_rank: int
    etp_group: Any  # ProcessGroup across which each expert's width is split (None when moe_tp == 1)
    etp_rank: int
    pp_rank: int
    dp_rank: int
    tp_rank: int
    tie_group: Any = None  # first and last pipeline rank of this (dp, tp) coordinate, for tied embeddings


@dataclass
class Part:
    """One pipeline chunk held by this rank."""

    stage: int
    module: Transformer
    expert_modules: list[Experts] = field(default_factory=list)


def _sub_mesh(root: DeviceMesh, names: tuple[str, ...], flat_name: str) -> DeviceMesh | None:
    """The 1-D mesh over `names` of the root (flattened when both are present), None when of size 1."""
    present = [n for n in names if n in root.mesh_dim_names and root[n].size() > 1]
    if not present:
        return None
    if len(present) == 1:
        return root[present[0]]
    return _flatten(root[tuple(present)], flat_name)


def _flatten(mesh: DeviceMesh, name: str) -> DeviceMesh:
    if not hasattr(mesh, "_flatten"):
        raise UnsupportedPlanError(f"torch {torch.__version__} has no DeviceMesh flattening; the executor needs torch >= 2.6")
    return mesh._flatten(name)


# Root meshes (and their process groups) kept for reuse by `build_meshes(..., reuse=True)`: every gloo
# group keeps polling threads, and destroying groups and creating new ones over the same ranks is
# fragile, so a process that runs many layouts (the tests) shares one mesh per distinct shape.
_MESH_CACHE: dict[tuple, tuple[DeviceMesh, DeviceMesh, DeviceMesh]] = {}
_TIE_GROUPS: dict[tuple[int, int], Any] = {}


def build_meshes(shape: RunShape, device_type: str, *, tied: bool = False, reuse: bool = False) -> Meshes:
    """Collective: every rank calls it with the same shape.

    Dimensions of size one are left out of the root mesh (each would be a process group of its own),
    except "dpo" (the experts' data-parallel mesh) and "one" (the shard dim of the hybrid mesh that
    gives zero 0 its DDP semantics) where those are needed."""
    dpe, tpe = shape.ep_in_dp, shape.ep_in_tp
    sizes = {"pp": shape.pp, "dpo": shape.dp // dpe, "dpe": dpe, "one": 1, "tpo": shape.tp // tpe, "tpe": tpe}
    keep = [n for n, k in sizes.items() if k > 1]
    if shape.dp > 1 and dpe > 1:
        keep.append("dpo")
    if shape.dp > 1 and shape.zero == 0:
        keep.append("one")
    names = tuple(n for n in sizes if n in keep) or ("pp",)
    key = (device_type, names, tuple(sizes[n] for n in names))
    if reuse and key in _MESH_CACHE:
        root, dp, tp = _MESH_CACHE[key]
    else:
        # group ranks are logical ranks (placement is applied when joining the process group)
        ranks = torch.arange(shape.world_size).reshape(tuple(sizes[n] for n in names))
        root = DeviceMesh(device_type, ranks, mesh_dim_names=names)
        dp = _sub_mesh(root, ("dpo", "dpe"), "dp")
        tp = _sub_mesh(root, ("tpo", "tpe"), "tp")
        if reuse:
            _MESH_CACHE[key] = (root, dp, tp)
    dense = expert = None
    if shape.dp > 1:
        dp_name = dp.mesh_dim_names[0]
        with warnings.catch_warnings():  # slicing a flattened dim together with "one" (hybrid mesh for zero 0)
            warnings.simplefilter("ignore")
            dense = root[dp_name, "one"] if shape.zero == 0 else dp
            if shape.ep_mode == "dp" and dpe > 1:
                expert = root["dpo", "one"] if shape.zero == 0 else root["dpo"]
            else:
                expert = dense
    logical = dist.get_rank()
    tp_rank = logical % shape.tp
    dp_rank = (logical // shape.tp) % shape.dp
    pp_rank = logical // (shape.tp * shape.dp)
    ep_group = etp_group = None
    ep_rank = etp_rank = 0
    if shape.ep > 1:
        ep_group = root["dpe" if shape.ep_mode == "dp" else "tpe"].get_group()
        ep_rank = dp_rank % dpe if shape.ep_mode == "dp" else tp_rank % tpe
    if shape.moe_tp > 1:
        etp_group = tp.get_group() if shape.ep_mode == "dp" else root["tpo"].get_group()
        etp_rank = tp_rank if shape.ep_mode == "dp" else tp_rank // tpe
    meshes = Meshes(root=root, pp=root["pp"] if shape.pp > 1 else None, dp=dp, tp=tp, dense_fsdp=dense,
                    expert_fsdp=expert, ep_group=ep_group, ep_rank=ep_rank, etp_group=etp_group, etp_rank=etp_rank,
                    pp_rank=pp_rank, dp_rank=dp_rank, tp_rank=tp_rank)
    if tied and shape.pp > 1:
        last = shape.stage_owner(shape.num_stages - 1)
        for r in range(shape.dp):
            for t in range(shape.tp):
                pair = (shape.process_rank(0, r, t), shape.process_rank(last, r, t))
                group = _TIE_GROUPS.get(pair) if reuse else None
                if group is None:
                    group = dist.new_group(list(pair))
                    if reuse:
                        _TIE_GROUPS[pair] = group
                if (r, t) == (meshes.dp_rank, meshes.tp_rank) and meshes.pp_rank in (0, last):
                    meshes.tie_group = group
    return meshes


# -- tensor-parallel regions around expert shards --------------------------------
def copy_to_tp(x: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Identity forward; backward sums the partial gradients of the TP ranks."""
    return DTensor.from_local(x, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


def reduce_from_tp(x: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Sums the TP ranks' partial results; backward passes the (replicated) gradient through."""
    return DTensor.from_local(x, mesh, [Partial()], run_check=False).redistribute(mesh, [Replicate()]).to_local()


def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any) -> torch.Tensor:
    from torch.distributed._functional_collectives import all_to_all_single_autograd

    out = all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, group)
    wait = getattr(out, "wait", None)
    return wait() if callable(wait) else out


class AllToAllDispatch:
    """Experts carved out of data parallel (or ep = 1 with expert TP): sort token copies by expert,
    send each to the rank owning its expert, run, send back, combine."""

    def __init__(self, ep_group: Any, ep: int, tp_mesh: DeviceMesh | None):
        self.ep_group, self.ep, self.tp_mesh = ep_group, ep, tp_mesh

    def __call__(self, x, weights, idx, experts: Experts, num_experts: int):
        n, k = idx.shape
        flat_idx = idx.reshape(-1)
        order = torch.argsort(flat_idx, stable=True)
        counts = torch.bincount(flat_idx, minlength=num_experts)
        xs = x[order // k]
        if self.ep > 1:
            n_local = num_experts // self.ep
            recv_counts = torch.empty_like(counts)
            dist.all_to_all_single(recv_counts, counts, group=self.ep_group)
            rc = recv_counts.view(self.ep, n_local)  # [source rank, local expert]
            send_splits = counts.view(self.ep, n_local).sum(1).tolist()
            recv_splits = rc.sum(1).tolist()
            received = _all_to_all(xs, recv_splits, send_splits, self.ep_group)
            # received is grouped by source then expert; regroup by expert then source
            seg = torch.arange(self.ep * n_local, device=x.device).view(self.ep, n_local)
            seg_of_row = torch.repeat_interleave(seg.reshape(-1), rc.reshape(-1).to(x.device))
            expert_of_row = seg_of_row % n_local
            perm = torch.argsort(expert_of_row, stable=True)
            local_in = received[perm]
            local_counts = rc.sum(0).tolist()
        else:
            local_in, local_counts = xs, counts.tolist()
        if self.tp_mesh is not None:
            local_in = copy_to_tp(local_in, self.tp_mesh)
        local_out = experts(local_in, local_counts)
        if self.tp_mesh is not None:
            local_out = reduce_from_tp(local_out, self.tp_mesh)
        if self.ep > 1:
            back = torch.empty_like(local_out)
            back[perm] = local_out
            local_out = _all_to_all(back, send_splits, recv_splits, self.ep_group)
        return combine(local_out, order, weights, n, x.shape[-1])


class ReplicatedDispatch:
    """Experts inside the TP group (ep_mode "tp"): every TP rank has every token, runs its own
    experts' shards on the copies routed to them, and one all-reduce over the TP group combines."""

    def __init__(self, tp_mesh: DeviceMesh):
        self.tp_mesh = tp_mesh

    def __call__(self, x, weights, idx, experts: Experts, num_experts: int):
        n, k = idx.shape
        flat_idx = idx.reshape(-1)
        order = torch.argsort(flat_idx, stable=True)
        counts = torch.bincount(flat_idx, minlength=num_experts).tolist()
        lo, hi = experts.first_expert, experts.first_expert + experts.num_local
        start, end = sum(counts[:lo]), sum(counts[:hi])
        xin = copy_to_tp(x, self.tp_mesh)
        out = experts(xin[order[start:end] // k], counts[lo:hi])
        d = out.shape[-1]
        full = torch.cat([out.new_zeros(start, d), out, out.new_zeros(n * k - end, d)])
        return combine(reduce_from_tp(full, self.tp_mesh), order, weights, n, x.shape[-1])


# -- applying the plan ---------------------------------------------------------------
def _tp_block_plan(block: Block, sp: bool) -> dict[str, Any]:
    out = Shard(1) if sp else Replicate()
    plan: dict[str, Any] = {
        "attn.wq": ColwiseParallel(), "attn.wk": ColwiseParallel(), "attn.wv": ColwiseParallel(),
        "attn.wo": RowwiseParallel(output_layouts=out),
    }
    if sp:
        plan["attn_norm"] = SequenceParallel()
        plan["ffn_norm"] = SequenceParallel()
        plan["attn"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                          use_local_output=True)
    if isinstance(block.ffn, MoE):
        if block.ffn.shared is not None:
            plan["ffn.shared.w1"] = ColwiseParallel()
            plan["ffn.shared.w2"] = RowwiseParallel(output_layouts=Replicate())
            if block.ffn.shared.w3 is not None:
                plan["ffn.shared.w3"] = ColwiseParallel()
    else:
        plan["ffn.w1"] = ColwiseParallel()
        plan["ffn.w2"] = RowwiseParallel(output_layouts=out)
        if block.ffn.w3 is not None:
            plan["ffn.w3"] = ColwiseParallel()
        if sp:
            plan["ffn"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                             use_local_output=True)
    return plan


def apply_tp(model: Transformer, mesh: DeviceMesh, sp: bool) -> None:
    for key, layer in model.layers.items():
        if isinstance(layer, Embedding):
            direct_shard = sp and not layer.learned_positions
            parallelize_module(layer, mesh, {"tok": RowwiseParallel(
                input_layouts=Replicate(), output_layouts=Shard(1) if direct_shard else Replicate())})
            if sp and not direct_shard:
                parallelize_module(layer, mesh, PrepareModuleOutput(output_layouts=Replicate(),
                                                                    desired_output_layouts=Shard(1)))
        elif isinstance(layer, Block):
            parallelize_module(layer, mesh, _tp_block_plan(layer, sp))
            if sp and isinstance(layer.ffn, MoE):
                # the router sees every token of the TP group; its output goes back to sequence shards
                parallelize_module(layer.ffn, mesh, PrepareModuleInput(
                    input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True))
                parallelize_module(layer.ffn, mesh, PrepareModuleOutput(
                    output_layouts=Replicate(), desired_output_layouts=Shard(1)))
        elif isinstance(layer, Head):
            plan = {"proj": ColwiseParallel(input_layouts=Shard(1) if sp else Replicate(), output_layouts=Replicate())}
            if sp:
                plan["norm"] = SequenceParallel()
            parallelize_module(layer, mesh, plan)


def apply_ep(model: Transformer, shape: RunShape, meshes: Meshes) -> list[Experts]:
    """Slice each MoE block's experts to this rank's share and install the dispatcher."""
    found = []
    for layer in model.layers.values():
        if not (isinstance(layer, Block) and isinstance(layer.ffn, MoE)):
            continue
        moe = layer.ffn
        ex = moe.experts
        e_local = ex.w1.shape[0] // shape.ep
        lo = meshes.ep_rank * e_local
        f_local = ex.w1.shape[1] // shape.moe_tp
        flo = meshes.etp_rank * f_local
        with torch.no_grad():
            for name in ("w1", "w3", "b1", "b3"):
                p = getattr(ex, name)
                if p is not None:
                    setattr(ex, name, nn.Parameter(p[lo:lo + e_local, flo:flo + f_local].clone()))
            ex.w2 = nn.Parameter(ex.w2[lo:lo + e_local, :, flo:flo + f_local].clone())
            if ex.b2 is not None:
                ex.b2 = nn.Parameter(ex.b2[lo:lo + e_local].clone())
        ex.first_expert = lo
        tp_mesh = meshes.tp if shape.tp > 1 else None
        if shape.ep_mode == "tp" and shape.ep > 1:
            moe.dispatcher = ReplicatedDispatch(meshes.tp)
        elif shape.ep > 1 or tp_mesh is not None:
            moe.dispatcher = AllToAllDispatch(meshes.ep_group, shape.ep, tp_mesh)
        found.append(ex)
    return found


def apply_recompute(model: Transformer, mode: str) -> None:
    if mode == "none":
        return
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    kwargs: dict[str, Any] = {}
    if mode == "selective":
        from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

        keep = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
        for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                     "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_cudnn_attention"):
            op = getattr(torch.ops.aten, name, None)
            if op is not None:
                keep.add(op.default)

        def policy(ctx, op, *args, **kw):
            return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

        kwargs["context_fn"] = partial(create_selective_checkpoint_contexts, policy)
    for key, layer in list(model.layers.items()):
        if isinstance(layer, Block):
            # selective checkpointing replays op by op; expert dispatch (data-dependent collectives)
            # does not replay identically, so MoE blocks recompute whole
            kw = {} if isinstance(layer.ffn, MoE) else kwargs
            model.layers[key] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT,
                                                   preserve_rng_state=False, **kw)


def apply_fsdp(model: Transformer, experts: list[Experts], shape: RunShape, meshes: Meshes,
               compute_dtype: torch.dtype) -> None:
    mp = MixedPrecisionPolicy(param_dtype=None if compute_dtype == torch.float32 else compute_dtype,
                              reduce_dtype=torch.float32)
    reshard = shape.zero == 3
    for ex in experts:
        fully_shard(ex, mesh=meshes.expert_fsdp, reshard_after_forward=reshard, mp_policy=mp)
    for layer in model.layers.values():
        if isinstance(_unwrap(layer), Block):
            fully_shard(layer, mesh=meshes.dense_fsdp, reshard_after_forward=reshard, mp_policy=mp)
    fully_shard(model, mesh=meshes.dense_fsdp, reshard_after_forward=reshard, mp_policy=mp)


def build_parts(spec: ModelSpec, shape: RunShape, meshes: Meshes, *, seed: int, device: torch.device,
                compute_dtype: torch.dtype, compile_blocks: bool = False) -> list[Part]:
    """This rank's pipeline chunks, initialised from `seed` and parallelized per the shape
    (`compile_blocks`: torch.compile each block in place, training only, as torchtitan does)."""
    parts = []
    for stage in range(shape.num_stages):
        if shape.stage_owner(stage) != meshes.pp_rank:
            continue
        lo, hi = shape.chunks[stage]
        with torch.device("meta"):
            model = Transformer(spec, shape.max_positions)
        for key in list(model.layers.keys()):
            if not lo <= int(key) < hi:
                del model.layers[key]
        if device.type != "meta":
            model = model.to_empty(device=device)
            init_weights(model, seed)
        if shape.tp > 1:
            apply_tp(model, meshes.tp, shape.sequence_parallel and shape.training)
        experts = apply_ep(model, shape, meshes)
        if shape.training:
            apply_recompute(model, shape.recompute)
            if compile_blocks:
                for layer in model.layers.values():
                    if isinstance(_unwrap(layer), Block):
                        layer.compile()
            if shape.dp > 1:
                apply_fsdp(model, experts, shape, meshes, compute_dtype)
        parts.append(Part(stage=stage, module=model, expert_modules=experts))
    return parts


def finalize_grads(parts: list[Part], shape: RunShape, meshes: Meshes) -> None:
    """What the data-parallel wrapper cannot know: expert gradients reduced over the expert-data-parallel
    group carry tokens of ep replicas (scale by 1/ep), and tied embedding/head copies get the sum of their
    gradients (so they stay equal). Also lays each DTensor gradient out like its parameter (DTensor's
    embedding backward yields a replicated gradient for a vocab-sharded table; slicing it once here
    spares the optimizer a redistribution per operation)."""
    for part in parts:
        for p in part.module.parameters():
            g = p.grad
            if isinstance(g, DTensor) and isinstance(p, DTensor) and g.placements != p.placements:
                p.grad = g.redistribute(p.device_mesh, p.placements)
    if shape.ep_mode == "dp" and shape.ep > 1:
        for part in parts:
            for ex in part.expert_modules:
                for p in ex.parameters():
                    if p.grad is not None:
                        p.grad.div_(shape.ep)
    if not parts or not parts[0].module.spec.layers[-1].tied:
        return
    emb = next((_embedding(p.module) for p in parts if _embedding(p.module) is not None), None)
    head = next((_head(p.module) for p in parts if _head(p.module) is not None), None)
    if emb is not None and head is not None:
        g = _local(emb.tok.weight.grad) + _local(head.proj.weight.grad)
        _local(emb.tok.weight.grad).copy_(g)
        _local(head.proj.weight.grad).copy_(g)
    elif meshes.tie_group is not None:
        w = emb.tok.weight if emb is not None else head.proj.weight
        dist.all_reduce(_local(w.grad), group=meshes.tie_group)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _unwrap(layer: nn.Module) -> nn.Module:
    return getattr(layer, "_checkpoint_wrapped_module", layer)


def _embedding(model: Transformer) -> Embedding | None:
    return next((m for m in model.layers.values() if isinstance(m, Embedding)), None)


def _head(model: Transformer) -> Head | None:
    return next((m for m in model.layers.values() if isinstance(m, Head)), None)


def set_grad_sync(parts: list[Part], enabled: bool) -> None:
    for part in parts:
        fn = getattr(part.module, "set_requires_gradient_sync", None)
        if fn is not None:
            fn(enabled)


def build_schedule(parts: list[Part], shape: RunShape, meshes: Meshes, device: torch.device,
                   loss_fn: Callable) -> Any:
    from torch.distributed import pipelining as pl

    group = meshes.pp.get_group()
    stages = [pl.PipelineStage(p.module, p.stage, shape.num_stages, device, group=group) for p in parts]
    if shape.schedule == "interleaved":
        cls, arg = pl.ScheduleInterleaved1F1B, stages
    else:
        cls, arg = (pl.ScheduleGPipe if shape.schedule == "gpipe" else pl.Schedule1F1B), stages[0]
    kwargs = {"scale_grads": True} if "scale_grads" in inspect.signature(cls.__init__).parameters else {}
    try:
        return cls(arg, shape.n_micro, loss_fn=loss_fn, **kwargs), bool(kwargs)
    except ValueError as exc:  # a rule of this torch version's schedule that validate() did not know
        raise UnsupportedPlanError(f"torch {torch.__version__} refuses the pipeline schedule: {exc}") from None


# -- full parameters, for comparisons and inspection ------------------------------------
def full_state(parts: list[Part], shape: RunShape, meshes: Meshes, *, grads: bool = False) -> dict[str, torch.Tensor]:
    """Unsharded parameters (or their gradients) of the whole model, on every rank (collective).

    Tied copies are reported under their own names (embedding and head)."""
    mine: dict[str, torch.Tensor] = {}
    for part in parts:
        expert_ids = {id(p) for ex in part.expert_modules for p in ex.parameters()}
        for name, p in part.module.named_parameters():
            t = p.grad if grads else p
            if t is None:
                t = torch.zeros_like(p)
            t = t.full_tensor() if isinstance(t, DTensor) else t.detach()
            if id(p) in expert_ids:
                leaf = name.rsplit(".", 1)[-1]
                if shape.moe_tp > 1 and leaf in ("w1", "w3", "b1", "b3", "w2"):
                    t = _gather_cat(t, meshes.etp_group, shape.moe_tp, dim=2 if leaf == "w2" else 1)
                if shape.ep > 1:
                    t = _gather_cat(t, meshes.ep_group, shape.ep, dim=0)
            mine[canonical_name(name)] = t.detach().float().cpu()
    # one copy per stage: the (dp 0, tp 0) rank of each stage shares it with everyone
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine if (meshes.dp_rank, meshes.tp_rank) == (0, 0) else {})
    out: dict[str, torch.Tensor] = {}
    for d in gathered:
        out.update(d)
    return out


def _gather_cat(t: torch.Tensor, group: Any, size: int, dim: int) -> torch.Tensor:
    pieces = [torch.empty_like(t) for _ in range(size)]
    dist.all_gather(pieces, t.contiguous(), group=group)
    return torch.cat(pieces, dim=dim)


@contextlib.contextmanager
def maybe_autocast(device: torch.device, dtype: torch.dtype, enabled: bool):
    if enabled and dtype != torch.float32:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
    else:
        yield

