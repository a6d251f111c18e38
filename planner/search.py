"""`plan()`: enumerate every valid strategy, price them, prune by memory and constraints, rank.

Training: for each mesh layout and each (micro-batch, recompute, sequence
parallel, virtual stages) choice, the cost model fixes per-layer costs and the
time-optimal split of layers into stages once (`build_stage_plan`), then prices
every ZeRO stage and schedule over it with numpy (`assemble`). The time-optimal
split is exact whenever it fits memory; candidates that do not fit but could
beat the best are re-priced with the memory-aware split (AMP's DP with memory
limits), in order of their time, until none can win. The best is finally priced
again by `costmodel.estimate`, so the plan carries the same numbers the cost
model gives for that strategy alone.

Inference: every (GPU count, layout, micro-batch) is priced by `estimate`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd

from costmodel.catalog import resolve_model
from costmodel.layout import resolve_layout
from costmodel.pricing import ADDITIVE_TERMS, CostContext, Estimate, estimate
from costmodel.model import ModelSpec
from costmodel.params import CostParams
from costmodel.strategy import Strategy
from costmodel.training import (SCHEDULE_CODES, Bases, CostKey, layout_info, all_splits, assemble,
                                breakdown_arrays, build_stage_batch, in_flight, memory_aware_cuts,
                                model_flops_per_step, peak_flops, prime_class_costs)
from costmodel.workload import Inference, Training
from hardware_profiles.topology import Cluster

from .errors import NoFeasiblePlanError, PlannerOptionError
from .plan import Plan
from .space import SearchSpace, layouts, micro_batches

TRAINING_OBJECTIVES = ("throughput", "cost")
INFERENCE_OBJECTIVES = ("latency", "ttft", "tpot", "throughput", "cost")


@dataclass(frozen=True)
class Constraints:
    """Limits a plan must meet. Times in seconds, prices in US dollars."""

    max_ttft_s: float | None = None
    max_tpot_s: float | None = None
    max_gpus: int | None = None
    max_usd_per_hour: float | None = None
    memory_headroom: float = 0.0  # fraction of usable GPU memory to leave free

    def __post_init__(self) -> None:
        if not 0.0 <= self.memory_headroom < 1.0:
            raise PlannerOptionError(f"memory_headroom must be in [0, 1), got {self.memory_headroom!r}")
        for name in ("max_ttft_s", "max_tpot_s", "max_usd_per_hour"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise PlannerOptionError(f"{name} must be positive, got {v!r}")
        if self.max_gpus is not None and self.max_gpus < 1:
            raise PlannerOptionError(f"max_gpus must be >= 1, got {self.max_gpus!r}")


def _row(strategy: Strategy, est_like: Mapping[str, Any]) -> dict[str, Any]:
    d = {
        "tp": strategy.tp, "pp": strategy.pp, "dp": strategy.dp, "ep": strategy.ep, "ep_mode": strategy.ep_mode,
        "micro_batch": strategy.micro_batch, "schedule": strategy.schedule,
        "virtual_stages": strategy.virtual_stages, "recompute": strategy.recompute,
        "sequence_parallel": strategy.sequence_parallel, "zero": strategy.zero,
        "placement": "" if strategy.placement is None else ",".join(map(str, strategy.placement)),
    }
    d.update(est_like)
    return d


def _strategy_of(row: Mapping[str, Any]) -> Strategy:
    placement = tuple(int(x) for x in row["placement"].split(",")) if row["placement"] else None
    return Strategy(tp=int(row["tp"]), pp=int(row["pp"]), dp=int(row["dp"]), ep=int(row["ep"]),
                    ep_mode=row["ep_mode"], micro_batch=int(row["micro_batch"]), schedule=row["schedule"],
                    virtual_stages=int(row["virtual_stages"]), recompute=row["recompute"],
                    sequence_parallel=bool(row["sequence_parallel"]), zero=int(row["zero"]), placement=placement)


def _est_columns(e: Estimate) -> dict[str, Any]:
    d: dict[str, Any] = {
        "num_gpus": e.num_gpus, "time_s": e.time_s, "tokens_per_s": e.tokens_per_s,
        "memory_gb": e.memory_per_gpu_bytes / 1e9, "capacity_gb": e.memory_capacity_bytes / 1e9, "fits": e.fits,
        "shortfall_gb": e.shortfall_bytes / 1e9,
        "stages": "" if e.strategy.stages is None else ",".join(map(str, e.strategy.stages)),
        "exact_split": True,
    }
    for k in ADDITIVE_TERMS:
        d[k] = e.breakdown.get(k, 0.0)
    if e.kind == "training":
        d["mfu"] = e.mfu
    else:
        d.update(ttft_s=e.ttft_s, tpot_s=e.tpot_s, cost_usd=e.cost_usd, energy_j=e.energy_j, max_batch=e.max_batch)
    return d


def _training_groups(model: ModelSpec, cluster: Cluster, workload: Training, space: SearchSpace, ctx: CostContext
                     ) -> tuple[dict[tuple[int, int], Bases], list[str]]:
    """Base strategies (ZeRO stage and schedule left open) as columns, bucketed by (pp, virtual stages), and the
    placement text of each layout."""
    rows: dict[tuple[int, int], list[tuple[int, int, int]]] = {}  # (layout, dp, cost key) per base
    entries = len(model.layers)
    seen: set = set()
    infos: list = []
    placements: list[str] = []
    keys: list[CostKey] = []
    key_at: dict[CostKey, int] = {}
    for lay in layouts(model, cluster, workload, space):
        mesh = Strategy(tp=lay.tp, pp=lay.pp, dp=lay.dp, ep=lay.ep, ep_mode=lay.ep_mode, placement=lay.placement)
        if lay.placement is not None or not cluster.is_homogeneous:
            # node orders that put the same devices and links under every stage price the same: keep one
            sig = (lay.tp, lay.pp, lay.dp, lay.ep, lay.ep_mode, resolve_layout(cluster, mesh, workload.dtype))
            if sig in seen:
                continue
            seen.add(sig)
        li = len(infos)
        infos.append(layout_info(cluster, mesh, workload, ctx))
        placements.append("" if lay.placement is None else ",".join(map(str, lay.placement)))
        per_replica = workload.global_batch // lay.dp
        for mb in micro_batches(per_replica, space):
            m = per_replica // mb
            vs = [1]
            if lay.pp > 1 and "interleaved" in space.schedules and m % lay.pp == 0:
                vs += [v for v in space.virtual_stages if lay.pp * v <= entries]
            for rec in space.recompute:
                for sp in (space.sequence_parallel if lay.tp > 1 else (False,)):
                    ck = CostKey(lay.tp, lay.ep, lay.ep_mode, sp, rec, mb)
                    ki = key_at.get(ck)
                    if ki is None:
                        ki = key_at[ck] = len(keys)
                        keys.append(ck)
                    for v in vs:
                        rows.setdefault((lay.pp, v), []).append((li, lay.dp, ki))
    all_infos, all_keys = tuple(infos), tuple(keys)
    out = {}
    for (pp, v), r in rows.items():
        a = np.array(r, dtype=np.int64)
        out[(pp, v)] = Bases(pp=pp, v=v, dp=a[:, 1], layout=a[:, 0], infos=all_infos, key=a[:, 2], keys=all_keys)
    return out, placements


def _training_frame(model: ModelSpec, cluster: Cluster, workload: Training, space: SearchSpace, ctx: CostContext,
                    cache: dict, usable: float) -> dict[str, np.ndarray]:
    """Every training candidate, priced in bulk: one row per (base strategy, ZeRO stage, schedule); columns.

    Groups whose optimal split needs the general DP are first priced with an even split; the DP then runs
    only for groups whose pipeline lower bound beats the best time found."""
    info = {"mflops": model_flops_per_step(model, workload), "peak": peak_flops(cluster, workload.dtype),
            "usable": usable}
    groups, info["placements"] = _training_groups(model, cluster, workload, space, ctx)
    prime_class_costs(model, workload, ctx, list(groups.values()))
    parts = [_price_bucket(model, cluster, workload, space, ctx, cache, bases, "even", info)
             for bases in groups.values()]
    if not parts:
        return {}
    cols = _concat_columns(parts)
    fits = cols["fits"]
    best = cols["time_s"][fits].min() if fits.any() else np.inf
    need = ~cols["exact_split"] & (cols["pipe_lb_s"] < best)
    if need.any():
        drop = np.zeros(len(fits), dtype=bool)
        redo = []
        for bid in np.unique(cols["_bid"][need]):
            batch = cache[int(bid)][0]
            gs = np.unique(cols["_g"][need & (cols["_bid"] == bid)])
            drop |= (cols["_bid"] == bid) & np.isin(cols["_g"], gs)
            redo.append(_price_bucket(model, cluster, workload, space, ctx, cache,
                                      batch.bases.take(gs), "optimal", info))
        cols = _concat_columns([{k: v[~drop] for k, v in cols.items()}, *redo])
    return cols


def _concat_columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def _price_bucket(model: ModelSpec, cluster: Cluster, workload: Training, space: SearchSpace, ctx: CostContext,
                  cache: dict, bases: Bases, split: str, info: dict) -> dict[str, np.ndarray]:
    """Columns of the candidates of one (pp, virtual stages) bucket: every base strategy x ZeRO x schedule."""
    seq = workload.seq_len or model.seq_len
    pp, v = bases.pp, bases.v
    if v > 1:
        scheds = ["interleaved"]
    elif pp > 1:
        scheds = [x for x in space.schedules if x != "interleaved"] or ["1f1b"]
    else:
        scheds = ["1f1b"]
    combos = [(z, x) for z in space.zero for x in scheds]
    zero = np.array([z for z, _ in combos])
    sched = np.array([SCHEDULE_CODES[x] for _, x in combos])
    splits = all_splits(len(model.layers), pp) if v == 1 else None
    G = len(bases)
    if splits is not None:  # small: every split, each (strategy, variant) keeps its best on the full step time
        S = len(splits)
        batch = build_stage_batch(model, cluster, workload, ctx, bases.take(np.repeat(np.arange(G), S)),
                                  cuts=np.tile(splits, (G, 1)))
        a = assemble(batch, workload, ctx, zero, sched)
        V = a.time_s.shape[1]
        t3 = a.time_s.reshape(G, S, V)
        fit3 = (a.stage_mem <= batch.caps[:, None, :] * info["usable"]).all(axis=2).reshape(G, S, V)
        choice = np.argmin(np.where(fit3, t3, t3 + 1e30), axis=1)  # (G, V)
        sel = np.arange(G)[:, None] * S + choice  # expanded group of each (strategy, variant)
    else:
        batch = build_stage_batch(model, cluster, workload, ctx, bases, split=split)
        a = assemble(batch, workload, ctx, zero, sched)
        V = a.time_s.shape[1]
        sel = np.repeat(np.arange(G)[:, None], V, axis=1)
    bid = len(cache)
    cache[bid] = (batch, a, combos)
    gi, vi = np.meshgrid(np.arange(G), np.arange(V), indexing="ij")
    gi, vi = gi.ravel(), vi.ravel()
    dp = bases.dp
    valid = (dp[gi] > 1) | (zero[vi] == 0)
    gi, vi = gi[valid], vi[valid]
    xg = sel[gi, vi]  # row of the (possibly expanded) batch that prices each candidate
    mem = a.stage_mem[xg, vi]  # (n, p)
    caps = batch.caps[xg]
    fullest = np.argmax(mem, axis=1)
    rows = np.arange(len(gi))
    t = a.time_s[xg, vi]

    def per_group(field: str) -> np.ndarray:
        return bases.key_column(field)[gi]

    placements = np.array(info["placements"], dtype=object)[bases.layout[gi]]
    if v == 1:
        stages = np.array([",".join(map(str, c)) for c in batch.cuts.tolist()], dtype=object)[xg]
    else:
        stages = np.full(len(xg), "", dtype=object)
    cols: dict[str, Any] = {
        "tp": per_group("tp"), "pp": pp, "dp": dp[gi], "ep": per_group("ep"),
        "ep_mode": per_group("ep_mode"), "micro_batch": per_group("micro_batch"),
        "schedule": np.array([x for _, x in combos], dtype=object)[vi], "virtual_stages": v,
        "recompute": per_group("recompute"), "sequence_parallel": per_group("sequence_parallel"),
        "zero": zero[vi],
        "placement": placements,
        "num_gpus": cluster.num_gpus, "time_s": t, "tokens_per_s": workload.global_batch * seq / t,
        "memory_gb": mem[rows, fullest] / 1e9, "capacity_gb": caps[rows, fullest] / 1e9,
        "fits": (mem <= caps * info["usable"]).all(axis=1),
        "shortfall_gb": np.maximum((mem - caps * info["usable"]).max(axis=1), 0) / 1e9,
        "stages": stages, "exact_split": batch.exact[xg], "pipe_lb_s": batch.pipe_lower_bound_s[xg],
        "mfu": info["mflops"] / (t * info["peak"]) if info["peak"] else 0.0,
        "_bid": bid, "_g": xg, "_v": vi,
    }
    for k, arr in breakdown_arrays(batch, a).items():
        cols[k] = arr[xg, vi]
    cols["memory_lb_gb"] = _memory_lower_bound(batch, a, sched)[xg, vi] / 1e9
    n = len(gi)
    return {k: np.full(n, v) if np.ndim(v) == 0 else np.asarray(v) for k, v in cols.items()}


def _memory_lower_bound(batch, a, sched: np.ndarray) -> np.ndarray:
    """(G, V) bytes that the fullest GPU needs under ANY split of the layers into stages.

    With stage j holding static state s_j and activations a_j kept for f_j micro-batches, the fullest stage
    needs at least the average of s_j + f_j a_j weighted by 1/f_j: (S / f_max + A) / sum_j(1 / f_j), plus
    the fixed reserve, where S and A are the model's totals."""
    static = (a.memory["weights"] + a.memory["gradients"] + a.memory["optimizer"]).sum(axis=2)
    flight = in_flight(sched, batch.pp, batch.m, np.full(batch.G, batch.v))
    act_total = batch.act_mb.sum(axis=1)[:, None]
    h = (1.0 / flight).sum(axis=2)
    return (static / flight.max(axis=2) + act_total) / h + a.memory["reserved"][:, :, 0]


def _sub_cluster(cluster: Cluster, n: int) -> Cluster:
    return cluster if n == cluster.num_gpus else cluster.first_gpus(n)


def _inference_rows(model: ModelSpec, cluster: Cluster, workload: Inference, space: SearchSpace, params: Any,
                    profiles: Any, constraints: Constraints) -> tuple[list[dict[str, Any]], dict]:
    n_all = cluster.num_gpus
    counts = space.gpu_counts or tuple(sorted({2 ** i for i in range(int(math.log2(n_all)) + 1)} | {n_all}))
    counts = tuple(c for c in counts if c <= n_all and (constraints.max_gpus is None or c <= constraints.max_gpus))
    if not counts:
        raise PlannerOptionError(f"no GPU count to try: max_gpus={constraints.max_gpus}, cluster has {n_all}")
    rows, ests = [], {}
    inf_space = SearchSpace(**{**space.__dict__, "zero": (0,), "recompute": ("none",), "schedules": ("1f1b",)})
    for n in counts:
        sub = _sub_cluster(cluster, n)
        for lay in layouts(model, sub, workload, inf_space, num_gpus=n):
            per_replica = workload.batch // lay.dp
            mbs = micro_batches(per_replica, space) if lay.pp > 1 else [per_replica]
            for mb in mbs:
                strat = Strategy(tp=lay.tp, pp=lay.pp, dp=lay.dp, ep=lay.ep, ep_mode=lay.ep_mode, micro_batch=mb,
                                 placement=lay.placement)
                e = estimate(model, sub, strat, workload, params=params, profiles=profiles)
                key = len(ests)
                ests[key] = (sub, e)
                d = _est_columns(e)
                d["fits"] = all(st.memory_bytes <= st.memory_capacity_bytes * (1 - constraints.memory_headroom)
                                for st in e.stages)
                d["_key"] = key
                rows.append(_row(e.strategy, d))
    return rows, ests


@dataclass
class PlanResult:
    """The chosen plan, the runner-up and every candidate considered (pruned ones with their reason)."""

    best: Plan
    candidates: pd.DataFrame
    runner_up: Plan | None
    objective: str
    search_time_s: float
    constraints: Constraints = field(default_factory=Constraints)
    cluster: Cluster | None = None
    params: CostParams | None = None  # the cost constants the search used
    profiles: Any = None  # the measured profiles it used

    def explain(self) -> str:
        from .report import explain

        return explain(self)

    def report(self, top: int = 10) -> str:
        from .report import text_report

        return text_report(self, top=top)

    def __repr__(self) -> str:
        return f"PlanResult(best={self.best.describe()!r}, candidates={len(self.candidates)})"

    def _repr_markdown_(self) -> str:
        return "```\n" + self.report() + "\n```"

    # plots live in planner.plots; exposed here so notebook cells stay short
    def plot_memory(self, ax: Any = None, top: int = 6) -> Any:
        from .plots import plot_memory

        return plot_memory(self, ax=ax, top=top)

    def plot_time(self, ax: Any = None, top: int = 6) -> Any:
        from .plots import plot_time

        return plot_time(self, ax=ax, top=top)

    def plot_pareto(self, ax: Any = None) -> Any:
        from .plots import plot_pareto

        return plot_pareto(self, ax=ax)

    def plot_timeline(self, ax: Any = None, micro_batches: int | None = None) -> Any:
        from .plots import plot_timeline

        return plot_timeline(self, ax=ax, micro_batches=micro_batches)


def _objective_column(df: Mapping[str, np.ndarray], kind: str, objective: str, workload: Any) -> np.ndarray:
    """The column the candidates are ranked by (lower is better), from the candidate columns."""
    if kind == "training":
        if objective == "cost":
            return df["time_s"] * df["usd_per_hour"] / 3600.0
        return df["time_s"]
    if objective == "latency":
        return df["time_s"]
    if objective == "ttft":
        return df["ttft_s"]
    if objective == "tpot":
        return df["tpot_s"]
    if objective == "throughput":
        return -df["tokens_per_s"]
    tokens = workload.batch * workload.output_tokens
    return df["cost_usd"].astype(float) / tokens * 1e6


def plan(model: ModelSpec | str, cluster: Cluster | str, workload: Training | Inference, *,
         objective: str | None = None, constraints: Constraints | None = None, space: SearchSpace | None = None,
         params: CostParams | None = None, profiles: Any = "auto", layer_times: Any = (),
         **constraint_kwargs: Any) -> PlanResult:
    """Search every valid strategy and return the best plan with all candidates.

    objective: training "throughput" (default) or "cost"; inference "latency" (whole batch, default),
    "ttft", "tpot", "throughput" or "cost" (US dollars per million generated tokens).
    Constraints may be given as a `Constraints` or as keywords (max_ttft_s=..., max_gpus=...,
    max_usd_per_hour=..., memory_headroom=0.1).
    """
    t0 = time.perf_counter()
    model = resolve_model(model)
    cluster = Cluster.parse(cluster)
    if not isinstance(workload, (Training, Inference)):
        raise PlannerOptionError(f"workload must be costmodel.Training or costmodel.Inference, got {workload!r}")
    kind = "training" if isinstance(workload, Training) else "inference"
    allowed = TRAINING_OBJECTIVES if kind == "training" else INFERENCE_OBJECTIVES
    objective = objective or ("throughput" if kind == "training" else "latency")
    if objective not in allowed:
        raise PlannerOptionError(f"objective {objective!r} is not one of {', '.join(allowed)} for {kind}")
    if constraints is None:
        try:
            constraints = Constraints(**constraint_kwargs)
        except TypeError as exc:
            raise PlannerOptionError(f"unknown constraint: {exc}") from None
    elif constraint_kwargs:
        raise PlannerOptionError("give constraints either as Constraints(...) or as keywords, not both")
    space = space or SearchSpace()
    ctx = CostContext.make(cluster, workload.dtype, params, profiles, layer_times)

    cache: dict = {}
    if kind == "training":
        if constraints.max_gpus is not None and constraints.max_gpus < cluster.num_gpus:
            raise PlannerOptionError("training plans use the whole cluster; describe a smaller cluster instead "
                                     "of max_gpus")
        cols = _training_frame(model, cluster, workload, space, ctx, cache, 1.0 - constraints.memory_headroom)
    else:
        rows, cache = _inference_rows(model, cluster, workload, space, ctx.params, ctx.profiles, constraints)
        frame = pd.DataFrame(rows)
        cols = {c: frame[c].to_numpy() for c in frame}
    if not cols or not len(cols["time_s"]):
        raise NoFeasiblePlanError(
            f"no valid strategy exists for {model.name} on {cluster.describe()}: check that the GPU count can "
            f"be split into tp x pp x dp with tp dividing the heads ({model.num_heads}) and KV heads "
            f"({model.num_kv_heads}) and dp dividing the batch")
    price = sum(g.price_usd_per_hour or math.nan for g in cluster.gpus) / cluster.num_gpus
    cols["usd_per_hour"] = cols["num_gpus"] * price
    usable = 1.0 - constraints.memory_headroom

    if kind == "training":
        _refine_memory(cols, model, cluster, workload, ctx, usable)
    cols["objective"] = np.asarray(_objective_column(cols, kind, objective, workload))
    fits = cols["fits"].astype(bool)
    reason = np.full(len(fits), "", dtype=object)
    if not fits.all():
        reason[~fits] = ("memory: needs " + _formatted(cols["memory_gb"][~fits], "{:.1f}") + " GB per GPU, " +
                         _formatted(cols["capacity_gb"][~fits] * usable, "{:.1f}") + " GB usable")
    ok = fits.copy()
    for col, lim, label in (("ttft_s", constraints.max_ttft_s, "TTFT"), ("tpot_s", constraints.max_tpot_s, "TPOT")):
        if lim is not None and col in cols:
            bad = ok & (cols[col] > lim)
            reason[bad] = [f"{label} {v * 1e3:.1f} ms > limit {lim * 1e3:.1f} ms" for v in cols[col][bad]]
            ok &= ~bad
    if constraints.max_usd_per_hour is not None:
        bad = ok & (cols["usd_per_hour"] > constraints.max_usd_per_hour)
        reason[bad] = [f"price ${v:.2f}/h > limit ${constraints.max_usd_per_hour:.2f}/h"
                       for v in cols["usd_per_hour"][bad]]
        ok &= ~bad
    cols["reason"] = reason
    cols["pruned"] = ~ok
    if not ok.any():
        raise _no_plan_error(pd.DataFrame(cols), model, cluster, constraints)
    # stable, NaN last: the order pandas' sort_values(kind="stable") gives
    order = np.lexsort((cols["time_s"], cols["num_gpus"], cols["objective"], cols["pruned"]))
    pruned = cols["pruned"][order]
    out = {"rank": np.where(pruned, 0, np.arange(1, len(order) + 1))}
    out.update((k, v[order]) for k, v in cols.items() if k not in ("_bid", "_g", "_v"))
    key = cols["_key"][order] if "_key" in cols else None
    out.pop("_key", None)
    df = pd.DataFrame(out)

    best_row = df.iloc[0]
    best = _finalize(best_row, model, cluster, workload, ctx, cache, objective, None if key is None else key[0])
    mesh = ["tp", "pp", "dp", "ep"]
    mesh_cols = np.stack([out[c].astype(np.int64) for c in mesh], axis=1)
    others = np.flatnonzero(~pruned & (mesh_cols != mesh_cols[0]).any(axis=1))
    runner = None
    if len(others):
        runner = _finalize(df.iloc[others[0]], model, cluster, workload, ctx, cache, objective,
                           None if key is None else key[others[0]])
    return PlanResult(best=best, candidates=df, runner_up=runner, objective=objective,
                      search_time_s=time.perf_counter() - t0, constraints=constraints, cluster=cluster,
                      params=ctx.params, profiles=ctx.profiles)


def _refine_memory(cols: dict[str, np.ndarray], model: ModelSpec, cluster: Cluster, workload: Training,
                   ctx: CostContext, usable: float, chunk: int = 16) -> None:
    """Re-price, with the memory-aware split, non-fitting candidates that could still beat the best.

    A memory-aware split never lowers the step time, so candidates at or above the best fitting time are
    skipped, and so are those whose memory lower bound (any split) exceeds the GPU, one-stage and
    interleaved candidates (no contiguous split to change). An exact greedy test rules out the rest that no
    split can fit before any DP runs; the survivors are priced together, a chunk at a time."""
    fits, time_s = cols["fits"], cols["time_s"]
    best = time_s[fits].min() if fits.any() else math.inf
    todo = np.flatnonzero(~fits & (cols["pp"] > 1) & (cols["virtual_stages"] == 1) &
                          (cols["memory_lb_gb"] <= cols["capacity_gb"] * usable))
    if not len(todo):
        return
    todo = todo[np.argsort(time_s[todo], kind="quicksort")]  # the order pandas' sort_values gives
    seq = workload.seq_len or model.seq_len
    mflops, peak = model_flops_per_step(model, workload), peak_flops(cluster, workload.dtype)
    updates: dict[int, list] = {}
    for start in range(0, len(todo), chunk):
        part = [int(i) for i in todo[start:start + chunk] if time_s[i] < best]
        if not part:
            break
        aware = []
        for i in part:
            strat = _strategy_at(cols, i)
            cuts = memory_aware_cuts(model, cluster, workload, ctx, strat, usable)
            if cuts is not None:
                aware.append((i, strat.with_(stages=tuple(cuts))))
        for pp, group in _by_pp(aware).items():
            strats = [st for _, st in group]
            batch = build_stage_batch(model, cluster, workload, ctx, strats)
            a = assemble(batch, workload, ctx, np.array([[st.zero] for st in strats]),
                         np.array([[SCHEDULE_CODES[st.schedule]] for st in strats]))
            bd = breakdown_arrays(batch, a)
            for g, (i, st) in enumerate(group):
                mem = a.stage_mem[g, 0]
                short = float((mem - batch.caps[g] * usable).max())
                t = float(a.time_s[g, 0])
                full = int(np.argmax(mem))
                updates[i] = [t, float(mem[full]) / 1e9, float(batch.caps[g, full]) / 1e9, short <= 0,
                              max(short, 0.0) / 1e9, ",".join(map(str, st.stages)), workload.global_batch * seq / t,
                              mflops / (t * peak) if peak else 0.0, *(float(bd[k][g, 0]) for k in ADDITIVE_TERMS)]
                if short <= 0:
                    best = min(best, t)
    names = ["time_s", "memory_gb", "capacity_gb", "fits", "shortfall_gb", "stages", "tokens_per_s", "mfu",
             *ADDITIVE_TERMS]
    for i, values in updates.items():
        for c, x in zip(names, values):
            cols[c][i] = x


def _strategy_at(cols: Mapping[str, np.ndarray], i: int) -> Strategy:
    return _strategy_of({k: cols[k][i] for k in ("tp", "pp", "dp", "ep", "ep_mode", "micro_batch", "schedule",
                                                 "virtual_stages", "recompute", "sequence_parallel", "zero",
                                                 "placement")})


def _by_pp(items: list) -> dict[int, list]:
    out: dict[int, list] = {}
    for i, st in items:
        out.setdefault(st.pp, []).append((i, st))
    return out


def _formatted(values: np.ndarray, fmt: str) -> np.ndarray:
    """`fmt` of each value, as an object array; each distinct value is formatted once."""
    uniq, inv = np.unique(values, return_inverse=True)
    return np.array([fmt.format(x) for x in uniq.tolist()], dtype=object)[inv.ravel()]


def _finalize(row: pd.Series, model: ModelSpec, cluster: Cluster, workload: Any, ctx: CostContext, cache: dict,
              objective: str, key: Any = None) -> Plan:
    if isinstance(workload, Inference):
        sub, e = cache[int(key)]
        return Plan.from_estimate(model, sub, workload, e, objective=objective)
    strat = _strategy_of(row)
    if row["stages"]:
        strat = strat.with_(stages=tuple(int(x) for x in row["stages"].split(",")))
    e = estimate(model, cluster, strat, workload, params=ctx.params, profiles=ctx.profiles,
                 layer_times=ctx.layer_times)
    return Plan.from_estimate(model, cluster, workload, e, objective=objective)


def _no_plan_error(df: pd.DataFrame, model: ModelSpec, cluster: Cluster, constraints: Constraints
                   ) -> NoFeasiblePlanError:
    fit = df[df["fits"]]
    if len(fit):
        return NoFeasiblePlanError(
            f"{len(fit)} strategies fit in memory but none meets the constraints ({constraints}); "
            f"closest: {df.loc[fit.index[0], 'reason']}")
    i = df["memory_gb"].idxmin()
    r = df.loc[i]
    strat = _strategy_of(r)
    gb = r["memory_gb"]
    cap = r["capacity_gb"]
    if "ttft_s" in df:  # inference
        state = (f"The weights alone are {model.num_params * 2 / 1e9:.0f} GB in 16-bit over at most "
                 f"{cluster.num_gpus} GPUs; use more GPUs, GPUs with more memory, or shorter prompts / a smaller "
                 f"batch for the KV cache.")
    else:
        state = (f"Model state alone (weights, gradients and Adam in mixed precision, 16 bytes per parameter) is "
                 f"{model.num_params * 16 / 1e9:.0f} GB over {cluster.num_gpus} GPUs; use more GPUs, GPUs with more "
                 f"memory, or a shorter sequence / smaller batch.")
    return NoFeasiblePlanError(
        f"{model.name} does not fit on {cluster.describe()}: the leanest strategy ({strat.describe()}) still "
        f"needs {gb:.1f} GB per GPU and the GPUs have {cap:.1f} GB usable. {state}", min_memory_bytes=gb * 1e9,
        capacity_bytes=cap * 1e9)
