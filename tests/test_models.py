"""Model descriptions: the catalog, Hugging Face configs and nn.Module import."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel import ModelConfigError, ModelSpec, UnknownModelError
from costmodel.catalog import (amp_layer_map, amp_model_name, amp_stage_cuts, canonical_name, get_model, list_models,
                               model_aliases, resolve_model)
from costmodel.hf import SUPPORTED_MODEL_TYPES, from_hf_config
from costmodel.layers import attention_flops_per_token, layer_params, matmul_flops_per_token
from hardware_profiles.errors import ParplanError

HF_DIR = Path(__file__).parent / "data" / "hf_configs"
VALIDATION = Path(__file__).resolve().parents[2] / "shared" / "validation"


def _validation(name: str) -> Path:
    path = VALIDATION / name
    if not path.is_file():
        pytest.skip(f"validation data {path} not present")
    return path


# -- catalog ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_models())
def test_every_catalog_model_builds_and_round_trips(name):
    m = get_model(name)
    assert m.name == name
    assert m.description
    assert m.layers[0].kind == "embedding" and m.layers[-1].kind == "head"
    assert m.num_layers >= 1 and m.num_params > 0
    assert 0 < m.num_active_params <= m.num_params
    assert (m.num_active_params < m.num_params) == m.is_moe
    assert ModelSpec.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert ModelSpec.from_name(name) is m  # cached, and reachable from the public constructor
    # parameters are the sum of the layers', and each layer is non-empty
    assert sum(layer_params(lay) for lay in m.layers) == m.num_params
    assert all(layer_params(lay) > 0 for lay in m.layers)


# Published totals (parameters, and active parameters for MoE); sources in each entry's description.
PUBLISHED = {
    "gpt2": 124.44e6, "gpt2-medium": 354.8e6, "gpt2-large": 774.0e6, "gpt2-xl": 1557.6e6,
    "gpt3-175b": 175e9, "gpt3-6.7b": 6.7e9, "gpt3-1.3b": 1.3e9, "gpt3-350m": 350e6,
    "llama-2-7b": 6.74e9, "llama-2-13b": 13.02e9, "llama-2-70b": 68.98e9,
    "llama-3-8b": 8.03e9, "llama-3-70b": 70.55e9, "llama-3-405b": 405.85e9,
    "mistral-7b": 7.24e9, "mixtral-8x7b": 46.7e9, "mixtral-8x22b": 141e9, "deepseek-v3": 671e9,
    "opt-175b": 175e9, "opt-66b": 66e9, "bloom-176b": 176.25e9, "gpt-neox-20b": 20.55e9, "gpt-j-6b": 6.05e9,
    "helm-j1-jumbo": 178e9, "helm-j1-grande": 17e9, "helm-j1-large": 7.5e9, "helm-tnlg-530b": 530e9,
    "helm-52b": 52e9, "llama-1.5b": 1.45e9,
}
PUBLISHED_ACTIVE = {"mixtral-8x7b": 12.9e9, "mixtral-8x22b": 39.1e9}


@pytest.mark.parametrize("name,total", sorted(PUBLISHED.items()))
def test_published_parameter_counts(name, total):
    assert get_model(name).num_params == pytest.approx(total, rel=0.02)


@pytest.mark.parametrize("name,active", sorted(PUBLISHED_ACTIVE.items()))
def test_published_active_parameter_counts(name, active):
    assert get_model(name).num_active_params == pytest.approx(active, rel=0.02)


def test_yalm_is_about_100b():
    # "100B" is a round figure; the GeGLU width 27308 puts the shape at ~102B.
    assert get_model("yalm-100b").num_params == pytest.approx(100e9, rel=0.03)


def test_megatron_family_matches_table1():
    rows = list(csv.DictReader(_validation("megatron_table1.csv").open()))
    assert len(rows) == 10
    for row in rows:
        params_b = float(row["params_b"])
        tag = "1t" if params_b >= 1000 else f"{params_b:g}b"
        m = get_model(f"megatron-{tag}")
        assert (m.num_heads, m.hidden, m.num_layers) == (int(row["heads"]), int(row["hidden"]), int(row["layers"]))
        assert (m.vocab, m.seq_len) == (int(row["vocab"]), int(row["seq_len"]))
        assert m.blocks[0].ffn_hidden == 4 * m.hidden and m.layers[-1].tied
        assert m.num_params == pytest.approx(params_b * 1e9, rel=0.03)


def test_gpt2_amp_shape_and_learned_positions_counted():
    m = get_model("gpt2-amp")
    b = m.blocks[0]
    assert (m.num_layers, m.hidden, m.num_heads, m.vocab, m.seq_len) == (24, 1024, 16, 52256, 1024)
    assert (b.ffn_hidden, b.norm, b.activation, b.gated_mlp, b.bias) == (4096, "layernorm", "gelu", False, True)
    assert m.layers[-1].tied and m.layers[0].position == "learned"
    h, v, s = 1024, 52256, 1024
    assert m.num_params == v * h + s * h + 24 * (12 * h * h + 13 * h) + 2 * h


def test_gqa_moe_and_rope_shapes():
    assert get_model("llama-3-70b").num_kv_heads == 8 and get_model("llama-3-8b").num_kv_heads == 8
    assert get_model("llama-2-70b").num_kv_heads == 8 and get_model("llama-2-13b").num_kv_heads == 40
    assert get_model("llama-3-405b").rope_theta == 500000.0 and get_model("llama-3-405b").vocab == 128256
    assert get_model("llama-3-405b").seq_len == 8192 and get_model("llama-2-7b").seq_len == 4096
    for name in ("mixtral-8x7b", "mixtral-8x22b"):
        m = get_model(name)
        assert all(b.num_experts == 8 and b.top_k == 2 for b in m.blocks)


def test_deepseek_v3_and_bigmac():
    m = get_model("deepseek-v3")
    assert (m.num_layers, m.hidden, m.num_heads, m.vocab) == (61, 7168, 128, 129280)
    dense, moe = m.blocks[:3], m.blocks[3:]
    assert all(not b.is_moe and b.ffn_hidden == 18432 for b in dense)
    assert all(b.num_experts == 256 and b.top_k == 8 and b.expert_ffn_hidden == 2048 for b in moe)
    assert all(b.shared_experts == 1 and b.shared_ffn_hidden == 2048 for b in moe)
    assert all(b.kv_cache_dim == 576 for b in m.blocks)
    assert "MLA" in m.description
    assert m.num_active_params < m.num_params / 10
    big = get_model("deepseek-v3-bigmac")
    assert all(b.moe_dispatch_dim == 1024 and b.dispatch_dim == 1024 for b in big.blocks[3:])
    assert [b.dispatch_dim for b in m.blocks[3:]] == [7168] * 58
    # experts at the low dimension: fewer routed-expert parameters than the plain model
    assert big.num_params < m.num_params


def test_transgan_is_uneven():
    m = get_model("transgan-amp")
    first, second = m.blocks[:12], m.blocks[12:]
    assert len(second) == 12
    assert {b.hidden for b in first} == {1024} and {b.hidden for b in second} == {16}
    assert {b.seq_len for b in first} == {81} and {b.seq_len for b in second} == {288 * 288}
    assert {b.attention_span for b in second} == {18 * 18}
    assert not any(b.causal for b in m.blocks)
    # l1 maps a 512-d latent to 81 tokens of 1024: that many weights, plus the 81-row position table
    assert layer_params(m.layers[0]) == 512 * 81 * 1024 + 81 * 1024


def test_tiny_and_executor_models():
    t = get_model("tiny-llama")
    assert (t.num_layers, t.hidden, t.num_heads, t.num_kv_heads, t.blocks[0].ffn_hidden, t.vocab, t.seq_len) == \
        (4, 64, 4, 2, 128, 256, 32)
    moe = get_model("tiny-moe")
    assert moe.is_moe and all(b.num_experts == 4 and b.top_k == 2 for b in moe.blocks)
    assert get_model("tiny-gpt2").layers[-1].tied
    big = get_model("llama-1.5b")
    assert (big.num_layers, big.hidden, big.num_heads, big.num_kv_heads, big.blocks[0].ffn_hidden, big.vocab,
            big.seq_len) == (28, 2048, 16, 8, 5632, 32000, 4096)


@pytest.mark.parametrize("spelling", ["Llama-3-70B", "llama3_70b", "meta-llama/Meta-Llama-3-70B", "LLAMA 3 70b",
                                      "llama-3.1-70b", "llama3-70b"])
def test_names_forgive_case_and_punctuation(spelling):
    assert get_model(spelling).name == "llama-3-70b"


@pytest.mark.parametrize("spelling,name", [("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3-8b"),
                                           ("meta-llama/Llama-2-7b-chat-hf", "llama-2-7b"),
                                           ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
                                           ("EleutherAI/gpt-neox-20b", "gpt-neox-20b"), ("GPT-2", "gpt2"),
                                           ("Megatron_1.7B", "megatron-1.7b")])
def test_hub_names_resolve(spelling, name):
    assert canonical_name(spelling) == name


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from([n for e in list_models() for n in (e, *model_aliases(e))]),
       sep=st.sampled_from(["-", "_", ".", " ", ""]), upper=st.booleans())
def test_every_alias_resolves_under_any_spelling(name, sep, upper):
    spelled = name.replace("-", sep)
    spelled = spelled.upper() if upper else spelled
    assert canonical_name(spelled) == canonical_name(name)


def test_every_helm_key_resolves():
    for fname in ("helm_idealized_runtimes_a100.json", "helm_idealized_runtimes_v100.json"):
        keys = json.loads(_validation(fname).read_text())
        for key in keys:
            assert get_model(key).num_params > 1e8, key
    assert get_model("openai/davinci") is get_model("gpt3-175b")
    assert get_model("cohere/xlarge-20220609") is get_model("anthropic/stanford-online-all-v4-s3")
    assert get_model("microsoft/TNLGv2_530B").num_layers == 105


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UnknownModelError) as info:
        get_model("llama-3-7b")
    assert isinstance(info.value, ParplanError)
    assert any(s.startswith("llama-3") for s in info.value.suggestions)
    assert "did you mean" in str(info.value) and "list_models" in str(info.value)
    with pytest.raises(UnknownModelError):
        get_model("")
    with pytest.raises(UnknownModelError) as info:
        get_model("mixtrall-8x7b")
    assert "mixtral-8x7b" in info.value.suggestions


def test_resolve_model():
    m = get_model("tiny-llama")
    assert resolve_model(m) is m
    assert resolve_model("Tiny_Llama") is m
    with pytest.raises(ModelConfigError, match="ModelSpec or a catalog name"):
        resolve_model(42)


# -- AMP layer lists ------------------------------------------------------------------------

def test_amp_layer_map_points_at_the_right_layers():
    gpt = get_model(amp_model_name("homogeneous"))
    mp = amp_layer_map("homogeneous")
    assert len(mp) == 31 and mp[0] == 0 and mp[-1] == gpt.num_entries
    assert mp[:3] == [0, 1, 1]  # embed, noop, first transformer
    assert all(gpt.layers[mp[i]].kind == "transformer" and gpt.layers[mp[i]].name == f"block{i - 2}"
               for i in range(2, 26))
    assert gpt.layers[mp[28]].kind == "head"
    assert amp_layer_map("het_cluster") == mp

    tg = get_model(amp_model_name("het_model"))
    mt = amp_layer_map("het_model")
    assert len(mt) == 57 and mt[-1] == tg.num_entries
    assert [tg.layers[mt[i]].hidden for i in range(3, 15)] == [1024] * 12
    assert [tg.layers[mt[i]].hidden for i in range(41, 53)] == [16] * 12
    assert tg.layers[mt[55]].kind == "head"
    assert all(a <= b for a, b in zip(mt, mt[1:]))


def test_amp_trial_boundaries_become_valid_cuts():
    rows = list(csv.DictReader(_validation("amp_trials.csv").open()))
    assert len(rows) == 170
    empty_stages = 0
    for row in rows:
        model = get_model(amp_model_name(row["setting"]))
        cuts = amp_stage_cuts(row["setting"], row["stage_boundaries"])
        assert len(cuts) == int(row["pp"]) + 1
        assert cuts[0] == 0 and cuts[-1] == model.num_entries
        assert all(a <= b for a, b in zip(cuts, cuts[1:])), (row["stage_boundaries"], cuts)
        # a stage comes out empty only where AMP's stage held nothing but noops
        amp = [int(x) for x in row["stage_boundaries"].split(",")]
        mapping = amp_layer_map(row["setting"])
        real = {c for c in range(len(mapping) - 1) if mapping[c + 1] > mapping[c]}  # AMP entries that are layers
        for (lo, hi), (a, b) in zip(zip(amp, amp[1:]), zip(cuts, cuts[1:])):
            assert (a == b) == (not real & set(range(lo, hi)))
        if row["measured_s"]:
            empty_stages += cuts[0] == 0 and any(a == b for a, b in zip(cuts, cuts[1:]))
    assert empty_stages == 0  # every trial with a measurement maps onto non-empty stages


def test_amp_bad_input():
    with pytest.raises(ModelConfigError, match="homogeneous"):
        amp_layer_map("nope")
    with pytest.raises(ModelConfigError, match="increase from 0 to 30"):
        amp_stage_cuts("homogeneous", "0,20,15,30")
    with pytest.raises(ModelConfigError, match="comma-separated"):
        amp_stage_cuts("homogeneous", "0;30")


# -- Hugging Face configs ---------------------------------------------------------------------

HF_PUBLISHED = {
    "llama-3-8b": 8.03e9, "mistral-7b": 7.24e9, "mixtral-8x7b": 46.7e9, "gpt2": 124.44e6,
    "gpt-neox-20b": 20.55e9, "qwen2-7b": 7.62e9, "qwen2-moe-a2.7b": 14.3e9, "deepseek-v3": 671e9,
}


@pytest.mark.parametrize("stem,total", sorted(HF_PUBLISHED.items()))
def test_hf_config_parameter_counts(stem, total):
    m = from_hf_config(HF_DIR / f"{stem}.json")
    assert m.num_params == pytest.approx(total, rel=0.01)
    assert m.family in SUPPORTED_MODEL_TYPES


def test_every_family_has_a_sample_config():
    families = {json.loads(p.read_text())["model_type"] for p in HF_DIR.glob("*.json")}
    assert families == set(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("stem,catalog", [("llama-3-8b", "llama-3-8b"), ("mixtral-8x7b", "mixtral-8x7b"),
                                          ("gpt2", "gpt2"), ("gpt-neox-20b", "gpt-neox-20b"),
                                          ("mistral-7b", "mistral-7b"), ("deepseek-v3", "deepseek-v3")])
def test_hf_config_agrees_with_catalog(stem, catalog):
    a, b = from_hf_config(HF_DIR / f"{stem}.json"), get_model(catalog)
    assert [layer_params(x) for x in a.layers] == [layer_params(x) for x in b.layers]
    assert a.num_kv_heads == b.num_kv_heads and a.num_active_params == b.num_active_params


def test_hf_family_details():
    q = from_hf_config(HF_DIR / "qwen2-7b.json")
    assert q.blocks[0].bias and q.num_kv_heads == 4 and q.norm_eps == 1e-6 and q.rope_theta == 1e6
    moe = from_hf_config(HF_DIR / "qwen2-moe-a2.7b.json")
    b = moe.blocks[0]
    assert (b.num_experts, b.top_k, b.expert_ffn_hidden, b.shared_experts, b.shared_ffn_hidden) == \
        (60, 4, 1408, 1, 5632)
    assert moe.num_active_params == pytest.approx(2.7e9, rel=0.03)
    g = from_hf_config(HF_DIR / "gpt2.json")
    assert g.layers[-1].tied and g.blocks[0].norm == "layernorm" and g.layers[0].seq_len == 1024
    neox = from_hf_config(HF_DIR / "gpt-neox-20b.json")
    assert not neox.layers[-1].tied and neox.blocks[0].position == "rope" and "25%" in neox.description
    assert "sliding window" in from_hf_config(HF_DIR / "mistral-7b.json").description
    ds = from_hf_config(HF_DIR / "deepseek-v3.json")
    assert sum(b.is_moe for b in ds.blocks) == 58 and ds.blocks[5].kv_cache_dim == 576


def test_qwen2_moe_sparse_step_and_mlp_only_layers():
    cfg = json.loads((HF_DIR / "qwen2-moe-a2.7b.json").read_text())
    cfg.update(num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3])
    m = from_hf_config(cfg)
    assert [b.is_moe for b in m.blocks] == [False, True, False, False, False, True]
    assert all(b.ffn_hidden == 5632 for b in m.blocks if not b.is_moe)


def test_hf_inputs_dir_dict_text_and_overrides(tmp_path):
    text = (HF_DIR / "llama-3-8b.json").read_text()
    (tmp_path / "config.json").write_text(text)
    by_path = from_hf_config(HF_DIR / "llama-3-8b.json")
    by_dir = from_hf_config(tmp_path)
    by_dict = from_hf_config(json.loads(text))
    by_text = ModelSpec.from_hf_config(text)
    assert by_path.layers == by_dir.layers == by_dict.layers == by_text.layers
    assert by_path.seq_len == 8192 and by_path.name == "meta-llama/Meta-Llama-3-8B"
    m = from_hf_config(str(tmp_path / "config.json"), seq_len=2048, name="mine")
    assert (m.seq_len, m.name) == (2048, "mine")
    cfg = json.loads(text)
    del cfg["model_type"]  # architectures still say what it is
    assert from_hf_config(cfg).layers == by_path.layers


def _cfg(stem="llama-3-8b", **changes):
    cfg = json.loads((HF_DIR / f"{stem}.json").read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


@pytest.mark.parametrize("cfg,needle", [
    (_cfg(model_type="bert"), "model_type 'bert' is not supported; supported are llama"),
    (_cfg(model_type=..., architectures=["BertModel"]), "has no 'model_type'"),
    (_cfg(hidden_size=...), "'hidden_size' is missing"),
    (_cfg(hidden_size="4096"), "'hidden_size' must be an integer, got '4096'"),
    (_cfg(num_hidden_layers=0), "'num_hidden_layers' must be >= 1"),
    (_cfg(num_key_value_heads=5), "not a multiple of num_key_value_heads 5"),
    (_cfg(tie_word_embeddings="no"), "'tie_word_embeddings' must be true or false"),
    (_cfg(rope_theta=[1]), "'rope_theta' must be a number"),
    (_cfg(hidden_act="tanhshrink"), "activation 'tanhshrink' is not supported"),
    (_cfg(hidden_size=4100), "not divisible by num_attention_heads"),
    (_cfg("mixtral-8x7b", num_experts_per_tok=9), "exceeds num_local_experts"),
    (_cfg("gpt2", n_embd=...), "'n_embd' or 'hidden_size' is missing"),
    (_cfg("qwen2-moe-a2.7b", moe_intermediate_size=...), "'moe_intermediate_size' is missing"),
    (_cfg("qwen2-moe-a2.7b", mlp_only_layers="0,1"), "must be a list of integers"),
    (_cfg("deepseek-v3", kv_lora_rank=...), "'kv_lora_rank' is missing"),
])
def test_hf_bad_configs_say_what_is_wrong(cfg, needle):
    with pytest.raises(ModelConfigError) as info:
        from_hf_config(cfg)
    assert needle in str(info.value)
    assert isinstance(info.value, ParplanError)


def test_hf_bad_files(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ModelConfigError, match="is not JSON"):
        from_hf_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ModelConfigError, match="JSON list"):
        from_hf_config(tmp_path)
    with pytest.raises(ModelConfigError, match="no Hugging Face config"):
        from_hf_config(tmp_path / "missing")
    with pytest.raises(ModelConfigError, match="path, a directory or a dict"):
        from_hf_config(42)
    with pytest.raises(ModelConfigError, match="seq_len"):
        from_hf_config(_cfg(), seq_len=0)


# -- nn.Module import -------------------------------------------------------------------------

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class _LayerNorm(nn.Module):  # nanoGPT's LayerNorm with optional bias
    def __init__(self, n, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class _CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, qkv_bias=True, proj_bias=True):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=qkv_bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=proj_bias)
        self.n_head, self.n_embd = n_head, n_embd

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class _GPTMLP(nn.Module):
    def __init__(self, n, bias=True):
        super().__init__()
        self.c_fc = nn.Linear(n, 4 * n, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n, n, bias=bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class _GPTBlock(nn.Module):
    def __init__(self, n, h, qkv_bias=True, other_bias=True):
        super().__init__()
        self.ln_1 = _LayerNorm(n)
        self.attn = _CausalSelfAttention(n, h, qkv_bias, other_bias)
        self.ln_2 = _LayerNorm(n)
        self.mlp = _GPTMLP(n, other_bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, vocab=96, block_size=48, n_layer=3, n_head=4, n_embd=32, qkv_bias=True, other_bias=True):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, n_embd), wpe=nn.Embedding(block_size, n_embd), drop=nn.Dropout(0.0),
            h=nn.ModuleList([_GPTBlock(n_embd, n_head, qkv_bias, other_bias) for _ in range(n_layer)]),
            ln_f=_LayerNorm(n_embd)))
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as nanoGPT does

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


class _RMSNorm(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class _Attention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads):
        super().__init__()
        self.num_heads, self.num_key_value_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        rep = self.num_heads // self.num_key_value_heads
        y = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                           is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class _SwiGLU(nn.Module):
    def __init__(self, dim, ffn):
        super().__init__()
        self.gate_proj = nn.Linear(dim, ffn, bias=False)
        self.up_proj = nn.Linear(dim, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _MoE(nn.Module):
    def __init__(self, dim, ffn, n_experts, top_k):
        super().__init__()
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList([_SwiGLU(dim, ffn) for _ in range(n_experts)])
        self.top_k = top_k

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        w, idx = torch.topk(torch.softmax(self.gate(x), -1), self.top_k, dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(idx == e)
            if rows.numel():
                out[rows] += w[rows, slot, None] * expert(x[rows])
        return out.reshape(shape)


class _DecoderLayer(nn.Module):
    def __init__(self, dim, n_heads, n_kv, ffn, n_experts, top_k):
        super().__init__()
        self.input_layernorm = _RMSNorm(dim)
        self.self_attn = _Attention(dim, n_heads, n_kv)
        self.post_attention_layernorm = _RMSNorm(dim)
        self.mlp = _MoE(dim, ffn, n_experts, top_k) if n_experts else _SwiGLU(dim, ffn)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyLlama(nn.Module):
    def __init__(self, vocab=128, dim=48, n_layers=3, n_heads=6, n_kv=2, ffn=80, n_experts=0, top_k=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList([_DecoderLayer(dim, n_heads, n_kv, ffn, n_experts, top_k)
                                     for _ in range(n_layers)])
        self.norm = _RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def _numel(module):
    return sum(p.numel() for p in module.parameters())


def test_from_module_nanogpt():
    torch.manual_seed(0)
    model = NanoGPT()
    batch, seq = 2, 16
    x = torch.randint(0, 96, (batch, seq))
    spec, prof = ModelSpec.from_module(model, x, return_profile=True)
    assert spec.num_params == _numel(model) == prof.total_params
    assert [p.params for p in prof.layers] == [p.spec_params for p in prof.layers]
    emb, head = spec.layers[0], spec.layers[-1]
    assert (emb.vocab, emb.position, emb.seq_len) == (96, "learned", 48) and head.tied
    assert spec.num_layers == 3 and spec.seq_len == seq
    b = spec.blocks[0]
    assert (b.hidden, b.num_heads, b.num_kv_heads, b.head_dim, b.ffn_hidden) == (32, 4, 4, 8, 128)
    assert (b.gated_mlp, b.norm, b.bias, b.activation) == (False, "layernorm", True, "gelu")
    tokens = batch * seq
    assert prof.tokens == tokens
    for p, lay in zip(prof.layers[1:-1], spec.blocks):
        assert p.flops_fwd == tokens * (matmul_flops_per_token(lay) + attention_flops_per_token(lay, seq))
    assert prof.layers[-1].flops_fwd == tokens * matmul_flops_per_token(head)
    assert prof.layers[0].flops_fwd == 0
    assert sum(p.flops_fwd for p in prof.layers) == prof.flops_fwd
    assert prof.time_fwd_s is None and all(p.time_fwd_s is None for p in prof.layers)
    assert "lm_head" in prof.layers[-1].modules and "transformer.wpe" in prof.layers[0].modules


@pytest.mark.parametrize("n_experts", [0, 4])
def test_from_module_llama_style(n_experts):
    torch.manual_seed(0)
    model = TinyLlama(n_experts=n_experts)
    batch, seq = 2, 16
    x = torch.randint(0, 128, (batch, seq))
    spec, prof = ModelSpec.from_module(model, x, return_profile=True, name="tiny")
    assert spec.name == "tiny" and spec.num_params == _numel(model)
    assert not spec.layers[-1].tied and spec.layers[0].position == "rope"
    b = spec.blocks[0]
    assert (b.num_heads, b.num_kv_heads, b.head_dim, b.gated_mlp, b.norm, b.bias) == (6, 2, 8, True, "rmsnorm", False)
    if n_experts:
        assert (b.num_experts, b.top_k, b.expert_ffn_hidden) == (4, 2, 80)
    else:
        assert b.ffn_hidden == 80 and not b.is_moe
    tokens = batch * seq
    for p, lay in zip(prof.layers[1:-1], spec.blocks):
        # the MoE runs each token through exactly top_k experts, as the LayerSpec says
        assert p.flops_fwd == tokens * (matmul_flops_per_token(lay) + attention_flops_per_token(lay, seq))
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_from_module_measures_time_and_serializes():
    model = NanoGPT(n_layer=2)
    spec, prof = ModelSpec.from_module(model, (torch.randint(0, 96, (1, 8)),), measure_time=True,
                                       return_profile=True, device="cpu", seq_len=48, repeats=2)
    assert spec.seq_len == 48
    assert all(p.time_fwd_s is not None and p.time_fwd_s >= 0 for p in prof.layers)
    assert prof.time_fwd_s > 0 and prof.device == "cpu"
    assert sum(p.time_fwd_s for p in prof.layers) <= prof.time_fwd_s * 1.5 + 1e-3
    json.dumps(prof.to_dict())
    assert len(prof.flops_fwd_per_token()) == spec.num_entries


def test_from_module_reports_what_layerspec_cannot_say():
    # q/k/v biases without output biases: one LayerSpec bias flag cannot say that
    model = NanoGPT(qkv_bias=True, other_bias=False)
    with pytest.warns(UserWarning, match="differ"):
        spec, prof = ModelSpec.from_module(model, torch.randint(0, 96, (1, 8)), return_profile=True)
    assert any(not p.params_match for p in prof.layers)
    assert any("differ" in n for n in prof.notes) and "differ" in spec.description
    assert prof.total_params == _numel(model)


def test_from_module_bad_input(monkeypatch):
    with pytest.raises(ModelConfigError, match="nn.Module"):
        ModelSpec.from_module(object(), torch.zeros(1, 4))
    with pytest.raises(ModelConfigError, match="repeated blocks"):
        ModelSpec.from_module(nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 8)), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ModelConfigError, match="failed: IndexError"):
        ModelSpec.from_module(NanoGPT(), torch.full((1, 4), 1000))
    with pytest.raises(ModelConfigError, match="no tensor"):
        ModelSpec.from_module(NanoGPT(), {"idx": None})
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ModelConfigError, match="needs PyTorch"):
        ModelSpec.from_module(NanoGPT(), [1, 2])


def test_tp_splits_evenly_checks_heads_kv_heads_and_mlp_widths():
    from costmodel.catalog import get_model

    llama = get_model("llama-3-70b")  # 64 heads, 8 KV heads
    assert llama.tp_splits_evenly(8) and not llama.tp_splits_evenly(16) and not llama.tp_splits_evenly(3)
    mixtral = get_model("mixtral-8x7b")  # experts 14336 wide
    assert mixtral.tp_splits_evenly(8, expert_tp=8)
    assert not mixtral.tp_splits_evenly(8, expert_tp=7 * 2 ** 12 + 1)  # no expert width divides that
    assert mixtral.tp_splits_evenly(8, expert_tp=None)  # expert widths not asked about
