"""Model description: a tuple of layers, each with the shapes its cost follows from.

A `ModelSpec` is a list of `LayerSpec`s (embedding, transformer blocks, head).
Layers may differ (widths, sequence lengths, dense or MoE). Everything the cost
model needs per layer (parameters, FLOPs, activation bytes, communication
volume) is derived from the shapes here, in `costmodel.layers`; this module only
describes the model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from typing import Any, Mapping

from .errors import ModelConfigError

LAYER_KINDS = ("embedding", "transformer", "head")
POSITIONS = ("rope", "learned", "none")
# Sanity limits, far beyond any model built so far; they turn a typo or a corrupt config into an error that
# says so, instead of a billion-entry layer list or costs that overflow to inf/nan.
MAX_DIM = 2**24  # any width, head count, expert count, vocabulary or sequence length
MAX_LAYERS = 100_000  # transformer blocks
_FLAGS = ("gated_mlp", "causal", "bias", "tied")


@dataclass(frozen=True)
class LayerSpec:
    """One layer. Only the fields its kind uses matter.

    Transformer blocks: attention (heads, KV heads, head_dim) + MLP (dense or MoE).
    `seq_len` overrides the model's sequence length for this layer (tokens per
    sample the layer processes); `attention_span` limits attention to windows of
    that many tokens (TransGAN's high-resolution blocks attend inside windows).
    MoE: `num_experts` routed experts of width `expert_ffn_hidden`, `top_k` active
    per token, `shared_experts` always-on experts of width `shared_ffn_hidden`;
    `moe_dispatch_dim` is the width at which tokens travel in the expert all-to-all
    (BigMac-style down-projection before dispatch; default `hidden`).
    """

    kind: str
    hidden: int
    vocab: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    ffn_hidden: int = 0
    gated_mlp: bool = False  # SwiGLU-style: gate + up + down matrices
    num_experts: int = 0
    top_k: int = 0
    expert_ffn_hidden: int = 0
    shared_experts: int = 0
    shared_ffn_hidden: int = 0
    moe_dispatch_dim: int = 0
    kv_cache_dim: int = 0  # elements per token cached for K and V together; 0 = 2 * kv_heads * head_dim
    seq_len: int = 0  # 0 = the model's sequence length
    attention_span: int = 0  # 0 = the whole sequence
    causal: bool = True
    norm: str = "rmsnorm"  # "rmsnorm" | "layernorm"
    activation: str = "silu"  # "silu" (with gated_mlp: SwiGLU) | "gelu"
    bias: bool = False
    position: str = "rope"  # "rope" | "learned" | "none" (embedding layer: learned table of seq_len rows)
    tied: bool = False  # head shares the embedding matrix
    dropout: float = 0.0  # training-time dropout probability (GPT-2 / Megatron GPT used 0.1): masks cost memory
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ModelConfigError(f"layer kind {self.kind!r} is not one of {', '.join(LAYER_KINDS)}")
        if not isinstance(self.name, str):
            raise ModelConfigError(f"layer name must be a string, got {self.name!r}")
        if not isinstance(self.hidden, int) or isinstance(self.hidden, bool) or not 1 <= self.hidden <= MAX_DIM:
            raise ModelConfigError(f"layer {self.name or self.kind}: hidden must be an integer in 1..{MAX_DIM:,}, "
                                   f"got {self.hidden!r}")
        for f in ("vocab", "num_heads", "num_kv_heads", "head_dim", "ffn_hidden", "num_experts", "top_k",
                  "expert_ffn_hidden", "shared_experts", "shared_ffn_hidden", "moe_dispatch_dim", "kv_cache_dim",
                  "seq_len", "attention_span"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_DIM:
                raise ModelConfigError(f"layer {self.name or self.kind}: {f} must be an integer in 0..{MAX_DIM:,}, "
                                       f"got {v!r}")
        for f in _FLAGS:
            v = getattr(self, f)
            if not isinstance(v, bool):
                if type(v).__name__ != "bool_":  # numpy's bool
                    raise ModelConfigError(f"layer {self.name or self.kind}: {f} must be true or false, got {v!r}")
                object.__setattr__(self, f, bool(v))
        if self.position not in POSITIONS:
            raise ModelConfigError(f"layer {self.name or self.kind}: position must be one of {', '.join(POSITIONS)}, "
                                   f"got {self.position!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"layer {self.name or self.kind}: dropout must be a number in [0, 1), "
                                   f"got {self.dropout!r}")
        if self.kind in ("embedding", "head") and self.vocab < 1:
            raise ModelConfigError(f"{self.kind} layer needs vocab >= 1")
        if self.kind == "transformer":
            if self.num_heads < 1:
                raise ModelConfigError(f"transformer layer {self.name!r} needs num_heads >= 1")
            kv = self.num_kv_heads or self.num_heads
            if self.num_heads % kv:
                raise ModelConfigError(
                    f"transformer layer {self.name!r}: num_heads {self.num_heads} is not a multiple of "
                    f"num_kv_heads {kv}")
            object.__setattr__(self, "num_kv_heads", kv)
            if not self.head_dim:
                if self.hidden % self.num_heads:
                    raise ModelConfigError(
                        f"transformer layer {self.name!r}: hidden {self.hidden} is not divisible by "
                        f"num_heads {self.num_heads}; give head_dim explicitly")
                object.__setattr__(self, "head_dim", self.hidden // self.num_heads)
            if self.num_experts:
                if not 1 <= self.top_k <= self.num_experts:
                    raise ModelConfigError(
                        f"MoE layer {self.name!r}: top_k must be between 1 and num_experts ({self.num_experts}), "
                        f"got {self.top_k}")
                if self.expert_ffn_hidden < 1:
                    raise ModelConfigError(f"MoE layer {self.name!r} needs expert_ffn_hidden >= 1")
            elif self.ffn_hidden < 1:
                raise ModelConfigError(f"dense transformer layer {self.name!r} needs ffn_hidden >= 1")
            if self.norm not in ("rmsnorm", "layernorm"):
                raise ModelConfigError(f"norm must be 'rmsnorm' or 'layernorm', got {self.norm!r}")
            if self.activation not in ("silu", "gelu", "relu"):
                raise ModelConfigError(f"activation must be 'silu', 'gelu' or 'relu', got {self.activation!r}")

    @property
    def is_moe(self) -> bool:
        return self.kind == "transformer" and self.num_experts > 0

    @property
    def dispatch_dim(self) -> int:
        return self.moe_dispatch_dim or self.hidden

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        defaults = {f.name: f.default for f in fields(LayerSpec)}
        return {k: v for k, v in d.items() if k in ("kind", "hidden") or v != defaults.get(k)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerSpec":
        if not isinstance(data, Mapping):
            raise ModelConfigError(f"a layer is a mapping like {{kind: transformer, hidden: 4096, ...}}, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelConfigError(f"unknown layer fields {sorted(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class ModelSpec:
    """A model: its layers in order and its default sequence length.

    Build one with `from_name` (built-in catalog), `from_hf_config` (a Hugging
    Face config.json), `from_module` (a torch nn.Module), or `ModelSpec.decoder`.
    """

    name: str
    layers: tuple[LayerSpec, ...]
    seq_len: int
    family: str = "custom"
    description: str = ""
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ModelConfigError(f"a model name must be a string, got {self.name!r}")
        layers = tuple(self.layers)
        if not layers:
            raise ModelConfigError(f"model {self.name!r} has no layers")
        if len(layers) > MAX_LAYERS + 2:
            raise ModelConfigError(f"model {self.name!r} has {len(layers):,} layer entries; at most {MAX_LAYERS:,} "
                                   f"transformer blocks (plus embedding and head) are supported")
        for lay in layers:
            if not isinstance(lay, LayerSpec):
                raise ModelConfigError(f"model {self.name!r}: layers must be LayerSpec objects, got {type(lay).__name__}")
        if not isinstance(self.seq_len, int) or isinstance(self.seq_len, bool) or not 1 <= self.seq_len <= MAX_DIM:
            raise ModelConfigError(f"model {self.name!r}: seq_len must be an integer in 1..{MAX_DIM:,}, "
                                   f"got {self.seq_len!r}")
        object.__setattr__(self, "layers", layers)

    # -- constructors ---------------------------------------------------
    @classmethod
    def decoder(cls, name: str, *, num_layers: int, hidden: int, num_heads: int, ffn_hidden: int = 0,
                vocab: int, seq_len: int, num_kv_heads: int = 0, head_dim: int = 0, gated_mlp: bool = True,
                norm: str = "rmsnorm", activation: str = "silu", bias: bool = False, position: str = "rope",
                tie_embeddings: bool = False, num_experts: int = 0, top_k: int = 0, expert_ffn_hidden: int = 0,
                shared_experts: int = 0, shared_ffn_hidden: int = 0, moe_dispatch_dim: int = 0,
                moe_layer_interval: int = 1, first_dense_layers: int = 0, kv_cache_dim: int = 0,
                family: str = "custom", description: str = "", rope_theta: float = 10000.0,
                norm_eps: float = 1e-5, dropout: float = 0.0) -> "ModelSpec":
        """A decoder-only transformer: embedding, `num_layers` blocks, head.

        MoE: with `num_experts`, block i is MoE when i >= first_dense_layers and
        (i - first_dense_layers) % moe_layer_interval == 0; other blocks are dense
        with `ffn_hidden`.
        """
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or not 1 <= num_layers <= MAX_LAYERS:
            raise ModelConfigError(f"model {name!r}: num_layers must be an integer in 1..{MAX_LAYERS:,}, "
                                   f"got {num_layers!r}")
        for label, v, low in (("num_experts", num_experts, 0), ("moe_layer_interval", moe_layer_interval, 1),
                              ("first_dense_layers", first_dense_layers, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= MAX_DIM:
                raise ModelConfigError(f"model {name!r}: {label} must be an integer in {low}..{MAX_DIM:,}, got {v!r}")
        common = dict(hidden=hidden, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                      gated_mlp=gated_mlp, norm=norm, activation=activation, bias=bias, position=position,
                      kv_cache_dim=kv_cache_dim, dropout=dropout)
        layers = [LayerSpec(kind="embedding", hidden=hidden, vocab=vocab, position=position, name="embed",
                            norm=norm, bias=bias, dropout=dropout,
                            seq_len=seq_len if position == "learned" else 0)]  # rows of the position table
        for i in range(num_layers):
            moe = num_experts > 0 and i >= first_dense_layers and (i - first_dense_layers) % moe_layer_interval == 0
            if moe:
                layers.append(LayerSpec(kind="transformer", num_experts=num_experts, top_k=top_k,
                                        expert_ffn_hidden=expert_ffn_hidden, shared_experts=shared_experts,
                                        shared_ffn_hidden=shared_ffn_hidden or (expert_ffn_hidden if shared_experts else 0),
                                        moe_dispatch_dim=moe_dispatch_dim, name=f"block{i}", **common))
            else:
                layers.append(LayerSpec(kind="transformer", ffn_hidden=ffn_hidden, name=f"block{i}", **common))
        layers.append(LayerSpec(kind="head", hidden=hidden, vocab=vocab, tied=tie_embeddings, name="head",
                                norm=norm, bias=False))
        return cls(name=name, layers=tuple(layers), seq_len=seq_len, family=family, description=description,
                   rope_theta=rope_theta, norm_eps=norm_eps)

    @classmethod
    def from_name(cls, name: str) -> "ModelSpec":
        from .catalog import get_model

        return get_model(name)

    @classmethod
    def from_hf_config(cls, config: str | Mapping[str, Any], *, seq_len: int | None = None,
                       name: str | None = None) -> "ModelSpec":
        from .hf import from_hf_config

        return from_hf_config(config, seq_len=seq_len, name=name)

    @classmethod
    def from_module(cls, module: Any, sample_input: Any, **kwargs: Any) -> "ModelSpec":
        from .module import from_module

        return from_module(module, sample_input, **kwargs)

    # -- facts -----------------------------------------------------------
    @cached_property
    def layer_classes(self) -> tuple[tuple[LayerSpec, ...], tuple[int, ...]]:
        """Distinct layers (names ignored) and, for every entry of `layers`, the index of its class.

        Costs are computed once per class: a 126-block model usually has three classes."""
        classes: dict[LayerSpec, int] = {}
        index = []
        for lay in self.layers:
            key = replace(lay, name="")
            index.append(classes.setdefault(key, len(classes)))
        return tuple(classes), tuple(index)

    @cached_property
    def is_uniform(self) -> bool:
        """Embedding, identical blocks of one width and sequence, head: splits have a closed form."""
        classes, index = self.layer_classes
        if len(self.layers) < 3 or self.layers[0].kind != "embedding" or self.layers[-1].kind != "head":
            return False
        inner = set(index[1:-1])
        return (len(inner) == 1 and index[0] not in inner and index[-1] not in inner
                and len({lay.hidden for lay in self.layers}) == 1 and self.layers[1].seq_len in (0, self.seq_len))

    @property
    def blocks(self) -> tuple[LayerSpec, ...]:
        return tuple(lay for lay in self.layers if lay.kind == "transformer")

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.blocks)

    @property
    def num_entries(self) -> int:
        """Number of entries in `layers` (blocks plus embedding and head)."""
        return len(self.layers)

    def _first_block(self) -> LayerSpec:
        blocks = self.blocks
        if not blocks:
            raise ModelConfigError(f"model {self.name!r} has no transformer blocks")
        return blocks[0]

    @property
    def hidden(self) -> int:
        return self._first_block().hidden

    @property
    def num_heads(self) -> int:
        return min(b.num_heads for b in self.blocks)

    @property
    def num_kv_heads(self) -> int:
        return min(b.num_kv_heads for b in self.blocks)

    @property
    def vocab(self) -> int:
        return max((lay.vocab for lay in self.layers), default=0)

    @property
    def is_moe(self) -> bool:
        return any(b.is_moe for b in self.blocks)

    def tp_splits_evenly(self, tp: int, expert_tp: int | None = None) -> bool:
        """Whether tensor parallelism of degree `tp` splits every block's attention heads, KV heads and dense
        MLP width evenly; with `expert_tp`, also every expert's width (by that degree)."""
        for b in self.blocks:
            if b.num_heads % tp or b.num_kv_heads % tp:
                return False
            if b.is_moe:
                if expert_tp is not None and b.expert_ffn_hidden % expert_tp:
                    return False
            elif b.ffn_hidden % tp:
                return False
        return True

    @property
    def num_experts(self) -> int:
        return max((b.num_experts for b in self.blocks), default=0)

    @property
    def num_params(self) -> int:
        from .layers import layer_params

        return int(sum(layer_params(lay) for lay in self.layers))

    @property
    def num_active_params(self) -> int:
        """Parameters touched per token (routed experts counted top_k times, not num_experts)."""
        from .layers import layer_active_params

        return int(sum(layer_active_params(lay) for lay in self.layers))

    def with_seq_len(self, seq_len: int) -> "ModelSpec":
        return replace(self, seq_len=seq_len)

    def summary(self) -> str:
        kind = f"MoE ({self.num_experts} experts)" if self.is_moe else "dense"
        return (f"{self.name}: {self.num_params / 1e9:.2f} B parameters ({kind}), {self.num_layers} blocks, "
                f"hidden {self.hidden}, {self.num_heads} heads / {self.num_kv_heads} KV heads, "
                f"vocab {self.vocab}, seq {self.seq_len}")

    # -- serialization -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seq_len": self.seq_len, "family": self.family, "description": self.description,
                "rope_theta": self.rope_theta, "norm_eps": self.norm_eps,
                "layers": [lay.to_dict() for lay in self.layers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelSpec":
        if not isinstance(data, Mapping) or "layers" not in data:
            raise ModelConfigError("a model dict needs 'name', 'seq_len' and 'layers'")
        raw_layers = data["layers"]
        if not isinstance(raw_layers, (list, tuple)):
            raise ModelConfigError(f"a model dict's 'layers' is a list of layer mappings, got "
                                   f"{type(raw_layers).__name__}")
        if len(raw_layers) > MAX_LAYERS + 2:
            raise ModelConfigError(f"a model dict lists {len(raw_layers):,} layers; at most {MAX_LAYERS:,} "
                                   f"transformer blocks (plus embedding and head) are supported")
        try:
            layers = tuple(LayerSpec.from_dict(d) for d in raw_layers)
            return cls(name=data.get("name", "custom"), layers=layers, seq_len=data["seq_len"],
                       family=data.get("family", "custom"), description=data.get("description", ""),
                       rope_theta=float(data.get("rope_theta", 10000.0)), norm_eps=float(data.get("norm_eps", 1e-5)))
        except (TypeError, KeyError, ValueError, OverflowError) as exc:
            if isinstance(exc, ModelConfigError):
                raise
            raise ModelConfigError(f"malformed model dict: {exc}") from None


