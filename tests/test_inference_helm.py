"""Inference terms behind the HELM idealized-runtime fit: the host floor of a transformer block, GEMM row tiles,
misaligned GEMMs, a decode's weight streaming, the unfused prefill attention, last-position logits, and the
bracketed max_sequences search. Each is checked for what its physics says, and for being off at the defaults."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import costmodel as cm
from conftest import GPT_STYLE, PARAMS, fast, tiny_gpt, tiny_llama
from costmodel.catalog import get_model
from costmodel.layercost import (Parallel, forward_work, inference_gemm_extra_s, layer_infer_cost,
                                 layer_inference_cost, unfused_prefill_attention_s)
from costmodel.layers import param_split
from costmodel.model import ModelSpec
from costmodel.pricing import CostContext
from hardware_profiles import Cluster, get_gpu

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

A100 = "A100-SXM-80GB"
# a Megatron-style stack: unfused attention over the full score matrix, as bench/validation.py's HELM_BASE
UNFUSED = PARAMS.replace(flash_attention=False, causal_factor=1.0)


def _dev(params=PARAMS, gpu=A100, dtype="fp16"):
    return CostContext(params=params, profiles={}).device(get_gpu(gpu), dtype)


def _block(model: ModelSpec):
    return next(lay for lay in model.layers if lay.kind == "transformer")


def _prefill(model, params, p, cluster=f"1x1x{A100}", tp=1):
    return cm.estimate(model, Cluster.parse(cluster), cm.Strategy(tp=tp),
                       cm.Inference(prompt_tokens=p, output_tokens=2, batch=1, dtype="fp16"),
                       params=params, profiles=None)


def gpt(hidden=4096, layers=4, heads=32, vocab=50400, ffn=0, name="gpt-test"):
    return ModelSpec.decoder(name, num_layers=layers, hidden=hidden, num_heads=heads, ffn_hidden=ffn or 4 * hidden,
                             vocab=vocab, seq_len=2048, **GPT_STYLE)


# ------------------------------------------------------------------------------------------ defaults change nothing
@pytest.mark.parametrize("decode", [False, True])
@pytest.mark.parametrize("tp", [1, 2])
def test_layer_inference_cost_is_layer_infer_cost_at_the_defaults(decode, tp):
    model = tiny_llama()
    dev, par = _dev(), Parallel(tp=tp, tp_bw_gbps=100.0, tp_latency_s=5e-6)
    for lay in model.layers:
        kw = dict(sequences=3, prompt_tokens=40, context=50.0, decode=decode)
        assert layer_inference_cost(lay, dev, par, PARAMS, **kw) == layer_infer_cost(lay, dev, par, PARAMS, **kw)


# ------------------------------------------------------------------------------------------ host floor
def test_host_floor_makes_short_prompts_flat_and_hides_under_long_ones():
    """A block takes max(host, GPU), not their sum: short prompts cost L x floor whatever their length; a prompt
    whose blocks outlast the floor costs what it costs without one."""
    model = gpt()
    L = sum(lay.kind == "transformer" for lay in model.layers)
    floor = 2e-3
    hosted = UNFUSED.replace(infer_host_layer_s=floor)
    # the head over the last position only, so what is left outside the blocks is the embedding lookup
    short = [_prefill(model, hosted.replace(prefill_last_logits_only=True), p).prefill_s for p in (1, 8, 32)]
    assert max(short) - min(short) < 1e-4 * short[0]
    assert short[0] >= L * floor
    # at 4096 tokens a 4096-wide block is ~10 ms of GEMMs on an A100, far above the 2 ms floor
    assert _prefill(model, hosted, 4096).prefill_s == pytest.approx(_prefill(model, UNFUSED, 4096).prefill_s,
                                                                    rel=1e-12)
    # a sum would have added L x floor there
    assert _prefill(model, UNFUSED, 4096).prefill_s + L * floor > _prefill(model, hosted, 4096).prefill_s * 1.001


def test_decode_floor_and_collective_host_cost():
    model = gpt()
    cl = Cluster.parse(f"1x4x{A100}")
    w = cm.Inference(prompt_tokens=64, output_tokens=8, batch=1, dtype="fp16")
    L = sum(lay.kind == "transformer" for lay in model.layers)

    def beta(params, tp):
        return cm.estimate(model, cl if tp > 1 else Cluster.parse(f"1x1x{A100}"), cm.Strategy(tp=tp), w,
                           params=params, profiles=None).per_token_s

    floor = 5e-3  # far above a 4096-wide block's decode on an A100
    p = UNFUSED.replace(decode_host_layer_s=floor)
    assert beta(p, 1) >= L * floor
    assert beta(p, 1) < L * floor * 1.05  # embedding and head only on top
    # tensor parallelism adds host work per collective (two all-reduces a block), not GPU work that would hide
    with_coll = p.replace(infer_host_collective_s=1e-4)
    assert beta(with_coll, 4) - beta(p, 4) == pytest.approx(L * 2 * 1e-4, rel=0.02)
    assert beta(with_coll, 1) == pytest.approx(beta(p, 1), rel=1e-12)  # no collectives at TP1


@fast(25)
@given(st.integers(1, 2048), st.floats(0.0, 5e-3), st.floats(0.0, 5e-3))
def test_larger_host_floor_is_never_faster(p, lo, extra):
    model = tiny_gpt()
    a = _prefill(model, UNFUSED.replace(infer_host_layer_s=lo, decode_host_layer_s=lo), p)
    b = _prefill(model, UNFUSED.replace(infer_host_layer_s=lo + extra, decode_host_layer_s=lo + extra), p)
    assert b.prefill_s >= a.prefill_s - 1e-15
    assert b.per_token_s >= a.per_token_s - 1e-15


# ------------------------------------------------------------------------------------------ GEMM row tiles
def test_row_tiles_make_prefill_a_step_function_of_the_prompt():
    model = gpt(layers=2)
    tiled = UNFUSED.replace(gemm_tile_rows=128)
    lay, dev, par = _block(model), _dev(tiled), Parallel()
    # no padding within one tile, or on whole tiles
    for rows in (1, 77, 128, 256, 1024):
        assert inference_gemm_extra_s(lay, dev, par, tiled, rows, decode=False) == pytest.approx(0.0, abs=1e-15)
    # 129..256 rows run two tiles: their GEMMs cost what 256 rows cost
    gemm = [float(forward_work(lay, dev, par, tiled, rows=r, context=r, causal=True).gemm_s)
            + float(inference_gemm_extra_s(lay, dev, par, tiled, r, decode=False)) for r in (129, 200, 256)]
    assert gemm[0] == pytest.approx(gemm[2], rel=1e-12) and gemm[1] == pytest.approx(gemm[2], rel=1e-12)
    # the whole prefill jumps crossing a tile boundary and moves little inside a tile (attention and elementwise
    # work still grow with each token)
    last = tiled.replace(prefill_last_logits_only=True)
    P = {p: _prefill(model, last, p).prefill_s for p in (1024, 1025, 1152)}
    assert P[1025] - P[1024] > 3 * (P[1152] - P[1025])
    untiled = {p: _prefill(model, UNFUSED.replace(prefill_last_logits_only=True), p).prefill_s for p in (1024, 1025)}
    assert untiled[1025] - untiled[1024] < 0.01 * (P[1025] - P[1024])
    # decode GEMMs (one row per sequence) are never padded
    assert inference_gemm_extra_s(lay, dev, par, tiled, 1, decode=True) == 0.0


@fast(20)
@given(st.integers(1, 1500), st.integers(1, 300))
def test_prefill_never_falls_with_a_longer_prompt(p, more):
    """Monotone in p under every HELM term at once (tiles, host floors, unfused attention, last logits)."""
    model = gpt(hidden=1024, layers=2, heads=16)
    params = UNFUSED.replace(gemm_tile_rows=128, infer_host_layer_s=3e-4, decode_host_layer_s=3e-4,
                             prefill_last_logits_only=True, gemm_memory_efficiency=0.5)
    assert _prefill(model, params, p + more).prefill_s >= _prefill(model, params, p).prefill_s * (1 - 1e-12)


# ------------------------------------------------------------------------------------------ GEMM alignment
def test_misaligned_gemms_pay_only_where_a_dimension_is_not_whole_vectors():
    odd = gpt(hidden=2048, heads=16, ffn=6827, name="odd-ffn")  # fp16 vectors are 8 wide: 6827 is not a multiple
    even = gpt(hidden=2048, heads=16, ffn=6832, name="even-ffn")
    penalty = PARAMS.replace(gemm_misaligned_efficiency=0.5)
    dev, par = _dev(penalty), Parallel()
    assert inference_gemm_extra_s(_block(even), dev, par, penalty, 2048, decode=False) == 0.0
    extra = inference_gemm_extra_s(_block(odd), dev, par, penalty, 2048, decode=False)
    mlp = float(forward_work(_block(odd), dev, par, PARAMS, rows=2048, context=2048, causal=True).gemm_s)
    assert 0 < extra < mlp  # only the two MLP GEMMs slow down (up to 2x), not the attention ones


# ------------------------------------------------------------------------------------------ decode weight streaming
@pytest.mark.parametrize("eff", [0.4, 0.7, 1.0])
def test_batch1_decode_is_bounded_by_reading_the_weights(eff):
    """A decode step reads every local weight once: beta is at least weights / HBM bandwidth, and with no host
    floor it is close to weights / (bandwidth x gemm_memory_efficiency) for a model whose weights dominate."""
    model = gpt(hidden=8192, layers=4, heads=64, vocab=32000)
    params = UNFUSED.replace(gemm_memory_efficiency=eff)
    e = _prefill(model, params, 128)
    weight_bytes = sum(param_split(lay, 0).replicated + param_split(lay, 0).tp_sharded for lay in model.layers) * 2
    bw = get_gpu(A100).memory_bandwidth_gbps * 1e9
    assert e.per_token_s >= weight_bytes / bw
    assert e.per_token_s == pytest.approx(weight_bytes / (bw * eff), rel=0.15)


# ------------------------------------------------------------------------------------------ unfused attention
def test_unfused_prefill_attention_grows_quadratically_and_moves_less_than_training_counts():
    lay = _block(gpt())
    dev, par = _dev(UNFUSED), Parallel()
    t = {p: float(unfused_prefill_attention_s(lay, dev, par, UNFUSED, rows=p, context=p)) for p in (1024, 2048, 4096)}
    assert t[4096] / t[2048] == pytest.approx(4.0, rel=0.1)
    assert t[2048] / t[1024] == pytest.approx(4.0, rel=0.15)
    # training's unfused formula keeps scores for backward; inference's forward moves them fewer times
    assert t[2048] < float(forward_work(lay, dev, par, UNFUSED, rows=2048, context=2048, causal=True).attention_s)


# ------------------------------------------------------------------------------------------ last-position logits
def test_last_position_logits_shrink_prefill_by_the_head_over_the_prompt():
    model = gpt(hidden=2048, heads=16, vocab=256000, layers=2)
    p = 1024
    all_pos = _prefill(model, UNFUSED, p)
    last = _prefill(model, UNFUSED.replace(prefill_last_logits_only=True), p)
    head_flops = 2.0 * p * 2048 * 256000
    saved = all_pos.prefill_s - last.prefill_s
    assert saved >= head_flops / (get_gpu(A100).peak_tflops("fp16") * 1e12) * 0.9  # at least the GEMM at peak
    assert last.per_token_s == pytest.approx(all_pos.per_token_s, rel=1e-12)  # decode unchanged


# ------------------------------------------------------------------------------------------ max_sequences
def _reference_max_sequences(weight, kv, budget):
    """The search before the pooled-memory bracket: doubling, then bisection."""
    from costmodel.partition import split_fits

    def fits(n):
        return split_fits(weight + n * kv, budget)

    if not fits(0):
        return 0
    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 2 ** 31 - 1:
            return 2 ** 31 - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


@fast(60)
@given(st.lists(st.floats(0.0, 1e9), min_size=1, max_size=6), st.floats(1.0, 1e8), st.floats(1e6, 1e11))
def test_max_sequences_bracket_matches_plain_search(weights, kv_each, budget):
    from costmodel.inference import max_sequences

    w = np.array(weights)
    kv = np.full(len(weights), kv_each)
    b = np.array([budget])
    assert max_sequences(w, kv, b) == _reference_max_sequences(w, kv, b)


def test_max_sequences_over_several_stages_is_the_most_that_fits():
    from costmodel.inference import max_sequences
    from costmodel.partition import split_fits

    rng = np.random.default_rng(3)
    for _ in range(30):
        w, kv = rng.uniform(1e8, 1e9, 12), rng.uniform(1e5, 1e7, 12)
        budget = rng.uniform(2e9, 8e9, 3)
        n = max_sequences(w, kv, budget)
        if not split_fits(w, budget):  # not even the weights fit
            assert n == 0
            continue
        assert split_fits(w + n * kv, budget)
        assert not split_fits(w + (n + 1) * kv, budget)


# ------------------------------------------------------------------------------------------ the HELM set-up
def test_helm_layouts_and_fit_setup_predict_rising_prompts():
    from validation import HELM_BASE, HELM_FIT, HELM_FIT_BOUNDS, helm_models, predict_helm

    assert set(HELM_FIT) <= set(HELM_FIT_BOUNDS) | {"gemm_efficiency"}
    models = [h for h in helm_models(A100) if h.model.name in ("gpt-j-6b", "gpt3-175b")]
    assert {h.strategy.tp for h in models} == {1, 8}  # HELM: TP1 up to 20B, TP8 for ~175B on A100-80GB
    P, beta = predict_helm(models, HELM_BASE, {h.model.name: [1, 256, 512, 1024, 1920] for h in models})
    for h, pp, b in zip(models, P, beta):
        assert np.all(np.diff(pp) >= 0)
        assert pp[0] >= b * 0.99  # one token of prompt is a forward like a decode step's (no KV cache to read)


def test_catalog_helm_models_pay_the_alignment_penalty_only_where_their_shapes_are_misaligned():
    """YaLM's 27308-wide GeGLU split four ways leaves 6827 columns a GPU (not whole 8-element vectors); BLOOM's
    and J1-Jumbo's TP8 shapes are whole vectors."""
    from validation import HELM_BASE

    for name, tp, slowed in (("yalm-100b", 4, True), ("bloom-176b", 8, False), ("helm-j1-jumbo", 8, False)):
        m = get_model(name)
        times = [_prefill(m, HELM_BASE.replace(gemm_misaligned_efficiency=eff), 700, cluster=f"1x{tp}x{A100}",
                          tp=tp).prefill_s for eff in (1.0, 0.5)]
        assert (times[1] > times[0] * 1.05) is slowed
