"""A `ModelSpec` from a Hugging Face `config.json`, offline.

Families: llama, mistral, mixtral, qwen2, qwen2_moe, gpt2, gpt_neox and
deepseek_v3. Each family reads the keys its transformers class reads, with the
same defaults where a key is optional. What LayerSpec cannot say exactly:
- One `bias` flag per layer: qwen2's q/k/v-only biases set it, which also counts
  biases on the output and MLP projections (under 0.02 % of the parameters).
- Mistral/Qwen2 sliding windows are noted in the description, not modelled.
- qwen2_moe's one-unit shared-expert gate (hidden parameters a layer) is left out.
- deepseek_v3's multi-head latent attention is approximated as grouped-query
  attention with num_heads query heads of v_head_dim and num_heads / 8 KV heads;
  the KV cache is exact (kv_lora_rank + qk_rope_head_dim elements per token).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import ModelConfigError
from .model import MAX_DIM, MAX_LAYERS, LayerSpec, ModelSpec

_MISSING = object()

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "swiglu": "silu", "gelu": "gelu", "gelu_new": "gelu",
                "gelu_fast": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_python": "gelu", "gelu_accurate": "gelu",
                "quick_gelu": "gelu", "relu": "relu"}

_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "MixtralForCausalLM": "mixtral",
                  "Qwen2ForCausalLM": "qwen2", "Qwen2MoeForCausalLM": "qwen2_moe", "GPT2LMHeadModel": "gpt2",
                  "GPTNeoXForCausalLM": "gpt_neox", "DeepseekV3ForCausalLM": "deepseek_v3"}


@dataclass(frozen=True)
class _Config:
    """Typed, explained access to the keys of one config."""

    data: Mapping[str, Any]
    model_type: str
    source: str

    def _fail(self, message: str) -> ModelConfigError:
        return ModelConfigError(f"{self.source} (model_type {self.model_type!r}): {message}")

    def _raw(self, keys: tuple[str, ...], default: Any) -> tuple[str, Any]:
        for k in keys:
            if k in self.data and self.data[k] is not None:
                return k, self.data[k]
        if default is _MISSING:
            names = " or ".join(repr(k) for k in keys)
            raise self._fail(f"key {names} is missing; a {self.model_type} config needs it "
                             f"(see {_REQUIRED_HINT.get(self.model_type, 'the family defaults')})")
        return keys[0], default

    def get_int(self, *keys: str, default: Any = _MISSING, minimum: int = 1, maximum: int = MAX_DIM) -> int:
        key, v = self._raw(keys, default)
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise self._fail(f"key {key!r} must be an integer, got {v!r} ({type(v).__name__})")
        if v < minimum:
            raise self._fail(f"key {key!r} must be >= {minimum}, got {v}")
        if v > maximum:  # checked here, before a layer list of that length is built
            raise self._fail(f"key {key!r} is {v:,}; parplan supports at most {maximum:,}")
        return v

    def get_float(self, *keys: str, default: Any = _MISSING) -> float:
        key, v = self._raw(keys, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self._fail(f"key {key!r} must be a number, got {v!r} ({type(v).__name__})")
        return float(v)

    def get_bool(self, *keys: str, default: Any = _MISSING) -> bool:
        key, v = self._raw(keys, default)
        if not isinstance(v, bool):
            raise self._fail(f"key {key!r} must be true or false, got {v!r} ({type(v).__name__})")
        return v

    def int_list(self, *keys: str, default: Any = _MISSING) -> list[int]:
        key, v = self._raw(keys, default)
        if not isinstance(v, (list, tuple)) or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
            raise self._fail(f"key {key!r} must be a list of integers, got {v!r}")
        return list(v)

    def activation(self, *keys: str, default: str) -> str:
        key, v = self._raw(keys, default)
        if not isinstance(v, str) or v.lower() not in _ACTIVATIONS:
            raise self._fail(f"key {key!r}: activation {v!r} is not supported; use one of {', '.join(_ACTIVATIONS)}")
        return _ACTIVATIONS[v.lower()]


_REQUIRED_HINT = {
    "llama": "hidden_size, num_attention_heads, num_hidden_layers, intermediate_size, vocab_size",
    "mistral": "hidden_size, num_attention_heads, num_hidden_layers, intermediate_size, vocab_size",
    "qwen2": "hidden_size, num_attention_heads, num_hidden_layers, intermediate_size, vocab_size",
    "mixtral": "hidden_size, num_attention_heads, num_hidden_layers, intermediate_size (expert width), vocab_size",
    "qwen2_moe": ("hidden_size, num_attention_heads, num_hidden_layers, intermediate_size, moe_intermediate_size, "
                  "shared_expert_intermediate_size, num_experts, num_experts_per_tok, vocab_size"),
    "gpt2": "n_embd, n_head, n_layer, vocab_size",
    "gpt_neox": "hidden_size, num_attention_heads, num_hidden_layers, intermediate_size, vocab_size",
    "deepseek_v3": ("hidden_size, num_attention_heads, num_hidden_layers, intermediate_size, moe_intermediate_size, "
                    "n_routed_experts, num_experts_per_tok, kv_lora_rank, qk_rope_head_dim, v_head_dim, vocab_size"),
}


@dataclass(frozen=True)
class _Shape:
    """What every family reduces to before the layers are laid out."""

    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int
    seq_len: int
    tie: bool
    norm: str
    activation: str
    gated: bool
    bias: bool
    position: str
    rope_theta: float
    norm_eps: float
    ffn_hidden: int  # dense blocks
    moe_layers: frozenset[int] = frozenset()
    num_experts: int = 0
    top_k: int = 0
    expert_ffn_hidden: int = 0
    shared_experts: int = 0
    shared_ffn_hidden: int = 0
    kv_cache_dim: int = 0
    position_rows: int = 0
    note: str = ""


def _attention(c: _Config, hidden_key: tuple[str, ...] = ("hidden_size",),
               heads_key: tuple[str, ...] = ("num_attention_heads",)) -> tuple[int, int, int, int]:
    hidden = c.get_int(*hidden_key)
    heads = c.get_int(*heads_key)
    kv = c.get_int("num_key_value_heads", default=heads)
    if heads % kv:
        raise c._fail(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    if "head_dim" in c.data and c.data["head_dim"] is not None:
        head_dim = c.get_int("head_dim")
    elif hidden % heads:
        raise c._fail(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}; give 'head_dim'")
    else:
        head_dim = hidden // heads
    return hidden, heads, kv, head_dim


def _llama_like(c: _Config, *, qkv_bias_default: bool, max_pos_default: int, theta_default: float) -> dict[str, Any]:
    hidden, heads, kv, head_dim = _attention(c)
    bias = c.get_bool("attention_bias", "qkv_bias", default=qkv_bias_default) or c.get_bool("mlp_bias", default=False)
    return dict(num_layers=c.get_int("num_hidden_layers", maximum=MAX_LAYERS), hidden=hidden, num_heads=heads,
                num_kv_heads=kv,
                head_dim=head_dim, vocab=c.get_int("vocab_size"),
                seq_len=c.get_int("max_position_embeddings", default=max_pos_default),
                tie=c.get_bool("tie_word_embeddings", default=False), norm="rmsnorm",
                activation=c.activation("hidden_act", default="silu"), gated=True, bias=bias, position="rope",
                rope_theta=c.get_float("rope_theta", default=theta_default),
                norm_eps=c.get_float("rms_norm_eps", default=1e-6))


def _sliding_note(c: _Config) -> str:
    window = c.data.get("sliding_window")
    use = c.data.get("use_sliding_window", True)
    if isinstance(window, int) and not isinstance(window, bool) and use:
        return f"; sliding window of {window} tokens not modelled"
    return ""


def _llama(c: _Config) -> _Shape:
    d = _llama_like(c, qkv_bias_default=False, max_pos_default=2048, theta_default=10000.0)
    return _Shape(ffn_hidden=c.get_int("intermediate_size"), **d)


def _mistral(c: _Config) -> _Shape:
    d = _llama_like(c, qkv_bias_default=False, max_pos_default=4096 * 32, theta_default=10000.0)
    return _Shape(ffn_hidden=c.get_int("intermediate_size"), note=_sliding_note(c), **d)


def _qwen2(c: _Config) -> _Shape:
    d = _llama_like(c, qkv_bias_default=True, max_pos_default=32768, theta_default=10000.0)
    return _Shape(ffn_hidden=c.get_int("intermediate_size"), note=_sliding_note(c), **d)


def _mixtral(c: _Config) -> _Shape:
    d = _llama_like(c, qkv_bias_default=False, max_pos_default=4096 * 32, theta_default=1e6)
    experts = c.get_int("num_local_experts", default=8)
    top_k = c.get_int("num_experts_per_tok", default=2)
    if top_k > experts:
        raise c._fail(f"num_experts_per_tok {top_k} exceeds num_local_experts {experts}")
    return _Shape(ffn_hidden=0, moe_layers=frozenset(range(d["num_layers"])), num_experts=experts, top_k=top_k,
                  expert_ffn_hidden=c.get_int("intermediate_size"), note=_sliding_note(c), **d)


def _qwen2_moe(c: _Config) -> _Shape:
    d = _llama_like(c, qkv_bias_default=True, max_pos_default=32768, theta_default=10000.0)
    experts = c.get_int("num_experts", default=60, minimum=0)
    step = c.get_int("decoder_sparse_step", default=1)
    mlp_only = set(c.int_list("mlp_only_layers", default=[]))
    moe = frozenset(i for i in range(d["num_layers"])
                    if experts > 0 and i not in mlp_only and (i + 1) % step == 0)
    top_k = c.get_int("num_experts_per_tok", default=4) if moe else 0
    if moe and top_k > experts:
        raise c._fail(f"num_experts_per_tok {top_k} exceeds num_experts {experts}")
    shared = c.get_int("shared_expert_intermediate_size", default=0, minimum=0) if moe else 0
    dense_needed = len(moe) < d["num_layers"]
    ffn = c.get_int("intermediate_size") if dense_needed else c.get_int("intermediate_size", default=0, minimum=0)
    return _Shape(ffn_hidden=ffn,
                  moe_layers=moe, num_experts=experts if moe else 0, top_k=top_k,
                  expert_ffn_hidden=c.get_int("moe_intermediate_size") if moe else 0,
                  shared_experts=1 if shared else 0, shared_ffn_hidden=shared, note=_sliding_note(c), **d)


def _gpt2(c: _Config) -> _Shape:
    hidden, heads, kv, head_dim = _attention(c, ("n_embd", "hidden_size"), ("n_head", "num_attention_heads"))
    positions = c.get_int("n_positions", "max_position_embeddings", default=1024)
    return _Shape(num_layers=c.get_int("n_layer", "num_hidden_layers", maximum=MAX_LAYERS), hidden=hidden,
                  num_heads=heads, num_kv_heads=kv,
                  head_dim=head_dim, vocab=c.get_int("vocab_size"), seq_len=positions,
                  tie=c.get_bool("tie_word_embeddings", default=True), norm="layernorm",
                  activation=c.activation("activation_function", default="gelu_new"), gated=False, bias=True,
                  position="learned", rope_theta=10000.0, norm_eps=c.get_float("layer_norm_epsilon", default=1e-5),
                  ffn_hidden=c.get_int("n_inner", default=4 * hidden), position_rows=positions)


def _gpt_neox(c: _Config) -> _Shape:
    hidden, heads, kv, head_dim = _attention(c)
    pct = c.get_float("rotary_pct", default=1.0)
    note = f"; rotary on {pct:.0%} of each head" if pct < 1 else ""
    return _Shape(num_layers=c.get_int("num_hidden_layers", maximum=MAX_LAYERS), hidden=hidden, num_heads=heads,
                  num_kv_heads=kv,
                  head_dim=head_dim, vocab=c.get_int("vocab_size"),
                  seq_len=c.get_int("max_position_embeddings", default=2048),
                  tie=c.get_bool("tie_word_embeddings", default=False), norm="layernorm",
                  activation=c.activation("hidden_act", default="gelu"), gated=False,
                  bias=c.get_bool("attention_bias", default=True), position="rope",
                  rope_theta=c.get_float("rope_theta", "rotary_emb_base", default=10000.0),
                  norm_eps=c.get_float("layer_norm_eps", default=1e-5), ffn_hidden=c.get_int("intermediate_size"),
                  note=note)


def _deepseek_v3(c: _Config) -> _Shape:
    hidden = c.get_int("hidden_size")
    heads = c.get_int("num_attention_heads")
    v_head_dim = c.get_int("v_head_dim")
    kv_cache = c.get_int("kv_lora_rank") + c.get_int("qk_rope_head_dim")
    kv = next(k for k in range(max(1, heads // 8), 0, -1) if heads % k == 0)
    layers = c.get_int("num_hidden_layers", maximum=MAX_LAYERS)
    experts = c.get_int("n_routed_experts", default=0, minimum=0)
    first_dense = c.get_int("first_k_dense_replace", default=0, minimum=0)
    freq = c.get_int("moe_layer_freq", default=1)
    moe = frozenset(i for i in range(layers) if experts and i >= first_dense and i % freq == 0)
    top_k = c.get_int("num_experts_per_tok") if moe else 0
    if moe and top_k > experts:
        raise c._fail(f"num_experts_per_tok {top_k} exceeds n_routed_experts {experts}")
    expert_ffn = c.get_int("moe_intermediate_size") if moe else 0
    shared = c.get_int("n_shared_experts", default=0, minimum=0) if moe else 0
    return _Shape(num_layers=layers, hidden=hidden, num_heads=heads, num_kv_heads=kv, head_dim=v_head_dim,
                  vocab=c.get_int("vocab_size"), seq_len=c.get_int("max_position_embeddings", default=4096),
                  tie=c.get_bool("tie_word_embeddings", default=False), norm="rmsnorm",
                  activation=c.activation("hidden_act", default="silu"), gated=True,
                  bias=c.get_bool("attention_bias", default=False), position="rope",
                  rope_theta=c.get_float("rope_theta", default=10000.0),
                  norm_eps=c.get_float("rms_norm_eps", default=1e-6),
                  ffn_hidden=c.get_int("intermediate_size") if len(moe) < layers else 0, moe_layers=moe,
                  num_experts=experts if moe else 0, top_k=top_k, expert_ffn_hidden=expert_ffn,
                  shared_experts=shared, shared_ffn_hidden=expert_ffn if shared else 0, kv_cache_dim=kv_cache,
                  note=(f"; multi-head latent attention approximated as {heads} query heads / {kv} KV heads of "
                        f"dim {v_head_dim}, KV cache {kv_cache} elements per token"))


_FAMILIES: Mapping[str, Callable[[_Config], _Shape]] = {
    "llama": _llama, "mistral": _mistral, "mixtral": _mixtral, "qwen2": _qwen2, "qwen2_moe": _qwen2_moe,
    "gpt2": _gpt2, "gpt_neox": _gpt_neox, "deepseek_v3": _deepseek_v3,
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_FAMILIES)


def _layers(s: _Shape) -> tuple[LayerSpec, ...]:
    common = dict(hidden=s.hidden, num_heads=s.num_heads, num_kv_heads=s.num_kv_heads, head_dim=s.head_dim,
                  gated_mlp=s.gated, norm=s.norm, activation=s.activation, bias=s.bias, position=s.position,
                  kv_cache_dim=s.kv_cache_dim)
    out = [LayerSpec(kind="embedding", hidden=s.hidden, vocab=s.vocab, position=s.position, norm=s.norm,
                     bias=s.bias, seq_len=s.position_rows if s.position == "learned" else 0, name="embed")]
    for i in range(s.num_layers):
        if i in s.moe_layers:
            out.append(LayerSpec(kind="transformer", num_experts=s.num_experts, top_k=s.top_k,
                                 expert_ffn_hidden=s.expert_ffn_hidden, shared_experts=s.shared_experts,
                                 shared_ffn_hidden=s.shared_ffn_hidden, name=f"block{i}", **common))
        else:
            out.append(LayerSpec(kind="transformer", ffn_hidden=s.ffn_hidden, name=f"block{i}", **common))
    out.append(LayerSpec(kind="head", hidden=s.hidden, vocab=s.vocab, tied=s.tie, norm=s.norm, name="head"))
    return tuple(out)


def _load(config: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(config, Mapping):
        return config, "config dict"
    if isinstance(config, str) and config.lstrip().startswith("{"):
        text, source = config, "config text"
    elif isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ModelConfigError(f"no Hugging Face config at {str(path)!r}: give the path of a config.json, "
                                   f"a directory holding one, or the config as a dict")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelConfigError(f"cannot read {str(path)!r}: {exc}") from None
        source = str(path)
    else:
        raise ModelConfigError(f"a Hugging Face config must be a path, a directory or a dict, "
                               f"got {type(config).__name__}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{source} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                               f"expected a Hugging Face config.json") from None
    except RecursionError:
        raise ModelConfigError(f"{source} nests JSON too deeply to be a Hugging Face config.json") from None
    if not isinstance(data, dict):
        raise ModelConfigError(f"{source} holds a JSON {type(data).__name__}, expected an object of config keys")
    return data, source


def _model_type(data: Mapping[str, Any], source: str) -> str:
    model_type = data.get("model_type")
    if model_type is None:
        archs = data.get("architectures")
        archs = archs if isinstance(archs, (list, tuple)) else []
        found = [_ARCHITECTURES[a] for a in archs if isinstance(a, str) and a in _ARCHITECTURES]
        if found:
            return found[0]
        raise ModelConfigError(f"{source} has no 'model_type'; add one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    if not isinstance(model_type, str) or model_type not in _FAMILIES:
        raise ModelConfigError(
            f"{source}: model_type {model_type!r} is not supported; supported are {', '.join(SUPPORTED_MODEL_TYPES)} "
            f"(for another decoder-only model, build it with ModelSpec.decoder(...))")
    return model_type


def from_hf_config(config: str | os.PathLike | Mapping[str, Any], *, seq_len: int | None = None,
                   name: str | None = None) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json (path, directory holding one, JSON text, or dict).

    `seq_len` overrides max_position_embeddings as the default sequence length;
    `name` overrides the config's `_name_or_path`. Raises `ModelConfigError`
    naming the key that is missing or malformed.
    """
    data, source = _load(config)
    model_type = _model_type(data, source)
    c = _Config(data=data, model_type=model_type, source=source)
    shape = _FAMILIES[model_type](c)
    if seq_len is not None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ModelConfigError(f"seq_len must be a positive integer, got {seq_len!r}")
    label = name or (data.get("_name_or_path") if isinstance(data.get("_name_or_path"), str) else "") \
        or f"hf-{model_type}"
    kind = (f"MoE, {shape.num_experts} experts top-{shape.top_k} in {len(shape.moe_layers)} of {shape.num_layers} "
            f"layers" if shape.moe_layers else "dense")
    description = f"from Hugging Face config ({source}), model_type {model_type}, {kind}{shape.note}"
    return ModelSpec(name=label, layers=_layers(shape), seq_len=seq_len or shape.seq_len, family=model_type,
                     description=description, rope_theta=shape.rope_theta, norm_eps=shape.norm_eps)
