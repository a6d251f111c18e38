"""The built-in model catalog and forgiving look-ups by name.

Each entry is a constructor call with the published shape and, in its
description, where the shape comes from. Names forgive case and punctuation
("Llama-3-70B", "llama3_70b", "meta-llama/Meta-Llama-3-70B"); unknown names
raise `UnknownModelError` with close suggestions.

Conventions shared by the entries:
- GPT-style (`_GPT`): LayerNorm, GELU, two-matrix MLP, biases, learned positions,
  head tied to the word embeddings. The embedding layer's `seq_len` is the number
  of rows of the learned position table, so `num_params` counts it.
- Llama-style (`_LLAMA`): RMSNorm, SwiGLU (gate, up, down), no biases, RoPE, untied head.

`amp_layer_map(setting)` turns the cut points of AMP's layer lists (see
../shared/validation/amp_trials.csv) into cut points into `ModelSpec.layers`.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

from .errors import ModelConfigError, UnknownModelError
from .model import LayerSpec, ModelSpec

_GPT: Mapping[str, Any] = dict(gated_mlp=False, norm="layernorm", activation="gelu", bias=True, position="learned",
                               tie_embeddings=True, dropout=0.1)
_LLAMA: Mapping[str, Any] = dict(gated_mlp=True, norm="rmsnorm", activation="silu", bias=False, position="rope",
                                 tie_embeddings=False)


@dataclass(frozen=True)
class _Entry:
    """One catalog model: `shape` holds `ModelSpec.decoder` keywords, or `build` makes the layers itself."""

    name: str
    description: str
    family: str
    shape: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    build: Callable[["_Entry"], ModelSpec] | None = None


def _gpt(num_layers: int, hidden: int, num_heads: int, vocab: int, seq_len: int, *, ffn_hidden: int = 0,
         **overrides: Any) -> dict[str, Any]:
    return {**_GPT, "num_layers": num_layers, "hidden": hidden, "num_heads": num_heads, "vocab": vocab,
            "seq_len": seq_len, "ffn_hidden": ffn_hidden or 4 * hidden, **overrides}


def _llama(num_layers: int, hidden: int, num_heads: int, num_kv_heads: int, ffn_hidden: int, vocab: int,
           seq_len: int, **overrides: Any) -> dict[str, Any]:
    return {**_LLAMA, "num_layers": num_layers, "hidden": hidden, "num_heads": num_heads,
            "num_kv_heads": num_kv_heads, "ffn_hidden": ffn_hidden, "vocab": vocab, "seq_len": seq_len, **overrides}


def _megatron(params_b: str, num_heads: int, hidden: int, num_layers: int) -> _Entry:
    return _Entry(
        name=f"megatron-{params_b}", family="gpt",
        description=(f"Megatron-LM GPT, {params_b} parameters (Narayanan et al., SC'21, Table 1): {num_layers} layers, "
                     f"hidden {hidden}, {num_heads} heads, ffn 4 x hidden, vocab 51200, sequence 2048"),
        shape=_gpt(num_layers, hidden, num_heads, 51200, 2048),
        aliases=(f"megatron-gpt-{params_b}", f"megatron-lm-{params_b}"))


# -- TransGAN as AMP ran it (het_model setting) ---------------------------------
# DachengLi1/AMP, het_model.py + examples/ds_pretrain_transgan_pipe.sh: depth 12,0,0,0,0,12, gf_dim 1024,
# bottom_width 9, g_window_size 18, latent_dim 512, 4 heads, mlp ratio 4, pixel norm, GELU. Group 1 runs
# on the 9 x 9 = 81-token bottom image; five 2x upsamplings later group 2 runs at 1024 / 64 = 16 channels
# on the 288 x 288 image split into 18 x 18 = 324-token windows (AMP: batch x 256, sequence 4 x bottom^2).
_TG_BOTTOM = 9
_TG_WINDOW = 18
_TG_HIDDEN = 1024
_TG_LATENT = 512
_TG_HEADS = 4


def _build_transgan(entry: _Entry) -> ModelSpec:
    bottom_tokens = _TG_BOTTOM ** 2
    side = _TG_BOTTOM * 32
    block = dict(kind="transformer", num_heads=_TG_HEADS, gated_mlp=False, norm="rmsnorm", activation="gelu",
                 bias=True, position="none", causal=False)
    layers = [LayerSpec(kind="embedding", hidden=_TG_HIDDEN, vocab=_TG_LATENT * bottom_tokens, position="learned",
                        seq_len=bottom_tokens, norm="rmsnorm", name="l1+pos_embed")]
    layers += [LayerSpec(hidden=_TG_HIDDEN, ffn_hidden=4 * _TG_HIDDEN, seq_len=bottom_tokens, name=f"block{i}",
                         **block) for i in range(12)]
    low = _TG_HIDDEN // 64
    layers += [LayerSpec(hidden=low, ffn_hidden=4 * low, seq_len=side * side, attention_span=_TG_WINDOW ** 2,
                         name=f"block{12 + i}", **block) for i in range(12)]
    layers.append(LayerSpec(kind="head", hidden=low, vocab=3, norm="rmsnorm", name="to_rgb"))
    return ModelSpec(name=entry.name, layers=tuple(layers), seq_len=bottom_tokens, family=entry.family,
                     description=entry.description)


_CATALOG: tuple[_Entry, ...] = (
    # -- GPT-2 -------------------------------------------------------------------
    _Entry("gpt2-amp", family="gpt",
           description=("GPT-2 as AMP ran it (DachengLi1/AMP, Megatron-LM 1.1.5 + DeepSpeed): 24 layers, hidden 1024, "
                        "16 heads, ffn 4096, vocab 52256, sequence 1024; output layer tied to the word embeddings"),
           shape=_gpt(24, 1024, 16, 52256, 1024), aliases=("amp-gpt2", "gpt2-amp-24l")),
    _Entry("gpt2", family="gpt", description="GPT-2 small, 124M (openai-community/gpt2 config.json)",
           shape=_gpt(12, 768, 12, 50257, 1024), aliases=("gpt2-small", "gpt2-124m", "openai-community/gpt2")),
    _Entry("gpt2-medium", family="gpt", description="GPT-2 medium, 355M (openai-community/gpt2-medium config.json)",
           shape=_gpt(24, 1024, 16, 50257, 1024), aliases=("gpt2-355m",)),
    _Entry("gpt2-large", family="gpt", description="GPT-2 large, 774M (openai-community/gpt2-large config.json)",
           shape=_gpt(36, 1280, 20, 50257, 1024), aliases=("gpt2-774m",)),
    _Entry("gpt2-xl", family="gpt", description="GPT-2 XL, 1.5B (openai-community/gpt2-xl config.json)",
           shape=_gpt(48, 1600, 25, 50257, 1024), aliases=("gpt2-1.5b",)),
    # -- Megatron GPT weak-scaling family (../shared/validation/megatron_table1.csv) --
    _megatron("1.7b", 24, 2304, 24),
    _megatron("3.6b", 32, 3072, 30),
    _megatron("7.5b", 32, 4096, 36),
    _megatron("18.4b", 48, 6144, 40),
    _megatron("39.1b", 64, 8192, 48),
    _megatron("76.1b", 80, 10240, 60),
    _megatron("145.6b", 96, 12288, 80),
    _megatron("310.1b", 128, 16384, 96),
    _megatron("529.6b", 128, 20480, 105),
    _megatron("1t", 160, 25600, 128),
    # -- GPT-3 (Brown et al. 2020, Table 2.1) and the OpenAI API models HELM profiled --
    _Entry("gpt3-175b", family="gpt",
           description="GPT-3 175B (Brown et al. 2020, Table 2.1): 96 x 12288, 96 heads, vocab 50257, context 2048; "
                       "HELM's openai/davinci",
           shape=_gpt(96, 12288, 96, 50257, 2048),
           aliases=("gpt3", "gpt-3", "davinci", "openai/davinci", "helm-davinci", "openai/text-davinci-002",
                    "openai/text-davinci-003", "text-davinci-002")),
    _Entry("gpt3-6.7b", family="gpt",
           description="GPT-3 6.7B (Brown et al. 2020): 32 x 4096, 32 heads, vocab 50257, context 2048; HELM's "
                       "openai/curie",
           shape=_gpt(32, 4096, 32, 50257, 2048),
           aliases=("curie", "openai/curie", "helm-curie", "openai/text-curie-001")),
    _Entry("gpt3-1.3b", family="gpt",
           description="GPT-3 XL 1.3B (Brown et al. 2020): 24 x 2048, 16 heads (paper: 24 heads of 128; 16 x 128 "
                       "here so heads divide hidden), vocab 50257; HELM's openai/babbage",
           shape=_gpt(24, 2048, 16, 50257, 2048),
           aliases=("babbage", "openai/babbage", "helm-babbage", "openai/text-babbage-001")),
    _Entry("gpt3-350m", family="gpt",
           description="GPT-3 Medium 350M (Brown et al. 2020): 24 x 1024, 16 heads, vocab 50257; HELM's openai/ada",
           shape=_gpt(24, 1024, 16, 50257, 2048),
           aliases=("ada", "openai/ada", "helm-ada", "openai/text-ada-001")),
    # -- Llama, Mistral, Mixtral ----------------------------------------------------
    _Entry("llama-2-7b", family="llama", description="Llama 2 7B (meta-llama/Llama-2-7b-hf config.json)",
           shape=_llama(32, 4096, 32, 32, 11008, 32000, 4096), aliases=("llama2-7b",)),
    _Entry("llama-2-13b", family="llama", description="Llama 2 13B (meta-llama/Llama-2-13b-hf config.json)",
           shape=_llama(40, 5120, 40, 40, 13824, 32000, 4096), aliases=("llama2-13b",)),
    _Entry("llama-2-70b", family="llama",
           description="Llama 2 70B (meta-llama/Llama-2-70b-hf config.json): grouped-query attention, 8 KV heads",
           shape=_llama(80, 8192, 64, 8, 28672, 32000, 4096), aliases=("llama2-70b",)),
    _Entry("llama-3-8b", family="llama",
           description="Llama 3 8B (meta-llama/Meta-Llama-3-8B config.json): 8 KV heads, vocab 128256, RoPE theta "
                       "500000",
           shape=_llama(32, 4096, 32, 8, 14336, 128256, 8192, rope_theta=500000.0),
           aliases=("llama3-8b", "llama-3.1-8b")),
    _Entry("llama-3-70b", family="llama",
           description="Llama 3 70B (meta-llama/Meta-Llama-3-70B config.json): 8 KV heads, vocab 128256, "
                       "RoPE theta 500000",
           shape=_llama(80, 8192, 64, 8, 28672, 128256, 8192, rope_theta=500000.0),
           aliases=("llama3-70b", "llama-3.1-70b")),
    _Entry("llama-3-405b", family="llama",
           description="Llama 3.1 405B (Llama 3 paper, Table 3; meta-llama/Llama-3.1-405B config.json): 126 x 16384, "
                       "128 heads, 8 KV heads, ffn 53248, vocab 128256, RoPE theta 500000; sequence 8192 as "
                       "pre-trained (the released config extends it to 131072 with RoPE scaling)",
           shape=_llama(126, 16384, 128, 8, 53248, 128256, 8192, rope_theta=500000.0),
           aliases=("llama3-405b", "llama-3.1-405b")),
    _Entry("mistral-7b", family="mistral",
           description="Mistral 7B v0.1 (Jiang et al. 2023, Table 1; mistralai/Mistral-7B-v0.1 config.json): 8 KV "
                       "heads, ffn 14336, vocab 32000; sequence 8192 (the paper's context_len; config.json says "
                       "max_position_embeddings 32768) with a 4096-token sliding window that is not modelled here",
           shape=_llama(32, 4096, 32, 8, 14336, 32000, 8192), aliases=("mistral-7b-v0.1", "mistral")),
    _Entry("mixtral-8x7b", family="mixtral",
           description="Mixtral 8x7B (mistralai/Mixtral-8x7B-v0.1 config.json): 8 experts of width 14336, top-2, "
                       "8 KV heads, vocab 32000, RoPE theta 1e6",
           shape=_llama(32, 4096, 32, 8, 0, 32000, 32768, num_experts=8, top_k=2, expert_ffn_hidden=14336,
                        rope_theta=1e6),
           aliases=("mixtral-8x7b-v0.1", "mixtral")),
    _Entry("mixtral-8x22b", family="mixtral",
           description="Mixtral 8x22B (mistralai/Mixtral-8x22B-v0.1 config.json): 56 x 6144, 48 heads, 8 KV heads, "
                       "8 experts of width 16384, top-2, vocab 32000, RoPE theta 1e6",
           shape=_llama(56, 6144, 48, 8, 0, 32000, 65536, num_experts=8, top_k=2, expert_ffn_hidden=16384,
                        rope_theta=1e6),
           aliases=("mixtral-8x22b-v0.1",)),
    # -- DeepSeek-V3-like fine-grained MoE ---------------------------------------------
    # MLA does not fit LayerSpec: attention is modelled with 128 query heads of dim 128 (v_head_dim) and
    # 16 KV heads, which keeps the projection weights near MLA's low-rank ones (264M vs 187M a layer;
    # plain 128-head attention would be 470M and add 17B parameters) while TP up to 16 stays valid.
    _Entry("deepseek-v3", family="deepseek",
           description=("DeepSeek-V3-like MoE (deepseek-ai/DeepSeek-V3 config.json, MTP module excluded): 61 x 7168, "
                        "first 3 layers dense (ffn 18432), then 256 routed experts of width 2048, top-8, plus 1 shared "
                        "expert of width 2048; vocab 129280. MLA approximated: 128 query heads of dim 128, 16 KV heads "
                        "of dim 128 (projection weights 264M vs MLA's 187M per layer); KV cache modelled exactly as "
                        "kv_lora_rank + qk_rope_head_dim = 576 elements per token per layer; sequence 4096 as "
                        "pre-trained (extended to 128K afterwards)"),
           shape=_llama(61, 7168, 128, 16, 18432, 129280, 4096, head_dim=128, num_experts=256, top_k=8,
                        expert_ffn_hidden=2048, shared_experts=1, shared_ffn_hidden=2048, first_dense_layers=3,
                        kv_cache_dim=512 + 64, norm_eps=1e-6, rope_theta=10000.0),
           aliases=("deepseek-v3-671b", "deepseek-ai/DeepSeek-V3", "deepseek-v3-base")),
    _Entry("deepseek-v3-bigmac", family="deepseek",
           description=("deepseek-v3 with BigMac's MoE structure (Jin et al. 2025): a 7168 -> 1024 down-projection "
                        "before dispatch and 1024 -> 7168 up-projection after combine, so the all-to-all and the "
                        "routed experts run at dimension 1024"),
           shape=_llama(61, 7168, 128, 16, 18432, 129280, 4096, head_dim=128, num_experts=256, top_k=8,
                        expert_ffn_hidden=2048, shared_experts=1, shared_ffn_hidden=2048, first_dense_layers=3,
                        kv_cache_dim=512 + 64, moe_dispatch_dim=1024, norm_eps=1e-6),
           aliases=("bigmac-deepseek-v3",)),
    # -- HELM's models (../shared/validation/README.md gives layers x hidden) ------------------------
    _Entry("opt-175b", family="opt",
           description="OPT-175B (Zhang et al. 2022, Table 1): 96 x 12288, 96 heads, ReLU, vocab 50272, context 2048",
           shape=_gpt(96, 12288, 96, 50272, 2048, activation="relu"),
           aliases=("together/opt-175b", "helm-opt-175b", "facebook/opt-175b")),
    _Entry("opt-66b", family="opt",
           description="OPT-66B (Zhang et al. 2022, Table 1): 64 x 9216, 72 heads, ReLU, vocab 50272, context 2048",
           shape=_gpt(64, 9216, 72, 50272, 2048, activation="relu"),
           aliases=("together/opt-66b", "helm-opt-66b", "facebook/opt-66b")),
    _Entry("helm-j1-jumbo", family="jurassic",
           description="AI21 Jurassic-1 Jumbo 178B (Lieber et al. 2021): 76 x 13824, 96 heads of 144, vocab 256000, "
                       "context 2048",
           shape=_gpt(76, 13824, 96, 256000, 2048), aliases=("ai21/j1-jumbo", "j1-jumbo", "jurassic-1-jumbo")),
    _Entry("helm-j1-grande", family="jurassic",
           description="AI21 Jurassic-1 Grande 17B: 50 x 5120, 40 heads, vocab 256000, context 2048",
           shape=_gpt(50, 5120, 40, 256000, 2048), aliases=("ai21/j1-grande", "j1-grande")),
    _Entry("helm-j1-large", family="jurassic",
           description="AI21 Jurassic-1 Large 7.5B (Lieber et al. 2021): 32 x 4096, 32 heads, vocab 256000, context "
                       "2048",
           shape=_gpt(32, 4096, 32, 256000, 2048), aliases=("ai21/j1-large", "j1-large", "jurassic-1-large")),
    _Entry("helm-tnlg-530b", family="gpt",
           description="Megatron-Turing NLG 530B (Smith et al. 2022): 105 x 20480, 128 heads, vocab 51200, context "
                       "2048; "
                       "HELM's microsoft/TNLGv2_530B",
           shape=_gpt(105, 20480, 128, 51200, 2048),
           aliases=("microsoft/TNLGv2_530B", "tnlg-530b", "mt-nlg-530b", "helm-tnlgv2-530b")),
    _Entry("helm-tnlg-7b", family="gpt",
           description="Turing NLG v2 7B (HELM's microsoft/TNLGv2_7B): 32 x 4096, 32 heads, vocab 51200, context 2048",
           shape=_gpt(32, 4096, 32, 51200, 2048), aliases=("microsoft/TNLGv2_7B", "tnlg-7b", "helm-tnlgv2-7b")),
    _Entry("helm-52b", family="gpt",
           description="The 52B dense decoder HELM profiled for anthropic/stanford-online-all-v4-s3 and "
                       "cohere/xlarge-20220609: 64 x 8192, 64 heads, vocab 65536, context 8192 (Askell et al. 2021)",
           shape=_gpt(64, 8192, 64, 65536, 8192),
           aliases=("anthropic/stanford-online-all-v4-s3", "cohere/xlarge-20220609", "helm-anthropic-52b",
                    "helm-cohere-xlarge", "anthropic-52b", "cohere-xlarge")),
    _Entry("bloom-176b", family="bloom",
           description="BLOOM 176B (bigscience/bloom config.json): 70 x 14336, 112 heads, ALiBi, vocab 250880, "
                       "context 2048",
           shape=_gpt(70, 14336, 112, 250880, 2048, position="none"),
           aliases=("together/bloom", "helm-bloom", "bigscience/bloom", "bloom")),
    _Entry("yalm-100b", family="yalm",
           description="YaLM 100B (yandex/YaLM-100B): 80 x 10240, 128 heads, GeGLU MLP of width 27308, vocab 128000, "
                       "context 1024",
           shape=_gpt(80, 10240, 128, 128000, 1024, ffn_hidden=27308, gated_mlp=True),
           aliases=("together/yalm", "helm-yalm", "yandex/yalm-100b", "yalm")),
    _Entry("gpt-neox-20b", family="gpt_neox",
           description="GPT-NeoX-20B (EleutherAI/gpt-neox-20b config.json): 44 x 6144, 64 heads, rotary, untied head, "
                       "vocab 50432, context 2048",
           shape=_gpt(44, 6144, 64, 50432, 2048, position="rope", tie_embeddings=False),
           aliases=("together/gpt-neox-20b", "gooseai/gpt-neo-20b", "helm-gpt-neox-20b", "EleutherAI/gpt-neox-20b",
                    "gpt-neo-20b")),
    _Entry("gpt-j-6b", family="gptj",
           description="GPT-J-6B (EleutherAI/gpt-j-6b config.json): 28 x 4096, 16 heads of 256, rotary, untied head, "
                       "vocab 50400, context 2048",
           shape=_gpt(28, 4096, 16, 50400, 2048, position="rope", tie_embeddings=False),
           aliases=("huggingface/gptj_6b", "gooseai/gpt-j-6b", "together/gpt-j-6b", "helm-gpt-j-6b",
                    "EleutherAI/gpt-j-6b", "gptj-6b")),
    # -- the deliberately uneven model ---------------------------------------------------
    _Entry("transgan-amp", family="transgan", build=_build_transgan,
           description=("AMP's TransGAN generator (DachengLi1/AMP het_model setting): l1 projection of a 512-d latent "
                        "to 9 x 9 tokens x 1024 (modelled as an embedding table of 512 x 81 rows), 12 blocks at "
                        "hidden 1024 on 81 tokens, then 12 blocks at hidden 16 on the 288 x 288 image in 18 x 18 "
                        "windows (seq_len 82944 tokens a sample, attention_span 324), 4 heads, MLP ratio 4, GELU; "
                        "the 1x1 to-RGB convolution is the head (vocab 3). Upsampling, reshapes and the intermediate "
                        "position embeddings (5.6M parameters) are folded away; pixel norm is modelled as RMSNorm"),
           aliases=("transgan", "amp-transgan")),
    # -- tiny models for tests and the executor, and the executor's ~1.5B model ----------------
    _Entry("tiny-llama", family="tiny", description="4-layer Llama-style model for tests (GQA 4/2 heads, SwiGLU)",
           shape=_llama(4, 64, 4, 2, 128, 256, 32)),
    _Entry("tiny-moe", family="tiny", description="tiny-llama with 4 experts of width 128, top-2, in every layer",
           shape=_llama(4, 64, 4, 2, 0, 256, 32, num_experts=4, top_k=2, expert_ffn_hidden=128)),
    _Entry("tiny-gpt2", family="tiny", description="4-layer GPT-2-style model for tests",
           shape=_gpt(4, 64, 4, 256, 32)),
    _Entry("llama-1.5b", family="llama",
           description="~1.5B Llama-style model of the executor benchmarks (issue 5): 28 x 2048, 16 heads, 8 KV heads, "
                       "SwiGLU 5632, vocab 32000, sequence 4096",
           shape=_llama(28, 2048, 16, 8, 5632, 32000, 4096), aliases=("llama-1.5b-exec",)),
)


def _with_position_table(spec: ModelSpec, rows: int) -> ModelSpec:
    """Give a learned-position embedding its table size, so `num_params` counts it."""
    emb = spec.layers[0]
    if emb.kind != "embedding" or emb.position != "learned" or emb.seq_len:
        return spec
    return replace(spec, layers=(replace(emb, seq_len=rows), *spec.layers[1:]))


def _build(entry: _Entry) -> ModelSpec:
    if entry.build is not None:
        return entry.build(entry)
    spec = ModelSpec.decoder(entry.name, family=entry.family, description=entry.description, **entry.shape)
    return _with_position_table(spec, spec.seq_len)


# -- look-ups ----------------------------------------------------------------------------
_NOISE_TOKENS = frozenset({"meta", "hf", "instruct", "chat", "base"})
_BY_NAME = {e.name: e for e in _CATALOG}


def _compact(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _lookup_keys(name: str) -> list[str]:
    """Compact spellings of a name to try, most specific first."""
    tail = name.rsplit("/", 1)[-1]
    tokens = [t for t in re.split(r"[^a-z0-9]+", tail.lower()) if t and t not in _NOISE_TOKENS]
    keys = [_compact(name), _compact(tail), "".join(tokens)]
    return list(dict.fromkeys(k for k in keys if k))


def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for e in _CATALOG:
        for n in (e.name, *e.aliases):
            key = _compact(n)
            if key in table and table[key] != e.name:
                raise AssertionError(f"catalog alias {n!r} of {e.name!r} collides with {table[key]!r}")
            table[key] = e.name
    return table


_ALIASES = _alias_table()


def list_models() -> list[str]:
    """Canonical names of every catalog model."""
    return [e.name for e in _CATALOG]


def model_aliases(name: str) -> tuple[str, ...]:
    """The other names a catalog model answers to (HELM keys, Hugging Face repo names, ...)."""
    return _BY_NAME[canonical_name(name)].aliases


def canonical_name(name: str) -> str:
    """The catalog's own name for `name`; raises `UnknownModelError` with suggestions."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(str(name), list_models()[:5])
    for key in _lookup_keys(name):
        if key in _ALIASES:
            return _ALIASES[key]
    close = difflib.get_close_matches(_compact(name), list(_ALIASES), n=10, cutoff=0.5)
    suggestions = list(dict.fromkeys(_ALIASES[k] for k in close))[:5]
    raise UnknownModelError(name, suggestions)


@lru_cache(maxsize=None)
def _get_canonical(name: str) -> ModelSpec:
    return _build(_BY_NAME[name])


def get_model(name: str) -> ModelSpec:
    """A catalog model by name, forgiving case and punctuation ("Llama-3-70B", "llama3_70b",
    "meta-llama/Meta-Llama-3-70B", HELM keys like "ai21/j1-jumbo")."""
    return _get_canonical(canonical_name(name))


def resolve_model(model: ModelSpec | str) -> ModelSpec:
    """`model` itself if it is a ModelSpec, else the catalog model of that name."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        return get_model(model)
    raise ModelConfigError(
        f"a model must be a ModelSpec or a catalog name (costmodel.catalog.list_models()), got {type(model).__name__}")


# -- AMP's layer lists -------------------------------------------------------------------------
# For each AMP model: length of AMP's layer list, and the AMP index of each entry of our
# `ModelSpec.layers` in order. AMP entries with no counterpart here (noops, reshapes,
# upsampling) ride along with the layer that follows them.
#   gpt2-amp (30 entries): [embed, noop, 24 x transformer, noop, noop, lm_head, noop];
#       ours: embed <- 0, block i <- 2 + i, head <- 28.
#   transgan-amp (56 entries, Generator pipe with depth 12,0,0,0,0,12): 0 l1, 1 view, 2 pos_embed,
#       3..14 group-1 blocks, 15..40 upsampling / pos_embed / window reshapes, 41..52 group-2
#       blocks, 53 view, 54 window_reverse, 55 to-RGB conv; ours: embed <- 0 (l1 and the first
#       position embedding), block i <- 3 + i (i < 12), block 12 + i <- 41 + i, head <- 55.
_AMP_LAYOUTS: Mapping[str, tuple[int, tuple[int, ...]]] = {
    "gpt2-amp": (30, (0, *range(2, 26), 28)),
    "transgan-amp": (56, (0, *range(3, 15), *range(41, 53), 55)),
}
_AMP_SETTINGS: Mapping[str, str] = {"homogeneous": "gpt2-amp", "het_cluster": "gpt2-amp", "het_model": "transgan-amp",
                                    "gpt2-amp": "gpt2-amp", "transgan-amp": "transgan-amp"}


def amp_model_name(setting: str) -> str:
    """The catalog model an AMP setting ("homogeneous", "het_cluster", "het_model") trained."""
    if setting not in _AMP_SETTINGS:
        raise ModelConfigError(f"unknown AMP setting {setting!r}; use one of {', '.join(_AMP_SETTINGS)}")
    return _AMP_SETTINGS[setting]


def amp_layer_map(setting: str) -> list[int]:
    """Cut-point map from AMP's layer list to `ModelSpec.layers` of the setting's model.

    Returns a list of len(AMP list) + 1 integers: entry c is the cut into our layers
    equivalent to AMP's cut c (AMP stage i holds AMP entries [b_i, b_{i+1}); our stage i
    holds layers [map[b_i], map[b_{i+1}])). map[c] counts our layers whose AMP entry comes
    before c, so for an AMP entry that is a real layer, map[c] is that layer's index in
    `ModelSpec.layers`; noops map to the next real layer; map[0] = 0, map[-1] = len(layers).
    """
    n_entries, positions = _AMP_LAYOUTS[amp_model_name(setting)]
    return [sum(1 for p in positions if p < c) for c in range(n_entries + 1)]


def amp_stage_cuts(setting: str, amp_boundaries: Sequence[int] | str) -> tuple[int, ...]:
    """AMP's `stage_boundaries` ("0,15,30" or [0, 15, 30]) as cut points into our `ModelSpec.layers`.

    The cuts never decrease. An AMP stage that holds only entries with no
    counterpart here (noops) becomes an empty stage (equal neighbouring cuts): in
    amp_trials.csv that happens in 4 of 170 trials ("0,1,2,..." with pp=16), all
    of which ran out of memory.
    """
    if isinstance(amp_boundaries, str):
        try:
            amp_boundaries = [int(x) for x in amp_boundaries.split(",")]
        except ValueError:
            raise ModelConfigError(f"AMP stage boundaries must be comma-separated integers, got {amp_boundaries!r}") \
                from None
    mapping = amp_layer_map(setting)
    bounds = list(amp_boundaries)
    if not bounds or bounds[0] != 0 or bounds[-1] != len(mapping) - 1 or any(
            not 0 <= b < len(mapping) for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ModelConfigError(
            f"AMP stage boundaries {bounds} for {setting!r} must increase from 0 to {len(mapping) - 1}")
    return tuple(mapping[b] for b in bounds)
