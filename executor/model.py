"""The reference decoder-only transformer, built from a `ModelSpec`.

Model code only: no parallelism here (that is `executor.parallelize`), as in
torchtitan. Entries of `ModelSpec.layers` become modules of one
`nn.ModuleDict` keyed by their index ("0" = embedding, ..., last = head), and
`Transformer.forward` runs whatever entries are present, so a pipeline stage
deletes the entries it does not own and keeps working.

Styles follow the spec: Llama (RMSNorm, RoPE, grouped-query attention, SwiGLU),
GPT-2 (LayerNorm, learned positions, GELU, biases, tied embeddings) and MoE
blocks (top-k router, routed experts, optional shared experts). Tied embeddings
are materialised as two parameters with the same initial values; training keeps
them equal by summing their gradients (`executor.parallelize.finalize_grads`),
which also works when embedding and head sit on different pipeline stages.

Modules read their weights through `local()`: after tensor parallelism some
weights are DTensors and these modules compute on the local shard (the
parallel code sets up the collectives around them), so no activation ever
goes through DTensor dispatch.

Fused projections, laid out so that a contiguous split of the rows over any
tensor-parallel degree that divides the KV heads (or the MLP width) gives
every rank whole units: `attn.wqkv` holds, per KV group, its n_rep query
heads, then its key head, then its value head; `w13` (gated MLPs) interleaves
gate and up rows (gate 0, up 0, gate 1, up 1, ...). Initial values are drawn
per logical projection (wq, wk, wv, w1, w3) and placed into the fused layout,
so the model is the same function of the seed as with separate projections.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from costmodel.model import LayerSpec, ModelSpec

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch 2.4
    from torch.distributed._tensor import DTensor  # type: ignore

from .errors import UnsupportedPlanError

INIT_STD = 0.02


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (differentiable), or the tensor itself."""
    if not isinstance(t, DTensor):
        return t
    if torch.compiler.is_compiling():
        return t.to_local()
    return _LocalShard.apply(t) if t.requires_grad and torch.is_grad_enabled() else t._local_tensor


class _LocalShard(torch.autograd.Function):
    """`DTensor.to_local()` for parameters, without its per-call cost: the local gradient is wrapped with the
    parameter's own spec (same placements, shape and strides), as `to_local()` does after checking that."""

    @staticmethod
    def forward(ctx, p):
        ctx.spec = p._spec
        return p._local_tensor.view_as(p._local_tensor)

    @staticmethod
    def backward(ctx, grad):
        return DTensor(grad.contiguous(), copy.copy(ctx.spec), requires_grad=False)


class Linear(nn.Linear):
    """`nn.Linear` that multiplies by the local shard of a (possibly DTensor) weight, or by `_weight_cast`, a
    low-precision copy of it that the training loop may set for one optimizer step."""

    _weight_cast: torch.Tensor | None = None

    def compute_weight(self) -> torch.Tensor:
        """The full-precision tensor this layer multiplies by (what `_weight_cast` copies)."""
        return local(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._weight_cast if self._weight_cast is not None else self.compute_weight()
        return F.linear(x, w, None if self.bias is None else local(self.bias))


def _norm(kind: str, hidden: int, eps: float) -> nn.Module:
    return nn.RMSNorm(hidden, eps=eps) if kind == "rmsnorm" else nn.LayerNorm(hidden, eps=eps)


def _act(name: str):
    return {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}[name]


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """Rotary tables (rotate-half convention) for `positions` (1-D): cos, sin of shape (len, head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = torch.outer(positions.to(torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


@dataclass
class KVCache:
    """Keys and values of one attention layer for `max_len` positions (local heads only)."""

    k: torch.Tensor  # (batch, kv_heads, max_len, head_dim)
    v: torch.Tensor


class Embedding(nn.Module):
    def __init__(self, spec: LayerSpec, position_rows: int):
        super().__init__()
        self.tok = nn.Embedding(spec.vocab, spec.hidden)
        self.learned_positions = spec.position == "learned"
        if self.learned_positions:
            self.pos = nn.Embedding(position_rows, spec.hidden)

    def forward(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        h = self.tok(tokens)
        if self.learned_positions:
            positions = torch.arange(start_pos, start_pos + tokens.shape[1], device=tokens.device)
            h = h + self.pos(positions)
        return h


class Attention(nn.Module):
    """Grouped-query attention through `F.scaled_dot_product_attention`.

    One fused projection `wqkv` (rows: per KV group, n_rep query heads, one key
    head, one value head). Head counts come from the weight shapes at run time,
    so a tensor-parallel rank holding kv_heads/tp whole groups runs unchanged,
    and the sequence length from the projection's output, so an input that
    holds a sequence shard (sequence parallelism gathers it in the projection)
    works too.
    """

    def __init__(self, spec: LayerSpec, rope_theta: float):
        super().__init__()
        h, hd = spec.hidden, spec.head_dim
        self.head_dim = hd
        self.n_rep = spec.num_heads // spec.num_kv_heads
        self.wqkv = Linear(h, (spec.num_heads + 2 * spec.num_kv_heads) * hd, bias=spec.bias)
        self.wo = Linear(spec.num_heads * hd, h, bias=spec.bias)
        self.rope = spec.position == "rope"
        self.rope_theta = rope_theta
        self.causal = spec.causal
        self.span = spec.attention_span

    # (cos, sin) for positions 0..rows-1, fp32, shared by the layers of one head size (bind_rope_tables);
    # a plain attribute, not a buffer, so that moving or casting the model keeps one copy per device
    rope_table: tuple[torch.Tensor, torch.Tensor] | None = None

    def local_kv_heads(self) -> int:
        return local(self.wqkv.weight).shape[0] // ((self.n_rep + 2) * self.head_dim)

    def forward(self, x: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        qkv = self.wqkv(x)
        b, s = qkv.shape[:2]
        qkv = qkv.view(b, s, -1, self.n_rep + 2, self.head_dim)
        q = qkv[:, :, :, :self.n_rep].reshape(b, s, -1, self.head_dim).transpose(1, 2)
        k = qkv[:, :, :, self.n_rep].transpose(1, 2)
        v = qkv[:, :, :, self.n_rep + 1].transpose(1, 2)
        if self.rope:
            cos, sin = self._rope(start_pos, s, x.device, q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            cache.k[:b, :, start_pos:start_pos + s] = k
            cache.v[:b, :, start_pos:start_pos + s] = v
            k = cache.k[:b, :, :start_pos + s]
            v = cache.v[:b, :, :start_pos + s]
        if self.n_rep > 1:  # explicit repeat keeps every SDPA backend (flash included) available
            k = k.repeat_interleave(self.n_rep, dim=1)
            v = v.repeat_interleave(self.n_rep, dim=1)
        mask, is_causal = self._mask(s, k.shape[2], start_pos, x.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))

    def _rope(self, start_pos: int, length: int, device: torch.device, dtype: torch.dtype):
        # A table read, not cos/sin recomputed: compiled, the table's arithmetic would be fused into the
        # rotation and evaluated for every head (a tenth of a block's element-wise time on an H200).
        table = self.rope_table
        if table is not None and start_pos + length <= table[0].shape[0] and table[0].device == device:
            return table[0][start_pos:start_pos + length].to(dtype), table[1][start_pos:start_pos + length].to(dtype)
        return rope_cos_sin(torch.arange(start_pos, start_pos + length, device=device), self.head_dim,
                            self.rope_theta, dtype)

    def _mask(self, q_len: int, kv_len: int, start_pos: int, device: torch.device):
        if not self.causal and not self.span:
            return None, False
        if self.causal and not self.span and start_pos == 0 and q_len == kv_len:
            return None, True
        qpos = torch.arange(start_pos, start_pos + q_len, device=device)[:, None]
        kpos = torch.arange(kv_len, device=device)[None, :]
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
        if self.causal:
            mask &= kpos <= qpos
        if self.span:
            mask &= (qpos - kpos).abs() < self.span
        return mask, False


class MLP(nn.Module):
    """Dense feed-forward: SwiGLU-style (fused gate/up `w13`, rows interleaved, then down `w2`) or
    plain (up `w1`, down `w2`)."""

    def __init__(self, hidden: int, ffn: int, gated: bool, activation: str, bias: bool):
        super().__init__()
        self.act = _act(activation)
        self.gated = gated
        if gated:
            self.w13 = Linear(hidden, 2 * ffn, bias=bias)
        else:
            self.w1 = Linear(hidden, ffn, bias=bias)
        self.w2 = Linear(ffn, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.w13(x).unflatten(-1, (-1, 2)).unbind(-1)
            return self.w2(self.act(gate) * up)
        return self.w2(self.act(self.w1(x)))


class Experts(nn.Module):
    """`num_experts` feed-forward experts stored as stacked weights (expert, out, in).

    After expert parallelism a rank holds a slice of the experts (`first_expert`
    onward) and, with expert tensor parallelism, a slice of each expert's hidden
    width; the weights are then plain local tensors.
    """

    def __init__(self, num_experts: int, dim: int, ffn: int, gated: bool, activation: str, bias: bool):
        super().__init__()
        self.act = _act(activation)
        self.gated = gated
        self.first_expert = 0
        self.w1 = nn.Parameter(torch.empty(num_experts, ffn, dim))
        self.w3 = nn.Parameter(torch.empty(num_experts, ffn, dim)) if gated else None
        self.w2 = nn.Parameter(torch.empty(num_experts, dim, ffn))
        self.b1 = nn.Parameter(torch.zeros(num_experts, ffn)) if bias else None
        self.b3 = nn.Parameter(torch.zeros(num_experts, ffn)) if bias and gated else None
        self.b2 = nn.Parameter(torch.zeros(num_experts, dim)) if bias else None

    @property
    def num_local(self) -> int:
        return self.w1.shape[0]

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """`x` holds tokens grouped by local expert, `counts[e]` rows for local expert e."""
        outs = []
        for e, rows in enumerate(torch.split(x, counts)):
            h = F.linear(rows, self.w1[e], None if self.b1 is None else self.b1[e])
            h = self.act(h)
            if self.w3 is not None:
                h = h * F.linear(rows, self.w3[e], None if self.b3 is None else self.b3[e])
            outs.append(F.linear(h, self.w2[e], None if self.b2 is None else self.b2[e]))
        return torch.cat(outs) if outs else x.new_zeros(0, self.w2.shape[1])


class Router(nn.Module):
    """Top-k router (Mixtral style: softmax over the k best logits)."""

    def __init__(self, hidden: int, num_experts: int, top_k: int):
        super().__init__()
        self.gate = Linear(hidden, num_experts, bias=False)
        self.top_k = top_k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.gate(x)
        top_logits, top_idx = torch.topk(logits.float(), self.top_k, dim=-1)
        return torch.softmax(top_logits, dim=-1).to(x.dtype), top_idx


class MoE(nn.Module):
    """Routed experts (+ shared experts). Dispatch and combine go through
    `self.dispatcher`, which expert parallelism replaces; the default runs every
    expert locally."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        h, d = spec.hidden, spec.dispatch_dim
        self.num_experts = spec.num_experts
        self.router = Router(h, spec.num_experts, spec.top_k)
        self.down = Linear(h, d, bias=False) if d != h else None
        self.up = Linear(d, h, bias=False) if d != h else None
        self.experts = Experts(spec.num_experts, d, spec.expert_ffn_hidden, spec.gated_mlp, spec.activation, spec.bias)
        self.shared = (MLP(h, spec.shared_experts * spec.shared_ffn_hidden, spec.gated_mlp, spec.activation, spec.bias)
                       if spec.shared_experts else None)
        self.dispatcher = LocalDispatch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        flat = x.reshape(-1, h)
        weights, idx = self.router(flat)
        xin = flat if self.down is None else self.down(flat)
        y = self.dispatcher(xin, weights, idx, self.experts, self.num_experts)
        if self.up is not None:
            y = self.up(y)
        out = y.view(b, s, h)
        if self.shared is not None:
            out = out + self.shared(x)
        return out


class LocalDispatch:
    """Every expert on this rank: group token copies by expert, run, weight, sum."""

    def __call__(self, x: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor, experts: Experts,
                 num_experts: int) -> torch.Tensor:
        n, k = idx.shape
        flat_idx = idx.reshape(-1)
        order = torch.argsort(flat_idx, stable=True)
        counts = torch.bincount(flat_idx, minlength=num_experts).tolist()
        out_sorted = experts(x[order // k], counts)
        return combine(out_sorted, order, weights, n, x.shape[-1])


def combine(out_sorted: torch.Tensor, order: torch.Tensor, weights: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Undo the sort of token copies, weight each by its router weight and sum the k copies per token."""
    k = weights.shape[1]
    unsorted = torch.empty_like(out_sorted)
    unsorted[order] = out_sorted
    return (unsorted.view(n, k, dim) * weights.unsqueeze(-1)).sum(dim=1)


class Block(nn.Module):
    def __init__(self, spec: LayerSpec, rope_theta: float, eps: float):
        super().__init__()
        self.attn_norm = _norm(spec.norm, spec.hidden, eps)
        self.attn = Attention(spec, rope_theta)
        self.ffn_norm = _norm(spec.norm, spec.hidden, eps)
        self.ffn = MoE(spec) if spec.is_moe else MLP(spec.hidden, spec.ffn_hidden, spec.gated_mlp, spec.activation,
                                                      spec.bias)

    def forward(self, x: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), start_pos=start_pos, cache=cache)
        return x + self.ffn(self.ffn_norm(x))


class Head(nn.Module):
    def __init__(self, spec: LayerSpec, eps: float):
        super().__init__()
        self.norm = _norm(spec.norm, spec.hidden, eps)
        self.proj = Linear(spec.hidden, spec.vocab, bias=False)
        self.tied = spec.tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class Transformer(nn.Module):
    """Entries of `spec.layers` in an `nn.ModuleDict` keyed by index; runs the entries present."""

    def __init__(self, spec: ModelSpec, max_positions: int | None = None):
        super().__init__()
        check_supported(spec)
        self.spec = spec
        rows = max_positions or spec.seq_len
        self.rope_rows = rows
        mods: dict[str, nn.Module] = {}
        for i, lay in enumerate(spec.layers):
            if lay.kind == "embedding":
                mods[str(i)] = Embedding(lay, lay.seq_len or rows)
            elif lay.kind == "transformer":
                mods[str(i)] = Block(lay, spec.rope_theta, spec.norm_eps)
            else:
                mods[str(i)] = Head(lay, spec.norm_eps)
        self.layers = nn.ModuleDict(mods)

    def forward(self, x: torch.Tensor, start_pos: int = 0, caches: dict[str, KVCache] | None = None) -> torch.Tensor:
        for key, layer in self.layers.items():
            kind = self.spec.layers[int(key)].kind
            if kind == "transformer":
                x = layer(x, start_pos=start_pos, cache=None if caches is None else caches.get(key))
            elif kind == "embedding":
                x = layer(x, start_pos=start_pos)
            else:
                x = layer(x)
        return x

    def new_caches(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> dict[str, KVCache]:
        """Empty KV caches for the blocks present, sized from the (possibly sharded) weights."""
        caches = {}
        for key, layer in self.layers.items():
            layer = getattr(layer, "_checkpoint_wrapped_module", layer)
            if isinstance(layer, Block):
                hd = layer.attn.head_dim
                shape = (batch, layer.attn.local_kv_heads(), max_len, hd)
                caches[key] = KVCache(torch.zeros(shape, dtype=dtype, device=device),
                                      torch.zeros(shape, dtype=dtype, device=device))
        return caches


def check_supported(spec: ModelSpec) -> None:
    """Refuse model features the reference transformer does not build."""
    kinds = [lay.kind for lay in spec.layers]
    if kinds.count("embedding") != 1 or kinds[0] != "embedding" or kinds.count("head") != 1 or kinds[-1] != "head":
        raise UnsupportedPlanError(
            f"model {spec.name!r}: the executor runs decoder-only models laid out as embedding, blocks, head; "
            f"got layer kinds {kinds}")
    hidden = {lay.hidden for lay in spec.layers}
    if len(hidden) != 1:
        raise UnsupportedPlanError(f"model {spec.name!r}: layers of different widths {sorted(hidden)} are not "
                                   f"supported by the reference transformer; use one hidden size")
    for lay in spec.blocks:
        if lay.seq_len and lay.seq_len != spec.seq_len:
            raise UnsupportedPlanError(
                f"model {spec.name!r}: block {lay.name!r} has its own seq_len {lay.seq_len}; the reference "
                f"transformer runs one sequence length through every block")
        if lay.head_dim % 2 and lay.position == "rope":
            raise UnsupportedPlanError(f"model {spec.name!r}: RoPE needs an even head_dim, got {lay.head_dim}")


def init_weights(model: Transformer, seed: int) -> None:
    """Deterministic initialisation by parameter name: N(0, 0.02) for matrices and
    embeddings (output projections scaled by 1/sqrt(2 x blocks), as GPT-2 does),
    ones for norm weights, zeros for biases. The same seed gives the same values
    whatever device or layout, since each tensor draws from its own CPU generator.
    Fused projections draw each logical projection under its own name and place
    it (see the module docstring). Tied heads copy the embedding."""
    n_blocks = max(model.spec.num_layers, 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            lay = model.spec.layers[int(name.split(".")[1])]
            values = _init_values(name, tuple(p.shape), seed, n_blocks, lay)
            p.copy_(values.to(device=p.device, dtype=p.dtype))
        emb_key = "0"
        head_key = str(len(model.spec.layers) - 1)
        if head_key in model.layers and model.layers[head_key].tied:
            emb_name = f"layers.{emb_key}.tok.weight"
            model.layers[head_key].proj.weight.copy_(_init_values(emb_name, tuple(model.layers[head_key].proj.weight.shape),
                                                                   seed, n_blocks, model.spec.layers[0]))
    bind_rope_tables(model)


def bind_rope_tables(model: Transformer) -> None:
    """Give every rotary attention layer the (cos, sin) table of its head size, one table per size and device."""
    tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    for m in model.modules():
        if not (isinstance(m, Attention) and m.rope):
            continue
        device = local(m.wqkv.weight).device
        if device.type == "meta":
            continue
        key = (m.head_dim, m.rope_theta, model.rope_rows, device)
        if key not in tables:
            tables[key] = rope_cos_sin(torch.arange(model.rope_rows, device=device), m.head_dim, m.rope_theta,
                                       torch.float32)
        m.rope_table = tables[key]


def _init_values(name: str, shape: tuple[int, ...], seed: int, n_blocks: int, lay: LayerSpec) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    if "norm" in name and leaf == "weight":
        return torch.ones(shape)
    if leaf in ("bias", "b1", "b2", "b3"):
        return torch.zeros(shape)
    if name.endswith("wqkv.weight"):
        n_kv, hd = lay.num_kv_heads, lay.head_dim
        n_rep = lay.num_heads // n_kv
        q, k, v = (_draw(name.replace("wqkv", w), (heads * hd, shape[1]), seed, n_blocks)
                   for w, heads in (("wq", lay.num_heads), ("wk", n_kv), ("wv", n_kv)))
        return torch.cat([q.view(n_kv, n_rep, hd, -1), k.view(n_kv, 1, hd, -1), v.view(n_kv, 1, hd, -1)],
                         dim=1).reshape(shape)
    if name.endswith("w13.weight"):
        half = (shape[0] // 2, shape[1])
        gate, up = (_draw(name.replace("w13", w), half, seed, n_blocks) for w in ("w1", "w3"))
        return torch.stack([gate, up], dim=1).reshape(shape)
    return _draw(name, shape, seed, n_blocks)


def _draw(name: str, shape: tuple[int, ...], seed: int, n_blocks: int) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    std = INIT_STD
    if name.endswith(("wo.weight", "w2.weight")) or leaf == "w2":
        std = INIT_STD / math.sqrt(2 * n_blocks)
    return torch.randn(shape, generator=gen) * std


def build_model(spec: ModelSpec, *, seed: int = 0, device: str | torch.device = "cpu",
                max_positions: int | None = None) -> Transformer:
    """The full model with deterministic weights (use device='meta' for shapes only)."""
    device = torch.device(device)
    if device.type == "meta":
        with torch.device("meta"):
            return Transformer(spec, max_positions)
    model = Transformer(spec, max_positions).to(device)
    init_weights(model, seed)
    return model


def param_count(module: nn.Module) -> int:
    return sum(local(p).numel() for p in module.parameters())
