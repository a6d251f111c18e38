"""Planner: plans on real settings, brute force on small ones, infeasible models, constraints,
plan files and the command line."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import costmodel as cm
import planner
from conftest import (GPT_STYLE, LLAMA_STYLE, PARAMS, contiguous_splits, divisors, fast, gpu_with_memory,
                      make_cluster, node_placements)
from costmodel.catalog import get_model
from costmodel.errors import InvalidStrategyError
from costmodel.model import ModelSpec
from costmodel.pricing import ADDITIVE_TERMS
from costmodel.strategy import Strategy
from costmodel.workload import Inference, Training
from hardware_profiles import Cluster
from hardware_profiles.errors import ParplanError
from planner import Constraints, NoFeasiblePlanError, Plan, PlanFileError, PlannerOptionError, SearchSpace
from planner.__main__ import main
from planner.report import TERM_LABELS

STRATEGY_COLUMNS = ["tp", "pp", "dp", "ep", "ep_mode", "micro_batch", "schedule", "virtual_stages", "recompute",
                    "sequence_parallel", "zero", "placement"]


# ----------------------------------------------------------------------------------------------
# plan() on a few real settings
# ----------------------------------------------------------------------------------------------
SETTINGS = {
    "train-dense": ("llama-3-8b", "1x8xH100", Training(global_batch=64, seq_len=2048)),
    "train-moe": ("mixtral-8x7b", "2x8xH100", Training(global_batch=64, seq_len=4096)),
    # the CLI default: some candidates are re-priced with the memory-aware split
    "train-70b": ("llama-3-70b", "4x8xH100", Training(global_batch=512)),
    "train-mixed": ("gpt2-amp", Cluster.parse("3x4xV100+1x4xT4", inter_node_gbps=1.25),
                    Training(global_batch=32, dtype="fp16")),
    "infer-dense": ("llama-3-8b", "1x4xA100", Inference(prompt_tokens=512, output_tokens=64, batch=16)),
    "infer-moe": ("mixtral-8x7b", "1x8xH100", Inference(prompt_tokens=512, output_tokens=64, batch=16)),
    "infer-mixed": ("gpt2-medium", Cluster.parse("3x4xV100+1x4xT4", inter_node_gbps=1.25),
                    Inference(prompt_tokens=256, output_tokens=32, batch=8, dtype="fp16")),
}


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def setting(request):
    model, cluster, workload = SETTINGS[request.param]
    return request.param, model, cluster, workload, planner.plan(model, cluster, workload)


def test_best_fits_and_matches_the_cost_model(setting):
    _, model, cluster, workload, result = setting
    best = result.best
    assert isinstance(best, Plan)
    assert best.estimate.fits and best.prediction["fits"]
    assert best.strategy.stages is not None and best.strategy.stages[-1] == len(best.model.layers)
    if isinstance(workload, Training):
        assert best.cluster == Cluster.parse(cluster)
    assert best.cluster.num_gpus == best.strategy.num_gpus
    again = cm.estimate(best.model, best.cluster, best.strategy, workload)
    assert again.time_s == pytest.approx(best.estimate.time_s, rel=1e-9)
    assert again.memory_per_gpu_bytes == pytest.approx(best.estimate.memory_per_gpu_bytes, rel=1e-9)
    assert again.fits
    assert best.predicted_time_s == pytest.approx(best.estimate.time_s, rel=1e-12)


def test_candidates_one_row_per_strategy_and_ranked(setting):
    _, _, _, workload, result = setting
    df = result.candidates
    assert isinstance(df, pd.DataFrame) and len(df) > 1
    for col in ("rank", "time_s", "memory_gb", "fits", "pruned", "reason", "objective", *STRATEGY_COLUMNS):
        assert col in df.columns
    key = STRATEGY_COLUMNS + (["num_gpus"] if isinstance(workload, Inference) else [])
    assert not df.duplicated(subset=key).any(), "a strategy appears twice"
    feasible = ~df["pruned"]
    n_ok = int(feasible.sum())
    assert n_ok >= 1
    assert feasible.iloc[:n_ok].all() and not feasible.iloc[n_ok:].any(), "feasible rows come first"
    ok = df[feasible]
    assert ok["objective"].is_monotonic_increasing
    assert list(ok["rank"]) == list(range(1, n_ok + 1))
    assert ok["fits"].all() and (ok["reason"] == "").all()
    pruned = df[~feasible]
    assert all(isinstance(r, str) and r for r in pruned["reason"])
    assert (pruned["rank"] == 0).all()
    assert (pruned[~pruned["fits"]]["reason"].str.contains("memory")).all()


def test_best_is_the_first_candidate(setting):
    _, _, _, workload, result = setting
    row = result.candidates.iloc[0]
    s = result.best.strategy
    for col in ("tp", "pp", "dp", "ep", "micro_batch", "recompute", "sequence_parallel", "zero"):
        assert row[col] == getattr(s, col), col
    assert row["time_s"] == pytest.approx(result.best.estimate.time_s, rel=1e-9)
    if isinstance(workload, Training) and s.pp > 1:
        assert row["stages"] == ",".join(map(str, s.stages))


def test_candidate_columns_are_consistent(setting):
    _, model, _, workload, result = setting
    df = result.candidates
    model = get_model(model)
    if isinstance(workload, Training):
        tokens = workload.global_batch * (workload.seq_len or model.seq_len)
        np.testing.assert_allclose(df["tokens_per_s"] * df["time_s"], tokens, rtol=1e-9)
        # MFU is model FLOPs over (time x peak): MFU x time is the same for every candidate
        prod = (df["mfu"] * df["time_s"]).to_numpy()
        np.testing.assert_allclose(prod, prod[0], rtol=1e-9)
    else:
        np.testing.assert_allclose(df["tokens_per_s"] * df["time_s"], workload.batch * workload.output_tokens,
                                   rtol=1e-9)
        np.testing.assert_allclose(df["time_s"], df["ttft_s"] + df["tpot_s"] * (workload.output_tokens - 1),
                                   rtol=1e-9)
    np.testing.assert_allclose(df[list(ADDITIVE_TERMS)].sum(axis=1), df["time_s"], rtol=1e-9)


def test_explain_names_runner_up_and_deciding_term(setting):
    _, _, _, _, result = setting
    text = result.explain()
    assert result.best.strategy.describe() in text
    runner = result.runner_up
    assert runner is not None
    mesh = ("tp", "pp", "dp", "ep")
    assert any(getattr(runner.strategy, k) != getattr(result.best.strategy, k) for k in mesh)
    assert runner.strategy.describe() in text
    assert any(label in text for label in TERM_LABELS.values())
    assert "(by 0 us)" not in text, "a term that differs by nothing is not an advantage"


def test_report_renders(setting):
    _, model, _, _, result = setting
    text = result.report(top=5)
    assert get_model(model).name in text
    assert result.best.strategy.describe() in text
    assert "Top candidates" in text
    assert str(len(result.candidates)) in text
    assert result._repr_markdown_().startswith("```")


@pytest.mark.parametrize("objective,column,sign", [("ttft", "ttft_s", 1), ("tpot", "tpot_s", 1),
                                                   ("throughput", "tokens_per_s", -1), ("latency", "time_s", 1)])
def test_inference_objectives_pick_the_minimum(objective, column, sign):
    model, cluster, w = SETTINGS["infer-dense"]
    r = planner.plan(model, cluster, w, objective=objective)
    ok = r.candidates[~r.candidates["pruned"]]
    assert sign * r.candidates.iloc[0][column] == pytest.approx((sign * ok[column]).min())
    value = {"ttft_s": r.best.estimate.ttft_s, "tpot_s": r.best.estimate.tpot_s,
             "tokens_per_s": r.best.estimate.tokens_per_s, "time_s": r.best.estimate.time_s}[column]
    assert sign * value == pytest.approx((sign * ok[column]).min(), rel=1e-9)
    assert r.objective == objective


def test_inference_cost_objective_is_dollars_per_million_tokens():
    model, cluster, w = SETTINGS["infer-dense"]
    r = planner.plan(model, cluster, w, objective="cost")
    ok = r.candidates[~r.candidates["pruned"]]
    per_mtok = ok["cost_usd"] / (w.batch * w.output_tokens) * 1e6
    np.testing.assert_allclose(ok["objective"], per_mtok, rtol=1e-12)
    assert r.best.estimate.cost_usd / (w.batch * w.output_tokens) * 1e6 == pytest.approx(per_mtok.min(), rel=1e-9)


def test_plan_from_strategy_prices_your_own_layout():
    model, cluster, w = SETTINGS["train-dense"]
    s = Strategy(tp=2, pp=2, dp=2, micro_batch=1, stages=(0, 10, 34))
    p = Plan.from_strategy(model, cluster, s, w)
    e = cm.estimate(model, cluster, s, w)
    assert p.strategy == s
    assert p.estimate.time_s == pytest.approx(e.time_s, rel=1e-12)
    assert p.prediction["time_s"] == pytest.approx(e.time_s, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Brute force on small models and clusters
# ----------------------------------------------------------------------------------------------
GPU_TYPES = {"bf16": ["A100", "H100", "L4", "A10G"], "fp16": ["V100", "T4"]}
NODE_SHAPES = [[1], [2], [4], [3], [2, 2], [1, 1], [2, 1], [1, 1, 1], [1, 2, 1]]


@st.composite
def small_models(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    kv = draw(st.sampled_from(divisors(heads)))
    head_dim = draw(st.sampled_from([16, 32]))
    kw = dict(num_layers=draw(st.integers(1, 4)), hidden=heads * head_dim, num_heads=heads, num_kv_heads=kv,
              vocab=draw(st.integers(32, 3000)), seq_len=draw(st.sampled_from([16, 64, 128])),
              **draw(st.sampled_from([GPT_STYLE, LLAMA_STYLE])))
    if draw(st.integers(0, 3)) == 0:
        E = draw(st.sampled_from([2, 3, 4]))
        kw.update(num_experts=E, top_k=draw(st.integers(1, E)), expert_ffn_hidden=draw(st.sampled_from([18, 32])))
    else:
        kw.update(ffn_hidden=draw(st.sampled_from([64, 96, 128])))
    return ModelSpec.decoder("small", **kw)


@st.composite
def small_clusters(draw):
    """1-4 GPUs, homogeneous or mixed, some with so little memory that strategies get pruned."""
    dtype = draw(st.sampled_from(sorted(GPU_TYPES)))
    shape = draw(st.sampled_from(NODE_SHAPES))
    extra = st.sampled_from([None, 2e6, 4e6, 8e6, 16e6])
    kinds = {}
    nodes = []
    for n in shape:
        name = draw(st.sampled_from(GPU_TYPES[dtype]))
        if name not in kinds:
            kinds[name] = gpu_with_memory(name, draw(extra))
        nodes.append((kinds[name], n))
    return make_cluster(nodes, inter_node_gbps=draw(st.sampled_from([None, 1.25]))), dtype


BRUTE_SPACE = dict(schedules=("1f1b", "gpipe"), recompute=("none", "full"), sequence_parallel=(False, True),
                   zero=(0, 3))


def _meshes(model, cluster, batch):
    """Every (tp, pp, dp, ep, ep_mode) the planner's space allows: tp inside the smallest node."""
    n = cluster.num_gpus
    node = cluster.gpus_per_node
    out = []
    for tp in divisors(n):
        if node % tp:
            continue
        if any(b.num_heads % tp or b.num_kv_heads % tp or (not b.is_moe and b.ffn_hidden % tp) for b in model.blocks):
            continue
        for pp in divisors(n // tp):
            if pp > len(model.layers):
                continue
            dp = n // tp // pp
            if batch % dp:
                continue
            if not model.is_moe:
                out.append((tp, pp, dp, 1, "dp"))
                continue
            for mode, pool in (("dp", dp), ("tp", tp)):
                for ep in divisors(pool):
                    if mode == "tp" and ep == 1:
                        continue
                    out.append((tp, pp, dp, ep, mode))
    return out


def _try(model, cluster, s, w):
    try:
        return cm.estimate(model, cluster, s, w, params=PARAMS, profiles=None)
    except InvalidStrategyError:
        return None  # not a valid strategy (e.g. expert width not divisible): not part of the space


def brute_force_training(model, cluster, w):
    best = math.inf
    for tp, pp, dp, ep, mode in _meshes(model, cluster, w.global_batch):
        for placement in node_placements(cluster):
            for mb in divisors(w.global_batch // dp):
                for rec in BRUTE_SPACE["recompute"]:
                    for sp in (BRUTE_SPACE["sequence_parallel"] if tp > 1 else (False,)):
                        for zero in (BRUTE_SPACE["zero"] if dp > 1 else (0,)):
                            for sched in (BRUTE_SPACE["schedules"] if pp > 1 else ("1f1b",)):
                                for cuts in (contiguous_splits(len(model.layers), pp) if pp > 1 else (None,)):
                                    s = Strategy(tp=tp, pp=pp, dp=dp, ep=ep, ep_mode=mode, micro_batch=mb,
                                                 recompute=rec, sequence_parallel=sp, zero=zero, schedule=sched,
                                                 stages=cuts, placement=placement)
                                    e = _try(model, cluster, s, w)
                                    if e is not None and e.fits:
                                        best = min(best, e.time_s)
    return best


def brute_force_inference(model, cluster, w):
    best = math.inf
    for tp, pp, dp, ep, mode in _meshes(model, cluster, w.batch):
        per = w.batch // dp
        for placement in node_placements(cluster):
            for mb in (divisors(per) if pp > 1 else (per,)):
                for cuts in (contiguous_splits(len(model.layers), pp) if pp > 1 else (None,)):
                    s = Strategy(tp=tp, pp=pp, dp=dp, ep=ep, ep_mode=mode, micro_batch=mb, stages=cuts,
                                 placement=placement)
                    e = _try(model, cluster, s, w)
                    if e is not None and e.fits:
                        best = min(best, e.time_s)
    return best


@fast(40)
@given(small_models(), small_clusters(), st.sampled_from([1, 2, 4, 6]))
def test_training_plan_matches_brute_force(model, cluster_dtype, batch):
    cluster, dtype = cluster_dtype
    w = Training(global_batch=batch, dtype=dtype)
    space = SearchSpace(schedules=BRUTE_SPACE["schedules"], recompute=BRUTE_SPACE["recompute"],
                        sequence_parallel=BRUTE_SPACE["sequence_parallel"], zero=BRUTE_SPACE["zero"])
    expected = brute_force_training(model, cluster, w)
    if not math.isfinite(expected):
        with pytest.raises(NoFeasiblePlanError):
            planner.plan(model, cluster, w, space=space, params=PARAMS, profiles=None)
        return
    r = planner.plan(model, cluster, w, space=space, params=PARAMS, profiles=None)
    assert r.best.estimate.fits
    assert r.best.estimate.time_s == pytest.approx(expected, rel=1e-6)
    again = cm.estimate(model, cluster, r.best.strategy, w, params=PARAMS, profiles=None)
    assert again.fits and again.time_s == pytest.approx(r.best.estimate.time_s, rel=1e-9)


@fast(40)
@given(small_models(), small_clusters(), st.sampled_from([1, 2, 4]))
def test_inference_plan_matches_brute_force(model, cluster_dtype, batch):
    cluster, dtype = cluster_dtype
    w = Inference(prompt_tokens=32, output_tokens=8, batch=batch, dtype=dtype)
    space = SearchSpace(gpu_counts=(cluster.num_gpus,))
    expected = brute_force_inference(model, cluster, w)
    if not math.isfinite(expected):
        with pytest.raises(NoFeasiblePlanError):
            planner.plan(model, cluster, w, space=space, params=PARAMS, profiles=None)
        return
    r = planner.plan(model, cluster, w, space=space, params=PARAMS, profiles=None)
    assert r.best.estimate.fits
    assert r.best.estimate.time_s == pytest.approx(expected, rel=1e-6)


def _small_workload(batch, infer, dtype):
    return (Inference(prompt_tokens=32, output_tokens=4, batch=batch, dtype=dtype) if infer
            else Training(global_batch=batch, dtype=dtype))


@fast(40)
@given(small_models(), small_clusters(), st.sampled_from([2, 4]), st.booleans())
def test_every_returned_plan_fits_memory(model, cluster_dtype, batch, infer):
    cluster, dtype = cluster_dtype
    w = _small_workload(batch, infer, dtype)
    try:
        r = planner.plan(model, cluster, w)
    except NoFeasiblePlanError:
        return
    e = r.best.estimate
    assert e.fits
    assert all(s.memory_bytes <= s.memory_capacity_bytes for s in e.stages), "every stage, not only the fullest"
    again = cm.estimate(r.best.model, r.best.cluster, r.best.strategy, w)
    assert again.fits


def test_mixed_memory_cluster_plan_fits_every_stage():
    # found by the property above: the fullest GPU (an 80 GB A100) fits, but the stage on the small GPUs does not
    model = ModelSpec.decoder("small", num_layers=1, hidden=64, num_heads=2, num_kv_heads=1, vocab=2785, seq_len=64,
                              ffn_hidden=64, **GPT_STYLE)
    cluster = make_cluster([("A100", 2), (gpu_with_memory("H100", 2e6), 2)])
    r = planner.plan(model, cluster, Training(global_batch=2))
    assert r.best.estimate.fits
    assert all(s.fits for s in r.best.estimate.stages)
    df = r.candidates
    for _, row in df[df["fits"]].head(20).iterrows():
        s = Strategy(tp=int(row["tp"]), pp=int(row["pp"]), dp=int(row["dp"]), micro_batch=int(row["micro_batch"]),
                     schedule=row["schedule"], recompute=row["recompute"], zero=int(row["zero"]),
                     sequence_parallel=bool(row["sequence_parallel"]),
                     stages=tuple(int(x) for x in row["stages"].split(",")) if row["pp"] > 1 else None,
                     placement=tuple(int(x) for x in row["placement"].split(",")) if row["placement"] else None)
        assert cm.estimate(model, cluster, s, Training(global_batch=2)).fits, "a row marked fits does not fit"


@fast(15)
@given(small_models(), small_clusters(), st.sampled_from([2, 4]), st.booleans())
def test_same_inputs_give_the_same_plan(model, cluster_dtype, batch, infer):
    cluster, dtype = cluster_dtype
    w = _small_workload(batch, infer, dtype)
    try:
        first = planner.plan(model, cluster, w)
    except NoFeasiblePlanError as exc:
        with pytest.raises(NoFeasiblePlanError) as again:
            planner.plan(model, cluster, w)
        assert str(again.value) == str(exc)
        return
    # equal but freshly built inputs: no cache keyed on them may change the answer
    fresh = Cluster(nodes=tuple(dataclasses.replace(n, gpu=dataclasses.replace(n.gpu)) for n in cluster.nodes),
                    network=cluster.network)
    second = planner.plan(ModelSpec.from_dict(model.to_dict()), fresh, w)
    a, b = first.best.to_dict(), second.best.to_dict()
    a.pop("created_utc"), b.pop("created_utc")
    assert a == b
    pd.testing.assert_frame_equal(first.candidates, second.candidates)


# ----------------------------------------------------------------------------------------------
# Nothing fits
# ----------------------------------------------------------------------------------------------
def test_model_that_fits_nowhere_reports_the_least_memory_it_needs():
    model = get_model("llama-3-405b")
    with pytest.raises(NoFeasiblePlanError) as exc:
        planner.plan(model, "1x8xA10G", Training(global_batch=8, seq_len=2048))
    err = exc.value
    assert isinstance(err, ParplanError)
    # model state alone (2 + 2 + 12 bytes per parameter), even if spread perfectly over 8 GPUs
    assert err.min_memory_bytes >= 16 * model.num_params / 8
    assert err.min_memory_bytes > err.capacity_bytes
    assert f"{err.min_memory_bytes / 1e9:.1f} GB" in str(err)
    assert f"{err.capacity_bytes / 1e9:.1f} GB" in str(err)


def test_inference_that_fits_nowhere_reports_the_least_memory_it_needs():
    model = get_model("llama-3-405b")
    with pytest.raises(NoFeasiblePlanError) as exc:
        planner.plan(model, "1x8xA10G", Inference(prompt_tokens=128, output_tokens=16, batch=8))
    err = exc.value
    assert err.min_memory_bytes >= 2 * model.num_params / 8  # bf16 weights over 8 GPUs
    assert f"{err.min_memory_bytes / 1e9:.1f} GB" in str(err)
    # serving keeps no gradients or optimizer state: the message must not price them
    assert "Adam" not in str(err) and "gradients" not in str(err)


# ----------------------------------------------------------------------------------------------
# Constraints and options
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def infer_base():
    model, cluster, w = SETTINGS["infer-dense"]
    return model, cluster, w, planner.plan(model, cluster, w)


@pytest.mark.parametrize("keyword,column,label", [("max_tpot_s", "tpot_s", "TPOT"), ("max_ttft_s", "ttft_s", "TTFT")])
def test_latency_limits_prune_with_reasons(infer_base, keyword, column, label):
    model, cluster, w, base = infer_base
    ok = base.candidates[~base.candidates["pruned"]]
    limit = float(np.median(ok[column]))
    assert ok[column].min() < limit < ok[column].max()
    r = planner.plan(model, cluster, w, **{keyword: limit})
    df = r.candidates
    assert getattr(r.best.estimate, column) <= limit
    assert (df.loc[~df["pruned"], column] <= limit).all()
    over = df[df["fits"] & (df[column] > limit)]
    assert len(over) and over["pruned"].all()
    assert over["reason"].str.contains(label).all()
    # the same through a Constraints object
    r2 = planner.plan(model, cluster, w, constraints=Constraints(**{keyword: limit}))
    assert r2.best.strategy == r.best.strategy
    with pytest.raises(NoFeasiblePlanError) as exc:
        planner.plan(model, cluster, w, **{keyword: float(ok[column].min()) / 10})
    assert str(exc.value)


def test_price_ceiling_prunes_with_reasons(infer_base):
    model, cluster, w, base = infer_base
    one_gpu = Cluster.parse(cluster).gpus[0].price_usd_per_hour
    limit = 2.5 * one_gpu  # one or two GPUs, not four
    r = planner.plan(model, cluster, w, max_usd_per_hour=limit)
    assert r.best.cluster.num_gpus <= 2
    assert sum(g.price_usd_per_hour for g in r.best.cluster.gpus) <= limit
    df = r.candidates
    over = df[df["fits"] & (df["usd_per_hour"] > limit)]
    assert len(over) and over["pruned"].all() and over["reason"].str.contains("price").all()
    with pytest.raises(NoFeasiblePlanError):
        planner.plan(model, cluster, w, max_usd_per_hour=one_gpu / 2)


def test_max_gpus_and_memory_headroom(infer_base):
    model, cluster, w, _ = infer_base
    r = planner.plan(model, cluster, w, max_gpus=2)
    assert r.best.cluster.num_gpus <= 2 and (r.candidates["num_gpus"] <= 2).all()
    r = planner.plan(model, cluster, w, memory_headroom=0.5)
    assert r.best.estimate.memory_per_gpu_bytes <= 0.5 * r.best.estimate.memory_capacity_bytes


def test_unknown_objective_and_constraint_keywords_are_option_errors():
    model, cluster, w = SETTINGS["infer-dense"]
    tmodel, tcluster, tw = SETTINGS["train-dense"]
    with pytest.raises(PlannerOptionError, match="fastest"):
        planner.plan(model, cluster, w, objective="fastest")
    with pytest.raises(PlannerOptionError, match="ttft"):
        planner.plan(tmodel, tcluster, tw, objective="ttft")
    with pytest.raises(PlannerOptionError, match="max_latency_s"):
        planner.plan(model, cluster, w, max_latency_s=1.0)
    with pytest.raises(PlannerOptionError):
        planner.plan(model, cluster, w, constraints=Constraints(max_tpot_s=1.0), max_ttft_s=1.0)
    with pytest.raises(PlannerOptionError):
        planner.plan(model, cluster, "inference")
    for bad in (dict(max_tpot_s=-1.0), dict(memory_headroom=1.5), dict(max_gpus=0)):
        with pytest.raises(PlannerOptionError):
            Constraints(**bad)
    assert issubclass(PlannerOptionError, ParplanError)


# ----------------------------------------------------------------------------------------------
# Plan files
# ----------------------------------------------------------------------------------------------
def _comparable(plan: Plan) -> dict:
    d = json.loads(plan.to_json())
    d.pop("created_utc")
    return d


@pytest.fixture(scope="module")
def plans():
    model, cluster, w = SETTINGS["train-dense"]
    staged = Plan.from_estimate(get_model(model), Cluster.parse(cluster), w, cm.estimate(
        model, cluster, Strategy(tp=2, pp=2, dp=2, micro_batch=2, stages=(0, 13, 34)), w))
    mixed = planner.plan(*SETTINGS["train-mixed"]).best
    moe_infer = planner.plan(*SETTINGS["infer-moe"]).best
    return {"staged": staged, "mixed": mixed, "moe-infer": moe_infer}


@pytest.mark.parametrize("key", ["staged", "mixed", "moe-infer"])
def test_plan_json_round_trip(plans, key):
    p = plans[key]
    q = Plan.from_json(p.to_json())
    assert q.model == p.model
    assert q.cluster == p.cluster
    assert q.workload == p.workload
    assert q.strategy == p.strategy and q.strategy.stages == p.strategy.stages is not None
    assert q.objective == p.objective
    assert q.predicted_time_s == pytest.approx(p.estimate.time_s, rel=1e-12)
    assert q.prediction["memory_per_gpu_bytes"] == pytest.approx(p.estimate.memory_per_gpu_bytes)
    assert _comparable(q) == _comparable(p)


def test_plan_save_then_load(plans, tmp_path):
    p = plans["staged"]
    path = p.save(tmp_path / "sub" / "plan.json")
    assert path.exists()
    assert _comparable(Plan.load(path)) == _comparable(p)
    assert not [f for f in path.parent.iterdir() if f.name != "plan.json"], "no temporary file left behind"


def _bad_files(p: Plan) -> dict[str, str]:
    good = p.to_json()
    data = json.loads(good)
    out = {"truncated": good[: len(good) // 2], "not-json": "this is not a plan\n", "empty": "",
           "list": "[1, 2, 3]"}
    out["other-schema"] = json.dumps({**data, "schema": "someone.else"})
    out["version-99"] = json.dumps({**data, "schema_version": 99})
    for section in ("model", "cluster", "workload", "strategy"):
        out[f"missing-{section}"] = json.dumps({k: v for k, v in data.items() if k != section})
    out["bad-strategy"] = json.dumps({**data, "strategy": {**data["strategy"], "tp": 0}})
    out["bad-workload"] = json.dumps({**data, "workload": {"kind": "sleeping"}})
    out["bad-model-layers"] = json.dumps({**data, "model": {**data["model"], "layers": [{"kind": "wormhole"}]}})
    out["bad-model-seq"] = json.dumps({**data, "model": {**data["model"], "seq_len": "long"}})
    out["bad-cluster"] = json.dumps({**data, "cluster": {"nodes": [{"gpu": "H100", "gpus_per_node": "eight"}]}})
    out["bad-cluster-gpu"] = json.dumps({**data, "cluster": {"nodes": [{"gpu": "H1000", "gpus_per_node": 8}]}})
    return out


BAD_FILE_KEYS = ["truncated", "not-json", "empty", "list", "other-schema", "version-99", "missing-model",
                 "missing-cluster", "missing-workload", "missing-strategy", "bad-strategy", "bad-workload",
                 "bad-model-layers", "bad-model-seq", "bad-cluster", "bad-cluster-gpu"]


@pytest.mark.parametrize("key", BAD_FILE_KEYS)
def test_bad_plan_files_raise_plan_file_error(plans, tmp_path, key):
    text = _bad_files(plans["staged"])[key]
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(PlanFileError) as exc:
        Plan.load(path)
    msg = str(exc.value)
    assert msg
    if key == "version-99":
        assert "99" in msg
    if key.startswith("missing-"):
        assert key.split("-", 1)[1] in msg
    if key == "other-schema":
        assert "someone.else" in msg


def test_missing_plan_file(tmp_path):
    with pytest.raises(PlanFileError, match="does not exist"):
        Plan.load(tmp_path / "nope.json")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def test_cli_default_prints_a_report(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "llama-3-70b" in out and "Best strategy" in out and "Top candidates" in out


def test_cli_out_writes_a_plan_that_loads(tmp_path, capsys):
    out = tmp_path / "plan.json"
    csv = tmp_path / "candidates.csv"
    rc = main(["--model", "llama-3-8b", "--cluster", "1x8xH100", "--batch", "64", "--seq", "2048", "--out", str(out),
               "--csv", str(csv)])
    assert rc == 0
    assert "plan written" in capsys.readouterr().out
    plan = Plan.load(out)
    assert plan.model.name == "llama-3-8b" and plan.strategy.num_gpus == 8
    assert plan.workload == Training(global_batch=64, seq_len=2048)
    expected = planner.plan("llama-3-8b", "1x8xH100", Training(global_batch=64, seq_len=2048)).best
    assert plan.strategy == expected.strategy
    assert len(pd.read_csv(csv)) > 1


def test_cli_inference_and_mixed_cluster(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = main(["--model", "gpt2-medium", "--cluster", "3x4xV100+1x4xT4", "--inter-node-gbps", "1.25", "--dtype",
               "fp16", "--infer", "--prompt", "256", "--output", "32", "--batch", "8", "--out", str(out)])
    assert rc == 0
    assert "idealized runtime" in capsys.readouterr().out
    plan = Plan.load(out)
    assert isinstance(plan.workload, Inference) and plan.workload.dtype == "fp16"
    assert all(n.network_gbps == 1.25 for n in plan.cluster.nodes)


@pytest.mark.parametrize("argv,needle", [
    (["--model", "llama3-7b"], "llama-3-8b"),
    (["--cluster", "2x8xH1000"], "H1000"),
    (["--model", "llama-3-405b", "--cluster", "1x8xA10G"], "does not fit"),
])
def test_cli_bad_input_returns_2_with_a_message(capsys, argv, needle):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error:")
    assert needle in captured.err
    assert "Traceback" not in captured.err


# ----------------------------------------------------------------------------------------------
# the search's batched shortcuts give what one problem at a time gives
# ----------------------------------------------------------------------------------------------
@fast(150)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 12), st.integers(0, 2**32 - 1), st.booleans())
def test_splits_fit_of_a_batch_is_split_fits_of_each(R, p, extra_layers, seed, per_stage):
    from costmodel.partition import split_fits, splits_fit

    rng = np.random.default_rng(seed)
    L = p + extra_layers
    need = rng.integers(0, 4, (R, p, L) if per_stage else (R, L)).astype(float)  # whole numbers: ties happen
    budget = rng.integers(1, 12, (R, p)).astype(float)
    assert splits_fit(need, budget).tolist() == [split_fits(need[r], budget[r]) for r in range(R)]


@fast(150)
@given(st.integers(1, 8), st.integers(3, 12), st.integers(1, 3), st.integers(0, 2**32 - 1), st.booleans())
def test_least_feasible_threshold_is_the_same_with_identical_stages_merged(G, p, kinds, seed, per_stage_c):
    from costmodel import bottleneck

    rng = np.random.default_rng(seed)
    kind = rng.integers(0, kinds, p)
    base = (rng.integers(0, 8, (G, kinds)) / 4.0)[:, kind]  # stages of one kind are identical
    base[:, 0] += 0.5
    c = (rng.integers(1, 8, (G, kinds)) / 8.0)[:, kind] if per_stage_c else rng.integers(1, 8, (G, 1)) / 8.0
    lo = np.ones(p)
    lo[0] = lo[-1] = 0
    N = int(rng.integers(p - 2, 40))
    small = bottleneck._SMALL
    try:
        bottleneck._SMALL = 0
        merged = bottleneck.least_feasible_threshold(base, c, lo, N)
        bottleneck._SMALL = 1 << 60
        separate = bottleneck.least_feasible_threshold(base, c, lo, N)
    finally:
        bottleneck._SMALL = small
    assert np.array_equal(merged, separate)
    k = np.minimum(np.floor((merged[:, None] - base) / c + 1e-9), N)
    assert ((k >= lo).all(axis=1) & (k.sum(axis=1) >= N)).all()  # a feasible threshold


def test_memory_aware_splits_of_a_batch_match_each_strategy_alone():
    from costmodel.pricing import CostContext
    from costmodel.training import class_cost_table, layout_info, memory_aware_cuts, memory_aware_splits, \
        memory_split_problems

    model, cluster = get_model("llama-3-70b"), Cluster.parse("4x8xH100")
    wl = Training(global_batch=512, seq_len=4096)
    ctx = CostContext.make(cluster, wl.dtype, PARAMS, None, ())
    strategies = [Strategy(tp=tp, pp=4, dp=32 // tp // 4, zero=z, micro_batch=mb, schedule=sched,
                           recompute=rec)
                  for tp in (2, 8) for z in (0, 1, 3) for mb in (1, 2) for sched in ("1f1b", "gpipe")
                  for rec in ("none", "full")]
    infos = [layout_info(cluster, s, wl, ctx) for s in strategies]
    C = np.stack([class_cost_table(model, ctx, wl, [(lk, s) for lk in info.links])
                  for s, info in zip(strategies, infos)])
    problems = memory_split_problems(model, wl, ctx, infos, C, strategies, [s.dp for s in strategies],
                                     [s.zero for s in strategies], [s.schedule for s in strategies], 0.9)
    batch = memory_aware_splits(model, wl, problems)
    alone = [memory_aware_cuts(model, cluster, wl, ctx, s, 0.9) for s in strategies]
    assert batch == alone
    assert any(c is None for c in alone) and any(c is not None for c in alone)  # both outcomes are covered
