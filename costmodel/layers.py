"""Per-layer quantities derived from a `LayerSpec`: parameters, matrix shapes,
FLOPs, activation bytes and communication volume.

All functions are pure. "Per token" means per token of the layer's own sequence
(`LayerSpec.seq_len` where it differs from the model's).
"""
from __future__ import annotations

from dataclasses import dataclass

from .model import LayerSpec


def _norm_params(lay: LayerSpec) -> int:
    return lay.hidden * (2 if lay.norm == "layernorm" else 1)


def _mlp_params(d_in: int, ffn: int, gated: bool, bias: bool) -> int:
    mats = (3 if gated else 2) * d_in * ffn
    return mats + ((ffn * (2 if gated else 1) + d_in) if bias else 0)


@dataclass(frozen=True)
class ParamSplit:
    """Where a layer's parameters live under parallelism."""

    replicated: int  # norms, router, biases of row-parallel outputs: copied on every TP rank
    tp_sharded: int  # attention and dense-MLP matrices, vocab tables: split across TP ranks
    expert: int  # routed experts: split across EP ranks (and moe_tp)

    @property
    def total(self) -> int:
        return self.replicated + self.tp_sharded + self.expert


def param_split(lay: LayerSpec, seq_len: int = 0) -> ParamSplit:
    h = lay.hidden
    if lay.kind == "embedding":
        pos = (lay.seq_len or seq_len) * h if lay.position == "learned" else 0
        return ParamSplit(replicated=pos, tp_sharded=lay.vocab * h, expert=0)
    if lay.kind == "head":
        return ParamSplit(replicated=_norm_params(lay), tp_sharded=0 if lay.tied else lay.vocab * h, expert=0)
    q = lay.num_heads * lay.head_dim
    kv = lay.num_kv_heads * lay.head_dim
    attn = h * q + 2 * h * kv + q * h
    attn_bias = (q + 2 * kv) if lay.bias else 0
    replicated = 2 * _norm_params(lay) + (h if lay.bias else 0) * 2  # two norms; biases after row-parallel matmuls
    sharded = attn + attn_bias
    expert = 0
    if lay.is_moe:
        d = lay.dispatch_dim
        replicated += h * lay.num_experts  # router
        if lay.moe_dispatch_dim and lay.moe_dispatch_dim != h:
            sharded += 2 * h * d  # BigMac down- and up-projection around the experts
        expert = lay.num_experts * _mlp_params(d, lay.expert_ffn_hidden, lay.gated_mlp, lay.bias)
        if lay.shared_experts:
            sharded += lay.shared_experts * _mlp_params(h, lay.shared_ffn_hidden, lay.gated_mlp, lay.bias)
    else:
        sharded += _mlp_params(h, lay.ffn_hidden, lay.gated_mlp, lay.bias) - (h if lay.bias else 0)
    return ParamSplit(replicated=replicated, tp_sharded=sharded, expert=expert)


def layer_params(lay: LayerSpec, seq_len: int = 0) -> int:
    return param_split(lay, seq_len).total


def layer_active_params(lay: LayerSpec, seq_len: int = 0) -> int:
    split = param_split(lay, seq_len)
    if not lay.is_moe:
        return split.total
    per_expert = split.expert // lay.num_experts
    return split.replicated + split.tp_sharded + lay.top_k * per_expert


@dataclass(frozen=True)
class Gemm:
    """A matrix product of one token row block: (m x k) @ (k x n), `count` times.

    `m` is left symbolic as tokens x `m_scale` (tokens routed to one expert get a
    fraction of the batch). `n` and `k` are already divided by the parallel
    degrees that split them.
    """

    name: str
    n: float
    k: float
    m_scale: float = 1.0
    count: float = 1.0


def matmul_shapes(lay: LayerSpec, tp: int = 1, ep: int = 1, moe_tp: int | None = None,
                  ep_tokens: float = 1.0) -> list[Gemm]:
    """The forward GEMMs of a layer on one GPU, for `tokens` rows of input.

    `ep_tokens` scales the rows an expert GEMM sees relative to the local token
    count: with Megatron-style EP (experts carved out of DP) an expert receives
    tokens from all `ep` replicas, so the caller passes ep there.
    """
    moe_tp = tp if moe_tp is None else moe_tp
    h = lay.hidden
    if lay.kind == "embedding":
        return []
    if lay.kind == "head":
        return [Gemm("lm_head", n=lay.vocab / tp, k=h)]
    q = lay.num_heads * lay.head_dim
    kv = lay.num_kv_heads * lay.head_dim
    out = [Gemm("qkv", n=(q + 2 * kv) / tp, k=h), Gemm("attn_out", n=h, k=q / tp)]
    up = 2 if lay.gated_mlp else 1
    if lay.is_moe:
        d = lay.dispatch_dim
        out.append(Gemm("router", n=lay.num_experts, k=h))
        if lay.moe_dispatch_dim and lay.moe_dispatch_dim != h:
            out += [Gemm("moe_down", n=d / tp, k=h), Gemm("moe_up", n=h, k=d / tp)]
        local_experts = lay.num_experts / ep
        # rows per local expert: tokens x top_k / num_experts x ep_tokens
        m_scale = lay.top_k / lay.num_experts * ep_tokens
        f = lay.expert_ffn_hidden / moe_tp
        out += [Gemm("expert_up", n=up * f, k=d, m_scale=m_scale, count=local_experts),
                Gemm("expert_down", n=d, k=f, m_scale=m_scale, count=local_experts)]
        if lay.shared_experts:
            fs = lay.shared_experts * lay.shared_ffn_hidden / tp
            out += [Gemm("shared_up", n=up * fs, k=h), Gemm("shared_down", n=h, k=fs)]
    else:
        f = lay.ffn_hidden / tp
        out += [Gemm("mlp_up", n=up * f, k=h), Gemm("mlp_down", n=h, k=f)]
    return out


def matmul_flops_per_token(lay: LayerSpec, tp: int = 1, ep: int = 1, moe_tp: int | None = None) -> float:
    """Forward matmul FLOPs per token on one GPU (all GPUs of the TP group together: x tp)."""
    return sum(2 * g.n * g.k * g.m_scale * g.count for g in matmul_shapes(lay, tp, ep, moe_tp, ep_tokens=ep))


def attention_flops_per_token(lay: LayerSpec, context: float, causal_factor: float = 1.0) -> float:
    """Forward FLOPs of scores and weighted sum (QK^T and AV) per query token, all heads.

    `context` is the number of keys a query sees on average before masking;
    `causal_factor` the fraction actually computed (0.5 for causal flash attention
    over a full sequence, 1.0 for kernels that compute the masked half too).
    """
    if lay.kind != "transformer":
        return 0.0
    return 4.0 * lay.num_heads * lay.head_dim * context * causal_factor


def model_flops_per_token(lay: LayerSpec, seq_len: int) -> float:
    """Forward model FLOPs per token (the MFU convention: matmuls plus full-sequence attention,
    no recompute; training step = 3x)."""
    if lay.kind == "embedding":
        return 0.0
    span = lay.attention_span or (lay.seq_len or seq_len)
    return matmul_flops_per_token(lay) + attention_flops_per_token(lay, span, 1.0)


def activation_bytes_per_token(lay: LayerSpec, seq_len: int, *, tp: int = 1, sp: bool = False,
                               recompute: str = "none", bytes_per_el: int = 2, flash: bool = True,
                               dropout: bool = False, ep: int = 1) -> float:
    """Bytes a layer keeps for backward, per token of one micro-batch, on one GPU.

    Follows Korthikanti et al. (2022), generalised to grouped-query attention,
    gated MLPs and MoE. Without sequence parallelism the norm inputs and the
    inputs of the first matmuls are replicated on every TP rank; with it they are
    split. `flash=True` drops the s x s softmax terms (flash attention stores only
    its output and log-sum-exp).
    """
    b = bytes_per_el
    h = lay.hidden
    rep_div = tp if sp else 1
    if lay.kind == "embedding":
        return (b * h + (h if dropout else 0)) / rep_div if recompute != "full" else 0.0
    if lay.kind == "head":
        # final-norm input, then logits (bf16) and their fp32 copy for the loss, vocab-parallel
        return b * h / rep_div + (b + 4) * lay.vocab / tp
    if recompute == "full":
        return b * h / rep_div  # only the block input is kept
    span = lay.attention_span or (lay.seq_len or seq_len)
    q = lay.num_heads * lay.head_dim
    kv = lay.num_kv_heads * lay.head_dim
    drop = 1 if dropout else 0
    # replicated (per TP rank unless SP): two norm inputs, inputs of qkv and of mlp, dropout masks
    replicated = 2 * b * h + b * h + b * h + drop * 2 * h
    # sharded: q, k, v, attention output (input of out-proj)
    sharded = b * (q + 2 * kv) + b * q
    if not flash and recompute != "selective":
        # softmax output, dropout mask and dropout output (Korthikanti et al.: 5as bytes per token in 16-bit)
        sharded += (b + drop + (b if dropout else 0)) * lay.num_heads * span
    if lay.is_moe:
        d = lay.dispatch_dim
        f = lay.expert_ffn_hidden
        # each routed copy keeps the expert input and internals; rows are spread over EP ranks, not replicated
        sharded += lay.top_k * (b * d + b * (3 * f if lay.gated_mlp else 2 * f))
        if lay.shared_experts:
            fs = lay.shared_experts * lay.shared_ffn_hidden
            sharded += b * (3 * fs if lay.gated_mlp else 2 * fs)
    else:
        f = lay.ffn_hidden
        sharded += b * (3 * f if lay.gated_mlp else 2 * f)
    return replicated / rep_div + sharded / tp


def kv_cache_bytes_per_token(lay: LayerSpec, bytes_per_el: int = 2) -> float:
    if lay.kind != "transformer":
        return 0.0
    dim = lay.kv_cache_dim or 2 * lay.num_kv_heads * lay.head_dim
    return float(dim * bytes_per_el)


def boundary_hidden(lay: LayerSpec) -> int:
    """Width of the activation a layer hands to the next one."""
    return lay.hidden
