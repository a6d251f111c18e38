"""Figures for a PlanResult: memory and time breakdowns, the pipeline timeline, Pareto fronts.

Every function takes an optional matplotlib `ax` (a new figure is made when it is None) and returns it,
so notebook cells stay one line and the HTML report can draw into figures of its own. Nothing here
selects a backend: set MPLBACKEND=Agg (or call matplotlib.use) on machines without a display.

The pipeline timeline is computed here from the best plan's per-stage times (`pipeline_schedule`): each
device runs its operations in the order the schedule prescribes (GPipe, 1F1B, Megatron's interleaved
1F1B), each starting when the device is free and its input has arrived.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from costmodel.pricing import ADDITIVE_TERMS, MEMORY_TERMS

from .errors import PlannerOptionError
from .report import _row_describe

if TYPE_CHECKING:
    from .search import PlanResult

MEMORY_STYLE = {  # term: (legend label, colour)
    "weights": ("weights", "#4C72B0"), "gradients": ("gradients", "#55A868"),
    "optimizer": ("optimizer state", "#C44E52"), "activations": ("activations", "#8172B2"),
    "kv_cache": ("KV cache", "#CCB974"), "reserved": ("reserved (context, workspaces)", "#9E9E9E"),
}
TIME_STYLE = {
    "compute_s": ("compute", "#4C72B0"), "tp_comm_s": ("TP collectives", "#DD8452"),
    "ep_comm_s": ("EP all-to-all", "#937860"), "pp_comm_s": ("PP sends", "#DA8BC3"),
    "bubble_s": ("pipeline bubble", "#BDBDBD"), "dp_comm_exposed_s": ("DP sync (exposed)", "#55A868"),
    "optimizer_s": ("optimizer step", "#C44E52"), "overhead_s": ("fixed overhead", "#8C8C8C"),
}
FORWARD_COLOUR, BACKWARD_COLOUR = "#4C72B0", "#DD8452"
CHOSEN_COLOUR = "#D62728"
# Share of a training micro-batch's stage time spent in the forward pass: backward costs about twice the
# forward (two GEMMs per forward GEMM); with full recompute the forward runs again inside backward.
FORWARD_SHARE = {"none": 1 / 3, "selective": 0.3, "full": 1 / 4}


# --------------------------------------------------------------------------- helpers

def _axes(ax: Any, figsize: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _time_unit(seconds: float) -> tuple[str, float]:
    """A unit that keeps the numbers between about 0.1 and 1000."""
    if seconds >= 2.0:
        return "s", 1.0
    if seconds >= 2e-3:
        return "ms", 1e3
    return "µs", 1e6


def _fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:,.0f}"


def _is_inference(result: "PlanResult") -> bool:
    return "ttft_s" in result.candidates


def top_distinct(df: pd.DataFrame, top: int) -> pd.DataFrame:
    """The first `top` ranked (not pruned) candidates with distinct descriptions: candidates that differ only
    in where nodes sit or how layers are cut would draw as identical bars."""
    ranked = df[~df["pruned"]] if "pruned" in df else df
    key = pd.concat([ranked.apply(_row_describe, axis=1), ranked["num_gpus"]], axis=1)
    return ranked[~key.duplicated()].head(top)


def candidate_label(row: pd.Series, with_gpus: bool = False) -> str:
    rank = int(row["rank"]) if "rank" in row and row["rank"] else None
    label = (f"#{rank} " if rank else "") + _row_describe(row)
    if with_gpus:
        label += f" on {int(row['num_gpus'])} GPUs"
    return label


def _legend_outside(ax: Any, **kw: Any) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9, **kw)


def usd_per_million_tokens(df: pd.DataFrame) -> pd.Series:
    """$ per million tokens of each candidate: training, GPU-hours per step over the tokens of a step; inference,
    the idealized cost of the request batch over its generated tokens (the planner's "cost" objective)."""
    if "cost_usd" in df:
        tokens = df["tokens_per_s"] * df["time_s"]
        return df["cost_usd"].astype(float) / tokens * 1e6
    return df["usd_per_hour"] / 3600.0 / df["tokens_per_s"] * 1e6


# --------------------------------------------------------------------------- memory

def candidate_estimates(result: "PlanResult", rows: pd.DataFrame) -> list[Any]:
    """The cost model's Estimate for each candidate row (the best plan's own estimate where it is the best).

    Rows are re-priced with their stage cut points, so the memory matches the search's figure."""
    from costmodel.pricing import estimate

    from .search import _strategy_of

    best = result.best
    cluster = getattr(result, "cluster", None) or best.cluster
    params = getattr(result, "params", None)
    profiles = getattr(result, "profiles", "auto")
    out = []
    for _, row in rows.iterrows():
        strat = _strategy_of(row)
        if row.get("stages"):
            strat = strat.with_(stages=tuple(int(x) for x in str(row["stages"]).split(",")))
        if best.estimate is not None and _same_strategy(strat, best.estimate.strategy) \
                and int(row["num_gpus"]) == best.cluster.num_gpus:
            out.append(best.estimate)
            continue
        n = int(row["num_gpus"])
        if n > cluster.num_gpus:
            out.append(None)  # the result does not carry the whole cluster; see PlanResult.cluster
            continue
        sub = cluster if n == cluster.num_gpus else cluster.first_gpus(n)
        out.append(estimate(best.model, sub, strat, best.workload, params=params, profiles=profiles))
    return out


def _same_strategy(a: Any, b: Any) -> bool:
    fields = ("tp", "pp", "dp", "ep", "ep_mode", "micro_batch", "schedule", "virtual_stages", "recompute",
              "sequence_parallel", "zero", "placement")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and (a.stages is None or a.stages == b.stages)


def visible_parts(parts: dict[str, np.ndarray], min_share: float = 2e-3) -> dict[str, np.ndarray]:
    """The parts worth a segment: those reaching `min_share` of the largest stacked total somewhere (rounding
    noise and terms of a few microseconds in a minute-long step would only clutter the legend)."""
    clean = {k: np.clip(np.nan_to_num(np.asarray(v, dtype=float)), 0.0, None) for k, v in parts.items()}
    total = sum(clean.values()) if clean else np.zeros(0)
    top = float(np.max(total)) if np.size(total) else 0.0
    return {k: v for k, v in clean.items() if top > 0 and v.max() >= min_share * top}


def _stacked_barh(ax: Any, labels: Sequence[str], parts: dict[str, np.ndarray], style: dict, scale: float
                  ) -> np.ndarray:
    """Horizontal stacked bars, first label at the top; one BarContainer per visible part. Returns totals."""
    y = np.arange(len(labels))[::-1]
    left = np.zeros(len(labels))
    for key, values in visible_parts(parts).items():
        values = values * scale
        label, colour = style[key]
        ax.barh(y, values, left=left, color=colour, label=label, height=0.7, edgecolor="white", linewidth=0.5)
        left = left + values
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    return left


def plot_memory(result: "PlanResult", ax: Any = None, top: int = 6) -> Any:
    """Memory on the fullest GPU for the top candidates, stacked by kind, with each one's usable capacity."""
    rows = top_distinct(result.candidates, top)
    ests = candidate_estimates(result, rows)
    keep = [i for i, e in enumerate(ests) if e is not None]
    rows, ests = rows.iloc[keep], [ests[i] for i in keep]
    ax = _axes(ax, (11, 0.6 * len(rows) + 1.8))
    inference = _is_inference(result)
    labels = [candidate_label(r, with_gpus=inference) for _, r in rows.iterrows()]
    parts = {k: np.array([e.memory.get(k, 0.0) for e in ests]) for k in MEMORY_TERMS}
    totals = _stacked_barh(ax, labels, parts, MEMORY_STYLE, 1e-9)
    usable = 1.0 - result.constraints.memory_headroom
    caps = np.array([e.memory_capacity_bytes for e in ests]) * usable / 1e9
    y = np.arange(len(labels))[::-1]
    ax.vlines(caps, y - 0.42, y + 0.42, colors="black", linestyles="--", linewidth=1.5,
              label="usable memory per GPU")
    for yi, t, c in zip(y, totals, caps):
        ax.text(max(t, c), yi, f" {t:.1f} GB", va="center", fontsize=8)
    ax.set_xlim(0, max(caps.max(), totals.max()) * 1.14)
    ax.set_xlabel("memory on the fullest GPU (GB)")
    ax.set_ylabel("candidate (rank, strategy)")
    ax.set_title(f"Memory per GPU: {result.best.model.name} on {result.best.cluster.describe()}", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    _legend_outside(ax)
    return ax


def plot_stage_memory(result: "PlanResult", ax: Any = None) -> Any:
    """Memory of each pipeline stage of the best plan (which GPU type it runs on), stacked by kind."""
    e = result.best.estimate
    stages = e.stages
    ax = _axes(ax, (max(6.0, 0.9 * len(stages) + 4), 4.2))
    x = np.arange(len(stages))
    bottom = np.zeros(len(stages))
    parts = visible_parts({k: np.array([s.memory.get(k, 0.0) for s in stages]) / 1e9 for k in MEMORY_TERMS})
    for k, v in parts.items():
        label, colour = MEMORY_STYLE[k]
        ax.bar(x, v, bottom=bottom, color=colour, label=label, width=0.7, edgecolor="white", linewidth=0.5)
        bottom = bottom + v
    usable = 1.0 - result.constraints.memory_headroom
    caps = np.array([s.memory_capacity_bytes for s in stages]) * usable / 1e9
    ax.hlines(caps, x - 0.42, x + 0.42, colors="black", linestyles="--", linewidth=1.5, label="usable memory")
    ax.set_xticks(x, [f"stage {s.index}\n{_short_gpu(s.gpu)}\nlayers {s.first_layer}-{s.end_layer - 1}"
                      for s in stages], fontsize=8)
    ax.set_ylim(0, max(caps.max(), bottom.max()) * 1.1)
    ax.set_ylabel("memory per GPU (GB)")
    ax.set_xlabel("pipeline stage (GPU type, layer entries)")
    ax.set_title(f"Memory by pipeline stage: {result.best.strategy.describe()}", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(ax)
    return ax


def _short_gpu(name: str) -> str:
    return name.split("-")[0] if name.count("-") >= 1 and not name.startswith("RTX") else name


# --------------------------------------------------------------------------- time

def plot_time(result: "PlanResult", ax: Any = None, top: int = 6) -> Any:
    """Step time (training) or batch runtime (inference) of the top candidates, stacked by additive term."""
    rows = top_distinct(result.candidates, top)
    inference = _is_inference(result)
    ax = _axes(ax, (11, 0.6 * len(rows) + 1.8))
    labels = [candidate_label(r, with_gpus=inference) for _, r in rows.iterrows()]
    unit, scale = _time_unit(float(rows["time_s"].max()))
    parts = {k: rows[k].to_numpy(dtype=float) for k in ADDITIVE_TERMS if k in rows}
    totals = _stacked_barh(ax, labels, parts, TIME_STYLE, scale)
    y = np.arange(len(labels))[::-1]
    for yi, t in zip(y, totals):
        ax.text(t, yi, f" {_fmt(t)} {unit}", va="center", fontsize=8)
    ax.set_xlim(0, totals.max() * 1.15)
    what = "runtime of the request batch, P(prompt) + beta x (output - 1)" if inference else "training step time"
    ax.set_xlabel(f"{what} ({unit})")
    ax.set_ylabel("candidate (rank, strategy)")
    ax.set_title(f"Where the time goes: {result.best.model.name} on {result.best.cluster.describe()}", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    _legend_outside(ax)
    return ax


# --------------------------------------------------------------------------- pipeline timeline

def pipeline_schedule(stage_times_s: Sequence[float], micro_batches: int, schedule: str = "1f1b",
                      virtual_stages: int = 1, forward_share: float = 1 / 3, forward_only: bool = False
                      ) -> pd.DataFrame:
    """Start and end of every forward and backward pass of every micro-batch on every pipeline stage.

    `stage_times_s[j]`: forward + backward time of one micro-batch on stage j (all its chunks);
    `forward_share` of it is the forward pass. With `virtual_stages` v > 1 (interleaved), stage j holds
    chunks j, j + p, ... and each chunk takes 1/v of the stage time. `forward_only`: inference (no backward).
    Returns a DataFrame with columns stage, chunk, micro_batch, phase ("forward" / "backward"), start_s, end_s.
    """
    t = np.asarray(stage_times_s, dtype=float)
    p, m, v = len(t), int(micro_batches), int(virtual_stages)
    if p < 1 or m < 1 or v < 1:
        raise PlannerOptionError(f"a pipeline needs >= 1 stage, micro-batch and chunk; got {p}, {m}, {v}")
    if schedule not in ("gpipe", "1f1b", "interleaved"):
        raise PlannerOptionError(f"schedule must be gpipe, 1f1b or interleaved, got {schedule!r}")
    if (schedule == "interleaved") != (v > 1):
        raise PlannerOptionError("virtual_stages > 1 goes with schedule='interleaved' and only with it")
    if schedule == "interleaved" and m % p:
        raise PlannerOptionError(f"the interleaved schedule needs micro-batches ({m}) to be a multiple of pp={p}")
    fwd = t * (1.0 if forward_only else forward_share) / v
    bwd = t * (1.0 - forward_share) / v
    n_vs = p * v

    def order(d: int) -> list[tuple[str, int, int]]:  # (phase, micro-batch, chunk)
        if forward_only:
            return [("forward", i, c) for i in range(m) for c in range(v)]
        if schedule == "gpipe":
            return [("forward", i, 0) for i in range(m)] + [("backward", i, 0) for i in range(m)]
        total = m * v

        def f_op(k: int) -> tuple[str, int, int]:
            return ("forward", (k // (p * v)) * p + k % p, (k // p) % v)

        def b_op(k: int) -> tuple[str, int, int]:
            return ("backward", (k // (p * v)) * p + k % p, v - 1 - (k // p) % v)

        warm = min((p - d - 1) * 2 + (v - 1) * p if v > 1 else p - d - 1, total)
        ops = [f_op(k) for k in range(warm)]
        for k in range(total - warm):
            ops += [f_op(warm + k), b_op(k)]
        ops += [b_op(k) for k in range(total - warm, total)]
        return ops

    orders = [order(d) for d in range(p)]
    done: dict[tuple[str, int, int], float] = {}  # (phase, micro-batch, virtual stage) -> end time
    free = np.zeros(p)
    ptr = [0] * p
    rows = []
    left = sum(len(o) for o in orders)
    while left:
        progressed = False
        for d in range(p):
            while ptr[d] < len(orders[d]):
                phase, i, c = orders[d][ptr[d]]
                vs = c * p + d
                if phase == "forward":
                    dep = ("forward", i, vs - 1) if vs > 0 else None
                else:
                    dep = ("backward", i, vs + 1) if vs < n_vs - 1 else ("forward", i, vs)
                if dep is not None and dep not in done:
                    break
                start = max(free[d], done[dep] if dep is not None else 0.0)
                end = start + (fwd[d] if phase == "forward" else bwd[d])
                done[(phase, i, vs)] = free[d] = end
                rows.append((d, c, i, phase, start, end))
                ptr[d] += 1
                left -= 1
                progressed = True
        if not progressed:  # cannot happen for the orders above; guards against a broken order
            raise RuntimeError(f"pipeline schedule {schedule!r} deadlocked")
    return pd.DataFrame(rows, columns=["stage", "chunk", "micro_batch", "phase", "start_s", "end_s"])


def default_shown_micro_batches(m: int, p: int, schedule: str) -> int:
    """Enough micro-batches to show the warm-up, the steady state and the drain, few enough to read."""
    shown = m if m <= max(2 * p, 8) else (2 * p if p <= 4 else p + 4)
    if schedule == "interleaved":
        shown = max(p, (shown // p) * p)
    return shown


def plot_timeline(result: "PlanResult", ax: Any = None, micro_batches: int | None = None) -> Any:
    """Gantt chart of the best plan's pipeline: micro-batches per stage for its schedule, forward and backward
    in two colours, from the cost model's per-stage time of one micro-batch."""
    e = result.best.estimate
    s = e.strategy
    inference = e.kind == "inference"
    m_total = int(e.breakdown.get("micro_batches", 1) or 1)
    schedule = s.schedule if s.pp > 1 else "1f1b"
    m = min(micro_batches or default_shown_micro_batches(m_total, s.pp, schedule), m_total)
    if schedule == "interleaved":  # Megatron's order needs whole rounds of pp micro-batches
        m = max(s.pp, (m // s.pp) * s.pp)
    times = [st.time_s for st in e.stages]
    forward_share = FORWARD_SHARE.get(s.recompute, 1 / 3)
    shares = [getattr(st, "forward_s", None) for st in e.stages]
    if all(x is not None for x in shares):  # the cost model's own split, where it reports one
        forward_share = float(np.mean([f / st.time_s for f, st in zip(shares, e.stages) if st.time_s > 0]))
    ops = pipeline_schedule(times, m, schedule, s.virtual_stages, forward_share, forward_only=inference)
    ax = _axes(ax, (12, 0.45 * s.pp + 2.0))
    unit, scale = _time_unit(float(ops["end_s"].max()))
    span = float(ops["end_s"].max()) * scale
    for phase, colour in (("forward", FORWARD_COLOUR), ("backward", BACKWARD_COLOUR)):
        part = ops[ops["phase"] == phase]
        if part.empty:
            continue
        y = s.pp - 1 - part["stage"].to_numpy()
        share = forward_share if phase == "forward" else 1 - forward_share
        label = f"{phase} pass" + ("" if inference else f" (~{share:.0%} of a micro-batch)")
        if s.virtual_stages > 1:
            label += ", labelled micro-batch.chunk"
        ax.barh(y, (part["end_s"] - part["start_s"]).to_numpy() * scale, left=part["start_s"].to_numpy() * scale,
                height=0.8, color=colour, edgecolor="white", linewidth=0.6, label=label)
        for (_, r), yi in zip(part.iterrows(), y):
            w = (r["end_s"] - r["start_s"]) * scale
            if w > 0.011 * span:
                label = str(r["micro_batch"]) if s.virtual_stages == 1 else f"{r['micro_batch']}.{r['chunk']}"
                ax.text((r["start_s"] * scale) + w / 2, yi, label, ha="center", va="center", fontsize=6,
                        color="white")
    ax.set_yticks(np.arange(s.pp)[::-1], [f"stage {st.index} ({_short_gpu(st.gpu)})" for st in e.stages],
                  fontsize=9)
    ax.set_ylim(-0.6, s.pp - 0.4)
    ax.set_xlim(0, span * 1.01)
    ax.set_xlabel(f"time from the start of the {'decode step' if inference else 'step'} ({unit})")
    ax.set_ylabel("pipeline stage")
    if inference:
        what = f"decode step, {m} of {m_total} micro-batch(es)"
    else:
        sched = {"gpipe": "GPipe", "1f1b": "1F1B", "interleaved": f"interleaved 1F1B, v={s.virtual_stages}"}[schedule]
        what = f"{sched}, first {m} of {m_total} micro-batches"
    ax.set_title(f"Pipeline timeline ({what}): {s.describe()}", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18 if s.pp <= 4 else -0.1), ncol=2, frameon=False,
              fontsize=9)
    return ax


# --------------------------------------------------------------------------- Pareto fronts

def pareto_mask(better_x: np.ndarray, better_y: np.ndarray) -> np.ndarray:
    """Points not dominated when larger `better_x` and larger `better_y` are both better."""
    x = np.asarray(better_x, dtype=float)
    y = np.asarray(better_y, dtype=float)
    order = np.lexsort((-y, -x))  # x descending, then y descending
    keep = np.zeros(len(x), dtype=bool)
    best_y = -np.inf
    for i in order:
        if y[i] > best_y:
            keep[i] = True
            best_y = y[i]
    return keep


def plot_pareto(result: "PlanResult", ax: Any = None) -> Any:
    """Training: throughput against memory per GPU for every candidate (what headroom costs in speed), with
    $ per million tokens on the right axis. Inference: time to first token against throughput, coloured by
    $ per million generated tokens. The Pareto front is drawn as a line and the chosen plan as a star."""
    if _is_inference(result):
        return _pareto_inference(result, ax)
    return _pareto_training(result, ax)


def _chosen_row(result: "PlanResult") -> pd.Series:
    df = result.candidates
    ranked = df[df["rank"] == 1]
    return ranked.iloc[0] if len(ranked) else df.iloc[0]


def _pareto_training(result: "PlanResult", ax: Any) -> Any:
    df = result.candidates
    ax = _axes(ax, (10, 5.5))
    usable = 1.0 - result.constraints.memory_headroom
    cap = float((df["capacity_gb"] * usable).max())
    ok = ~df["pruned"]
    x_max = max(1.5 * cap, float(df.loc[ok, "memory_gb"].max()) * 1.1)
    shown = df["memory_gb"] <= x_max
    off = int((~shown).sum())
    mem_short = df["pruned"] & ~df["fits"]
    other = df["pruned"] & df["fits"]
    beyond = f"; {off} beyond the right edge" if off else ""
    ax.scatter(df.loc[mem_short & shown, "memory_gb"], df.loc[mem_short & shown, "tokens_per_s"], s=8, marker="x",
               color="#BBBBBB", linewidths=0.7, label=f"does not fit in memory ({int(mem_short.sum())}{beyond})")
    if other.any():
        ax.scatter(df.loc[other, "memory_gb"], df.loc[other, "tokens_per_s"], s=8, color="#F0A0A0",
                   label=f"breaks a constraint ({int(other.sum())})")
    ax.scatter(df.loc[ok, "memory_gb"], df.loc[ok, "tokens_per_s"], s=10, color="#4C72B0", alpha=0.6,
               label=f"feasible ({int(ok.sum())})")
    feas = df[ok]
    front = feas[pareto_mask(-feas["memory_gb"].to_numpy(), feas["tokens_per_s"].to_numpy())].sort_values("memory_gb")
    ax.step(front["memory_gb"], front["tokens_per_s"], where="post", color="black", linewidth=1.2,
            label="Pareto front (fastest for its memory)")
    best = _chosen_row(result)
    ax.scatter([best["memory_gb"]], [best["tokens_per_s"]], marker="*", s=260, color=CHOSEN_COLOUR, zorder=5,
               edgecolor="black", linewidth=0.6, label=f"chosen: {_row_describe(best)}")
    ax.axvline(cap, color="black", linestyle="--", linewidth=1, label=f"usable memory ({cap:.0f} GB)")
    x_min = max(0.0, float(df.loc[ok, "memory_gb"].min()) * 0.8)
    ax.set_xlim(x_min, x_max)
    y_max = float(df.loc[shown, "tokens_per_s"].max()) * 1.08
    ax.set_ylim(0, y_max)
    ax.set_xlabel("memory on the fullest GPU (GB)")
    ax.set_ylabel("training throughput (tokens/s)")
    ax.yaxis.set_major_formatter(_thousands())
    price = float(df["usd_per_hour"].iloc[0]) if "usd_per_hour" in df else math.nan
    if math.isfinite(price) and price > 0:
        _cost_axis(ax, price / 3600.0 * 1e6, y_max,
                   rf"\$ per million tokens (at \${price:.2f}/h for {int(df['num_gpus'].iloc[0])} GPUs)")
    ax.set_title(f"Throughput against memory: {len(df)} strategies for {result.best.model.name} on "
                 f"{result.best.cluster.describe()}", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False, fontsize=9)
    return ax


def _cost_axis(ax: Any, usd_per_mtok_at_1: float, y_max: float, label: str) -> Any:
    """A right-hand axis in $ per million tokens for a throughput axis: cost = k / throughput, so the ticks sit
    at round costs (their positions are not evenly spaced)."""
    twin = ax.twinx()
    twin.set_ylim(ax.get_ylim())
    ticks, labels = [], []
    for frac in (1.0, 0.8, 0.6, 0.45, 0.3, 0.2):
        cost = usd_per_mtok_at_1 / (frac * y_max)
        nice = float(f"{cost:.2g}")
        pos = usd_per_mtok_at_1 / nice
        if pos <= y_max and all(abs(pos - t) > 0.06 * y_max for t in ticks):
            ticks.append(pos)
            labels.append(f"{nice:.3g}")
    twin.set_yticks(ticks, labels)
    twin.set_ylabel(label)
    return twin


def _pareto_inference(result: "PlanResult", ax: Any) -> Any:
    df = result.candidates.copy()
    ax = _axes(ax, (10, 5.5))
    df["usd_per_mtok"] = usd_per_million_tokens(df)
    ok = ~df["pruned"]
    bad = df[~ok]
    if len(bad):
        ax.scatter(bad["tokens_per_s"], bad["ttft_s"] * 1e3, s=14, marker="x", color="#BBBBBB", linewidths=0.7,
                   label=f"pruned ({len(bad)}: memory or constraints)")
    feas = df[ok]
    sc = ax.scatter(feas["tokens_per_s"], feas["ttft_s"] * 1e3, c=feas["usd_per_mtok"], cmap="viridis", s=22,
                    label=f"feasible ({len(feas)}), colour = \\$/M tokens", edgecolor="none",
                    norm=_log_norm(feas["usd_per_mtok"]))
    fig = ax.figure
    bar = fig.colorbar(sc, ax=ax, pad=0.01)
    bar.set_label(r"\$ per million generated tokens (log scale)")
    from matplotlib.colors import LogNorm

    if isinstance(sc.norm, LogNorm):
        _log_axes(bar.ax, y=True, set_scale=False)
    front = feas[pareto_mask(feas["tokens_per_s"].to_numpy(), -feas["ttft_s"].to_numpy())]
    front = front.sort_values("tokens_per_s")
    ax.step(front["tokens_per_s"], front["ttft_s"] * 1e3, where="pre", color="black", linewidth=1.2,
            label="Pareto front (lowest TTFT for its throughput)")
    best = _chosen_row(result)
    ax.scatter([best["tokens_per_s"]], [best["ttft_s"] * 1e3], marker="*", s=280, color=CHOSEN_COLOUR, zorder=5,
               edgecolor="black", linewidth=0.6,
               label=f"chosen ({result.objective}): {_row_describe(best)} on {int(best['num_gpus'])} GPUs")
    y = df["ttft_s"] * 1e3
    if y.max() / max(y.min(), 1e-12) > 20:
        _log_axes(ax, y=True)
    ax.set_xlabel("throughput (generated tokens/s, whole batch)")
    ax.set_ylabel("time to first token (ms)")
    ax.xaxis.set_major_formatter(_thousands())
    w = result.best.workload
    ax.set_title(f"Latency against throughput: {result.best.model.name}, batch {w.batch}, prompt "
                 f"{w.prompt_tokens}, output {w.output_tokens} tokens", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False, fontsize=9)
    return ax


def _log_axes(ax: Any, x: bool = False, y: bool = False, set_scale: bool = True) -> None:
    """Log scale with plain numbers (2, 5, 10, 20 ...) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 100 else f"{v:g}")
    for on, axis, scale, lim in ((x, ax.xaxis, ax.set_xscale, ax.get_xlim), (y, ax.yaxis, ax.set_yscale, ax.get_ylim)):
        if not on:
            continue
        if set_scale:
            scale("log")
        lo, hi = lim()
        decades = math.log10(hi / lo) if lo > 0 and hi > lo else 3.0
        subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0) if decades < 1.2 else (1.0, 2.0, 5.0) if decades < 3.5 else (1.0,)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(NullFormatter())


def _log_norm(values: pd.Series) -> Any:
    from matplotlib.colors import LogNorm, Normalize

    v = values[np.isfinite(values) & (values > 0)]
    if len(v) and v.max() > 3 * v.min():
        return LogNorm(vmin=float(v.min()), vmax=float(v.max()))
    return Normalize()


def _thousands() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: f"{v:,.0f}")


# --------------------------------------------------------------------------- comparisons (planner.compare)

def plot_gpu_comparison(df: pd.DataFrame, ax: Any = None) -> Any:
    """Best plan per GPU type (from `compare.compare_gpus`): throughput against $ per million tokens, one
    labelled point per GPU type and cluster size; GPU types on which the model does not fit are listed."""
    ax = _axes(ax, (10, 5.5))
    ok = df[df["feasible"]]
    training = "mfu" in df
    x = ok["usd_per_mtok"].to_numpy(dtype=float)
    y = ok["tokens_per_s"].to_numpy(dtype=float)
    colours = {g: f"C{i}" for i, g in enumerate(dict.fromkeys(df["gpu"]))}
    span_x = float(x.max() - x.min()) if len(x) else 1.0
    span_y = float(y.max()) if len(y) else 1.0
    placed: list[tuple[float, float]] = []
    for i in np.argsort(-y):  # top to bottom; nudge a label down when it would sit on the previous one
        r = ok.iloc[i]
        ax.scatter([x[i]], [y[i]], s=90, color=colours[r["gpu"]], edgecolor="black", linewidth=0.5, zorder=3)
        dy = 4
        for px, py in placed:
            if abs(px - x[i]) < 0.25 * max(span_x, 1e-12) and abs(py - y[i]) < 0.06 * span_y:
                dy -= 22
        placed.append((x[i], y[i]))
        ax.annotate(f"{_short_gpu(r['gpu'])} x{int(r['num_gpus'])}: {r['layout']}", (x[i], y[i]),
                    textcoords="offset points", xytext=(8, dy), fontsize=8, va="bottom" if dy > 0 else "top")
    if len(ok):
        front = ok[pareto_mask(-x, y)].sort_values("usd_per_mtok")
        if len(front) > 1:
            ax.plot(front["usd_per_mtok"], front["tokens_per_s"], color="black", linewidth=1, linestyle=":",
                    label="Pareto front (cheapest for its throughput)")
            ax.legend(loc="upper right", fontsize=9, frameon=False)
        ax.set_xlim(0, x.max() * 1.35)
        ax.set_ylim(0, y.max() * 1.2)
    missing = df[~df["feasible"]]
    if len(missing):
        ax.text(0.99, 0.02, "does not fit: " + ", ".join(f"{_short_gpu(g)} x{int(n)}" for g, n in
                                                      zip(missing["gpu"], missing["num_gpus"])),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=9, color="#A00000")
    ax.set_xlabel(r"\$ per million " + ("training tokens" if training else "generated tokens"))
    ax.set_ylabel(("training" if training else "generation") + " throughput (tokens/s)")
    ax.yaxis.set_major_formatter(_thousands())
    ax.set_title("The same model across GPU types: best plan on each", fontsize=11)
    ax.grid(alpha=0.3)
    return ax


def plot_pure_strategies(df: pd.DataFrame, ax: Any = None) -> Any:
    """The pure strategies beside the planner's mix (from `compare.pure_strategies`): memory per GPU against
    capacity, communication time, and throughput. `ax`: three axes side by side (made when None)."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(1, 3, figsize=(14, 0.55 * len(df) + 2.2), layout="constrained", sharey=True)
    axes = list(np.ravel(ax))
    if len(axes) != 3:
        raise PlannerOptionError(f"plot_pure_strategies draws into three axes, got {len(axes)}")
    labels = [f"{r['name']}: {r['layout']}" for _, r in df.iterrows()]
    y = np.arange(len(df))[::-1]
    fits = df["fits"].to_numpy(dtype=bool)
    colours = np.where(df["name"].to_numpy() == "planner", CHOSEN_COLOUR, "#4C72B0")
    hatches = ["" if f else "//" for f in fits]

    def bars(a: Any, values: np.ndarray, xlabel: str, fmt: Any, log: bool = False) -> None:
        values = np.nan_to_num(values.astype(float))
        if log:
            a.set_xscale("log")
        b = a.barh(y, values, color=colours, height=0.7, edgecolor="black", linewidth=0.4)
        for patch, h, f in zip(b, hatches, fits):
            patch.set_hatch(h)
            if not f:
                patch.set_alpha(0.45)
        top = values.max() if len(values) else 1.0
        for yi, v, f in zip(y, values, fits):
            a.text(v * 1.05 if log else v + top * 0.01, yi, fmt(v) + ("" if f else "  (does not fit)"), va="center",
                   fontsize=8)
        if log:
            a.set_xlim(values[values > 0].min() / 3, top * 12)
        else:
            a.set_xlim(0, top * 1.55 if top > 0 else 1)
        a.set_xlabel(xlabel + (", log scale" if log else ""))
        a.grid(axis="x", alpha=0.3)

    mem = df["memory_gb"].to_numpy(dtype=float)
    wide = np.nanmax(mem) > 8 * np.nanmin(np.where(mem > 0, mem, np.nan))
    bars(axes[0], mem, "memory on the fullest GPU (GB)", lambda v: f"{v:,.1f} GB", log=bool(wide))
    axes[0].vlines(df["capacity_gb"], y - 0.42, y + 0.42, colors="black", linestyles="--", linewidth=1.5,
                   label="usable memory")
    lo, hi = axes[0].get_xlim()
    axes[0].set_xlim(lo, max(hi, float(df["capacity_gb"].max()) * 1.2))
    axes[0].legend(loc="lower right", fontsize=8, frameon=False)
    unit, scale = _time_unit(float(np.nanmax(df["comm_s"].to_numpy(dtype=float))) or 1.0)
    bars(axes[1], df["comm_s"].to_numpy() * scale, f"communication time per {'step' if 'mfu' in df else 'batch'} "
         f"({unit})", lambda v: f"{_fmt(v)} {unit}")
    bars(axes[2], df["tokens_per_s"].to_numpy(), "throughput (tokens/s)", lambda v: f"{v:,.0f}")
    axes[2].xaxis.set_major_formatter(_thousands())
    axes[0].set_yticks(y, labels, fontsize=9)
    axes[0].set_ylim(-0.6, len(df) - 0.4)
    axes[0].set_ylabel("strategy")
    axes[0].figure.suptitle("Pure strategies against the planner's mix (hatched: does not fit in memory)",
                            fontsize=11)
    return ax


def plot_latency_throughput(df: pd.DataFrame, ax: Any = None, latency: str = "tpot_s") -> Any:
    """Serving trade-off from `compare.inference_sweep`: one line per (GPU, layout) over the batch sizes,
    latency (`tpot_s`, `ttft_s` or `time_s`) against throughput; points labelled with their batch."""
    names = {"tpot_s": "time per output token", "ttft_s": "time to first token", "time_s": "request latency"}
    if latency not in names:
        raise PlannerOptionError(f"latency must be one of {', '.join(names)}, got {latency!r}")
    ax = _axes(ax, (11, 6))
    ok = df[df["fits"]]
    unit, scale = _time_unit(float(ok[latency].median())) if len(ok) else ("ms", 1e3)
    styles = ["-", "--", ":", "-."]
    gpus = list(dict.fromkeys(ok["gpu"]))
    layouts_seen = list(dict.fromkeys(ok["layout"]))
    for (gpu, layout), part in ok.groupby(["gpu", "layout"], sort=False):
        part = part.sort_values("batch")
        ax.plot(part["tokens_per_s"], part[latency] * scale, marker="o", markersize=4,
                linestyle=styles[gpus.index(gpu) % 4], color=f"C{layouts_seen.index(layout) % 10}",
                label=f"{_short_gpu(gpu)}: {layout}")
        for end in {0, len(part) - 1}:
            r = part.iloc[end]
            ax.annotate(f"b={int(r['batch'])}", (r["tokens_per_s"], r[latency] * scale), fontsize=7,
                        textcoords="offset points", xytext=(4, -3 if end == 0 else 2))
    _log_axes(ax, x=True, y=True)
    ax.set_xlabel("throughput (generated tokens/s, whole batch; log scale)")
    ax.set_ylabel(f"{names[latency]} ({unit}, log scale)")
    span = f" (batch {int(ok['batch'].min())} to {int(ok['batch'].max())})" if len(ok) else ""
    ax.set_title(f"Latency against throughput across layouts and batch sizes{span}", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    _legend_outside(ax)
    return ax


def plot_predicted_vs_measured(measured: Sequence[float], predicted: Sequence[float],
                               labels: Sequence[str] | None = None, ax: Any = None, what: str = "time",
                               unit: str = "s", band: float = 0.25) -> Any:
    """Predicted against measured on log axes, with the y = x line and a +-`band` corridor."""
    meas = np.asarray(measured, dtype=float)
    pred = np.asarray(predicted, dtype=float)
    ok = np.isfinite(meas) & np.isfinite(pred) & (meas > 0) & (pred > 0)
    ax = _axes(ax, (6.5, 6))
    ax.scatter(meas[ok], pred[ok], s=28, color="#4C72B0", edgecolor="black", linewidth=0.4, zorder=3)
    lo = min(meas[ok].min(), pred[ok].min()) / 1.3
    hi = max(meas[ok].max(), pred[ok].max()) * 1.3
    line = np.array([lo, hi])
    ax.plot(line, line, color="black", linewidth=1, label="predicted = measured")
    ax.fill_between(line, line * (1 - band), line * (1 + band), color="#DDDDDD", alpha=0.6,
                    label=f"within {band:.0%}")
    if labels is not None:
        for lab, x, yv, k in zip(labels, meas, pred, ok):
            if k and lab:
                ax.annotate(lab, (x, yv), fontsize=7, textcoords="offset points", xytext=(4, 2))
    _log_axes(ax, x=True, y=True)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(f"measured {what} ({unit})")
    ax.set_ylabel(f"predicted {what} ({unit})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    return ax
