"""Apply a plan's parallelism to the reference transformer, torch-natively.

- Mesh: one root `DeviceMesh` per run with dims (pp, dpo, dpe, one, tpo, tpe)
  (those of size one left out), in the strategy's rank order (tp fastest, then
  dp, then pp). The placement is applied when joining the process group: the
  process on GPU placement[r] takes rank r, so mesh coordinates and group ranks
  agree. dp = dpo x dpe and tp = tpo x tpe are flattened views.
  Expert parallelism carved out of dp (ep_mode "dp", Megatron) is dpe = ep;
  inside tp (ep_mode "tp", TensorRT-LLM) it is tpe = ep; the other is 1.
- TP: `parallelize_module` with this module's parallel styles (fused qkv and
  gate/up: column; out, down: row; embedding: vocab rows; head: vocab columns,
  logits gathered), sequence parallelism (norms and residuals on sequence
  shards) when planned. Weights are DTensor shards (what FSDP2 and distributed
  checkpoints understand), but the forward computes on the local shards with
  explicit collectives in small autograd functions (Megatron's scheme: per
  block one all-reduce, or all-gather + reduce-scatter with sequence
  parallelism, around attention and around the MLP, the same in backward).
  Letting DTensor dispatch every activation op instead cost hundreds of
  Python-side operations per block and 7 all-reduces per block in backward,
  which left GPUs waiting for the host (5x slower than data parallel).
  Attention and KV heads are split per rank (whole KV groups). With sequence
  parallelism the norms (and row-parallel biases) see sequence shards, so
  their gradients are summed over the TP group once per step.
- EP: routed experts are sliced per rank (which experts: ep; their width:
  expert TP). ep_mode "dp": token copies travel to the experts' owners with
  `all_to_all_single` (autograd version) and back. ep_mode "tp": tokens are
  already replicated in the TP group, so each rank runs its experts on the
  copies routed to them and one all-reduce combines (TensorRT-LLM's scheme).
  The TP collectives around expert shards are the same autograd functions
  (identity with summed gradients in, all-reduce out).
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
  "selective" keeps matmul, attention and collective outputs and recomputes the
  rest (torch's selective checkpoint policy).
- Compile (optional): torch.compile per block, with the TP collectives inside
  the compiled graph (functional collectives trace without graph breaks).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import os
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from costmodel.model import ModelSpec

from .check import RunShape, canonical_name
from .errors import UnsupportedPlanError
from .model import Block, Embedding, Experts, Head, Linear, MoE, Transformer, combine, init_weights, local

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
except ImportError:  # pragma: no cover - torch 2.4
    from torch.distributed._tensor import DTensor, Replicate, Shard, distribute_tensor  # type: ignore
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import parallelize_module
from torch.distributed.tensor.parallel.style import ParallelStyle

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
    # (module, parameter name) whose gradients are partial sums over the TP group (see apply_tp)
    tp_partial_grads: list[tuple[nn.Module, str]] = field(default_factory=list)
    # (DTensor parameter, plain leaf it computes with): see attach_local_leaves
    leaves: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)


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


# -- tensor-parallel collectives on plain tensors -------------------------------------
# The hot path computes on local shards (model.local) and communicates through these small autograd
# functions (Megatron's f/g pair and the sequence-parallel gather/scatter), built on c10d's functional
# collectives: one native op each, out of place (autograd may share a gradient tensor), stream-ordered on
# GPU (the host does not wait), and traced by torch.compile. Sequence-parallel shards are along dim 1 of
# (batch, seq, ...) activations.
_C10D = torch.ops._c10d_functional


@dataclass(frozen=True)
class TPComm:
    """A tensor-parallel process group, as the plain values the collectives need."""

    name: str
    size: int
    rank: int

    @classmethod
    def of(cls, mesh: DeviceMesh) -> "TPComm":
        group = mesh.get_group()
        return cls(name=group.group_name, size=group.size(), rank=dist.get_rank(group))


def _all_reduce(x: torch.Tensor, c: TPComm) -> torch.Tensor:
    return _C10D.wait_tensor(_C10D.all_reduce(x.contiguous(), "sum", c.name))


def _all_gather0(x: torch.Tensor, c: TPComm) -> torch.Tensor:
    """Concatenate the ranks' `x` along dim 0."""
    return _C10D.wait_tensor(_C10D.all_gather_into_tensor(x.contiguous(), c.size, c.name))


def _reduce_scatter0(x: torch.Tensor, c: TPComm) -> torch.Tensor:
    """Sum over the ranks and keep this rank's slice of dim 0."""
    return _C10D.wait_tensor(_C10D.reduce_scatter_tensor(x.contiguous(), "sum", c.size, c.name))


# Sequence shards are gathered and reduce-scattered through dim 0, with the copies between the layouts in the
# graph (a cat of the gathered chunks, a cat of the chunks to scatter), so no result is a view of a
# collective's buffer: compiled on NCCL, results that were such views got wrong (zero) gradients in the
# backward (bench/layout_grads.py on 2x H200; gloo on CPU did not show it). torch's functional-collective
# wrappers do the same copies but break the graph there on torch 2.11.
def _gather_seq(x: torch.Tensor, c: TPComm) -> torch.Tensor:
    return torch.cat(_all_gather0(x, c).chunk(c.size, dim=0), dim=1)


def _reduce_scatter_seq(x: torch.Tensor, c: TPComm) -> torch.Tensor:
    return _reduce_scatter0(torch.cat(x.chunk(c.size, dim=1), dim=0), c)


def _split_seq(x: torch.Tensor, c: TPComm) -> torch.Tensor:
    n = x.shape[1] // c.size
    return x.narrow(1, c.rank * n, n).contiguous()


def _gather_last(x: torch.Tensor, c: TPComm) -> torch.Tensor:
    """Shards along the last dim to the whole tensor."""
    out = _all_gather0(x, c).view(c.size, *x.shape).movedim(0, -2)
    return out.reshape(*x.shape[:-1], c.size * x.shape[-1])


def _split_last(x: torch.Tensor, c: TPComm) -> torch.Tensor:
    n = x.shape[-1] // c.size
    return x.narrow(-1, c.rank * n, n)


def _identity(x: torch.Tensor, c: TPComm) -> torch.Tensor:
    return x.view_as(x)


def _tp_function(name: str, doc: str, forward: Callable, backward: Callable) -> type[torch.autograd.Function]:
    """An autograd Function that runs `forward(x, comm)` and, on the way back, `backward(grad, comm)`."""

    def fwd(ctx, x, c):
        ctx.c = c
        return forward(x, c)

    def bwd(ctx, grad):
        return backward(grad, ctx.c), None

    return type(name, (torch.autograd.Function,),
                {"__doc__": doc, "forward": staticmethod(fwd), "backward": staticmethod(bwd)})


# Megatron's f/g pair and its sequence-parallel variants, as (forward, backward) collectives.
_CopyToTP = _tp_function("_CopyToTP", "Replicated input of a tensor-parallel region: identity; backward sums the "
                         "ranks' partial gradients.", _identity, _all_reduce)
_ReduceFromTP = _tp_function("_ReduceFromTP", "Partial sums out of a tensor-parallel region: all-reduce; the "
                             "gradient is already replicated.", _all_reduce, _identity)
_GatherSeq = _tp_function("_GatherSeq", "Sequence shards into a tensor-parallel region: all-gather; backward "
                          "reduce-scatters the partial gradients.", _gather_seq, _reduce_scatter_seq)
_ReduceScatterSeq = _tp_function("_ReduceScatterSeq", "Partial sums out of a tensor-parallel region into sequence "
                                 "shards; backward all-gathers.", _reduce_scatter_seq, _gather_seq)
_GatherSeqReplicated = _tp_function(
    "_GatherSeqReplicated", "Sequence shards to a full replicated sequence whose consumer gives replicated "
    "gradients: all-gather; backward keeps this rank's slice (DTensor's Shard -> Replicate).", _gather_seq, _split_seq)
_SplitSeq = _tp_function("_SplitSeq", "Replicated sequence to this rank's shard; backward all-gathers.",
                         _split_seq, _gather_seq)
_GatherLast = _tp_function("_GatherLast", "Shards along the last dim (vocab-parallel logits) to the whole tensor; "
                           "the loss is computed alike on every rank, so backward keeps this rank's slice.",
                           _gather_last, _split_last)


def copy_to_tp(x: torch.Tensor, comm: TPComm) -> torch.Tensor:
    return _CopyToTP.apply(x, comm)


def reduce_from_tp(x: torch.Tensor, comm: TPComm) -> torch.Tensor:
    return _ReduceFromTP.apply(x, comm)


_ENTER = {"replicated": _CopyToTP, "sequence": _GatherSeq}
_EXIT = {"replicated": _ReduceFromTP, "sequence": _ReduceScatterSeq}


def _compute_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """What a tensor-parallel layer computes with for parameter `name`: its leaf (`attach_local_leaves`), or
    the parameter's local shard."""
    leaf = getattr(module, f"_{name}_leaf")
    return leaf if leaf is not None else local(getattr(module, name))


class TPLinear(Linear):
    """A Linear whose weight is a DTensor shard (columns: rows of W split; rows: columns of W split), run on
    the local shard with explicit collectives. `_tp_in`: how the input arrives for a column-parallel layer
    ("replicated" or "sequence" shards), None for a row-parallel one (input already split by features).
    `_tp_out`: for a row-parallel layer, where the partial sums go ("replicated" or "sequence"); for a
    column-parallel one, "gather" all-gathers the feature shards (vocab-parallel logits) or None keeps them.
    A row-parallel bias is added once, after the reduction."""

    _tp: TPComm
    _tp_in: str | None
    _tp_out: str | None
    # plain leaves aliasing the local shards, set by `attach_local_leaves`; None: compute via `local()`
    _weight_leaf: torch.Tensor | None = None
    _bias_leaf: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self._tp
        bias = None if self.bias is None else _compute_tensor(self, "bias")
        if self._tp_in is not None:
            if torch.is_autocast_enabled(x.device.type):
                # autocast would cast the input for the matmul anyway; casting before the region makes the
                # all-gather (sequence parallel) and the backward all-reduce of its gradient move half the bytes
                x = x.to(torch.get_autocast_dtype(x.device.type))
            x = _ENTER[self._tp_in].apply(x, c)
            y = F.linear(x, self._local_weight(x), bias)
            return _GatherLast.apply(y, c) if self._tp_out == "gather" else y
        y = _EXIT[self._tp_out].apply(F.linear(x, self._local_weight(x)), c)
        return y if bias is None else y + bias

    def compute_weight(self) -> torch.Tensor:
        return _compute_tensor(self, "weight")

    def _local_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The local weight shard; under autocast, its low-precision copy made once per optimizer step.

        Autocast caches the casts of leaf parameters, but a DTensor's local shard is not a leaf, so without
        this every micro-batch would cast every weight again (a kernel and host work per linear layer).
        Micro-batches of one step share the copy's autograd path back to the parameter (that path saves no
        tensors, so each backward may run it). The copy is dropped by `drop_weight_casts`, which the
        executor's optimizer runs after every step (`track_weight_updates`): no version counter can tell,
        since foreach and fused optimizers update a DTensor's shards without bumping one."""
        if self._weight_cast is not None:
            return self._weight_cast
        w = self.compute_weight()
        dev = x.device.type
        if not torch.is_autocast_enabled(dev) or not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return w
        dtype = torch.get_autocast_dtype(dev)
        key = (id(self._weight_leaf if self._weight_leaf is not None else self.weight), dtype)
        cached = self.__dict__.get("_cast_cache")
        if cached is None or cached[0] != key:
            cached = (key, w.to(dtype))
            self.__dict__["_cast_cache"] = cached
        return cached[1]


def cast_weights(modules: Iterable[nn.Module], dtype: torch.dtype) -> None:
    """Give every linear layer of `modules` a `dtype` copy of its weight for the coming micro-batches.

    What autocast's cast cache does in eager mode, made explicit so that compiled graphs take the copies as
    inputs instead of casting every weight again in every micro-batch; the copies keep their autograd path
    to the weights (it saves no tensors, so every micro-batch's backward may run it). Only for layouts
    without FSDP, whose weights are gathered inside the forward. `drop_weight_casts` forgets them."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, Linear):
                m._weight_cast = m.compute_weight().to(dtype)


def drop_weight_casts(modules: Iterable[nn.Module]) -> None:
    """Forget the low-precision weight copies (`cast_weights`, `TPLinear._local_weight`): after any in-place
    weight change."""
    for module in modules:
        for m in module.modules():
            m.__dict__.pop("_cast_cache", None)
            m.__dict__.pop("_weight_cast", None)


def track_weight_updates(optimizer: torch.optim.Optimizer, modules: Sequence[nn.Module]) -> torch.optim.Optimizer:
    """Drop the weight copies of `modules` after each step of `optimizer`."""
    optimizer.register_step_post_hook(lambda *_: drop_weight_casts(modules))
    return optimizer


class VocabParallelEmbedding(nn.Embedding):
    """Embedding table split by vocabulary rows: look up the tokens this rank owns, zero the others, and sum
    over the ranks (all-reduce, or reduce-scatter into sequence shards)."""

    _tp: TPComm
    _tp_out: str
    _weight_leaf: torch.Tensor | None = None  # as TPLinear's

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        w = _compute_tensor(self, "weight")
        idx = tokens - self._tp.rank * w.shape[0]
        outside = (idx < 0) | (idx >= w.shape[0])
        out = F.embedding(idx.masked_fill(outside, 0), w).masked_fill(outside.unsqueeze(-1), 0.0)
        return _EXIT[self._tp_out].apply(out, self._tp)


def attach_local_leaves(modules: Iterable[nn.Module]) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Give each tensor-parallel layer plain leaf tensors aliasing its DTensor parameters' local shards, and
    compute with those (training without a data-parallel wrapper). Gradients then accumulate over the
    micro-batches as plain tensors: no DTensor wrap of every gradient and no DTensor add per parameter and
    micro-batch, and a compiled graph takes plain inputs (no subclass unwrap, no DTensor guards), host work
    that bounds a tensor-parallel step. The parameters stay DTensors for the optimizer and checkpoints;
    `move_leaf_grads` hands them the accumulated gradients. Returns (parameter, leaf) pairs; a leaf that
    still aliases its parameter's storage is kept (a compiled graph then needs no new guards)."""
    pairs = []
    for module in modules:
        for m in module.modules():
            if not isinstance(m, (TPLinear, VocabParallelEmbedding)):
                continue
            for name in ("weight", "bias"):
                p = getattr(m, name, None)
                if not isinstance(p, DTensor):
                    continue
                shard = p._local_tensor
                leaf = m.__dict__.get(f"_{name}_leaf")
                if leaf is None or leaf.data_ptr() != shard.data_ptr() or leaf.shape != shard.shape:
                    leaf = shard.detach().requires_grad_(p.requires_grad)
                    m.__dict__[f"_{name}_leaf"] = leaf
                pairs.append((p, leaf))
    return pairs


def move_leaf_grads(pairs: Sequence[tuple[nn.Parameter, torch.Tensor]], keep: bool = False) -> None:
    """The leaves' accumulated gradients become their DTensor parameters' gradients (no copy). `keep`: the
    leaf keeps the same buffer (zeroing the parameter's gradient in place zeroes it), for CUDA graphs, whose
    outputs autograd must never adopt as a gradient."""
    for p, leaf in pairs:
        if leaf.grad is not None:
            p.grad = DTensor(leaf.grad, copy.copy(p._spec), requires_grad=False)
            if not keep:
                leaf.grad = None


# The parallel styles below shard a module's parameters into DTensors and switch the module's class to its
# tensor-parallel variant in place (as FSDP2's fully_shard does), so parameter names, hooks and state stay.
def _distribute(module: nn.Module, mesh: DeviceMesh, placements: dict[str, Any]) -> None:
    for name, placement in placements.items():
        p = getattr(module, name, None)
        if p is not None and not isinstance(p, DTensor):
            module.register_parameter(name, nn.Parameter(distribute_tensor(p, mesh, [placement]),
                                                         requires_grad=p.requires_grad))


class Colwise(ParallelStyle):
    """Column-parallel Linear on local shards (weight and bias rows split). `inputs`: "replicated" or
    "sequence" (sequence-parallel shards, all-gathered); `gather_output`: all-gather the output features."""

    def __init__(self, inputs: str = "replicated", gather_output: bool = False):
        self.inputs, self.gather_output = inputs, gather_output

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        _distribute(module, device_mesh, {"weight": Shard(0), "bias": Shard(0)})
        module.__class__ = TPLinear
        module._tp, module._tp_in = TPComm.of(device_mesh), self.inputs
        module._tp_out = "gather" if self.gather_output else None
        return module


class Rowwise(ParallelStyle):
    """Row-parallel Linear on local shards (weight columns split, bias replicated). `outputs`: "replicated"
    (all-reduce) or "sequence" (reduce-scatter into sequence-parallel shards)."""

    def __init__(self, outputs: str = "replicated"):
        self.outputs = outputs

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        _distribute(module, device_mesh, {"weight": Shard(1), "bias": Replicate()})
        module.__class__ = TPLinear
        module._tp, module._tp_in, module._tp_out = TPComm.of(device_mesh), None, self.outputs
        return module


class VocabParallel(ParallelStyle):
    """nn.Embedding split by vocabulary rows; `outputs` as for `Rowwise`."""

    def __init__(self, outputs: str = "replicated"):
        self.outputs = outputs

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        _distribute(module, device_mesh, {"weight": Shard(0)})
        module.__class__ = VocabParallelEmbedding
        module._tp, module._tp_out = TPComm.of(device_mesh), self.outputs
        return module


def _all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any) -> torch.Tensor:
    from torch.distributed._functional_collectives import all_to_all_single_autograd

    out = all_to_all_single_autograd(x.contiguous(), out_splits, in_splits, group)
    wait = getattr(out, "wait", None)
    return wait() if callable(wait) else out


class AllToAllDispatch:
    """Experts carved out of data parallel (or ep = 1 with expert TP): sort token copies by expert,
    send each to the rank owning its expert, run, send back, combine."""

    def __init__(self, ep_group: Any, ep: int, tp: TPComm | None):
        self.ep_group, self.ep, self.tp = ep_group, ep, tp

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
        if self.tp is not None:
            local_in = copy_to_tp(local_in, self.tp)
        local_out = experts(local_in, local_counts)
        if self.tp is not None:
            local_out = reduce_from_tp(local_out, self.tp)
        if self.ep > 1:
            back = torch.empty_like(local_out)
            back[perm] = local_out
            local_out = _all_to_all(back, send_splits, recv_splits, self.ep_group)
        return combine(local_out, order, weights, n, x.shape[-1])


class ReplicatedDispatch:
    """Experts inside the TP group (ep_mode "tp"): every TP rank has every token, runs its own
    experts' shards on the copies routed to them, and one all-reduce over the TP group combines."""

    def __init__(self, tp: TPComm):
        self.tp = tp

    def __call__(self, x, weights, idx, experts: Experts, num_experts: int):
        n, k = idx.shape
        flat_idx = idx.reshape(-1)
        order = torch.argsort(flat_idx, stable=True)
        counts = torch.bincount(flat_idx, minlength=num_experts).tolist()
        lo, hi = experts.first_expert, experts.first_expert + experts.num_local
        start, end = sum(counts[:lo]), sum(counts[:hi])
        xin = copy_to_tp(x, self.tp)
        out = experts(xin[order[start:end] // k], counts[lo:hi])
        d = out.shape[-1]
        full = torch.cat([out.new_zeros(start, d), out, out.new_zeros(n * k - end, d)])
        return combine(reduce_from_tp(full, self.tp), order, weights, n, x.shape[-1])


# -- applying the plan ---------------------------------------------------------------
def _tp_block_plan(block: Block, sp: bool) -> dict[str, Any]:
    seq = "sequence" if sp else "replicated"
    plan: dict[str, Any] = {"attn.wqkv": Colwise(inputs=seq), "attn.wo": Rowwise(outputs=seq)}
    ffn = block.ffn
    if isinstance(ffn, MoE):
        if ffn.shared is not None:  # inside the MoE, whose input is gathered: replicated in and out
            plan["ffn.shared.w13" if ffn.shared.gated else "ffn.shared.w1"] = Colwise()
            plan["ffn.shared.w2"] = Rowwise()
    else:
        plan["ffn.w13" if ffn.gated else "ffn.w1"] = Colwise(inputs=seq)
        plan["ffn.w2"] = Rowwise(outputs=seq)
    return plan


def _hook_gather_replicated(comm: TPComm):
    def pre(module, args):
        return (_GatherSeqReplicated.apply(args[0], comm), *args[1:])
    return pre


def _hook_split(comm: TPComm):
    def post(module, args, output):
        return _SplitSeq.apply(output, comm)
    return post


def apply_tp(model: Transformer, mesh: DeviceMesh, sp: bool) -> list[tuple[nn.Module, str]]:
    """Shard the weights (DTensors on `mesh`) and switch the layers to local-shard compute with explicit
    collectives. Returns the (module, parameter name) pairs whose gradients are partial sums over the TP
    ranks (with sequence parallelism: norms and row-parallel biases applied to sequence shards); the
    optimizer step must see their sum (`finalize_grads`)."""
    comm = TPComm.of(mesh)
    seq = "sequence" if sp else "replicated"
    sums: list[tuple[nn.Module, str]] = []
    for layer in model.layers.values():
        if isinstance(layer, Embedding):
            direct = sp and not layer.learned_positions
            parallelize_module(layer, mesh, {"tok": VocabParallel(outputs="sequence" if direct else "replicated")})
            if sp and not direct:  # positions are added to the whole sequence, then it is split
                layer.register_forward_hook(_hook_split(comm))
        elif isinstance(layer, Block):
            parallelize_module(layer, mesh, _tp_block_plan(layer, sp))
            if sp:
                sums += [(m, n) for m in (layer.attn_norm, layer.ffn_norm) for n, _ in m.named_parameters()]
                sums += [(m, "bias") for m in (layer.attn.wo, getattr(layer.ffn, "w2", None))
                            if m is not None and m.bias is not None]
                if isinstance(layer.ffn, MoE):  # the router sees every token of the TP group
                    layer.ffn.register_forward_pre_hook(_hook_gather_replicated(comm))
                    layer.ffn.register_forward_hook(_hook_split(comm))
        elif isinstance(layer, Head):
            parallelize_module(layer, mesh, {"proj": Colwise(inputs=seq, gather_output=True)})
            if sp:
                sums += [(layer.norm, n) for n, _ in layer.norm.named_parameters()]
    return sums


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
        tp = TPComm.of(meshes.tp) if shape.tp > 1 else None
        if shape.ep_mode == "tp" and shape.ep > 1:
            moe.dispatcher = ReplicatedDispatch(tp)
        elif shape.ep > 1 or tp is not None:
            moe.dispatcher = AllToAllDispatch(meshes.ep_group, shape.ep, tp)
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
        # collectives are not replayed either (Megatron's selective recompute keeps them too)
        keep |= {getattr(_C10D, n).default for n in ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor")}
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


COMPILE_SCOPES = ("blocks", "model")


def compiles_whole(shape: RunShape, compile_scope: str) -> bool:
    """Whether a training chunk is compiled as one graph: asked for, and no per-block wrapper (FSDP2 for data
    parallelism, whole-block recompute) needs the blocks compiled apart."""
    return compile_scope == "model" and shape.dp == 1 and shape.recompute != "full"


def compiles_with_loss(shape: RunShape, compile_scope: str) -> bool:
    """Whether the training step compiles model and loss as one graph (the trainer does): a chunk compiled
    whole that is the whole model (no pipeline schedule calls the module and the loss apart). The logits
    then never leave the graph, and each micro-batch is one forward and one backward graph."""
    return compiles_whole(shape, compile_scope) and shape.num_stages == 1


def build_parts(spec: ModelSpec, shape: RunShape, meshes: Meshes, *, seed: int, device: torch.device,
                compute_dtype: torch.dtype, compile_blocks: bool | str = False,
                compile_scope: str = "blocks") -> list[Part]:
    """This rank's pipeline chunks, initialised from `seed` and parallelized per the shape.

    `compile_blocks`: torch.compile for training (True for the default backend, or a backend's name), over
    `compile_scope`: "blocks" compiles each block in place, as torchtitan does; "model" compiles each chunk
    whole, one graph per micro-batch instead of one per block, which spares the host a guard check, a
    subclass unwrap and a graph launch per block (what bounds a tensor-parallel step whose kernels are
    short). Chunks wrapped per block by FSDP2 or whole-block recompute keep the per-block scope."""
    if compile_scope not in COMPILE_SCOPES:
        raise UnsupportedPlanError(f"compile scope {compile_scope!r}: use one of {', '.join(COMPILE_SCOPES)}")
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
        sums = apply_tp(model, meshes.tp, shape.sequence_parallel and shape.training) if shape.tp > 1 else []
        experts = apply_ep(model, shape, meshes)
        if shape.training:
            # full recompute re-runs a compiled block from outside; selective recompute is compiled with the
            # block (its policy sees the block's operations). Tracing a whole-block checkpoint that reads
            # DTensor parameters fails in torch 2.13 (a DeviceMesh among the saved tensors).
            if compile_blocks and shape.recompute == "full":
                _compile_blocks(model, compile_blocks)
            apply_recompute(model, shape.recompute)
            if compile_blocks and shape.recompute != "full":
                if compiles_with_loss(shape, compile_scope):
                    pass  # the trainer compiles model and loss together
                elif compiles_whole(shape, compile_scope):
                    model.compile(**compile_kwargs(compile_blocks))
                else:
                    _compile_blocks(model, compile_blocks)
            if shape.dp > 1:
                apply_fsdp(model, experts, shape, meshes, compute_dtype)
        leaves = attach_local_leaves([model]) if shape.training and shape.dp == 1 else []
        parts.append(Part(stage=stage, module=model, expert_modules=experts, tp_partial_grads=sums, leaves=leaves))
    return parts


def compile_kwargs(backend: bool | str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"backend": backend} if isinstance(backend, str) else {}
    if os.environ.get("PARPLAN_COMPILE_MODE"):  # e.g. "max-autotune-no-cudagraphs"
        kwargs["mode"] = os.environ["PARPLAN_COMPILE_MODE"]
    return kwargs


def _compile_blocks(model: Transformer, backend: bool | str) -> None:
    for layer in model.layers.values():
        if isinstance(_unwrap(layer), (Block, Head)):
            layer.compile(**compile_kwargs(backend))


def finalize_grads(parts: list[Part], shape: RunShape, meshes: Meshes, keep_leaf_grads: bool = False) -> None:
    """What the data-parallel wrapper cannot know: expert gradients reduced over the expert-data-parallel
    group carry tokens of ep replicas (scale by 1/ep), and tied embedding/head copies get the sum of their
    gradients (so they stay equal). Also lays each DTensor gradient out like its parameter (DTensor's
    embedding backward yields a replicated gradient for a vocab-sharded table; slicing it once here
    spares the optimizer a redistribution per operation)."""
    for part in parts:
        move_leaf_grads(part.leaves, keep=keep_leaf_grads)
        for p in part.module.parameters():
            g = p.grad
            if isinstance(g, DTensor) and isinstance(p, DTensor) and g.placements != p.placements:
                p.grad = g.redistribute(p.device_mesh, p.placements)
    partial_grads = [_local(g) for part in parts for m, n in part.tp_partial_grads
                     if (g := getattr(m, n).grad) is not None]
    if partial_grads:  # one all-reduce for all of them
        flat = torch.cat([g.reshape(-1) for g in partial_grads])
        dist.all_reduce(flat, group=meshes.tp.get_group())
        for g, new in zip(partial_grads, flat.split([g.numel() for g in partial_grads])):
            g.copy_(new.view_as(g))
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
    """The planned schedule over this rank's stages, and whether it divides the gradients by the number of
    micro-batches itself (it cannot when they accumulate in leaves: `attach_local_leaves`)."""
    from torch.distributed import pipelining as pl

    group = meshes.pp.get_group()
    stages = [pl.PipelineStage(p.module, p.stage, shape.num_stages, device, group=group) for p in parts]
    if shape.schedule == "interleaved":
        cls, arg = pl.ScheduleInterleaved1F1B, stages
    else:
        cls, arg = (pl.ScheduleGPipe if shape.schedule == "gpipe" else pl.Schedule1F1B), stages[0]
    can_scale = "scale_grads" in inspect.signature(cls.__init__).parameters
    scale = can_scale and not any(p.leaves for p in parts)
    kwargs = {"scale_grads": scale} if can_scale else {}
    try:
        return cls(arg, shape.n_micro, loss_fn=loss_fn, **kwargs), scale
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

