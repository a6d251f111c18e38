"""Time and memory of one layer on one GPU, for one micro-batch.

`forward_work` prices a forward pass over `rows` tokens: GEMMs on the
efficiency-curve roofline, attention (compute-bound in prefill/training,
KV-cache-bound in decode), and memory-bound elementwise work. Training derives
backward from it (2x GEMMs, 2.5x attention, 2x elementwise) and adds the
tensor-parallel and expert-parallel collectives the layer implies.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from .comm import all_reduce_s, all_to_all_s
from .device import DevicePerf
from .layers import (activation_bytes_per_token, kv_cache_bytes_per_token, matmul_shapes, param_split)
from .model import LayerSpec
from .params import CostParams


def token_count(lay: LayerSpec, seq_len: int) -> int:
    """Tokens per sample a layer processes: its own `seq_len` for blocks that override it (TransGAN's
    high-resolution blocks); the workload's sequence for the embedding, whose `seq_len` counts position rows."""
    return (lay.seq_len or seq_len) if lay.kind == "transformer" else seq_len


@dataclass(frozen=True)
class Parallel:
    """The parallel degrees a layer sees, and the links its collectives use."""

    tp: int = 1
    ep: int = 1
    ep_mode: str = "dp"
    sp: bool = False
    tp_bw_gbps: float = float("inf")
    tp_latency_s: float = 0.0
    ep_bw_gbps: float = float("inf")
    ep_latency_s: float = 0.0

    @property
    def moe_tp(self) -> int:
        return self.tp // self.ep if self.ep_mode == "tp" else self.tp

    @property
    def ep_tokens(self) -> float:
        """Rows an expert sees relative to local tokens: Megatron EP gathers tokens from ep replicas."""
        return float(self.ep) if self.ep_mode == "dp" else 1.0


@dataclass(frozen=True)
class ForwardWork:
    gemm_s: Any  # float, or numpy array when priced for several micro-batch sizes at once
    attention_s: Any
    elementwise_s: Any
    attention_bwd_s: Any  # backward of the attention core (2.5x forward FLOPs)

    @property
    def total_s(self) -> float:
        return self.gemm_s + self.attention_s + self.elementwise_s


def forward_work(lay: LayerSpec, dev: DevicePerf, par: Parallel, params: CostParams, *, rows: float,
                 context: float, causal: bool, kv_rows: float = 0.0, model_seq: int = 0) -> ForwardWork:
    """Forward pass of one layer over `rows` query tokens, each attending to `context` keys.

    `kv_rows` > 0 marks decode: keys and values are read from a KV cache of
    kv_rows x context entries instead of being computed in the pass.
    """
    b = dev.bytes_per_el
    tp = par.tp
    if lay.kind == "embedding":
        elem = dev.memory_time_s(rows * lay.hidden * b * 2 / (tp if par.sp else 1), kernels=2)
        return ForwardWork(0.0, 0.0, elem, 0.0)
    gemm = 0.0
    for t in _gemm_times(dev, matmul_shapes(lay, tp, par.ep, par.moe_tp, par.ep_tokens), rows):
        gemm = gemm + t
    if lay.kind == "head":
        vocab_local = lay.vocab / tp
        # final norm, then softmax / cross-entropy over the logits in fp32 (read bf16, write and read fp32)
        elem_bytes = rows * (2 * lay.hidden * b / (tp if par.sp else 1) + vocab_local * (b + 8))
        elem = dev.memory_time_s(elem_bytes * params.head_elementwise_factor_value, kernels=4)
        return ForwardWork(gemm, 0.0, elem, 0.0)
    heads_local = lay.num_heads / tp
    span = lay.attention_span or context
    ctx = min(context, span) if lay.attention_span else context
    if kv_rows > 0:  # decode: one query per sequence against the cached keys
        flops = 4.0 * rows * ctx * heads_local * lay.head_dim
        kv_bytes = kv_rows * ctx * kv_cache_bytes_per_token(lay, b) / tp
        attn = dev.attention_time_s(flops, kv_bytes)
        attn_bwd = 0.0
    else:
        cf = params.causal_factor if causal and lay.causal else 1.0
        flops = 4.0 * rows * ctx * heads_local * lay.head_dim * cf
        io = rows * (lay.num_heads * 2 + lay.num_kv_heads * 2) * lay.head_dim * b / tp
        if not params.flash_attention:
            score_heads = heads_local if params.tp_splits_attention_heads else lay.num_heads
            io += rows * ctx * score_heads * (2 * b + 4) * cf * 2  # scores and softmax written and read back
        attn = dev.attention_time_s(flops, io)
        attn_bwd = dev.attention_time_s(2.5 * flops, 2.5 * io)
    q = lay.num_heads * lay.head_dim / tp
    kvd = lay.num_kv_heads * lay.head_dim / tp
    h_local = lay.hidden / (tp if par.sp else 1)
    if lay.is_moe:
        f_local = lay.top_k * lay.expert_ffn_hidden / par.moe_tp + lay.shared_experts * lay.shared_ffn_hidden / tp
        permute = 4 * lay.top_k * lay.dispatch_dim  # gather to experts and scatter back, read + write
    else:
        f_local = lay.ffn_hidden / tp
        permute = 0
    act = 3 * f_local if lay.gated_mlp else 2 * f_local
    drop = 4 * h_local / b if lay.dropout > 0 else 0.0  # two dropout masks written and read (1 byte each)
    elem_bytes = rows * b * (10 * h_local + 2 * (q + kvd) + act + permute + drop)
    elem = dev.memory_time_s(elem_bytes * params.elementwise_factor, kernels=8)
    return ForwardWork(gemm, attn, elem, attn_bwd)


def _gemm_times(dev: DevicePerf, shapes: list, rows: Any) -> Any:
    """Time of each GEMM in `shapes` over `rows` tokens (float or array): one array call for all of them,
    (len(shapes), *shape of rows)."""
    if not shapes:
        return []
    rows = np.asarray(rows, dtype=float)
    column = (-1,) + (1,) * rows.ndim

    def field(name: str) -> np.ndarray:
        return np.array([getattr(g, name) for g in shapes], dtype=float).reshape(column)

    return dev.gemm_time_s(rows * field("m_scale"), field("n"), field("k"), field("count"))


@dataclass(frozen=True)
class LayerTrainCost:
    """One layer, one micro-batch, one GPU, in training."""

    fwd_s: float  # compute of the forward pass
    bwd_s: float  # compute of the backward pass
    recompute_s: float  # extra forward compute for activation recompute
    tp_comm_s: float  # tensor-parallel collectives (forward, backward and recompute), exposed part
    ep_comm_s: float  # expert all-to-all (dispatch and combine, forward and backward)
    activation_bytes: float  # kept for backward, per micro-batch
    params_local: float  # parameters this GPU holds for the layer (before ZeRO sharding)
    flops_fwd: float  # executed forward FLOPs of the layer on this GPU (hardware FLOPs)

    @property
    def compute_s(self) -> float:
        return self.fwd_s + self.bwd_s + self.recompute_s

    @property
    def total_s(self) -> float:
        return self.compute_s + self.tp_comm_s + self.ep_comm_s


def layer_train_cost(lay: LayerSpec, dev: DevicePerf, par: Parallel, params: CostParams, *, micro_batch: Any,
                     seq_len: int, recompute: str) -> LayerTrainCost:
    """Costs for one micro-batch; `micro_batch` may be a numpy array (then every time field is one too)."""
    t = layer_train_times(lay, dev, par, params, micro_batch=micro_batch, seq_len=seq_len, recompute=recompute)
    seq = token_count(lay, seq_len)
    rows = np.asarray(micro_batch, dtype=float) * seq
    split = param_split(lay, seq_len)
    expert_ways = par.ep * par.moe_tp
    params_local = split.replicated + split.tp_sharded / par.tp + split.expert / expert_ways
    flops = _executed_forward_flops(lay, par, rows, seq, params)
    return LayerTrainCost(fwd_s=t.fwd_s, bwd_s=t.bwd_s, recompute_s=t.recompute_s, tp_comm_s=t.tp_comm_s,
                          ep_comm_s=t.ep_comm_s, activation_bytes=t.activation_bytes, params_local=params_local,
                          flops_fwd=flops)


class LayerTrainTimes(NamedTuple):
    """The time and activation fields of `LayerTrainCost` (what a step's pricing needs)."""

    fwd_s: Any
    bwd_s: Any
    recompute_s: Any
    tp_comm_s: Any
    ep_comm_s: Any
    activation_bytes: Any


def layer_train_times(lay: LayerSpec, dev: DevicePerf, par: Parallel, params: CostParams, *, micro_batch: Any,
                      seq_len: int, recompute: str) -> LayerTrainTimes:
    """`layer_train_cost` without the parameter and FLOP counts."""
    return layer_train_times_by_recompute(lay, dev, par, params, micro_batch=micro_batch, seq_len=seq_len,
                                          recomputes=(recompute,))[0]


def layer_train_times_by_recompute(lay: LayerSpec, dev: DevicePerf, par: Parallel, params: CostParams, *,
                                   micro_batch: Any, seq_len: int, recomputes: Any) -> list[LayerTrainTimes]:
    """`layer_train_times` under each recompute policy in `recomputes`; the forward pass and the collectives
    they share are priced once."""
    seq = token_count(lay, seq_len)
    rows = np.asarray(micro_batch, dtype=float) * seq
    w = forward_work(lay, dev, par, params, rows=rows, context=seq, causal=True, model_seq=seq_len)
    shared = _TrainShared.of(lay, dev, par, params, w, rows)
    return [_train_times(lay, dev, par, params, shared, w, rows, seq, rec) for rec in recomputes]


@dataclass(frozen=True)
class _TrainShared:
    """What a layer's training times share across recompute policies."""

    fwd_s: Any  # forward compute (with the per-layer overhead)
    bwd_s: Any
    tp_collective_s: Any  # one tensor-parallel all-reduce, exposed part, with its fixed cost
    a2a_s: Any  # one expert all-to-all (0 without expert parallelism over data-parallel ranks)

    @classmethod
    def of(cls, lay: LayerSpec, dev: DevicePerf, par: Parallel, params: CostParams, w: ForwardWork,
           rows: Any) -> "_TrainShared":
        fwd = w.total_s + params.layer_overhead_s
        bwd = 2.0 * w.gemm_s + w.attention_bwd_s + 2.0 * w.elementwise_s + params.layer_overhead_s
        b = dev.bytes_per_el
        ar = all_reduce_s(rows * lay.hidden * b, par.tp, par.tp_bw_gbps, par.tp_latency_s)
        tp_fixed_s = params.tp_collective_overhead_for(dev.gpu.name) if par.tp > 1 else 0.0
        a2a = 0.0
        if lay.is_moe and par.ep > 1 and par.ep_mode == "dp":
            a2a_bytes = rows * lay.top_k * lay.dispatch_dim * b / (par.tp if par.sp else 1)
            a2a = all_to_all_s(a2a_bytes, par.ep, par.ep_bw_gbps, par.ep_latency_s)
        return cls(fwd_s=fwd, bwd_s=bwd, tp_collective_s=ar * (1.0 - params.tp_overlap) + tp_fixed_s, a2a_s=a2a)


def _train_times(lay: LayerSpec, dev: DevicePerf, par: Parallel, params: CostParams, shared: _TrainShared,
                 w: ForwardWork, rows: Any, seq: int, recompute: str) -> LayerTrainTimes:
    """Training times of a layer over `rows` tokens (one micro-batch) under one recompute policy."""
    fwd, bwd = shared.fwd_s, shared.bwd_s
    if recompute == "full" and lay.kind == "transformer":
        rec = fwd
    elif recompute == "selective" and lay.kind == "transformer":
        rec = w.attention_s  # Korthikanti et al.: recompute only the attention core
    else:
        rec = 0.0
    if lay.kind == "transformer":
        n_ar = 4.0 + (2.0 if recompute == "full" else 0.0)
    elif lay.kind == "embedding":
        n_ar = 1.0  # vocab-parallel lookup combines partial rows
    else:
        n_ar = 1.0  # input gradient of the vocab-parallel head
    tp_comm = n_ar * shared.tp_collective_s
    host_s = params.host_layer_for(dev.gpu.name) if lay.kind == "transformer" else 0.0
    if host_s > 0:
        # the GPU waits for this node's host: forward + backward (+ replay) + collectives take at least host_s
        # (full recompute issues the forward twice: a third more host work); the wait is booked as compute
        host_s *= 4.0 / 3.0 if recompute == "full" else 1.0
        total = fwd + bwd + rec + tp_comm
        scale = np.where(total < host_s, 1.0 + (host_s - total) / np.maximum(fwd + bwd + rec, 1e-30), 1.0)
        fwd, bwd, rec = fwd * scale, bwd * scale, rec * scale
    ep_comm = 0.0
    if lay.is_moe and par.ep > 1 and par.ep_mode == "dp":
        ep_comm = (4.0 + (2.0 if recompute == "full" else 0.0)) * shared.a2a_s
    per_token = activation_bytes_per_token(lay, seq, tp=par.tp, sp=par.sp, recompute=recompute,
                                           bytes_per_el=dev.bytes_per_el, flash=params.flash_attention,
                                           dropout=lay.dropout > 0, ep=par.ep)
    if not params.tp_splits_attention_heads and not params.flash_attention and par.tp > 1:
        # every rank keeps all heads' score matrices: the tp-split share of them, tp times over
        no_scores = activation_bytes_per_token(lay, seq, tp=par.tp, sp=par.sp, recompute=recompute,
                                               bytes_per_el=dev.bytes_per_el, flash=True,
                                               dropout=lay.dropout > 0, ep=par.ep)
        per_token += (per_token - no_scores) * (par.tp - 1)
    act = rows * per_token
    return LayerTrainTimes(fwd_s=fwd, bwd_s=bwd, recompute_s=rec, tp_comm_s=tp_comm, ep_comm_s=ep_comm,
                           activation_bytes=act * params.activation_overhead)


def _executed_forward_flops(lay: LayerSpec, par: Parallel, rows: float, seq: int, params: CostParams) -> float:
    if lay.kind == "embedding":
        return 0.0
    mm = sum(2.0 * g.n * g.k * g.m_scale * g.count
             for g in matmul_shapes(lay, par.tp, par.ep, par.moe_tp, par.ep_tokens)) * rows
    if lay.kind != "transformer":
        return mm
    span = lay.attention_span or seq
    return mm + 4.0 * rows * span * lay.num_heads / par.tp * lay.head_dim


@dataclass(frozen=True)
class LayerInferCost:
    """One layer, one GPU, one forward pass in inference (prefill of a prompt or one decode step)."""

    compute_s: float
    tp_comm_s: float
    params_local: float


def layer_infer_cost(lay: LayerSpec, dev: DevicePerf, par: Parallel, params: CostParams, *, sequences: int,
                     prompt_tokens: int, context: float, decode: bool) -> LayerInferCost:
    """One layer's inference forward on the training roofline (`forward_work`) and its collectives. Estimates
    use `layer_inference_cost`, which adds what only inference has; this is its starting point."""
    b = dev.bytes_per_el
    if decode:
        rows = float(sequences)
        w = forward_work(lay, dev, par, params, rows=rows, context=context, causal=False, kv_rows=rows)
        overhead = params.decode_layer_overhead_s
    else:
        rows = float(sequences * prompt_tokens)
        w = forward_work(lay, dev, par, params, rows=rows, context=prompt_tokens, causal=True)
        overhead = params.layer_overhead_s
    n_ar = 2.0 if lay.kind == "transformer" else 1.0
    tp = n_ar * all_reduce_s(rows * lay.hidden * b, par.tp, par.tp_bw_gbps, par.tp_latency_s)
    if lay.is_moe and par.ep > 1 and par.ep_mode == "dp":
        a2a = rows * lay.top_k * lay.dispatch_dim * b
        tp = tp + 2.0 * all_to_all_s(a2a, par.ep, par.ep_bw_gbps, par.ep_latency_s)
    split = param_split(lay, 0)
    params_local = split.replicated + split.tp_sharded / par.tp + split.expert / (par.ep * par.moe_tp)
    return LayerInferCost(compute_s=w.total_s + overhead, tp_comm_s=tp * (1.0 - params.tp_overlap),
                          params_local=params_local)


def inference_gemm_extra_s(lay: LayerSpec, dev: DevicePerf, par: Parallel, params: CostParams, rows: Any, *,
                           decode: bool) -> Any:
    """Extra time of a layer's forward GEMMs over `rows` tokens in inference, beyond the training roofline.

    Row tiles (prefill, `params.gemm_tile_rows`): a GEMM of M > tile rows runs ceil(M / tile) full row tiles, so
    it costs what M rounded up to the tile costs; a GEMM of at most one tile gets a kernel sized to it.
    Alignment (`params.gemm_misaligned_efficiency`): a block's GEMM whose local N or K is not a whole number of
    16-byte vectors cannot use the vectorised tensor-core kernels and runs at that fraction of the GEMM
    efficiency (the head is exempt: stacks pad the vocabulary to a multiple of 128 x TP).
    Operand traffic (`params.gemm_memory_efficiency`): the achieved fraction of HBM bandwidth while a GEMM streams
    its operands, where that differs from streaming elementwise kernels (a batch-1 decode's skinny GEMMs read
    every weight once and reach less of the bandwidth than a copy). All off at the defaults."""
    rows = np.asarray(rows, dtype=float)
    zero = np.zeros_like(rows) if rows.ndim else 0.0
    tile = 0 if decode else params.gemm_tile_rows
    if lay.kind == "embedding" or (tile <= 1 and params.gemm_misaligned_efficiency == 1.0
                                   and params.gemm_memory_efficiency <= 0.0):
        return zero
    vector = max(16 // dev.bytes_per_el, 1)
    adjusted = dev
    if params.gemm_memory_efficiency > 0.0:
        adjusted = replace(dev, memory_gbps=dev.gpu.memory_bandwidth_gbps * params.gemm_memory_efficiency)
    slow = replace(adjusted, gemm_efficiency=dev.gemm_efficiency * params.gemm_misaligned_efficiency)
    extra = zero
    for g in matmul_shapes(lay, par.tp, par.ep, par.moe_tp, par.ep_tokens):
        m = rows * g.m_scale
        padded = np.where(m > tile, np.ceil(m / tile) * tile, m) if tile > 1 else m
        aligned = lay.kind != "transformer" or all(float(x).is_integer() and int(x) % vector == 0 for x in (g.n, g.k))
        d = adjusted if aligned else slow
        extra = extra + d.gemm_time_s(padded, g.n, g.k, g.count) - dev.gemm_time_s(m, g.n, g.k, g.count)
    return extra


def unfused_prefill_attention_s(lay: LayerSpec, dev: DevicePerf, par: Parallel, params: CostParams, *, rows: Any,
                                context: float) -> Any:
    """The attention core of an inference prefill without flash attention: the score matrix is written by
    Q K^T, read and written by the (fused scale-mask-) softmax and read by the product with V, four trips in
    the activation dtype; with no backward and no dropout nothing else of it is kept or re-read."""
    b = dev.bytes_per_el
    heads_local = lay.num_heads / par.tp
    ctx = min(context, lay.attention_span) if lay.attention_span else context
    cf = params.causal_factor if lay.causal else 1.0
    flops = 4.0 * rows * ctx * heads_local * lay.head_dim * cf
    io = rows * (lay.num_heads * 2 + lay.num_kv_heads * 2) * lay.head_dim * b / par.tp
    io = io + rows * ctx * heads_local * 4 * b * cf
    return dev.attention_time_s(flops, io)


def layer_inference_cost(lay: LayerSpec, dev: DevicePerf, par: Parallel, params: CostParams, *, sequences: int,
                         prompt_tokens: int, context: float, decode: bool) -> LayerInferCost:
    """One layer's forward in inference (a prefill of `prompt_tokens` per sequence, or one decode step).

    Beyond `layer_infer_cost`: the prefill's unfused attention moves its scores as inference does
    (`unfused_prefill_attention_s`), its GEMMs run whole row tiles (`params.gemm_tile_rows`), and a transformer
    block takes at least the host's time to issue it (`params.infer_host_layer_s` / `decode_host_layer_s`, plus
    `infer_host_collective_s` per tensor- or expert-parallel collective): kernels launch asynchronously, so
    GPU work below that floor hides behind the host; the wait is booked as compute.
    """
    c = layer_infer_cost(lay, dev, par, params, sequences=sequences, prompt_tokens=prompt_tokens, context=context,
                         decode=decode)
    compute = c.compute_s
    rows = float(sequences) * (1 if decode else prompt_tokens)
    if not decode and lay.kind == "transformer" and not params.flash_attention:
        w = forward_work(lay, dev, par, params, rows=rows, context=prompt_tokens, causal=True)
        compute = compute - float(w.attention_s) + float(unfused_prefill_attention_s(
            lay, dev, par, params, rows=rows, context=prompt_tokens))
    compute = compute + float(inference_gemm_extra_s(lay, dev, par, params, rows, decode=decode))
    if lay.kind == "transformer":
        collectives = (2 if par.tp > 1 else 0) + (2 if lay.is_moe and par.ep > 1 and par.ep_mode == "dp" else 0)
        host = (params.decode_host_layer_s if decode else params.infer_host_layer_s) \
            + collectives * params.infer_host_collective_s
        compute = compute + max(host - (compute + c.tp_comm_s), 0.0)
    return LayerInferCost(compute_s=compute, tp_comm_s=c.tp_comm_s, params_local=c.params_local)
