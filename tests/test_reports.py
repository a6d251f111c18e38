"""Strategy reports: plots, the HTML report, and the comparison tables (planner.plots, planner.html,
planner.compare). Figures are drawn with the Agg backend and checked through their artists."""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

import costmodel as cm  # noqa: E402
import planner  # noqa: E402
from hardware_profiles import Cluster  # noqa: E402
from planner import compare, plots  # noqa: E402
from planner.html import render_html, write_html_report  # noqa: E402

from conftest import fast, tiny_gpt, tiny_llama  # noqa: E402

MIXED = Cluster.parse("3x4xV100+1x4xT4", inter_node_gbps=1.25)
AMP_WORKLOAD = cm.Training(global_batch=32, dtype="fp16")
TRAIN = cm.Training(global_batch=64, seq_len=2048)
INFER = cm.Inference(prompt_tokens=512, output_tokens=64, batch=16)


@pytest.fixture(scope="module")
def mixed_result():
    """GPT-2 on AMP's mixed cluster: the best plan is a pipeline over V100 and T4 stages."""
    return planner.plan("gpt2-amp", MIXED, AMP_WORKLOAD, profiles=None)


@pytest.fixture(scope="module")
def train_result():
    return planner.plan("llama-3-8b", "2x8xH100", TRAIN, profiles=None)


@pytest.fixture(scope="module")
def infer_result():
    return planner.plan("mixtral-8x7b", "1x4xH100", INFER, profiles=None)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _bars(ax) -> list[BarContainer]:
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _bar_totals(ax) -> np.ndarray:
    """Right end of each stacked horizontal bar, top to bottom."""
    bars = _bars(ax)
    ends = np.max([[p.get_x() + p.get_width() for p in c.patches] for c in bars], axis=0)
    ys = np.array([p.get_y() for p in bars[0].patches])
    return ends[np.argsort(-ys)]


def _unit_scale(label: str) -> float:
    unit = re.search(r"\((µs|ms|s)\)\s*$", label).group(1)
    return {"s": 1.0, "ms": 1e3, "µs": 1e6}[unit]


# --------------------------------------------------------------------------- memory and time bars

@pytest.mark.parametrize("which", ["train_result", "mixed_result", "infer_result"])
def test_memory_bars_stack_to_the_memory_the_search_found(which, request):
    result = request.getfixturevalue(which)
    ax = plots.plot_memory(result, top=4)
    rows = plots.top_distinct(result.candidates, 4)
    assert 1 <= len(rows) <= 4
    bars = _bars(ax)
    assert bars and all(len(c) == len(rows) for c in bars)
    # every segment is one kind of memory, and the stack adds up to the candidate's memory per GPU
    assert len(bars) <= len(cm.pricing.MEMORY_TERMS)
    np.testing.assert_allclose(_bar_totals(ax), rows["memory_gb"].to_numpy(), rtol=0.01)
    assert "GB" in ax.get_xlabel() and ax.get_ylabel()
    assert [t.get_text() for t in ax.get_yticklabels()][0].startswith("#1 ")
    caps = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert caps and caps[0].get_label() == "usable memory per GPU"
    legend = ax.get_legend()
    assert legend is not None and "weights" in [t.get_text() for t in legend.get_texts()]


@pytest.mark.parametrize("which", ["train_result", "infer_result"])
def test_time_bars_stack_to_the_step_time(which, request):
    result = request.getfixturevalue(which)
    ax = plots.plot_time(result, top=5)
    rows = plots.top_distinct(result.candidates, 5)
    bars = _bars(ax)
    assert all(len(c) == len(rows) for c in bars)
    scale = _unit_scale(ax.get_xlabel())
    np.testing.assert_allclose(_bar_totals(ax) / scale, rows["time_s"].to_numpy(), rtol=0.01)
    # one segment per additive term that matters; compute is always one of them
    labels = [c.get_label() for c in bars]
    assert "compute" in labels and len(labels) == len(set(labels))


def test_top_distinct_drops_candidates_that_would_draw_the_same(mixed_result):
    rows = plots.top_distinct(mixed_result.candidates, 6)
    labels = [plots.candidate_label(r) for _, r in rows.iterrows()]
    assert len(rows) == 6 and len({lab.split(" ", 1)[1] for lab in labels}) == 6
    assert not rows["pruned"].any()
    assert list(rows["rank"]) == sorted(rows["rank"])


def test_stage_memory_has_one_bar_per_stage(mixed_result):
    e = mixed_result.best.estimate
    ax = plots.plot_stage_memory(mixed_result)
    bars = _bars(ax)
    assert all(len(c) == e.strategy.pp for c in bars)
    tops = np.max([[p.get_y() + p.get_height() for p in c.patches] for c in bars], axis=0)
    np.testing.assert_allclose(tops, [s.memory_bytes / 1e9 for s in e.stages], rtol=0.01)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert any("T4" in t for t in ticks) and any("V100" in t for t in ticks)
    assert "GB" in ax.get_ylabel()


# --------------------------------------------------------------------------- pipeline timeline

@pytest.mark.parametrize("schedule,v", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("interleaved", 3)])
@pytest.mark.parametrize("p,m_per_p", [(2, 1), (3, 2), (4, 3)])
def test_uniform_pipeline_takes_m_plus_bubble(schedule, v, p, m_per_p):
    m = p * m_per_p
    t = 0.7
    ops = plots.pipeline_schedule([t] * p, m, schedule, v, forward_share=1 / 3)
    assert len(ops) == 2 * m * v * p
    # the textbook result: (m + (p - 1) / v) micro-batch times
    assert ops["end_s"].max() == pytest.approx((m + (p - 1) / v) * t)


@fast(60)
@given(st.integers(1, 5), st.integers(1, 10), st.sampled_from(["gpipe", "1f1b"]),
       st.lists(st.floats(0.1, 5.0), min_size=5, max_size=5), st.floats(0.2, 0.5))
def test_pipeline_schedule_is_a_valid_schedule(p, m, schedule, times, share):
    t = np.array(times[:p])
    ops = plots.pipeline_schedule(t, m, schedule, 1, forward_share=share)
    for stage, part in ops.groupby("stage"):
        part = part.sort_values("start_s")
        assert (part["start_s"].to_numpy()[1:] >= part["end_s"].to_numpy()[:-1] - 1e-12).all()  # one at a time
        assert sorted(part.loc[part.phase == "forward", "micro_batch"]) == list(range(m))
        assert sorted(part.loc[part.phase == "backward", "micro_batch"]) == list(range(m))
    end = {(r.phase, r.micro_batch, r.stage): r.end_s for r in ops.itertuples()}
    start = {(r.phase, r.micro_batch, r.stage): r.start_s for r in ops.itertuples()}
    for i in range(m):
        for j in range(1, p):
            assert start[("forward", i, j)] >= end[("forward", i, j - 1)] - 1e-12
            assert start[("backward", i, j - 1)] >= end[("backward", i, j)] - 1e-12
        assert start[("backward", i, p - 1)] >= end[("forward", i, p - 1)] - 1e-12
    makespan = ops["end_s"].max()
    # no schedule beats the slowest stage's work or one micro-batch's path; AMP's formula bounds it above
    assert makespan >= max(m * t.max(), t.sum()) - 1e-9
    assert makespan <= (m - 1) * t.max() + t.sum() + 1e-9


def test_pipeline_schedule_rejects_bad_input():
    with pytest.raises(planner.PlannerOptionError):
        plots.pipeline_schedule([1.0, 1.0], 3, "interleaved", 2)  # micro-batches not a multiple of pp
    with pytest.raises(planner.PlannerOptionError):
        plots.pipeline_schedule([1.0], 2, "zigzag")
    with pytest.raises(planner.PlannerOptionError):
        plots.pipeline_schedule([1.0, 1.0], 2, "1f1b", virtual_stages=2)


def test_timeline_draws_every_pass_of_the_shown_micro_batches(mixed_result):
    e = mixed_result.best.estimate
    p = e.strategy.pp
    assert p > 1
    ax = plots.plot_timeline(mixed_result, micro_batches=5)
    bars = _bars(ax)
    assert [c.get_label().split(" ")[0] for c in bars] == ["forward", "backward"]
    assert sum(len(c) for c in bars) == 2 * 5 * p
    assert len(ax.get_yticks()) == p
    assert "5 of" in ax.get_title()
    end = max(pt.get_x() + pt.get_width() for c in bars for pt in c.patches) / _unit_scale(ax.get_xlabel())
    # five micro-batches through the cost model's stage times: at least the slowest stage's five passes
    assert end >= 5 * max(s.time_s for s in e.stages) * (1 - 1e-9)


def test_timeline_for_inference_is_forward_only(infer_result):
    ax = plots.plot_timeline(infer_result)
    bars = _bars(ax)
    assert [c.get_label().split(" ")[0] for c in bars] == ["forward"]
    assert "decode step" in ax.get_xlabel()


# --------------------------------------------------------------------------- Pareto fronts

@fast(80)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=30))
def test_pareto_mask_keeps_exactly_the_undominated(points):
    x = np.array([a for a, _ in points], dtype=float)
    y = np.array([b for _, b in points], dtype=float)
    keep = plots.pareto_mask(x, y)

    def dominated(i):
        return any(x[j] >= x[i] and y[j] >= y[i] and (x[j] > x[i] or y[j] > y[i]) for j in range(len(x)))

    for i in range(len(x)):
        if dominated(i):
            assert not keep[i]
        else:  # undominated: kept, or an identical point is kept
            assert keep[i] or any(keep[j] and x[j] == x[i] and y[j] == y[i] for j in range(len(x)))


def test_training_pareto_marks_the_chosen_plan(train_result):
    ax = plots.plot_pareto(train_result)
    assert "GB" in ax.get_xlabel() and "tokens/s" in ax.get_ylabel()
    star = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label().startswith("chosen")]
    assert len(star) == 1
    best = train_result.candidates.iloc[0]
    np.testing.assert_allclose(star[0].get_offsets()[0], [best["memory_gb"], best["tokens_per_s"]])
    front = [ln for ln in ax.get_lines() if ln.get_label().startswith("Pareto")][0]
    fx, fy = front.get_data()
    ok = train_result.candidates[~train_result.candidates["pruned"]]
    # the front's highest point is the fastest feasible strategy, and no feasible point lies above the front
    assert max(fy) == pytest.approx(ok["tokens_per_s"].max())
    for mem, tps in zip(ok["memory_gb"], ok["tokens_per_s"]):
        reach = np.asarray(fy)[np.asarray(fx) <= mem + 1e-9]
        assert tps <= reach.max() + 1e-6
    twin = [a for a in ax.figure.axes if a is not ax and "million tokens" in a.get_ylabel()]
    assert twin, "the $ per million tokens axis is missing"


def test_inference_pareto_plots_ttft_against_throughput(infer_result):
    ax = plots.plot_pareto(infer_result)
    assert "(ms)" in ax.get_ylabel() and "tokens/s" in ax.get_xlabel()
    feasible = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label().startswith("feasible")]
    assert len(feasible[0].get_offsets()) == int((~infer_result.candidates["pruned"]).sum())
    assert any("million" in a.get_ylabel() for a in ax.figure.axes if a is not ax)  # colour bar


def test_plots_draw_into_a_given_axes(train_result):
    fig, axes = plt.subplots(2, 2)
    for ax, fn in zip(axes.ravel(), (plots.plot_memory, plots.plot_time, plots.plot_timeline, plots.plot_pareto)):
        assert fn(train_result, ax=ax) is ax
    # the PlanResult shortcuts call the same functions
    assert train_result.plot_time(ax=axes[0, 1]) is axes[0, 1]


# --------------------------------------------------------------------------- HTML report

def test_html_report_is_standalone_and_names_the_best_strategy(mixed_result, tmp_path):
    path = write_html_report(mixed_result, tmp_path / "sub" / "report.html")
    assert path.exists()
    text = path.read_text(encoding="utf-8")
    assert mixed_result.best.strategy.describe() in text
    assert "Why this plan won" in text and "Ranked candidates" in text
    assert not re.search(r"https?://|<link|<script|src=\"(?!data:)", text)
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) >= 4 and all(src.startswith("data:image/png;base64,") for src in images)
    # the memory and time breakdown of the chosen plan are in the tables too
    e = mixed_result.best.estimate
    assert f"{e.memory['activations'] / 1e9:.2f}" in text
    assert "V100 x" in text and "T4 x" in text  # mixed cluster: which GPU types the ranks land on


def test_html_report_for_inference(infer_result):
    text = render_html(infer_result)
    assert infer_result.best.strategy.describe() in text and "TTFT" in text


def test_cli_writes_the_html_report(tmp_path, capsys):
    from planner.__main__ import main

    out = tmp_path / "plan.html"
    rc = main(["--model", "gpt2-amp", "--cluster", "1x4xT4", "--batch", "16", "--dtype", "fp16", "--report", str(out)])
    assert rc == 0 and out.exists()
    assert "report written to" in capsys.readouterr().out


# --------------------------------------------------------------------------- compare: pure strategies

def _strategy_of(row) -> cm.Strategy:
    return cm.Strategy(tp=int(row["tp"]), pp=int(row["pp"]), dp=int(row["dp"]), ep=int(row["ep"]),
                       ep_mode=row["ep_mode"], micro_batch=int(row["micro_batch"]))


@pytest.mark.parametrize("model,cluster,workload", [
    ("llama-3-8b", "2x8xH100", TRAIN),
    ("mixtral-8x7b", "1x4xH100", INFER),
])
def test_pure_strategies_agree_with_the_cost_model(model, cluster, workload):
    df = compare.pure_strategies(model, cluster, workload, profiles=None)
    assert list(df.columns[:len(compare.PURE_COLUMNS)]) == compare.PURE_COLUMNS
    names = list(df["name"])
    assert names[:3] == ["all-DP", "all-TP", "all-PP"] and names[-1] == "planner"
    assert ("all-EP" in names) == cm.ModelSpec.from_name(model).is_moe
    n = Cluster.parse(cluster).num_gpus
    for _, row in df[df["name"] != "planner"].iterrows():
        s = _strategy_of(row)
        assert s.num_gpus == n
        e = cm.estimate(model, cluster, s, workload, profiles=None)
        assert row["time_s"] == pytest.approx(e.time_s, rel=1e-9)
        assert row["memory_gb"] == pytest.approx(e.memory_per_gpu_bytes / 1e9, rel=1e-9)
        assert row["tokens_per_s"] == pytest.approx(e.tokens_per_s, rel=1e-9)
        assert bool(row["fits"]) == e.fits
        assert row["comm_s"] >= row["comm_exposed_s"] - 1e-12 >= -1e-12
    dp, tp, pp = (df.loc[df["name"] == k].iloc[0] for k in ("all-DP", "all-TP", "all-PP"))
    assert (dp["tp"], dp["pp"], dp["dp"]) == (1, 1, n)
    assert tp["pp"] == 1 and tp["tp"] > 1 and pp["tp"] == 1 and pp["pp"] > 1
    # the usual table, measured: data parallel holds the most per GPU, tensor parallel sends the most
    assert dp["memory_gb"] == df["memory_gb"].max()
    assert tp["comm_gb"] > dp["comm_gb"] and tp["comm_gb"] > pp["comm_gb"]
    planner_row = df.iloc[-1]
    best = planner.plan(model, cluster, workload, profiles=None).best.estimate
    assert planner_row["time_s"] == pytest.approx(best.time_s) and bool(planner_row["fits"])


def test_pure_tensor_parallel_stops_where_the_heads_do():
    model = tiny_llama(num_heads=4, num_kv_heads=2, ffn_hidden=176)
    df = compare.pure_strategies(model, "1x8xH100", cm.Training(global_batch=8, seq_len=32), profiles=None)
    row = df[df["name"] == "all-TP"].iloc[0]
    assert (row["tp"], row["dp"]) == (2, 4)  # 2 KV heads
    assert "KV heads" in row["note"]
    ax = plots.plot_pure_strategies(df)
    assert len(ax) == 3 and all(a.get_xlabel() for a in ax)
    assert all(len(_bars(a)[0]) == len(df) for a in ax)


def test_a_pure_strategy_the_batch_cannot_take_is_reported_not_raised():
    model = tiny_llama()
    df = compare.pure_strategies(model, "2x8xH100", cm.Training(global_batch=8, seq_len=32), profiles=None)
    dp = df[df["name"] == "all-DP"].iloc[0]
    assert not dp["fits"] and dp["note"].startswith("not possible") and "global batch 8" in dp["note"]
    assert np.isnan(dp["time_s"])
    assert df.iloc[-1]["name"] == "planner" and bool(df.iloc[-1]["fits"])
    plots.plot_pure_strategies(df)  # draws the impossible row as an empty, hatched bar


def test_communication_volume_by_hand():
    model = tiny_gpt(num_layers=4, hidden=64, num_heads=4, seq_len=32)
    w = cm.Training(global_batch=8, seq_len=32)
    b = 2  # bf16
    # all data parallel on 4 GPUs: one gradient all-reduce, 2 (n - 1) / n of the gradients
    e = cm.estimate(model, "1x4xH100", cm.Strategy(dp=4, micro_batch=1), w, profiles=None)
    vol = compare.comm_volume_bytes(model, e, w)
    assert vol["dp"] == pytest.approx(2 * 3 / 4 * model.num_params * b)
    assert vol["tp"] == vol["pp"] == vol["ep"] == 0
    # tensor parallel 4: 4 all-reduces per block and 1 each for the embedding and the head, per micro-batch
    e = cm.estimate(model, "1x4xH100", cm.Strategy(tp=4, micro_batch=2), w, profiles=None)
    vol = compare.comm_volume_bytes(model, e, w)
    micro_batches, rows = 8 // 2, 2 * 32
    assert vol["tp"] == pytest.approx(micro_batches * (4 * 4 + 2) * 2 * 3 / 4 * rows * 64 * b)
    assert vol["dp"] == 0
    # two pipeline stages: each sends one activation (or its gradient) per micro-batch
    e = cm.estimate(model, "1x2xH100", cm.Strategy(pp=2, micro_batch=1), w, profiles=None)
    vol = compare.comm_volume_bytes(model, e, w)
    assert vol["pp"] == pytest.approx(8 * 32 * 64 * b)


# --------------------------------------------------------------------------- compare: GPU types, serving sweep

def test_compare_gpus_prices_the_best_plan_on_each_type():
    w = cm.Inference(prompt_tokens=512, output_tokens=64, batch=1)
    df = compare.compare_gpus("llama3-70b", w, gpus=("H100", "L4"), gpus_per_node=2, profiles=None)
    assert list(df.columns[:len(compare.GPU_COLUMNS)]) == compare.GPU_COLUMNS
    assert len(df) == 2
    h100, l4 = df.iloc[0], df.iloc[1]
    assert bool(h100["feasible"]) and not bool(l4["feasible"])
    assert "does not fit" in l4["note"]
    best = planner.plan("llama3-70b", "1x2xH100", w, profiles=None).best.estimate
    assert h100["time_s"] == pytest.approx(best.time_s)
    tokens = w.batch * w.output_tokens
    assert h100["usd_per_mtok"] == pytest.approx(best.cost_usd / tokens * 1e6)
    ax = plots.plot_gpu_comparison(df)
    assert "million" in ax.get_xlabel() and "tokens/s" in ax.get_ylabel()
    assert any("L4" in t.get_text() for t in ax.texts)  # the GPU type that does not fit is named


def test_compare_gpus_over_node_counts_for_training():
    w = cm.Training(global_batch=32, seq_len=1024)
    df = compare.compare_gpus("llama-3-8b", w, gpus=("H100", "A100"), nodes=(1, 2), profiles=None)
    assert list(zip(df["gpu"].str[:4], df["nodes"])) == [("H100", 1), ("H100", 2), ("A100", 1), ("A100", 2)]
    ok = df[df["feasible"]]
    np.testing.assert_allclose(ok["usd_per_mtok"], ok["usd_per_hour"] * ok["time_s"] / 3600
                               / (ok["tokens_per_s"] * ok["time_s"]) * 1e6)
    with pytest.raises(planner.PlannerOptionError):
        compare.compare_gpus("llama-3-8b", w, nodes=0)


def test_inference_sweep_covers_every_layout_and_batch():
    df = compare.inference_sweep("mixtral-8x7b", ["1x4xH100", "1x4xH200"], 512, 64, batches=(1, 8), profiles=None)
    assert list(df.columns) == compare.SWEEP_COLUMNS
    assert set(df["batch"]) == {1, 8} and df["gpu"].nunique() == 2
    assert (df.loc[df["batch"] == 1, "dp"] == 1).all()  # one request cannot be split over replicas
    assert {"TP4", "TP4 x EP4(tp)", "DP4 x EP4(dp)"} <= set(df["layout"])
    r = df[(df["layout"] == "TP4") & (df["batch"] == 8) & (df["gpu"].str.startswith("H200"))].iloc[0]
    e = cm.estimate("mixtral-8x7b", "1x4xH200", cm.Strategy(tp=4, micro_batch=8),
                    cm.Inference(prompt_tokens=512, output_tokens=64, batch=8), profiles=None)
    assert (r["ttft_s"], r["tpot_s"]) == pytest.approx((e.ttft_s, e.tpot_s))
    ax = plots.plot_latency_throughput(df, latency="ttft_s")
    assert ax.get_xscale() == "log" and "(ms" in ax.get_ylabel()
    assert len(ax.get_lines()) == df[df["fits"]].groupby(["gpu", "layout"]).ngroups
    with pytest.raises(planner.PlannerOptionError):
        plots.plot_latency_throughput(df, latency="speed")


def test_predicted_vs_measured_plot():
    ax = plots.plot_predicted_vs_measured([1.0, 2.0, np.nan], [1.1, 1.5, 3.0], labels=["a", "b", "c"])
    assert ax.get_xscale() == "log" and "measured" in ax.get_xlabel() and "(s)" in ax.get_ylabel()
    assert len(ax.collections[0].get_offsets()) == 2  # the unmeasured point is left out
