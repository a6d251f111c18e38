"""Cost model: each term against hand-computed values, the stage partition against brute force,
batched pricing against single estimates, bad input, properties, and every catalog model."""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import costmodel as cm
from conftest import (GPT_STYLE, LLAMA_STYLE, PARAMS, contiguous_splits, divisors, fast, tiny_gpt, tiny_llama,
                      tiny_moe, tp_divides_model)
from costmodel import comm
from costmodel.catalog import get_model, list_models
from costmodel.device import DevicePerf, device_perf
from costmodel.errors import InvalidStrategyError, UnknownModelError, WorkloadError
from costmodel.layercost import Parallel, layer_train_cost
from costmodel.layers import activation_bytes_per_token, layer_active_params, layer_params, param_split
from costmodel.model import LayerSpec, ModelSpec
from costmodel.params import CostParams
from costmodel.partition import partition, split_fits, uniform_partition
from costmodel.pricing import ADDITIVE_TERMS, CostContext
from costmodel.strategy import Strategy
from costmodel.training import SCHEDULE_CODES, _uniform_cuts, assemble, build_stage_batch, price_training
from costmodel.workload import Inference, Training
from hardware_profiles import Cluster, Node, ParplanError, get_gpu


def estimate(model, cluster, strategy, workload, **kw):
    """The cost model with fixed constants and datasheet figures only (no calibration file applies)."""
    kw.setdefault("params", PARAMS)
    kw.setdefault("profiles", None)
    return cm.estimate(model, cluster, strategy, workload, **kw)


def additive_sum(e) -> float:
    return sum(e.breakdown[k] for k in ADDITIVE_TERMS)


# ----------------------------------------------------------------------------------------------
# Collectives (alpha-beta, ring volumes, log2 latency steps)
# ----------------------------------------------------------------------------------------------
# ceil(log2 n) written out by hand
LOG2_STEPS = {2: 1, 3: 2, 4: 2, 5: 3, 8: 3, 16: 4}


@pytest.mark.parametrize("n", sorted(LOG2_STEPS))
def test_all_reduce_ring_volume_and_latency(n):
    size, bw, lat = 3e8, 150.0, 7e-6
    expected = 2 * (n - 1) / n * size / 150e9 + 2 * LOG2_STEPS[n] * lat
    assert float(comm.all_reduce_s(size, n, bw, lat)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", sorted(LOG2_STEPS))
def test_all_gather_and_reduce_scatter_volume_and_latency(n):
    size, bw, lat = 3e8, 150.0, 7e-6
    expected = (n - 1) / n * size / 150e9 + LOG2_STEPS[n] * lat
    assert float(comm.all_gather_s(size, n, bw, lat)) == pytest.approx(expected, rel=1e-12)
    assert float(comm.reduce_scatter_s(size, n, bw, lat)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n", sorted(LOG2_STEPS))
def test_all_to_all_volume_and_one_latency_per_peer(n):
    size, bw, lat = 3e8, 150.0, 7e-6
    expected = (n - 1) / n * size / 150e9 + (n - 1) * lat
    assert float(comm.all_to_all_s(size, n, bw, lat)) == pytest.approx(expected, rel=1e-12)


def test_p2p_is_bytes_over_bandwidth_plus_latency():
    assert float(comm.p2p_s(2e9, 25.0, 1e-5)) == pytest.approx(2e9 / 25e9 + 1e-5, rel=1e-12)
    assert float(comm.p2p_s(0.0, 25.0, 1e-5)) == 0.0


@pytest.mark.parametrize("fn", [comm.all_reduce_s, comm.all_gather_s, comm.reduce_scatter_s, comm.all_to_all_s])
def test_collectives_over_one_rank_cost_nothing(fn):
    assert float(fn(1e9, 1, 10.0, 1e-3)) == 0.0


def test_collectives_accept_arrays():
    n = np.array([1, 2, 4])
    out = comm.all_reduce_s(1e9, n, 100.0, 0.0)
    assert out.shape == (3,)
    np.testing.assert_allclose(out, [0.0, 1e9 / 100e9, 1.5e9 / 100e9], rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# GEMM roofline
# ----------------------------------------------------------------------------------------------
def _perf(**kw) -> DevicePerf:
    base = dict(gpu=get_gpu("H100"), dtype="bf16", peak_tflops=100.0, gemm_efficiency=0.5, gemm_half_flops=0.0,
                attention_efficiency=0.5, memory_gbps=1000.0, kernel_overhead_s=0.0, bytes_per_el=2,
                origin="test")
    base.update(kw)
    return DevicePerf(**base)


def test_gemm_compute_bound():
    dev = _perf()
    m = n = k = 4096
    flops = 2 * 4096 ** 3
    compute = flops / (100e12 * 0.5)
    traffic = 3 * 4096 * 4096 * 2 / 1000e9
    assert compute > traffic
    assert float(dev.gemm_time_s(m, n, k)) == pytest.approx(compute, rel=1e-12)


def test_gemm_memory_bound():
    dev = _perf()
    m, n, k = 1, 8192, 8192
    traffic = (1 * 8192 + 8192 * 8192 + 1 * 8192) * 2 / 1000e9
    compute = 2 * 8192 * 8192 / 50e12
    assert traffic > compute
    assert float(dev.gemm_time_s(m, n, k)) == pytest.approx(traffic, rel=1e-12)


def test_gemm_efficiency_curve_launch_overhead_and_count():
    dev = _perf(gemm_half_flops=2e9, kernel_overhead_s=5e-6)
    flops = 2 * 1024 * 1024 * 1024
    # efficiency eff / (1 + half / flops)  <=>  time (flops + half) / (peak x eff)
    expected = (flops + 2e9) / 50e12 + 5e-6
    assert float(dev.gemm_time_s(1024, 1024, 1024)) == pytest.approx(expected, rel=1e-12)
    assert float(dev.gemm_time_s(1024, 1024, 1024, count=3)) == pytest.approx(3 * expected, rel=1e-12)
    assert float(dev.gemm_time_s(0, 1024, 1024)) == 0.0


def test_device_perf_from_datasheet():
    gpu = get_gpu("H100")
    p = CostParams()
    dev = device_perf(gpu, "bf16", p)
    assert dev.matmul_flops_per_s == pytest.approx(gpu.bf16_tflops * 1e12 * p.gemm_efficiency)
    assert dev.memory_gbps == pytest.approx(gpu.memory_bandwidth_gbps * p.memory_efficiency)
    assert dev.bytes_per_el == 2
    assert device_perf(gpu, "fp32", p).bytes_per_el == 4


# ----------------------------------------------------------------------------------------------
# Parameters, counted by hand
# ----------------------------------------------------------------------------------------------
def test_gpt_layer_params_by_hand():
    h = 64
    lay = LayerSpec(kind="transformer", hidden=h, num_heads=4, ffn_hidden=4 * h, gated_mlp=False, norm="layernorm",
                    activation="gelu", bias=True)
    # QKV h x 3h + 3h bias, out-proj h x h + h bias, MLP h x 4h + 4h bias and 4h x h + h bias, 2 LayerNorms of 2h
    qkv, out, up, down, norms = 3 * h * h + 3 * h, h * h + h, 4 * h * h + 4 * h, 4 * h * h + h, 2 * 2 * h
    assert layer_params(lay) == qkv + out + up + down + norms == 12 * h * h + 13 * h
    split = param_split(lay)
    # copied on every TP rank: the norms and the biases added after the row-parallel out-proj and down-proj
    assert split.replicated == norms + h + h
    assert split.tp_sharded == 3 * h * h + 3 * h + h * h + 4 * h * h + 4 * h + 4 * h * h
    assert split.expert == 0


def test_llama_layer_params_gqa_swiglu_by_hand():
    h, heads, kv_heads, head_dim, f = 64, 8, 2, 8, 176
    lay = LayerSpec(kind="transformer", hidden=h, num_heads=heads, num_kv_heads=kv_heads, ffn_hidden=f,
                    gated_mlp=True, norm="rmsnorm", bias=False)
    q = h * (heads * head_dim)
    k = v = h * (kv_heads * head_dim)
    o = (heads * head_dim) * h
    mlp = 3 * h * f  # gate, up, down
    norms = 2 * h
    assert layer_params(lay) == q + k + v + o + mlp + norms == 44160
    split = param_split(lay)
    assert (split.replicated, split.tp_sharded, split.expert) == (norms, q + k + v + o + mlp, 0)


def test_embedding_and_head_params_by_hand():
    h, vocab, rows = 64, 1000, 32
    learned = LayerSpec(kind="embedding", hidden=h, vocab=vocab, position="learned", seq_len=rows)
    assert param_split(learned).replicated == rows * h
    assert param_split(learned).tp_sharded == vocab * h
    assert layer_params(LayerSpec(kind="embedding", hidden=h, vocab=vocab, position="rope")) == vocab * h
    untied = LayerSpec(kind="head", hidden=h, vocab=vocab, norm="rmsnorm")
    assert (param_split(untied).replicated, param_split(untied).tp_sharded) == (h, vocab * h)
    tied = LayerSpec(kind="head", hidden=h, vocab=vocab, norm="layernorm", tied=True)
    assert layer_params(tied) == 2 * h  # the final LayerNorm only; the matrix is the embedding's


def test_moe_layer_params_by_hand():
    h, E, k, fe = 64, 8, 2, 32
    lay = LayerSpec(kind="transformer", hidden=h, num_heads=4, num_experts=E, top_k=k, expert_ffn_hidden=fe,
                    gated_mlp=True, norm="rmsnorm")
    attn, norms, router, one_expert = 4 * h * h, 2 * h, h * E, 3 * h * fe
    split = param_split(lay)
    assert (split.replicated, split.tp_sharded, split.expert) == (norms + router, attn, E * one_expert)
    assert layer_active_params(lay) == norms + router + attn + k * one_expert
    shared = dataclasses.replace(lay, shared_experts=1, shared_ffn_hidden=48)
    assert param_split(shared).tp_sharded == attn + 3 * h * 48
    bigmac = dataclasses.replace(lay, moe_dispatch_dim=16)
    # down- and up-projection around the experts (h x 16 each); experts work at width 16
    assert param_split(bigmac).tp_sharded == attn + 2 * h * 16
    assert param_split(bigmac).expert == E * 3 * 16 * fe


def test_gpt2_and_llama2_7b_totals_by_hand():
    h, L, V, S = 768, 12, 50257, 1024
    gpt2 = L * (12 * h * h + 13 * h) + V * h + S * h + 2 * h  # blocks, token and position tables, final LN
    assert gpt2 == 124_439_808
    assert get_model("gpt2").num_params == gpt2
    h, L, V, f = 4096, 32, 32000, 11008
    llama = L * (4 * h * h + 3 * h * f + 2 * h) + 2 * V * h + h
    assert llama == 6_738_415_616
    assert get_model("llama-2-7b").num_params == llama


# ----------------------------------------------------------------------------------------------
# Activation memory (Korthikanti et al. 2022)
# ----------------------------------------------------------------------------------------------
H, A, S = 64, 4, 32
GPT_LAYER = LayerSpec(kind="transformer", hidden=H, num_heads=A, ffn_hidden=4 * H, gated_mlp=False,
                      norm="layernorm", activation="gelu", bias=True)


def _act(**kw) -> float:
    kw.setdefault("flash", False)
    kw.setdefault("dropout", True)
    return activation_bytes_per_token(GPT_LAYER, S, bytes_per_el=2, **kw)


def test_activation_bytes_gpt_layer_34h_plus_5as():
    # per token of a GPT layer in 16-bit with dropout, no flash attention, no parallelism: 34h + 5as
    assert _act() == pytest.approx(34 * H + 5 * A * S)


@pytest.mark.parametrize("t", [2, 4])
def test_activation_bytes_tensor_parallel(t):
    # TP without SP: 10h replicated + (24h + 5as) split
    assert _act(tp=t) == pytest.approx(10 * H + 24 * H / t + 5 * A * S / t)


@pytest.mark.parametrize("t", [2, 4])
def test_activation_bytes_sequence_parallel(t):
    assert _act(tp=t, sp=True) == pytest.approx(34 * H / t + 5 * A * S / t)


@pytest.mark.parametrize("t", [2, 4])
def test_activation_bytes_selective_recompute_drops_attention_scores(t):
    assert _act(tp=t, sp=True, recompute="selective") == pytest.approx(34 * H / t)


def test_activation_bytes_full_recompute_keeps_block_input():
    assert _act(recompute="full") == pytest.approx(2 * H)


def test_activation_bytes_flash_attention_keeps_no_scores():
    assert _act(flash=True) == pytest.approx(34 * H)


def test_activation_bytes_llama_layer_by_hand():
    h, heads, kv, d, f = 64, 8, 2, 8, 176
    lay = LayerSpec(kind="transformer", hidden=h, num_heads=heads, num_kv_heads=kv, ffn_hidden=f, gated_mlp=True)
    q, k = heads * d, kv * d
    # 2 bytes each: two norm inputs, QKV input, MLP input; Q, K, V; attention output; gate, up, act outputs
    stored = 2 * (h + h + h + h) + 2 * (q + 2 * k) + 2 * q + 2 * 3 * f
    assert activation_bytes_per_token(lay, 32, flash=True, dropout=False) == pytest.approx(stored)


# ----------------------------------------------------------------------------------------------
# Collectives a layer implies (tensor-parallel all-reduce, expert all-to-all)
# ----------------------------------------------------------------------------------------------
def test_layer_tensor_parallel_all_reduces_by_hand():
    lay = LayerSpec(kind="transformer", hidden=64, num_heads=4, ffn_hidden=256)
    dev = device_perf(get_gpu("H100"), "bf16", PARAMS)
    t, bw, lat, mb, seq = 4, 100.0, 3e-6, 2, 32
    par = Parallel(tp=t, tp_bw_gbps=bw, tp_latency_s=lat)
    c = layer_train_cost(lay, dev, par, PARAMS, micro_batch=mb, seq_len=seq, recompute="none")
    nbytes = mb * seq * 64 * 2
    one = 2 * (t - 1) / t * nbytes / (bw * 1e9) + 2 * 2 * lat  # ring all-reduce, log2(4) = 2 latency steps
    assert float(c.tp_comm_s) == pytest.approx(4 * one, rel=1e-12)  # two forward, two backward
    full = layer_train_cost(lay, dev, par, PARAMS, micro_batch=mb, seq_len=seq, recompute="full")
    assert float(full.tp_comm_s) == pytest.approx(6 * one, rel=1e-12)  # plus the recomputed forward
    assert float(c.ep_comm_s) == 0.0


@pytest.mark.parametrize("dispatch_dim", [0, 16])
def test_layer_expert_all_to_all_at_dispatch_width(dispatch_dim):
    h, top_k, ep, bw, lat, mb, seq = 64, 2, 4, 50.0, 5e-6, 1, 32
    lay = LayerSpec(kind="transformer", hidden=h, num_heads=4, num_experts=8, top_k=top_k, expert_ffn_hidden=32,
                    moe_dispatch_dim=dispatch_dim)
    dev = device_perf(get_gpu("H100"), "bf16", PARAMS)
    par = Parallel(tp=1, ep=ep, ep_mode="dp", ep_bw_gbps=bw, ep_latency_s=lat)
    c = layer_train_cost(lay, dev, par, PARAMS, micro_batch=mb, seq_len=seq, recompute="none")
    width = dispatch_dim or h
    nbytes = mb * seq * top_k * width * 2
    one = (ep - 1) / ep * nbytes / (bw * 1e9) + (ep - 1) * lat
    # dispatch and combine, forward and backward
    assert float(c.ep_comm_s) == pytest.approx(4 * one, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Training memory terms
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama4():
    return tiny_llama(num_layers=4)


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_training_model_state_bytes_and_zero(llama4, zero):
    P, dp = llama4.num_params, 4
    e = estimate(llama4, "1x4xH100", Strategy(dp=dp, zero=zero), Training(global_batch=8))
    assert e.memory["weights"] == pytest.approx(2 * P / (dp if zero >= 3 else 1))
    assert e.memory["gradients"] == pytest.approx(2 * P / (dp if zero >= 2 else 1))
    assert e.memory["optimizer"] == pytest.approx(12 * P / (dp if zero >= 1 else 1))
    if zero < 3:
        assert e.memory["reserved"] == pytest.approx(PARAMS.memory_reserved_bytes)
    else:  # plus the gathered weights of the largest layer
        assert e.memory["reserved"] > PARAMS.memory_reserved_bytes


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_training_expert_state_sharded_over_expert_data_parallel(zero):
    model = tiny_moe(num_layers=2, num_experts=4)
    dp, ep = 4, 2
    expert = sum(param_split(lay).expert for lay in model.layers)
    dense = model.num_params - expert
    e = estimate(model, "1x4xH100", Strategy(dp=dp, ep=ep, zero=zero), Training(global_batch=8))
    local_expert = expert / ep  # each rank holds 1/ep of the experts; dp / ep replicas of each
    w, g, o = (dp if zero >= 3 else 1), (dp if zero >= 2 else 1), (dp if zero >= 1 else 1)
    we, ge, oe = (dp // ep if zero >= 3 else 1), (dp // ep if zero >= 2 else 1), (dp // ep if zero >= 1 else 1)
    assert e.memory["weights"] == pytest.approx(2 * dense / w + 2 * local_expert / we)
    assert e.memory["gradients"] == pytest.approx(2 * dense / g + 2 * local_expert / ge)
    assert e.memory["optimizer"] == pytest.approx(12 * dense / o + 12 * local_expert / oe)


def test_learned_position_table_counted_in_parameters_and_memory():
    h, L, V, S = 64, 2, 100, 32
    model = ModelSpec.decoder("learned", num_layers=L, hidden=h, num_heads=4, ffn_hidden=4 * h, vocab=V, seq_len=S,
                              **{**GPT_STYLE, "position": "learned"})
    # blocks, token table, position table, final LayerNorm (head tied to the token table)
    assert model.num_params == L * (12 * h * h + 13 * h) + V * h + S * h + 2 * h
    e = estimate(model, "1x1xH100", Strategy(), Training(global_batch=1))
    assert e.memory["weights"] == pytest.approx(2 * model.num_params)


def test_training_model_state_fp32_adam(llama4):
    e = estimate(llama4, "1x1xH100", Strategy(), Training(global_batch=2, dtype="fp32"))
    P = llama4.num_params
    assert (e.memory["weights"], e.memory["gradients"], e.memory["optimizer"]) == pytest.approx((4 * P, 4 * P, 8 * P))


def test_training_weights_split_by_tensor_parallel(llama4):
    e = estimate(llama4, "1x2xH100", Strategy(tp=2), Training(global_batch=2))
    local = sum(param_split(lay).replicated + param_split(lay).tp_sharded / 2 for lay in llama4.layers)
    assert e.memory["weights"] == pytest.approx(2 * local)
    assert e.memory["weights"] < 2 * llama4.num_params


def test_training_activation_bytes_by_hand(llama4):
    h, q, kv, f, V, seq, mb = 64, 64, 2 * 16, 176, 512, 32, 2
    block = 2 * 4 * h + 2 * (q + 2 * kv) + 2 * q + 2 * 3 * f  # flash attention, no dropout
    emb = 2 * h
    head = 2 * h + (2 + 4) * V  # final-norm input, bf16 logits and their fp32 copy
    e = estimate(llama4, "1x1xH100", Strategy(micro_batch=mb), Training(global_batch=4, seq_len=seq),
                 params=CostParams(activation_overhead=1.0))
    assert e.memory["activations"] == pytest.approx(mb * seq * (emb + 4 * block + head))


# ----------------------------------------------------------------------------------------------
# Pipeline schedule
# ----------------------------------------------------------------------------------------------
def _blocks_only_model(n: int = 4) -> ModelSpec:
    block = LayerSpec(kind="transformer", hidden=64, num_heads=4, ffn_hidden=256, name="b")
    return ModelSpec(name="blocks", layers=(block,) * n, seq_len=32)


def test_pipeline_uniform_stages_m_plus_p_minus_1():
    model = _blocks_only_model(4)
    # stage-to-stage sends made free, so the four one-block stages take the same time
    cluster = Cluster.parse("1x4xH100", intra_node_gbps=1e12, intra_node_latency_s=0.0)
    m, p = 8, 4
    e = estimate(model, cluster, Strategy(pp=p, micro_batch=1, stages=(0, 1, 2, 3, 4)), Training(global_batch=m))
    t = [s.time_s for s in e.stages]
    assert max(t) == pytest.approx(min(t), rel=1e-9)
    pipe = sum(e.breakdown[k] for k in ("compute_s", "tp_comm_s", "ep_comm_s", "pp_comm_s", "bubble_s"))
    assert pipe == pytest.approx(m * t[0] + (p - 1) * t[0], rel=1e-9)
    assert e.breakdown["bubble_s"] == pytest.approx((p - 1) * t[0], rel=1e-9)
    assert e.time_s == pytest.approx(additive_sum(e), rel=1e-12)


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_pipeline_uneven_stages_m_minus_1_max_plus_sum(schedule):
    model = tiny_llama(num_layers=6)
    m = 6
    e = estimate(model, "2x2xA100", Strategy(pp=4, micro_batch=1, schedule=schedule, stages=(0, 1, 4, 6, 8)),
                 Training(global_batch=m))
    t = [s.time_s for s in e.stages]
    assert len(set(np.round(t, 12))) > 1
    pipe = sum(e.breakdown[k] for k in ("compute_s", "tp_comm_s", "ep_comm_s", "pp_comm_s", "bubble_s"))
    assert pipe == pytest.approx((m - 1) * max(t) + sum(t), rel=1e-9)
    assert e.time_s == pytest.approx(additive_sum(e), rel=1e-12)
    assert e.breakdown["micro_batches"] == m


def test_pipeline_interleaved_bubble_divided_by_virtual_stages():
    model = tiny_llama(num_layers=6)
    m, v = 4, 2
    e = estimate(model, "1x2xA100", Strategy(pp=2, micro_batch=1, schedule="interleaved", virtual_stages=v),
                 Training(global_batch=m))
    t = [s.time_s for s in e.stages]
    assert e.breakdown["bubble_s"] == pytest.approx((sum(t) - max(t)) / v, rel=1e-9)
    pipe = sum(e.breakdown[k] for k in ("compute_s", "tp_comm_s", "ep_comm_s", "pp_comm_s", "bubble_s"))
    assert pipe == pytest.approx(m * max(t) + (sum(t) - max(t)) / v, rel=1e-9)


def test_pipeline_activations_in_flight_gpipe_vs_1f1b():
    model = _blocks_only_model(4)
    m, p = 8, 4
    st_ = (0, 1, 2, 3, 4)
    g = estimate(model, "1x4xH100", Strategy(pp=p, schedule="gpipe", stages=st_), Training(global_batch=m))
    o = estimate(model, "1x4xH100", Strategy(pp=p, schedule="1f1b", stages=st_), Training(global_batch=m))
    assert g.time_s == pytest.approx(o.time_s, rel=1e-12)
    for j in range(p):
        ratio = o.stages[j].memory["activations"] / g.stages[j].memory["activations"]
        assert ratio == pytest.approx(min(p - j, m) / m)  # 1F1B holds p - j micro-batches, GPipe all m


# ----------------------------------------------------------------------------------------------
# Inference: idealized runtime, cost, energy, KV cache
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cluster,strategy", [
    ("1x4xH100", Strategy(tp=2, pp=2)),
    ("1x4xH100", Strategy(tp=2, dp=2)),
    ("1x4xA100", Strategy(pp=2, dp=2, micro_batch=2)),
    ("1x2xA100+1x2xH100", Strategy(pp=2, tp=2, micro_batch=1)),
])
def test_inference_idealized_runtime_cost_and_energy(cluster, strategy):
    model = tiny_llama(num_layers=4)
    w = Inference(prompt_tokens=64, output_tokens=17, batch=8)
    c = Cluster.parse(cluster)
    e = estimate(model, c, strategy, w)
    assert e.kind == "inference"
    assert e.time_s == pytest.approx(e.prefill_s + e.per_token_s * (17 - 1), rel=1e-12)
    assert e.tpot_s == e.per_token_s and e.ttft_s == e.prefill_s
    assert e.tokens_per_s == pytest.approx(8 * 17 / e.time_s)
    prices = [g.price_usd_per_hour for g in c.gpus]
    assert e.cost_usd == pytest.approx(e.time_s / 3600 * sum(prices), rel=1e-12)
    assert e.energy_j == pytest.approx(e.time_s * sum(g.tdp_w for g in c.gpus), rel=1e-12)


def test_inference_kv_cache_and_weights_by_hand():
    model = tiny_llama(num_layers=4)
    B, p, o = 6, 100, 28
    e = estimate(model, "1x1xH100", Strategy(), Inference(prompt_tokens=p, output_tokens=o, batch=B))
    kv_per_token = 4 * 2 * (2 * 16) * 2  # blocks x (K and V) x kv_heads*head_dim x 2 bytes
    assert e.memory["kv_cache"] == pytest.approx(B * (p + o) * kv_per_token)
    assert e.memory["weights"] == pytest.approx(2 * model.num_params)
    assert e.memory["gradients"] == 0 and e.memory["optimizer"] == 0
    free = e.memory_capacity_bytes - e.memory["weights"] - e.memory["reserved"] - e.memory["activations"]
    per_seq = (p + o) * kv_per_token
    assert e.max_batch * per_seq <= free < (e.max_batch + 1) * per_seq


# ----------------------------------------------------------------------------------------------
# Stage partition: exact DP against brute force
# ----------------------------------------------------------------------------------------------
def _stage_cost(cuts, j, layer_time, out_cost, in_cost):
    a, b = cuts[j], cuts[j + 1]
    return layer_time[j, a:b].sum() + out_cost[j, b] + in_cost[j, a]


@st.composite
def partition_cases(draw):
    p = draw(st.integers(1, 4))
    L = draw(st.integers(p, 7))
    pos = st.floats(0.01, 5.0, allow_nan=False)
    base = np.array(draw(st.lists(pos, min_size=L, max_size=L)))
    speed = np.array(draw(st.lists(st.floats(0.25, 4.0), min_size=p, max_size=p)))  # heterogeneous stages
    layer_time = base[None, :] / speed[:, None]
    small = st.floats(0.0, 1.0, allow_nan=False)
    out_cost = np.array(draw(st.lists(small, min_size=p * (L + 1), max_size=p * (L + 1)))).reshape(p, L + 1)
    in_cost = np.array(draw(st.lists(small, min_size=p * (L + 1), max_size=p * (L + 1)))).reshape(p, L + 1)
    use_mem = draw(st.booleans())
    # per-stage layer memory, as in the pipeline: model state + (micro-batches in flight on stage j) x activations
    static = np.array(draw(st.lists(st.floats(0.0, 3.0), min_size=L, max_size=L)))
    act = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=L, max_size=L)))
    flight = np.array(draw(st.lists(st.floats(1.0, 4.0), min_size=p, max_size=p)))
    layer_mem = static[None, :] + flight[:, None] * act[None, :] if use_mem else None
    mem_fixed = np.array(draw(st.lists(st.floats(0.0, 2.0), min_size=p, max_size=p))) if use_mem else None
    mem_cap = np.array(draw(st.lists(st.floats(1.0, 20.0), min_size=p, max_size=p))) if use_mem else None
    weight = float(draw(st.integers(0, 12)))
    return layer_time, out_cost, in_cost, layer_mem, mem_fixed, mem_cap, weight


@fast(300)
@given(partition_cases())
def test_partition_matches_brute_force(case):
    layer_time, out_cost, in_cost, layer_mem, mem_fixed, mem_cap, weight = case
    p, L = layer_time.shape
    best = math.inf
    for cuts in contiguous_splits(L, p):
        if layer_mem is not None and any(
                layer_mem[j, cuts[j]:cuts[j + 1]].sum() + mem_fixed[j] > mem_cap[j] for j in range(p)):
            continue
        costs = [_stage_cost(cuts, j, layer_time, out_cost, in_cost) for j in range(p)]
        best = min(best, weight * max(costs) + sum(costs))
    res = partition(layer_time, weight=weight, out_cost=out_cost, in_cost=in_cost, layer_mem=layer_mem,
                    mem_fixed=mem_fixed, mem_cap=mem_cap)
    if not math.isfinite(best):
        assert not res.feasible
        return
    assert res.feasible
    assert res.objective == pytest.approx(best, rel=1e-9, abs=1e-12)
    cuts = res.boundaries
    assert cuts[0] == 0 and cuts[-1] == L and all(a < b for a, b in zip(cuts, cuts[1:]))
    costs = [_stage_cost(cuts, j, layer_time, out_cost, in_cost) for j in range(p)]
    assert weight * max(costs) + sum(costs) == pytest.approx(res.objective, rel=1e-9, abs=1e-12)
    assert res.stage_costs == pytest.approx(costs, rel=1e-9, abs=1e-12)
    if layer_mem is not None:
        for j in range(p):
            assert layer_mem[j, cuts[j]:cuts[j + 1]].sum() + mem_fixed[j] <= mem_cap[j] * (1 + 1e-9)


def test_split_fits_finds_a_split_the_longest_prefix_misses():
    # the longest prefix on stage 0 ([1, 1]) leaves [8, 1] to a stage of 5; a split [1] | [1] | [8, 1] fits
    assert split_fits(np.array([1.0, 1.0, 8.0, 1.0]), np.array([10.0, 5.0, 10.0]))
    assert not split_fits(np.array([1.0, 1.0, 8.0, 1.0]), np.array([10.0, 5.0, 8.0]))


@fast(300)
@given(partition_cases())
def test_split_fits_matches_brute_force(case):
    _, _, _, layer_mem, mem_fixed, mem_cap, _ = case
    if layer_mem is None:
        return
    p, L = layer_mem.shape
    room = mem_cap - mem_fixed
    brute = any(all(layer_mem[j, c[j]:c[j + 1]].sum() <= room[j] for j in range(p)) for c in contiguous_splits(L, p))
    assert split_fits(layer_mem, room) == brute
    # a memory-limited split exists exactly when the DP finds one
    assert partition(layer_mem, weight=1.0, layer_mem=layer_mem, mem_fixed=mem_fixed, mem_cap=mem_cap).feasible == brute


@st.composite
def uniform_cases(draw):
    N = draw(st.integers(1, 9))
    p = draw(st.integers(1, min(4, N + 2)))
    first = draw(st.floats(0.0, 5.0))
    block = draw(st.floats(0.01, 3.0))
    last = draw(st.floats(0.0, 5.0))
    extra = np.array(draw(st.lists(st.floats(0.0, 2.0), min_size=p, max_size=p)))
    return first, block, last, N, extra


def _uniform_brute(first, block, last, N, extra):
    row = np.array([first] + [block] * N + [last])
    p = len(extra)
    best_max, best_cuts = math.inf, None
    for cuts in contiguous_splits(N + 2, p):
        costs = [row[cuts[j]:cuts[j + 1]].sum() + extra[j] for j in range(p)]
        if max(costs) < best_max:
            best_max, best_cuts = max(costs), cuts
    return row, best_max


@fast(200)
@given(uniform_cases(), st.integers(0, 10))
def test_uniform_partition_matches_dp(case, weight):
    first, block, last, N, extra = case
    p = len(extra)
    row, brute_max = _uniform_brute(first, block, last, N, extra)
    u = uniform_partition(first, block, last, N, extra)
    assert u is not None
    cuts = u.boundaries
    assert cuts[0] == 0 and cuts[-1] == N + 2 and all(a < b for a, b in zip(cuts, cuts[1:]))
    costs = [row[cuts[j]:cuts[j + 1]].sum() + extra[j] for j in range(p)]
    assert list(u.stage_costs) == pytest.approx(costs, rel=1e-9, abs=1e-12)
    assert u.objective == pytest.approx(max(costs), rel=1e-9, abs=1e-12)
    assert u.objective == pytest.approx(brute_max, rel=1e-9, abs=1e-12)
    # the general DP on the same layers (extra as a constant boundary cost) agrees for any weight
    lt = np.tile(row, (p, 1))
    out_cost = np.tile(extra[:, None], (1, N + 3))
    res = partition(lt, weight=float(weight), out_cost=out_cost)
    assert res.objective == pytest.approx(weight * u.objective + sum(u.stage_costs), rel=1e-9, abs=1e-12)


@fast(150)
@given(st.lists(uniform_cases(), min_size=1, max_size=3), st.data())
def test_training_uniform_cuts_match_brute_force(cases, data):
    # _uniform_cuts takes a batch of groups with the same number of stages and blocks
    N = cases[0][3]
    p = data.draw(st.integers(1, min(4, N + 2)))
    groups = []
    for first, block, last, _, _ in cases:
        extra = np.array(data.draw(st.lists(st.floats(0.0, 2.0), min_size=p, max_size=p)))
        groups.append((first, block, last, extra))
    T = np.array([[[f, b, l]] * p for f, b, l, _ in groups])
    extra = np.array([g[3] for g in groups])
    cuts = _uniform_cuts(T, extra.copy(), N)
    assert cuts.shape == (len(groups), p + 1)
    for gi, (f, b, l, ex) in enumerate(groups):
        row, brute_max = _uniform_brute(f, b, l, N, ex)
        c = cuts[gi]
        assert c[0] == 0 and c[-1] == N + 2 and all(x < y for x, y in zip(c, c[1:]))
        costs = [row[c[j]:c[j + 1]].sum() + ex[j] for j in range(p)]
        assert max(costs) == pytest.approx(brute_max, rel=1e-6, abs=1e-9)


# ----------------------------------------------------------------------------------------------
# Batched pricing == single estimate
# ----------------------------------------------------------------------------------------------
def _training_strategies(model, n, batch, pp, v):
    """Every valid training strategy with `pp` stages and `v` virtual stages on n GPUs (no placement)."""
    out = []
    for tp in divisors(n // pp):
        if not tp_divides_model(model, tp):
            continue
        dp = n // pp // tp
        if batch % dp:
            continue
        per = batch // dp
        for mb in divisors(per):
            m = per // mb
            if v > 1 and (m % pp or pp * v > len(model.layers)):
                continue
            for rec in ("none", "selective", "full"):
                for sp in ((False, True) if tp > 1 else (False,)):
                    for zero in ((0, 1, 2, 3) if dp > 1 else (0,)):
                        scheds = ("interleaved",) if v > 1 else (("1f1b", "gpipe") if pp > 1 else ("1f1b",))
                        for sched in scheds:
                            out.append(Strategy(tp=tp, pp=pp, dp=dp, micro_batch=mb, recompute=rec,
                                                sequence_parallel=sp, zero=zero, schedule=sched, virtual_stages=v))
    return out


BATCH_MODELS = {"llama": tiny_llama(num_layers=4), "gpt": tiny_gpt(num_layers=3), "moe": tiny_moe(num_layers=2)}


@fast(60)
@given(st.sampled_from(sorted(BATCH_MODELS)), st.sampled_from(["1x4xH100", "2x2xA100", "1x2xH100+1x2xA100"]),
       st.sampled_from([(1, 1), (2, 1), (4, 1), (2, 2)]), st.data())
def test_batched_pricing_equals_single_estimate(model_key, cluster_spec, pp_v, data):
    model = BATCH_MODELS[model_key]
    cluster = Cluster.parse(cluster_spec)
    pp, v = pp_v
    w = Training(global_batch=8)
    pool = _training_strategies(model, cluster.num_gpus, 8, pp, v)
    assume(pool)
    chosen = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5, unique=True))
    if pp > 1 and v == 1 and data.draw(st.booleans()):  # one with explicit, uneven stage cuts
        cuts = data.draw(st.sampled_from(list(contiguous_splits(len(model.layers), pp))))
        chosen[0] = chosen[0].with_(stages=cuts)
    g = data.draw(st.integers(0, len(chosen) - 1))
    s = chosen[g]
    single = estimate(model, cluster, s, w)
    assume(single.fits)  # the memory-aware split only applies to strategies that do not fit
    ctx = CostContext.make(cluster, w.dtype, PARAMS, None)
    if s.stages is None and pp > 1 and v == 1:
        # a small model's single estimate tries every split; the batched path's DP split can only be as good
        own = assemble(build_stage_batch(model, cluster, w, ctx, [s]), w, ctx, np.array([s.zero]),
                       np.array([SCHEDULE_CODES[s.schedule]]))
        assert float(own.time_s[0, 0]) >= single.time_s * (1 - 1e-9)
        chosen[g] = s = single.strategy  # the same cuts from here on
    batch = build_stage_batch(model, cluster, w, ctx, chosen)
    zero = np.array([0, 1, 2, 3] * 2)
    codes = [SCHEDULE_CODES["interleaved"]] * 8 if v > 1 else [SCHEDULE_CODES["1f1b"]] * 4 + [SCHEDULE_CODES["gpipe"]] * 4
    a = assemble(batch, w, ctx, zero, np.array(codes))
    k = next(i for i in range(8) if zero[i] == s.zero and codes[i] == SCHEDULE_CODES[s.schedule])
    assert float(a.time_s[g, k]) == pytest.approx(single.time_s, rel=1e-9)
    mem = a.stage_mem[g, k]
    assert float(mem.max()) == pytest.approx(single.memory_per_gpu_bytes, rel=1e-9)
    assert [st_.memory_bytes for st_ in single.stages] == pytest.approx(list(mem), rel=1e-9)
    assert bool((mem <= batch.caps[g]).all()) == single.fits
    # the many-strategies entry point (each strategy its own ZeRO stage and schedule) agrees too
    time_s, mem_max, fits = price_training(model, cluster, w, ctx, chosen)
    assert float(time_s[g]) == pytest.approx(single.time_s, rel=1e-9)
    assert float(mem_max[g]) == pytest.approx(single.memory_per_gpu_bytes, rel=1e-9)
    assert bool(fits[g]) == single.fits


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def _names(msg: str, *numbers) -> None:
    for n in numbers:
        assert re.search(rf"(?<![\d.]){re.escape(str(n))}(?![\d])", msg), f"{n} not named in {msg!r}"


def _rule(model, cluster, strategy, workload, rule, *numbers):
    with pytest.raises(InvalidStrategyError) as exc:
        estimate(model, cluster, strategy, workload)
    assert exc.value.rule == rule
    assert isinstance(exc.value, ParplanError)
    _names(str(exc.value), *numbers)
    return exc.value


TRAIN8 = Training(global_batch=8)


def test_rule_tp_divides_heads():
    model = tiny_llama(num_heads=4, num_kv_heads=4, hidden=64)
    _rule(model, "1x8xH100", Strategy(tp=8), TRAIN8, "tp|heads", 8, 4)


def test_rule_tp_divides_kv_heads():
    model = tiny_llama(num_heads=8, num_kv_heads=2, hidden=64)
    _rule(model, "1x4xH100", Strategy(tp=4), TRAIN8, "tp|kv_heads", 4, 2)


def test_rule_tp_divides_mlp_width():
    model = tiny_llama(num_heads=4, num_kv_heads=4, ffn_hidden=90)
    _rule(model, "1x4xH100", Strategy(tp=4), TRAIN8, "tp|ffn", 4, 90)


def test_rule_ep_needs_moe():
    _rule(tiny_llama(), "1x4xH100", Strategy(dp=4, ep=2), TRAIN8, "ep needs MoE", 2)


def test_rule_ep_divides_experts():
    _rule(tiny_moe(num_experts=6), "1x4xH100", Strategy(dp=4, ep=4), TRAIN8, "ep|experts", 4, 6)


def test_rule_expert_width_divides_moe_tp():
    model = tiny_moe(num_kv_heads=4, expert_ffn_hidden=90)
    _rule(model, "1x4xH100", Strategy(tp=4), TRAIN8, "moe_tp|expert_ffn", 90, 4)


def test_rule_pipeline_stages_at_most_layer_entries():
    model = tiny_llama(num_layers=2)  # embedding, 2 blocks, head: 4 entries
    _rule(model, "1x8xH100", Strategy(pp=8), TRAIN8, "pp<=layers", 8, 4)
    err = _rule(model, "1x4xH100", Strategy(pp=4, schedule="interleaved", virtual_stages=2), TRAIN8,
                "pp<=layers", 4, 2, 8)
    assert "virtual" in str(err)


def test_rule_degrees_multiply_to_gpu_count():
    _rule(tiny_llama(), "1x8xH100", Strategy(tp=2, dp=2), TRAIN8, "tp*pp*dp==gpus", 4, 8)


def test_rule_micro_batch_divides_per_replica_batch():
    _rule(tiny_llama(), "1x2xH100", Strategy(dp=2, micro_batch=3), Training(global_batch=16),
          "micro_batch|batch", 3, 8)


def test_rule_dp_divides_batch():
    _rule(tiny_llama(), "1x8xH100", Strategy(dp=8), Training(global_batch=12), "dp|batch", 8, 12)
    _rule(tiny_llama(), "1x2xH100", Strategy(dp=2), Inference(prompt_tokens=8, output_tokens=2, batch=3),
          "dp|batch", 2, 3)


def test_rule_stage_cut_points_end_at_layer_count():
    model = tiny_llama(num_layers=4)  # 6 entries
    _rule(model, "1x2xH100", Strategy(pp=2, stages=(0, 2, 5)), TRAIN8, "stages", 6)


def test_rule_interleaved_needs_micro_batches_multiple_of_pp():
    _rule(tiny_llama(num_layers=6), "1x2xH100", Strategy(pp=2, schedule="interleaved", virtual_stages=2),
          Training(global_batch=3), "interleaved micro-batches", 3, 2)


def test_rule_training_only_options_rejected_for_inference():
    w = Inference(prompt_tokens=8, output_tokens=2, batch=4)
    _rule(tiny_llama(), "1x2xH100", Strategy(dp=2, zero=1), w, "inference")
    _rule(tiny_llama(), "1x1xH100", Strategy(recompute="full"), w, "inference")


def test_rule_placement_length():
    _rule(tiny_llama(), "1x4xH100", Strategy(dp=4, placement=tuple(range(8))), TRAIN8, "placement", 8, 4)


def test_strategy_must_be_a_strategy():
    with pytest.raises(InvalidStrategyError):
        estimate(tiny_llama(), "1x1xH100", {"tp": 1}, TRAIN8)


@pytest.mark.parametrize("kwargs,rule", [
    (dict(tp=0), ">=1:tp"), (dict(pp=-1), ">=1:pp"), (dict(dp=1.5), ">=1:dp"), (dict(micro_batch=True), ">=1:micro_batch"),
    (dict(schedule="zigzag"), "schedule"), (dict(recompute="some"), "recompute"), (dict(zero=4), "zero"),
    (dict(ep_mode="xp"), "ep_mode"), (dict(schedule="interleaved", pp=2, virtual_stages=1), "interleaved"),
    (dict(schedule="interleaved", pp=1, virtual_stages=2), "interleaved"), (dict(virtual_stages=2), "interleaved"),
    (dict(sequence_parallel=True), "sequence_parallel"), (dict(dp=4, ep=3), "ep|dp"),
    (dict(tp=4, ep=3, ep_mode="tp"), "ep|tp"), (dict(pp=2, stages=(0, 3)), "stages"),
    (dict(pp=2, stages=(0, 3, 3)), "stages"), (dict(pp=2, stages=(1, 2, 3)), "stages"),
    (dict(dp=2, placement=(0, 0)), "placement"),
])
def test_strategy_constructor_errors(kwargs, rule):
    with pytest.raises(InvalidStrategyError) as exc:
        Strategy(**kwargs)
    assert exc.value.rule == rule
    assert str(exc.value)


@pytest.mark.parametrize("make", [
    lambda: Training(global_batch=0), lambda: Training(global_batch=8, seq_len=0),
    lambda: Training(global_batch=8, dtype="fp7"), lambda: Training(global_batch=8, optimizer="lion"),
    lambda: Training(global_batch=2.5), lambda: Inference(prompt_tokens=0, output_tokens=1),
    lambda: Inference(prompt_tokens=1, output_tokens=0), lambda: Inference(prompt_tokens=1, output_tokens=1, batch=0),
    lambda: Inference(prompt_tokens=1, output_tokens=1, dtype="fp7"),
])
def test_workload_constructor_errors(make):
    with pytest.raises(WorkloadError) as exc:
        make()
    assert isinstance(exc.value, ParplanError) and str(exc.value)


def test_workload_of_wrong_type_is_a_typed_error():
    with pytest.raises(WorkloadError):
        estimate(tiny_llama(), "1x1xH100", Strategy(), "training")


@pytest.mark.parametrize("name,close", [("llama3-7b", "llama-3-8b"), ("mixtrl-8x7b", "mixtral-8x7b"),
                                        ("gpt-2-mediun", "gpt2-medium")])
def test_unknown_model_suggests_close_names(name, close):
    with pytest.raises(UnknownModelError) as exc:
        cm.ModelSpec.from_name(name)
    assert close in exc.value.suggestions
    assert close in str(exc.value)
    with pytest.raises(UnknownModelError):
        estimate(name, "1x8xH100", Strategy(dp=8), TRAIN8)


def test_strategy_that_does_not_fit_still_gets_an_estimate():
    model = get_model("llama-3-8b")
    e = estimate(model, "1x8xA100-SXM-40GB", Strategy(dp=8), Training(global_batch=8, seq_len=2048))
    assert not e.fits
    assert e.shortfall_bytes > 0
    assert e.shortfall_bytes == pytest.approx(e.memory_per_gpu_bytes - e.memory_capacity_bytes)
    assert e.memory_per_gpu_bytes > 16 * model.num_params  # model state alone, unsharded
    assert math.isfinite(e.time_s) and e.time_s > 0
    assert "DOES NOT FIT" in e.summary()
    ok = estimate(model, "1x8xA100-SXM-40GB", Strategy(dp=8, zero=3, recompute="full"),
                  Training(global_batch=8, seq_len=2048))
    assert ok.fits and ok.shortfall_bytes == 0


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------
def _meshes(model, n, batch):
    """(tp, pp, dp, ep, ep_mode) meshes valid for the model on n GPUs."""
    out = []
    for tp in divisors(n):
        if not tp_divides_model(model, tp):
            continue
        for pp in divisors(n // tp):
            if pp > len(model.layers):
                continue
            dp = n // tp // pp
            if batch % dp:
                continue
            out.append((tp, pp, dp, 1, "dp"))
            if model.is_moe:
                for ep in divisors(dp)[1:]:
                    if model.num_experts % ep == 0:
                        out.append((tp, pp, dp, ep, "dp"))
                for ep in divisors(tp)[1:]:
                    if model.num_experts % ep == 0 and all(b.expert_ffn_hidden % (tp // ep) == 0 for b in model.blocks):
                        out.append((tp, pp, dp, ep, "tp"))
    return out


@st.composite
def training_strategy(draw, model, n, batch, fixed_stages=False):
    tp, pp, dp, ep, mode = draw(st.sampled_from(_meshes(model, n, batch)))
    per = batch // dp
    mb = draw(st.sampled_from(divisors(per)))
    sched = draw(st.sampled_from(["1f1b", "gpipe"])) if pp > 1 else "1f1b"
    stages = draw(st.sampled_from(list(contiguous_splits(len(model.layers), pp)))) if fixed_stages and pp > 1 else None
    return Strategy(tp=tp, pp=pp, dp=dp, ep=ep, ep_mode=mode, micro_batch=mb, schedule=sched,
                    recompute=draw(st.sampled_from(["none", "selective", "full"])),
                    sequence_parallel=draw(st.booleans()) if tp > 1 else False,
                    zero=draw(st.sampled_from([0, 1, 2, 3])) if dp > 1 else 0, stages=stages)


@st.composite
def inference_strategy(draw, model, n, batch):
    tp, pp, dp, ep, mode = draw(st.sampled_from(_meshes(model, n, batch)))
    mb = draw(st.sampled_from(divisors(batch // dp)))
    return Strategy(tp=tp, pp=pp, dp=dp, ep=ep, ep_mode=mode, micro_batch=mb)


PROP_MODELS = {"llama": tiny_llama(num_layers=4, hidden=256, num_heads=8, num_kv_heads=4, ffn_hidden=512,
                                   vocab=4096, seq_len=256),
               "moe": tiny_moe(num_layers=3, hidden=256, num_heads=8, num_kv_heads=4, expert_ffn_hidden=256,
                               vocab=4096, seq_len=256)}


@fast(40)
@given(st.sampled_from(sorted(PROP_MODELS)), st.floats(0.5, 50.0), st.floats(1.01, 20.0), st.data())
def test_more_inter_node_bandwidth_is_never_slower(key, bw, factor, data):
    model = PROP_MODELS[key]
    slow = Cluster.parse("2x4xA100", inter_node_gbps=bw)
    quick = Cluster.parse("2x4xA100", inter_node_gbps=bw * factor)
    s = data.draw(training_strategy(model, 8, 16))
    w = Training(global_batch=16)
    assert estimate(model, quick, s, w).time_s <= estimate(model, slow, s, w).time_s * (1 + 1e-9)
    si = data.draw(inference_strategy(model, 8, 8))
    wi = Inference(prompt_tokens=128, output_tokens=8, batch=8)
    assert estimate(model, quick, si, wi).time_s <= estimate(model, slow, si, wi).time_s * (1 + 1e-9)


@fast(40)
@given(st.sampled_from(sorted(PROP_MODELS)), st.floats(5.0, 300.0), st.floats(1.01, 20.0), st.data())
def test_more_intra_node_bandwidth_is_never_slower(key, bw, factor, data):
    model = PROP_MODELS[key]
    slow = Cluster.parse("2x4xA100", intra_node_gbps=bw)
    quick = Cluster.parse("2x4xA100", intra_node_gbps=bw * factor)
    s = data.draw(training_strategy(model, 8, 16))
    w = Training(global_batch=16)
    assert estimate(model, quick, s, w).time_s <= estimate(model, slow, s, w).time_s * (1 + 1e-9)
    si = data.draw(inference_strategy(model, 8, 8))
    wi = Inference(prompt_tokens=128, output_tokens=8, batch=8)
    assert estimate(model, quick, si, wi).time_s <= estimate(model, slow, si, wi).time_s * (1 + 1e-9)


def _memory_cluster(gb: float) -> Cluster:
    gpu = dataclasses.replace(get_gpu("A100-SXM-40GB"), memory_gb=gb)
    return Cluster(nodes=(Node.of(gpu, 4, name="a"), Node.of(gpu, 4, name="b")))


@fast(60)
@given(st.floats(8.0, 60.0), st.floats(1.0, 60.0), st.data())
def test_more_gpu_memory_never_unfits(small_gb, extra_gb, data):
    model = get_model("llama-2-7b")
    small, big = _memory_cluster(small_gb), _memory_cluster(small_gb + extra_gb)
    w = Training(global_batch=16, seq_len=1024)
    s = data.draw(training_strategy(model, 8, 16))
    e_small, e_big = estimate(model, small, s, w), estimate(model, big, s, w)
    if e_small.fits:
        assert e_big.fits
    assert e_big.shortfall_bytes <= e_small.shortfall_bytes
    wi = Inference(prompt_tokens=512, output_tokens=32, batch=16)
    si = data.draw(inference_strategy(model, 8, 16))
    i_small, i_big = estimate(model, small, si, wi), estimate(model, big, si, wi)
    if i_small.fits:
        assert i_big.fits
    assert i_big.max_batch >= i_small.max_batch


@fast(40)
@given(st.sampled_from(sorted(PROP_MODELS)), st.data())
def test_larger_micro_batch_never_lowers_activation_memory(key, data):
    model = PROP_MODELS[key]
    batch = 16
    s = data.draw(training_strategy(model, 8, batch, fixed_stages=True))
    mbs = divisors(batch // s.dp)
    bigger = data.draw(st.sampled_from([m for m in mbs if m >= s.micro_batch]))
    w = Training(global_batch=batch)
    lo, hi = estimate(model, "2x4xA100", s, w), estimate(model, "2x4xA100", s.with_(micro_batch=bigger), w)
    for a, b in zip(lo.stages, hi.stages):
        assert b.memory["activations"] >= a.memory["activations"] * (1 - 1e-12)
    # inference: the prefill's transient activations
    si = data.draw(inference_strategy(model, 8, 8))
    wi = Inference(prompt_tokens=64, output_tokens=4, batch=8)
    bigger = data.draw(st.sampled_from([m for m in divisors(8 // si.dp) if m >= si.micro_batch]))
    lo, hi = estimate(model, "2x4xA100", si, wi), estimate(model, "2x4xA100", si.with_(micro_batch=bigger), wi)
    assert hi.memory["activations"] >= lo.memory["activations"] * (1 - 1e-12)


@fast(20)
@given(st.sampled_from(sorted(PROP_MODELS)), st.data())
def test_estimate_is_deterministic(key, data):
    s = data.draw(training_strategy(PROP_MODELS[key], 8, 16))
    w = Training(global_batch=16)
    first = estimate(PROP_MODELS[key], "1x4xA100+1x4xH100", s, w).to_dict()
    # equal but freshly built inputs: caches keyed on them must not change the answer
    model = dataclasses.replace(PROP_MODELS[key])
    second = estimate(model, Cluster.parse("1x4xA100+1x4xH100"), s, w).to_dict()
    assert first == second
    si = data.draw(inference_strategy(PROP_MODELS[key], 8, 8))
    wi = Inference(prompt_tokens=64, output_tokens=4, batch=8)
    assert estimate(model, "2x4xH100", si, wi).to_dict() == estimate(PROP_MODELS[key], "2x4xH100", si, wi).to_dict()


CLUSTERS = ["1x1xH100", "1x2xA100", "1x4xL4", "2x2xH100", "1x2xA100+1x2xH100", "1x2xV100+1x2xT4", "2x1xT4",
            "1x3xA10G", "1x1xA100+1x1xL4+1x1xH100"]


@st.composite
def random_models(draw):
    heads = draw(st.sampled_from([1, 2, 4, 8]))
    kv = draw(st.sampled_from(divisors(heads)))
    head_dim = draw(st.sampled_from([8, 16, 32]))
    hidden = heads * head_dim
    style = draw(st.sampled_from([GPT_STYLE, LLAMA_STYLE]))
    kw = dict(num_layers=draw(st.integers(1, 4)), hidden=hidden, num_heads=heads, num_kv_heads=kv,
              vocab=draw(st.integers(16, 5000)), seq_len=draw(st.integers(8, 256)), **style)
    if draw(st.booleans()):
        E = draw(st.sampled_from([2, 4, 8]))
        kw.update(num_experts=E, top_k=draw(st.integers(1, E)), expert_ffn_hidden=draw(st.sampled_from([16, 48, 64])))
    else:
        kw.update(ffn_hidden=draw(st.sampled_from([16, 48, 64, 96, 200])))
    return ModelSpec.decoder("random", **kw)


def _dtype(cluster: Cluster) -> str:
    return "fp16" if any(g.bf16_tflops is None for g in cluster.gpus) else "bf16"


@fast(80)
@given(random_models(), st.sampled_from(CLUSTERS), st.data())
def test_random_models_and_clusters_give_positive_finite_times(model, spec, data):
    cluster = Cluster.parse(spec)
    n = cluster.num_gpus
    batch = data.draw(st.sampled_from([n, 2 * n, 12]))
    w = Training(global_batch=batch, dtype=_dtype(cluster))
    s = data.draw(training_strategy(model, n, batch))
    e = estimate(model, cluster, s, w)
    for v in (e.time_s, e.tokens_per_s, e.memory_per_gpu_bytes, e.mfu):
        assert math.isfinite(v) and v > 0
    assert e.time_s == pytest.approx(additive_sum(e), rel=1e-9)
    assert all(math.isfinite(v) and v >= -1e-12 for k, v in e.breakdown.items() if k != "overhead_s")
    wi = Inference(prompt_tokens=data.draw(st.integers(1, 300)), output_tokens=data.draw(st.integers(1, 40)),
                   batch=batch, dtype=_dtype(cluster))
    si = data.draw(inference_strategy(model, n, batch))
    ei = estimate(model, cluster, si, wi)
    for v in (ei.time_s, ei.ttft_s, ei.tpot_s, ei.tokens_per_s, ei.memory_per_gpu_bytes, ei.energy_j):
        assert math.isfinite(v) and v > 0


# ----------------------------------------------------------------------------------------------
# Every catalog model, training and inference
# ----------------------------------------------------------------------------------------------
def _catalog_strategy(model, n=8):
    tp = next(t for t in (8, 4, 2, 1) if tp_divides_model(model, t))
    pp = 2 if n // tp >= 2 else 1
    return tp, pp, n // tp // pp


@pytest.mark.parametrize("name", list_models())
def test_every_catalog_model_through_estimate(name):
    model = get_model(name)
    tp, pp, dp = _catalog_strategy(model)
    e = estimate(model, "1x8xH100", Strategy(tp=tp, pp=pp, dp=dp), Training(global_batch=4 * dp))
    for v in (e.time_s, e.tokens_per_s, e.memory_per_gpu_bytes):
        assert math.isfinite(v) and v > 0
    assert 0 < e.mfu < 1
    assert e.strategy.stages is not None and e.strategy.stages[-1] == len(model.layers)
    ei = estimate(model, "1x8xH100", Strategy(tp=tp, pp=pp, dp=dp),
                  Inference(prompt_tokens=256, output_tokens=16, batch=2 * dp))
    for v in (ei.time_s, ei.ttft_s, ei.tpot_s, ei.tokens_per_s, ei.cost_usd, ei.energy_j, ei.memory_per_gpu_bytes):
        assert math.isfinite(v) and v > 0
    assert ei.max_batch >= 0


# -- measured per-layer times ------------------------------------------------------------
def test_measured_layer_times_replace_the_formula():
    from costmodel.layertimes import LayerTimes

    model = cm.ModelSpec.decoder("lt", num_layers=4, hidden=256, num_heads=4, ffn_hidden=512, vocab=1000,
                                 seq_len=128)
    wl = cm.Training(global_batch=8, seq_len=128)
    strat = cm.Strategy(dp=1, micro_batch=2)
    base = cm.estimate(model, "1x1xH100", strat, wl, params=cm.CostParams(), profiles=None)
    slow = LayerTimes(model="lt", gpu="H100-SXM-80GB", tp=1, forward_s_per_sample=(0.0, 0.01, 0.01, 0.01, 0.01, 0.0))
    est = cm.estimate(model, "1x1xH100", strat, wl, params=cm.CostParams(), profiles=None, layer_times=[slow])
    # 4 micro-batches x 2 samples x 4 blocks x 10 ms forward, backward twice that
    assert est.breakdown["compute_s"] == pytest.approx(4 * 2 * 4 * 0.01 * 3, rel=1e-9)
    assert est.time_s > base.time_s
    other_gpu = LayerTimes(model="lt", gpu="A100-SXM-80GB", tp=1, forward_s_per_sample=(1.0,) * 6)
    assert cm.estimate(model, "1x1xH100", strat, wl, params=cm.CostParams(), profiles=None,
                       layer_times=[other_gpu]).time_s == pytest.approx(base.time_s)


def test_layer_times_must_match_the_model():
    from costmodel.layertimes import LayerTimes
    from hardware_profiles.errors import ProfileError

    model = cm.ModelSpec.decoder("lt", num_layers=2, hidden=64, num_heads=4, ffn_hidden=128, vocab=100, seq_len=16)
    bad = LayerTimes(model="lt", gpu="H100-SXM-80GB", tp=1, forward_s_per_sample=(0.1, 0.1))
    with pytest.raises(ProfileError, match="2 layers; the model has 4"):
        cm.estimate(model, "1x1xH100", cm.Strategy(), cm.Training(global_batch=1, seq_len=16), profiles=None,
                    layer_times=[bad])
    with pytest.raises(ProfileError):
        LayerTimes(model="lt", gpu="H100-SXM-80GB", tp=1, forward_s_per_sample=(-1.0,))


def test_a_host_bound_block_takes_the_host_time_so_tensor_parallelism_stops_paying():
    model = get_model("llama-1.5b")
    cluster = Cluster.parse("1x2xH200")
    w = Training(global_batch=8, seq_len=4096, dtype="bf16")
    single, tp2 = Strategy(micro_batch=1), Strategy(tp=2, micro_batch=1)
    gpu_only = CostParams()
    t1 = cm.estimate(model, cluster.first_gpus(1), single, w, params=gpu_only).time_s
    t2 = cm.estimate(model, cluster, tp2, w, params=gpu_only).time_s
    assert t2 < 0.7 * t1  # the GPU work of a block halves, and the host keeps ahead
    blocks = sum(lay.kind == "transformer" for lay in model.layers)
    per_block = 0.9 * t1 / w.global_batch / blocks  # a host about as slow as one GPU doing the whole block
    slow_host = gpu_only.replace(host_layer_s=per_block)
    h1 = cm.estimate(model, cluster.first_gpus(1), single, w, params=slow_host).time_s
    h2 = cm.estimate(model, cluster, tp2, w, params=slow_host).time_s
    assert t1 <= h1 < 1.1 * t1  # the single GPU barely notices
    assert h2 > 0.8 * h1 and h2 > 1.3 * t2  # two GPUs wait for the same host work
    assert cm.estimate(model, cluster, tp2, w, params=gpu_only.replace(host_layer_s=per_block / 10)).time_s == \
        pytest.approx(t2, rel=1e-9)  # a fast host changes nothing


@fast(60)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), min_size=2, max_size=7),
       st.lists(st.integers(1, 40), min_size=1, max_size=4))
def test_max_sequences_is_the_best_contiguous_split_for_the_cache(layers, budgets):
    from itertools import combinations

    from costmodel.inference import max_sequences

    weights = np.array([float(wb) for wb, _ in layers])
    kv = np.array([float(k) for _, k in layers])
    budget = np.array([float(b) for b in budgets])
    L, pp = len(layers), len(budget)
    if pp > L:
        return

    def brute_fits(n):
        need = weights + n * kv
        for cuts in combinations(range(1, L), pp - 1):
            bounds = (0, *cuts, L)
            if all(need[bounds[j]:bounds[j + 1]].sum() <= budget[j] for j in range(pp)):
                return True
        return False

    got = max_sequences(weights, kv, budget)
    if not brute_fits(0):
        assert got == 0
    elif not (kv > 0).any():
        assert got == 2 ** 31 - 1
    else:
        assert brute_fits(got) and not brute_fits(got + 1)
