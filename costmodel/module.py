"""A `ModelSpec` from a torch `nn.Module` and a sample input.

How the module is read:
- Blocks: the `nn.ModuleList` / `nn.ModuleDict` / `nn.Sequential` of same-typed
  children holding the most parameters (nanoGPT's `transformer.h`, Hugging Face's
  `model.layers`). Each child becomes one transformer `LayerSpec`.
- Embedding: the `nn.Embedding` outside the blocks whose rows match the head's
  outputs (or is tied to it); another `nn.Embedding` of the hidden width is a
  learned position table. Head: the last `nn.Linear` outside the blocks.
- Inside a block: attention projections by name (q/k/v/o, c_attn, qkv, ...) or
  shape; heads from attributes (`n_head`, `num_heads`, `num_key_value_heads`,
  `head_dim`, ... on the attention module, the block, the model or their
  `config`); MLP width and gating from the `nn.Linear` shapes; experts from a
  container of same-typed children inside the block, the router from a
  `Linear` with one output per expert; norm kind from the norm's parameter count
  (weight + bias = layernorm, weight only = rmsnorm).
- Parameters outside the blocks registered before them count to the embedding,
  after them to the head.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` on the sample input,
split per layer by hooks at block boundaries (everything before the first block
is the embedding's, everything after the last the head's); attention counts the
full sequence (FlopCounterMode ignores causal masks), as
`layers.attention_flops_per_token(..., causal_factor=1)` does. With
`measure_time=True` each layer's forward is also timed on the device (median of
`repeats` runs after one warm-up). Both live in a `ModuleProfile`; ask for it with
`return_profile=True` or call `profile_module`.
"""
from __future__ import annotations

import re
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import ModelConfigError
from .layers import layer_params
from .model import LayerSpec, ModelSpec


@dataclass(frozen=True)
class LayerProfile:
    """What was measured for one entry of `ModelSpec.layers`."""

    index: int  # position in ModelSpec.layers
    kind: str
    modules: tuple[str, ...]  # module paths whose parameters count here
    params: int  # parameters of those modules (shared parameters counted once)
    spec_params: int  # parameters the inferred LayerSpec implies
    flops_fwd: float  # forward FLOPs on the whole sample input (FlopCounterMode)
    time_fwd_s: float | None = None  # forward time on the sample input, median of repeats

    @property
    def params_match(self) -> bool:
        return self.params == self.spec_params


@dataclass(frozen=True)
class ModuleProfile:
    """A ModelSpec read from a module, with what was counted and measured per layer.

    `tokens` is the number of tokens in the sample input (batch x sequence);
    per-token figures are `flops_fwd / tokens` and `time_fwd_s / tokens`.
    """

    spec: ModelSpec
    layers: tuple[LayerProfile, ...]
    tokens: int
    device: str
    total_params: int  # sum(p.numel() for p in module.parameters())
    flops_fwd: float  # the whole forward
    time_fwd_s: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def flops_fwd_per_token(self) -> list[float]:
        return [lay.flops_fwd / self.tokens for lay in self.layers]

    def to_layer_times(self, gpu: str, *, samples: int, tp: int = 1) -> "LayerTimes":
        """The measured per-layer forward times as `LayerTimes` for estimate(..., layer_times=[...]).

        `samples` is the batch size of the sample input (the times are divided by it: per sample)."""
        from hardware_profiles.catalog import get_gpu
        from hardware_profiles.errors import ProfileError

        from .layertimes import LayerTimes

        if any(lay.time_fwd_s is None for lay in self.layers):
            raise ProfileError("no measured times: call from_module(..., measure_time=True)")
        return LayerTimes(model=self.spec.name, gpu=get_gpu(gpu).name, tp=tp,
                          forward_s_per_sample=tuple(lay.time_fwd_s / samples for lay in self.layers),
                          includes_tp_comm=tp == 1, source=f"measured on {self.device}")

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "tokens": self.tokens, "device": self.device,
                "total_params": self.total_params, "flops_fwd": self.flops_fwd, "time_fwd_s": self.time_fwd_s,
                "notes": list(self.notes),
                "layers": [{"index": p.index, "kind": p.kind, "modules": list(p.modules), "params": p.params,
                            "spec_params": p.spec_params, "flops_fwd": p.flops_fwd, "time_fwd_s": p.time_fwd_s}
                           for p in self.layers]}


def _import_torch() -> Any:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ModelConfigError("from_module needs PyTorch: pip install 'parplan[torch]' (torch >= 2.4)") from None
    return torch


_HEADS_ATTRS = ("num_heads", "n_head", "n_heads", "num_attention_heads", "nhead", "n_attention_heads")
_KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head", "n_head_kv", "num_kv")
_HEAD_DIM_ATTRS = ("head_dim", "head_size", "d_head", "dim_head")
_TOPK_ATTRS = ("top_k", "num_experts_per_tok", "topk", "n_activated_experts", "k", "num_selected")

_Q = re.compile(r"^(q|query|wq|q_proj|q_lin)$")
_K = re.compile(r"^(k|key|wk|k_proj|k_lin)$")
_V = re.compile(r"^(v|value|wv|v_proj|v_lin)$")
_KV = re.compile(r"^(kv|wkv|kv_proj)$")
_QKV = re.compile(r"^(c_attn|qkv|wqkv|query_key_value|qkv_proj|in_proj|attn_proj|w_qkv)$", re.I)
_ATTN = re.compile(r"(attn|attention)", re.I)
_SHARED = re.compile(r"shared", re.I)


def _int_attr(objs: Iterable[Any], names: tuple[str, ...]) -> int | None:
    for obj in objs:
        if obj is None:
            continue
        for holder in (obj, getattr(obj, "config", None)):
            if holder is None:
                continue
            for n in names:
                v = getattr(holder, n, None)
                if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                    return v
    return None


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _n_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _find_blocks(torch: Any, root: Any) -> tuple[str, list[tuple[str, Any]]]:
    nn = torch.nn
    best: tuple[int, int, str, list[tuple[str, Any]]] | None = None
    for path, m in root.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
            continue
        children = list(m.named_children())
        if not children or len({type(c) for _, c in children}) != 1:
            continue
        if not all(not isinstance(c, nn.Linear) and any(isinstance(s, (nn.Linear, nn.MultiheadAttention))
                                                         for s in c.modules()) for _, c in children):
            continue
        score = (_n_params(m), -path.count("."))
        if best is None or score > best[:2]:
            best = (score[0], score[1], path, children)
    if best is None:
        raise ModelConfigError(
            f"found no container of repeated blocks in {type(root).__name__}: from_module needs the transformer "
            f"blocks in one nn.ModuleList / nn.ModuleDict / nn.Sequential (like nanoGPT's transformer.h or "
            f"Hugging Face's model.layers)")
    prefix = best[2]
    return prefix, [(f"{prefix}.{n}" if prefix else n, c) for n, c in best[3]]


def _norm_kind(torch: Any, module: Any, hidden: int) -> str | None:
    """'layernorm' for weight + bias of `hidden`, 'rmsnorm' for a weight alone; None if none found."""
    nn = torch.nn
    for m in module.modules():
        is_norm = isinstance(m, nn.LayerNorm) or "norm" in type(m).__name__.lower()
        if not is_norm or isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            continue
        own = [p for p in m.parameters(recurse=False)]
        if not own:
            continue
        return "layernorm" if sum(p.numel() for p in own) >= 2 * hidden else "rmsnorm"
    return None


@dataclass
class _Parts:
    """Attention and MLP facts read from one block."""

    hidden: int
    q_dim: int
    kv_dim: int
    attn_paths: set[str]
    notes: list[str]


def _attention_parts(torch: Any, block: Any) -> _Parts:
    nn = torch.nn
    notes: list[str] = []
    mha = next((m for m in block.modules() if isinstance(m, nn.MultiheadAttention)), None)
    if mha is not None:
        paths = {p for p, m in block.named_modules() if m is mha or p.startswith(_path_of(block, mha) + ".")}
        return _Parts(hidden=mha.embed_dim, q_dim=mha.embed_dim, kv_dim=mha.embed_dim, attn_paths=paths, notes=notes)
    attn_path = next((p for p, m in block.named_modules()
                      if p and _ATTN.search(_leaf(p)) and not isinstance(m, nn.Linear)
                      and any(isinstance(s, nn.Linear) for s in m.modules())), None)
    linears = [(p, m) for p, m in block.named_modules() if isinstance(m, nn.Linear)]
    if attn_path is not None:
        attn_lin = [(p, m) for p, m in linears if p.startswith(attn_path + ".")]
    else:
        attn_lin = [(p, m) for p, m in linears if _Q.match(_leaf(p)) or _K.match(_leaf(p)) or _V.match(_leaf(p))
                    or _QKV.match(_leaf(p)) or _KV.match(_leaf(p))]
    if not attn_lin:
        raise ModelConfigError(
            f"block {type(block).__name__}: found no attention projections (a submodule named *attn*/*attention*, "
            f"or Linear layers named q/k/v/qkv/c_attn)")
    by = {name: [(p, m) for p, m in attn_lin if rx.match(_leaf(p))] for name, rx in
          (("q", _Q), ("k", _K), ("v", _V), ("kv", _KV), ("qkv", _QKV))}
    paths = {p for p, _ in attn_lin} | ({attn_path} if attn_path else set())
    if by["q"] and (by["k"] or by["kv"]):
        q = by["q"][0][1]
        kv_dim = by["k"][0][1].out_features if by["k"] else by["kv"][0][1].out_features // 2
        return _Parts(hidden=q.in_features, q_dim=q.out_features, kv_dim=kv_dim, attn_paths=paths, notes=notes)
    if by["qkv"]:
        fused = by["qkv"][0][1]
        return _Parts(hidden=fused.in_features, q_dim=-fused.out_features, kv_dim=0, attn_paths=paths, notes=notes)
    hidden = attn_lin[0][1].in_features
    ins = [m for _, m in attn_lin if m.in_features == hidden]
    if len(ins) >= 3:
        return _Parts(hidden=hidden, q_dim=ins[0].out_features, kv_dim=ins[1].out_features, attn_paths=paths,
                      notes=["attention projections identified by order (q, k, v)"])
    if len(ins) in (1, 2):
        return _Parts(hidden=hidden, q_dim=-ins[0].out_features, kv_dim=0, attn_paths=paths,
                      notes=["attention projection taken as fused q/k/v"])
    raise ModelConfigError(f"block {type(block).__name__}: cannot tell the attention projections apart")


def _path_of(root: Any, target: Any) -> str:
    return next(p for p, m in root.named_modules() if m is target)


def _heads(parts: _Parts, objs: list[Any], notes: list[str]) -> tuple[int, int, int]:
    """(num_heads, num_kv_heads, head_dim) from attributes and projection widths."""
    heads = _int_attr(objs, _HEADS_ATTRS)
    kv_heads = _int_attr(objs, _KV_ATTRS)
    head_dim = _int_attr(objs, _HEAD_DIM_ATTRS)
    q_dim, kv_dim = parts.q_dim, parts.kv_dim
    if q_dim < 0:  # fused q/k/v of width -q_dim
        fused = -q_dim
        if heads and kv_heads:
            head_dim = head_dim or fused // (heads + 2 * kv_heads)
            q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
        else:
            q_dim = kv_dim = fused // 3
    if heads is None:
        head_dim = head_dim or (64 if q_dim % 64 == 0 else q_dim)
        heads = max(1, q_dim // head_dim)
        notes.append(f"number of heads not found in attributes; assumed head_dim {head_dim}")
    head_dim = head_dim or q_dim // heads
    kv_heads = max(1, kv_dim // head_dim) if kv_dim else heads
    if heads % kv_heads:
        notes.append(f"kv heads {kv_heads} do not divide heads {heads}; using {heads}")
        kv_heads = heads
    return heads, kv_heads, head_dim


def _mlp_width(torch: Any, module: Any, d_in: int, skip: set[str]) -> tuple[int, bool] | None:
    """(ffn width, gated) from the Linear layers of an MLP whose input width is d_in."""
    nn = torch.nn
    lins = [m for p, m in module.named_modules() if isinstance(m, nn.Linear) and not any(
        p == s or p.startswith(s + ".") for s in skip)]
    downs = [m for m in lins if m.out_features == d_in and m.in_features != d_in]
    ups = [m for m in lins if m.in_features == d_in and m not in downs]
    if not downs:
        return None
    ffn = downs[-1].in_features
    n_up = sum(1 for m in ups if m.out_features == ffn)
    gated = n_up >= 2 or any(m.out_features == 2 * ffn for m in ups)
    return ffn, gated


def _block_spec(torch: Any, root: Any, path: str, block: Any, position: str,
                notes: list[str]) -> LayerSpec:
    nn = torch.nn
    parts = _attention_parts(torch, block)
    h = parts.hidden
    attn_obj = next((m for p, m in block.named_modules() if p in parts.attn_paths and not isinstance(m, nn.Linear)),
                    None)
    local: list[str] = list(parts.notes)
    heads, kv_heads, head_dim = _heads(parts, [attn_obj, block, root], local)
    skip = set(parts.attn_paths)
    # experts: a container of same-typed children with Linear layers inside the block, outside attention
    experts_path, experts = None, []
    for p, m in block.named_modules():
        if not p or any(p == s or p.startswith(s + ".") for s in skip):
            continue
        if isinstance(m, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
            kids = [c for _, c in m.named_children()]
            if len(kids) >= 2 and len({type(c) for c in kids}) == 1 and all(
                    not isinstance(c, nn.Linear) and any(isinstance(s, nn.Linear) for s in c.modules())
                    for c in kids):
                experts_path, experts = p, kids
                break
    act = "gelu"
    for m in block.modules():
        if isinstance(m, nn.SiLU):
            act = "silu"
        elif isinstance(m, nn.ReLU):
            act = "relu"
        elif isinstance(m, nn.GELU):
            act = "gelu"
    bias = any(isinstance(m, nn.Linear) and m.bias is not None for m in block.modules()) or (
        any(isinstance(m, nn.MultiheadAttention) and m.in_proj_bias is not None for m in block.modules()))
    norm = _norm_kind(torch, block, h)
    if norm is None:
        norm = "rmsnorm"
        local.append("no norm parameters found in the block; counted as RMSNorm")
    common = dict(kind="transformer", hidden=h, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                  norm=norm, bias=bias, position=position, name=path)
    if experts:
        n_exp = len(experts)
        router = next((m for p, m in block.named_modules() if isinstance(m, nn.Linear)
                       and m.out_features == n_exp and not p.startswith(experts_path + ".")), None)
        exp_in = next((m.in_features for m in experts[0].modules() if isinstance(m, nn.Linear)), h)
        width = _mlp_width(torch, experts[0], exp_in, set())
        if width is None:
            raise ModelConfigError(f"block {path}: cannot read the expert MLP width")
        moe_parent = experts_path.rsplit(".", 1)[0] if "." in experts_path else ""
        moe_obj = dict(block.named_modules()).get(moe_parent, block)
        top_k = _int_attr([moe_obj, block, root], _TOPK_ATTRS)
        if top_k is None or top_k > n_exp:
            top_k = min(2, n_exp)
            local.append(f"top-k not found in attributes; assumed {top_k}")
        if router is None:
            local.append("no router Linear with one output per expert found")
        shared_path = next((p for p, m in block.named_modules() if p and _SHARED.search(_leaf(p))
                            and not isinstance(m, nn.Linear)), None)
        shared_w = _mlp_width(torch, dict(block.named_modules())[shared_path], h, set()) if shared_path else None
        if act == "gelu" and width[1] and not any(isinstance(m, nn.GELU) for m in block.modules()):
            act = "silu"
        spec = LayerSpec(num_experts=n_exp, top_k=top_k, expert_ffn_hidden=width[0], gated_mlp=width[1],
                         moe_dispatch_dim=exp_in if exp_in != h else 0, shared_experts=1 if shared_w else 0,
                         shared_ffn_hidden=shared_w[0] if shared_w else 0, activation=act, **common)
    else:
        width = _mlp_width(torch, block, h, skip)
        if width is None:
            raise ModelConfigError(f"block {path}: found no MLP (a Linear back to the hidden width {h})")
        if act == "gelu" and width[1] and not any(isinstance(m, nn.GELU) for m in block.modules()):
            act = "silu"
        spec = LayerSpec(ffn_hidden=width[0], gated_mlp=width[1], activation=act, **common)
    for n in local:
        note = f"{path}: {n}"
        if note not in notes:
            notes.append(note)
    return spec


def _to_device(torch: Any, x: Any, device: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(torch, v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to_device(torch, v, device) for k, v in x.items()}
    return x


def _first_tensor(torch: Any, x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x
    values = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else ()
    for v in values:
        t = _first_tensor(torch, v)
        if t is not None:
            return t
    return None


def _call(module: Any, x: Any) -> Any:
    if isinstance(x, dict):
        return module(**x)
    if isinstance(x, (list, tuple)):
        return module(*x)
    return module(x)


def _flop_mapping(torch: Any) -> dict[Any, Any]:
    """FlopCounterMode misses the CPU flash-attention kernel of scaled_dot_product_attention; count it."""
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    count = getattr(flop_counter, "sdpa_flop_count", None)
    if op is None or count is None:
        return {}

    def cpu_sdpa(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return count(q, k, v)

    return {op: cpu_sdpa}


class _Segments:
    """Hooks on the blocks that split a running counter (FLOPs or clock) at block boundaries.

    Block i gets its own forward plus any work between its end and the next
    block's start; work before the first block is the embedding's, after the last
    block the head's.
    """

    def __init__(self, blocks: list[Any], read: Any):
        self.read = read
        self.n = len(blocks)
        self.reset()
        self.handles = []
        for i, b in enumerate(blocks):
            self.handles.append(b.register_forward_pre_hook(lambda m, a, i=i: self._enter(i)))
            self.handles.append(b.register_forward_hook(lambda m, a, o, i=i: self._leave(i)))

    def reset(self) -> None:
        self.per_block = [0.0] * self.n
        self.entered: dict[int, float] = {}
        self.first: float | None = None
        self.last: tuple[int, float] | None = None  # (block, value) at the most recent block end

    def _enter(self, i: int) -> None:
        now = self.read()
        if self.first is None:
            self.first = now
        elif self.last is not None:
            self.per_block[self.last[0]] += now - self.last[1]
            self.last = None
        self.entered[i] = now

    def _leave(self, i: int) -> None:
        now = self.read()
        self.per_block[i] += now - self.entered.pop(i, now)
        self.last = (i, now)

    def split(self, begin: float, end: float) -> list[float]:
        """[before the blocks, block 0 .. block n-1, after the blocks]."""
        if self.first is None or self.last is None:
            raise ModelConfigError("the sample forward never ran the transformer blocks")
        return [self.first - begin, *self.per_block, end - self.last[1]]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def profile_module(module: Any, sample_input: Any, *, name: str | None = None, measure_time: bool = False,
                   device: Any = None, seq_len: int | None = None, repeats: int = 3) -> ModuleProfile:
    """Read a ModelSpec from `module` and count (and optionally time) each layer's forward.

    `sample_input` is what the module is called with: a tensor (module(x)), a tuple
    (module(*x)) or a dict (module(**x)). `device` moves the module and input there
    first (in place, as nn.Module.to does); by default they stay where they are.
    `seq_len` is the model's default sequence length (default: the sample's
    second dimension).
    """
    torch = _import_torch()
    nn = torch.nn
    if not isinstance(module, nn.Module):
        raise ModelConfigError(f"from_module needs a torch.nn.Module, got {type(module).__name__}")
    if device is not None:
        module.to(device)
        sample_input = _to_device(torch, sample_input, device)
    first_param = next(module.parameters(), None)
    run_device = first_param.device if first_param is not None else torch.device("cpu")
    x0 = _first_tensor(torch, sample_input)
    if x0 is None:
        raise ModelConfigError("sample_input holds no tensor; give the token ids (batch x sequence) the module takes")
    tokens = int(x0.shape[0] * x0.shape[1]) if x0.dim() >= 2 else int(x0.numel())
    sample_seq = int(x0.shape[1]) if x0.dim() >= 2 else int(x0.shape[0])
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1):
        raise ModelConfigError(f"seq_len must be a positive integer, got {seq_len!r}")

    blocks_path, blocks = _find_blocks(torch, module)
    block_mods = [b for _, b in blocks]
    in_blocks = lambda p: p == blocks_path or p.startswith(blocks_path + ".") if blocks_path else bool(p)  # noqa: E731
    outside = [(p, m) for p, m in module.named_modules() if p and not in_blocks(p)]
    order = [p for p, _ in module.named_modules()]
    blocks_at = order.index(blocks_path) if blocks_path else 0

    hidden = _attention_parts(torch, block_mods[0]).hidden
    linears_after = [(p, m) for p, m in outside if isinstance(m, nn.Linear) and order.index(p) > blocks_at
                     and m.in_features == hidden]
    head_path, head = linears_after[-1] if linears_after else (None, None)
    embeddings = [(p, m) for p, m in outside if isinstance(m, nn.Embedding)]
    token_path, token = None, None
    if head is not None:
        token_path, token = next(((p, m) for p, m in embeddings if m.weight is head.weight), (None, None))
        if token is None:
            token_path, token = next(((p, m) for p, m in embeddings if m.num_embeddings == head.out_features),
                                     (None, None))
    if token is None and embeddings:
        token_path, token = max(embeddings, key=lambda pm: pm[1].num_embeddings)
    pos = [(p, m) for p, m in embeddings if m is not token and m.embedding_dim == hidden]
    position = "learned" if pos else "rope"

    notes: list[str] = []
    block_specs = [_block_spec(torch, module, p, b, position, notes) for p, b in blocks]
    block_norm = block_specs[0].norm
    layers: list[LayerSpec] = []
    if token is not None:
        layers.append(LayerSpec(kind="embedding", hidden=token.embedding_dim, vocab=token.num_embeddings,
                                position=position, seq_len=pos[0][1].num_embeddings if pos else 0, norm=block_norm,
                                name=token_path))
    layers += block_specs
    if head is not None:
        head_norm_mods = [m for p, m in outside if order.index(p) > blocks_at and m is not head]
        head_norm = next((k for k in (_norm_kind(torch, m, hidden) for m in head_norm_mods) if k), block_norm)
        tied = token is not None and head.weight is token.weight
        if head.bias is not None:
            notes.append(f"{head_path}: the head's bias is not modelled")
        layers.append(LayerSpec(kind="head", hidden=head.in_features, vocab=head.out_features, tied=tied,
                                norm=head_norm, name=head_path))
    spec_seq = seq_len or sample_seq
    label = name or type(module).__name__

    # parameters per layer: inside block i -> block i; outside, before the blocks -> embedding, after -> head
    first_block = 1 if token is not None else 0
    owner_of_module: dict[str, int] = {}
    for p in order:
        if not p:
            continue
        if in_blocks(p):
            for i, (bp, _) in enumerate(blocks):
                if p == bp or p.startswith(bp + "."):
                    owner_of_module[p] = first_block + i
        elif order.index(p) < blocks_at:
            owner_of_module[p] = 0
        else:
            owner_of_module[p] = len(layers) - 1 if head is not None else first_block + len(blocks) - 1
    counted = [0] * len(layers)
    members: list[list[str]] = [[] for _ in layers]
    for pname, prm in module.named_parameters():
        mpath = pname.rsplit(".", 1)[0] if "." in pname else ""
        idx = owner_of_module.get(mpath, 0)
        counted[idx] += prm.numel()
        if mpath and mpath not in members[idx] and (idx < first_block or idx >= first_block + len(blocks)):
            members[idx].append(mpath)
    for i, (bp, _) in enumerate(blocks):
        members[first_block + i] = [bp]
    if head is not None and head_path not in members[-1]:
        members[-1].append(head_path)
    total = sum(p.numel() for p in module.parameters())

    # FLOPs per layer
    from torch.utils.flop_counter import FlopCounterMode

    flop_mode = FlopCounterMode(display=False, custom_mapping=_flop_mapping(torch))
    seg = _Segments(block_mods, lambda: float(flop_mode.get_total_flops()))
    try:
        with torch.no_grad(), flop_mode:
            _call(module, sample_input)
        total_flops = float(flop_mode.get_total_flops())
        split = seg.split(0.0, total_flops)
    except ModelConfigError:
        raise
    except Exception as exc:  # the user's forward failed: say so plainly
        raise ModelConfigError(f"calling {type(module).__name__} on sample_input failed: "
                               f"{type(exc).__name__}: {exc}") from exc
    finally:
        seg.remove()
    flops = _fit_split(split, token is not None, head is not None)

    times: list[float | None] = [None] * len(layers)
    total_time = None
    if measure_time:
        times, total_time = _time_layers(torch, module, sample_input, block_mods, run_device, repeats,
                                         token is not None, head is not None)

    profiles = tuple(LayerProfile(index=i, kind=lay.kind, modules=tuple(members[i]), params=counted[i],
                                  spec_params=layer_params(lay), flops_fwd=flops[i], time_fwd_s=times[i])
                     for i, lay in enumerate(layers))
    mismatched = [p for p in profiles if not p.params_match]
    if mismatched:
        worst = ", ".join(f"{layers[p.index].name or p.kind}: module {p.params:,} vs spec {p.spec_params:,}"
                          for p in mismatched[:3])
        notes.append(f"LayerSpec parameter counts differ from the module's for {len(mismatched)} layers ({worst})")
        warnings.warn(f"from_module({label}): {notes[-1]}", stacklevel=3)
    spec = ModelSpec(name=label, layers=tuple(layers), seq_len=spec_seq, family="module",
                     description=(f"read from torch module {type(module).__name__} ({len(blocks)} blocks at "
                                  f"{blocks_path or '<root>'}; sample of {tokens} tokens)"
                                  + ("; " + "; ".join(notes) if notes else "")))
    return ModuleProfile(spec=spec, layers=profiles, tokens=tokens, device=str(run_device), total_params=total,
                         flops_fwd=total_flops, time_fwd_s=total_time, notes=tuple(notes))


def _fit_split(split: list[float], has_embed: bool, has_head: bool) -> list[float]:
    """Fold the [before, blocks..., after] split onto the layers that exist."""
    before, *blocks, after = split
    out = list(blocks)
    if has_embed:
        out.insert(0, before)
    elif out:
        out[0] += before
    if has_head:
        out.append(after)
    elif out:
        out[-1] += after
    return out


def _time_layers(torch: Any, module: Any, sample_input: Any, blocks: list[Any], device: Any, repeats: int,
                 has_embed: bool, has_head: bool) -> tuple[list[float | None], float]:
    if not isinstance(repeats, int) or repeats < 1:
        raise ModelConfigError(f"repeats must be a positive integer, got {repeats!r}")
    cuda = getattr(device, "type", "cpu") == "cuda"

    def now() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter()

    seg = _Segments(blocks, now)
    runs: list[list[float]] = []
    totals: list[float] = []
    try:
        with torch.no_grad():
            for i in range(repeats + 1):
                seg.reset()
                begin = now()
                _call(module, sample_input)
                end = now()
                if i:  # the first run warms up
                    runs.append(seg.split(begin, end))
                    totals.append(end - begin)
    finally:
        seg.remove()
    med = [statistics.median(r[j] for r in runs) for j in range(len(runs[0]))]
    return list(_fit_split(med, has_embed, has_head)), statistics.median(totals)


def from_module(module: Any, sample_input: Any, *, name: str | None = None, measure_time: bool = False,
                device: Any = None, seq_len: int | None = None, return_profile: bool = False,
                repeats: int = 3) -> ModelSpec | tuple[ModelSpec, ModuleProfile]:
    """A ModelSpec read from a torch module (see the module docstring for how it is read).

    With `return_profile=True` returns `(spec, profile)`, the profile holding per-layer
    parameter counts, forward FLOPs on the sample and, with `measure_time=True`,
    measured forward times (`ModuleProfile`).
    """
    profile = profile_module(module, sample_input, name=name, measure_time=measure_time, device=device,
                             seq_len=seq_len, repeats=repeats)
    return (profile.spec, profile) if return_profile else profile.spec
