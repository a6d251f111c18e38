"""`plan()`: enumerate every valid strategy, price them, prune by memory and constraints, rank.

Training: for each mesh layout and each (micro-batch, recompute, sequence
parallel, virtual stages) choice, the cost model fixes per-layer costs and the
time-optimal split of layers into stages once (`build_stage_batch`), then prices
every ZeRO stage and schedule over it with numpy (`assemble`). The layer-class
costs of the whole search are priced once up front (`prime_class_costs`), and
all strategies of one pipeline depth go through one batch, whatever their
virtual stages. The time-optimal split is exact whenever it fits memory;
candidates that do not fit but could beat the best are re-priced with the
memory-aware split (AMP's DP with memory limits), in order of their time, until
none can win. The best is finally priced again alone (`estimate_training`, what
`costmodel.estimate` runs), so the plan carries the same numbers the cost model
gives for that strategy alone.

Inference: every (GPU count, layout, micro-batch) is priced by `estimate`.
"""
from __future__ import annotations

import functools
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
from costmodel.training import (SCHEDULE_CODES, Bases, CostKey, LayoutInfo, all_splits, assemble, breakdown_arrays,
                                breakdown_at, build_stage_batch, estimate_training, layout_info, memory_aware_splits,
                                memory_split_problems, model_flops_per_step, peak_flops, prime_class_costs,
                                stage_class_costs, take_pairs, take_rows)
from costmodel.workload import Inference, Training
from hardware_profiles.topology import Cluster

from .errors import NoFeasiblePlanError, PlannerOptionError
from .plan import Plan
from .space import SearchSpace, layouts, micro_batches

TRAINING_OBJECTIVES = ("throughput", "cost")
INFERENCE_OBJECTIVES = ("latency", "ttft", "tpot", "throughput", "cost")
# columns of training candidates kept for the search's own use: bucket, index in it, mesh layout, cost key
_INTERNAL_COLUMNS = ("_bid", "_g", "_layout", "_cost_key")


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
    placement text of each layout. Within a bucket: by layout, then micro-batch, recompute, sequence parallel."""
    rows: dict[tuple[int, int], list[np.ndarray]] = {}  # (layout, dp, cost key) per base, a block per layout
    entries = len(model.layers)
    seen: set = set()
    infos: list = []
    placements: list[str] = []
    keys: list[CostKey] = []
    first_key: dict[tuple, int] = {}  # (tp, ep, ep_mode, micro-batch) -> its first cost key; the rest follow
    homogeneous = cluster.is_homogeneous
    for lay in layouts(model, cluster, workload, space):
        mesh = Strategy(tp=lay.tp, pp=lay.pp, dp=lay.dp, ep=lay.ep, ep_mode=lay.ep_mode, placement=lay.placement)
        if lay.placement is not None or not homogeneous:
            # node orders that put the same devices and links under every stage price the same: keep one
            sig = (lay.tp, lay.pp, lay.dp, lay.ep, lay.ep_mode, resolve_layout(cluster, mesh, workload.dtype))
            if sig in seen:
                continue
            seen.add(sig)
        li = len(infos)
        infos.append(layout_info(cluster, mesh, workload, ctx))
        placements.append("" if lay.placement is None else ",".join(map(str, lay.placement)))
        per_replica = workload.global_batch // lay.dp
        mbs = micro_batches(per_replica, space)
        sps = space.sequence_parallel if lay.tp > 1 else (False,)
        variants = [(sp, rec) for rec in space.recompute for sp in sps]
        if not mbs or not variants:
            continue
        starts = []
        for mb in mbs:
            k0 = first_key.get((lay.tp, lay.ep, lay.ep_mode, mb))
            if k0 is None:
                k0 = first_key[(lay.tp, lay.ep, lay.ep_mode, mb)] = len(keys)
                keys.extend(CostKey(lay.tp, lay.ep, lay.ep_mode, sp, rec, mb) for sp, rec in variants)
            starts.append(k0)
        key = np.array(starts)[:, None] + np.arange(len(variants))  # (micro-batches, variants)
        _add_rows(rows, (lay.pp, 1), li, lay.dp, key)
        if lay.pp > 1 and "interleaved" in space.schedules:
            interleavable = (per_replica // np.array(mbs)) % lay.pp == 0  # micro-batches a multiple of pp
            if interleavable.any():
                for v in space.virtual_stages:
                    if v > 1 and lay.pp * v <= entries:
                        _add_rows(rows, (lay.pp, v), li, lay.dp, key[interleavable])
    all_infos, all_keys = tuple(infos), tuple(keys)
    out = {}
    for (pp, v), blocks in rows.items():
        a = np.concatenate(blocks)
        out[(pp, v)] = Bases(pp=pp, v=np.full(len(a), v), dp=a[:, 1], layout=a[:, 0], infos=all_infos, key=a[:, 2],
                             keys=all_keys)
    return out, placements


def _add_rows(rows: dict[tuple[int, int], list[np.ndarray]], bucket: tuple[int, int], layout: int, dp: int,
              key: np.ndarray) -> None:
    """Append base strategies (layout, dp, each cost key in `key`) to a bucket."""
    block = np.empty((key.size, 3), dtype=np.int64)
    block[:, 0] = layout
    block[:, 1] = dp
    block[:, 2] = key.ravel()
    rows.setdefault(bucket, []).append(block)


@dataclass(frozen=True)
class _SearchTables:
    """What the candidates' `_layout` and `_cost_key` columns index, and the FLOP counts behind MFU."""

    infos: tuple[LayoutInfo, ...]
    keys: tuple[CostKey, ...]
    model_flops: float
    peak_flops: float


def _training_frame(model: ModelSpec, cluster: Cluster, workload: Training, space: SearchSpace, ctx: CostContext,
                    usable: float) -> tuple[dict[str, np.ndarray], _SearchTables | None]:
    """Every training candidate, priced in bulk: one row per (base strategy, ZeRO stage, schedule); columns.

    Groups whose optimal split needs the general DP are first priced with an even split; the DP then runs
    only for groups whose pipeline lower bound beats the best time found."""
    info = {"mflops": model_flops_per_step(model, workload), "peak": peak_flops(cluster, workload.dtype),
            "usable": usable}
    groups, placements = _training_groups(model, cluster, workload, space, ctx)
    info["placements"] = np.array(placements, dtype=object)
    buckets = list(groups.values())
    prime_class_costs(model, workload, ctx, buckets)
    if not buckets:
        return {}, None
    tables = _SearchTables(infos=buckets[0].infos, keys=buckets[0].keys, model_flops=info["mflops"],
                           peak_flops=info["peak"])
    cols = _concat_columns(_price_buckets(model, cluster, workload, space, ctx, buckets, "even", info))
    fits = cols["fits"]
    best = cols["time_s"][fits].min() if fits.any() else np.inf
    need = ~cols["exact_split"] & (cols["pipe_lb_s"] < best)
    if need.any():
        drop = np.zeros(len(fits), dtype=bool)
        redo = []
        for bid in np.unique(cols["_bid"][need]):
            in_bucket = cols["_bid"] == bid
            gs = np.unique(cols["_g"][need & in_bucket])
            drop |= in_bucket & np.isin(cols["_g"], gs)
            redo.append(buckets[int(bid)].take(gs))
        redone = _price_buckets(model, cluster, workload, space, ctx, redo, "optimal", info)
        cols = _concat_columns([{k: v[~drop] for k, v in cols.items()}, *redone])
    return cols, tables


def _concat_columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def _price_buckets(model: ModelSpec, cluster: Cluster, workload: Training, space: SearchSpace, ctx: CostContext,
                   buckets: list[Bases], split: str, info: dict) -> list[dict[str, np.ndarray]]:
    """Columns of the candidates of each bucket (base strategies of one pp and virtual-stage count), in order.

    Buckets of the same pp are priced together, so the numpy work runs once per pipeline depth; only the split
    of layers into stages is found per bucket (it depends on the number of chunks). A bucket whose splits are
    few enough to try them all (`all_splits`) is priced on its own."""
    units: dict[tuple[int, bool], list[int]] = {}
    for i, b in enumerate(buckets):
        alone = bool((b.v == 1).all()) and all_splits(len(model.layers), b.pp) is not None
        units.setdefault((b.pp, alone), []).append(i)
    parts: list[dict[str, np.ndarray]] = [{}] * len(buckets)
    for members in units.values():
        merged = Bases.concat([buckets[i] for i in members])
        sizes = np.array([len(buckets[i]) for i in members])
        bucket_of = np.repeat(np.array(members), sizes)
        local = np.arange(len(merged)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        cols = _price_unit(model, cluster, workload, space, ctx, merged, split, info, bucket_of, local)
        ends = np.searchsorted(cols["_bid"], members, side="right")  # rows run bucket by bucket
        for i, start, end in zip(members, np.concatenate([[0], ends[:-1]]), ends):
            parts[i] = {k: col[start:end] for k, col in cols.items()}
    return parts


def _variants(space: SearchSpace, pp: int, v: np.ndarray) -> list[tuple[int, str]]:
    """(ZeRO stage, schedule) pairs to price for strategies of pipeline depth pp and virtual stages v: each
    schedule that applies to some of them, ZeRO-major."""
    if pp == 1:
        scheds = ["1f1b"]
    else:
        scheds = ([x for x in space.schedules if x != "interleaved"] or ["1f1b"]) if (v == 1).any() else []
        if (v > 1).any():
            scheds.append("interleaved")
    return [(z, x) for z in space.zero for x in scheds]


def _price_unit(model: ModelSpec, cluster: Cluster, workload: Training, space: SearchSpace, ctx: CostContext,
                bases: Bases, split: str, info: dict, bucket_of: np.ndarray, local: np.ndarray
                ) -> dict[str, np.ndarray]:
    """Columns of the candidates of base strategies sharing pp: every base strategy x ZeRO x its schedules,
    by strategy then (ZeRO, schedule). `bucket_of` and `local`: each strategy's bucket and index in it."""
    seq = workload.seq_len or model.seq_len
    pp = bases.pp
    combos = _variants(space, pp, bases.v)
    zero = np.array([z for z, _ in combos])
    sched = np.array([SCHEDULE_CODES[x] for _, x in combos])
    splits = all_splits(len(model.layers), pp) if (bases.v == 1).all() else None
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
        sel = None
    interleaved = sched == SCHEDULE_CODES["interleaved"]
    valid = (((bases.dp[:, None] > 1) | (zero[None, :] == 0)) & ((bases.v[:, None] > 1) == interleaved[None, :]))
    gi, vi = np.nonzero(valid)
    xg = gi if sel is None else sel[gi, vi]  # row of the (possibly expanded) batch that prices each candidate
    mem = a.stage_mem_at(xg, vi)  # (n, p)
    caps = take_rows(batch.caps, xg)
    fullest = np.argmax(mem, axis=1)
    rows = np.arange(len(gi))
    t = take_pairs(a.time_s, xg, vi)
    key = bases.key[gi]
    key_cols = bases.key_columns
    room = caps * info["usable"]
    cols: dict[str, Any] = {
        "tp": key_cols["tp"][key], "pp": pp, "dp": bases.dp[gi], "ep": key_cols["ep"][key],
        "ep_mode": key_cols["ep_mode"][key], "micro_batch": key_cols["micro_batch"][key],
        "schedule": np.array([x for _, x in combos], dtype=object)[vi], "virtual_stages": bases.v[gi],
        "recompute": key_cols["recompute"][key], "sequence_parallel": key_cols["sequence_parallel"][key],
        "zero": zero[vi],
        "placement": info["placements"][bases.layout[gi]],
        "num_gpus": cluster.num_gpus, "time_s": t, "tokens_per_s": workload.global_batch * seq / t,
        "memory_gb": take_pairs(mem, rows, fullest) / 1e9, "capacity_gb": take_pairs(caps, rows, fullest) / 1e9,
        "fits": (mem <= room).all(axis=1),
        "shortfall_gb": np.maximum((mem - room).max(axis=1), 0) / 1e9,
        "stages": _cut_texts(batch)[xg], "exact_split": batch.exact[xg], "pipe_lb_s": batch.pipe_lower_bound_s[xg],
        "mfu": info["mflops"] / (t * info["peak"]) if info["peak"] else 0.0,
        "_bid": bucket_of[gi], "_g": local[gi], "_layout": bases.layout[gi], "_cost_key": key,
    }
    cols.update(breakdown_at(batch, a, xg, vi))
    cols["memory_lb_gb"] = take_pairs(_memory_lower_bound(batch, a), xg, vi) / 1e9
    n = len(gi)
    return {k: np.full(n, v) if np.ndim(v) == 0 else np.asarray(v) for k, v in cols.items()}


def _cut_texts(batch) -> np.ndarray:
    """(G,) object array: the cut points of each one-chunk-per-stage group as text ("0,21,42,63,82"), "" for
    interleaved ones (whose chunks the strategy does not record)."""
    texts = np.full(batch.G, "", dtype=object)
    one = np.flatnonzero(batch.v == 1)
    if len(one):
        memo: dict[tuple[int, ...], str] = {}  # groups share few distinct splits
        texts[one] = [memo.get(c) or memo.setdefault(c, ",".join(map(str, c)))
                      for c in map(tuple, batch.cuts[one, :batch.pp + 1].tolist())]
    return texts


def _memory_lower_bound(batch, a) -> np.ndarray:
    """(G, V) bytes that the fullest GPU needs under ANY split of the layers into stages.

    With stage j holding static state s_j and activations a_j kept for f_j micro-batches, the fullest stage
    needs at least the average of s_j + f_j a_j weighted by 1/f_j: (S / f_max + A) / sum_j(1 / f_j), plus
    the fixed reserve, where S and A are the model's totals."""
    zi, si = a.zero_of, a.schedule_of
    static = np.take(a.static_by_zero.sum(axis=2), zi, axis=1)
    flight = a.flight_by_schedule
    act_total = batch.act_mb.sum(axis=1)[:, None]
    h = np.take((1.0 / flight).sum(axis=2), si, axis=1)
    reserved = np.take(a.reserved_by_zero[:, :, 0], zi, axis=1)
    return (static / np.take(flight.max(axis=2), si, axis=1) + act_total) / h + reserved


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
        cols, tables = _training_frame(model, cluster, workload, space, ctx, 1.0 - constraints.memory_headroom)
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
        _refine_memory(cols, model, cluster, workload, ctx, usable, tables)
    cols["objective"] = np.asarray(_objective_column(cols, kind, objective, workload))
    fits = cols["fits"].astype(bool)
    reason = np.full(len(fits), "", dtype=object)
    if not fits.all():
        reason[~fits] = (_formatted(cols["memory_gb"][~fits], "memory: needs {:.1f} GB per GPU, ") +
                         _formatted(cols["capacity_gb"][~fits] * usable, "{:.1f} GB usable"))
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
    order = _ranking(cols)
    pruned = cols["pruned"][order]
    out = {"rank": np.where(pruned, 0, np.arange(1, len(order) + 1))}
    out.update((k, v[order]) for k, v in cols.items() if k not in _INTERNAL_COLUMNS)
    key = cols["_key"][order] if "_key" in cols else None
    out.pop("_key", None)
    df = pd.DataFrame(_typed_text(out) if kind == "training" else out)

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


# object columns of training candidates, every value a str
_TEXT_COLUMNS = ("ep_mode", "schedule", "recompute", "placement", "stages", "reason")


def _typed_text(out: dict[str, np.ndarray]) -> dict[str, Any]:
    """`out` with its text columns already of the dtype pandas infers for text (its string dtype where text is
    not plain object): a DataFrame built from object arrays first scans every value for dates and numbers."""
    text = _text_dtype()
    if text == object:
        return out
    return {k: pd.array(v, dtype=text, copy=False) if k in _TEXT_COLUMNS else v for k, v in out.items()}


@functools.cache
def _text_dtype() -> Any:
    return pd.Series(np.array(["text"], dtype=object)).dtype


def _ranking(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """Row order: unpruned first, then by objective, GPU count and time; stable, NaN last (the order pandas'
    sort_values(kind="stable") gives). A key that cannot break a tie left by the keys before it (constant,
    or the objective itself) is left out of the sort."""
    keys = [cols["pruned"], cols["objective"]]
    if not (cols["num_gpus"] == cols["num_gpus"][0]).all():
        keys.append(cols["num_gpus"])
    if not np.array_equal(cols["time_s"], cols["objective"], equal_nan=True):
        keys.append(cols["time_s"])
    return np.lexsort(keys[::-1])


def _refine_memory(cols: dict[str, np.ndarray], model: ModelSpec, cluster: Cluster, workload: Training,
                   ctx: CostContext, usable: float, tables: _SearchTables, chunk: int = 16) -> None:
    """Re-price, with the memory-aware split, non-fitting candidates that could still beat the best.

    A memory-aware split never lowers the step time, so candidates at or above the best fitting time are
    skipped, and so are those whose memory lower bound (any split) exceeds the GPU, one-stage and
    interleaved candidates (no contiguous split to change). An exact reachability test rules out the rest that
    no split can fit before any DP runs; the survivors are priced together, a chunk at a time, by pipeline
    depth, with their layer-class costs from the search's table."""
    fits, time_s = cols["fits"], cols["time_s"]
    best = time_s[fits].min() if fits.any() else math.inf
    todo = np.flatnonzero(~fits & (cols["pp"] > 1) & (cols["virtual_stages"] == 1) &
                          (cols["memory_lb_gb"] <= cols["capacity_gb"] * usable))
    if not len(todo):
        return
    todo = todo[np.argsort(time_s[todo], kind="quicksort")]  # the order pandas' sort_values gives
    seq = workload.seq_len or model.seq_len
    updates: dict[int, list] = {}
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        part = part[time_s[part] < best]
        if not len(part):
            break
        for pp, idx in _by_value(cols["pp"], part):
            aware = _memory_aware_splits(cols, idx, model, workload, ctx, usable, tables)
            if not aware:
                continue
            idx = np.array([i for i, _ in aware])
            bases = _bases_at(cols, idx, int(pp), tables, stages=np.array([cuts for _, cuts in aware]))
            batch = build_stage_batch(model, cluster, workload, ctx, bases)
            a = assemble(batch, workload, ctx, cols["zero"][idx][:, None],
                         np.array([SCHEDULE_CODES[x] for x in cols["schedule"][idx]])[:, None])
            bd = breakdown_arrays(batch, a)
            for g, (i, cuts) in enumerate(aware):
                mem = a.stage_mem[g, 0]
                short = float((mem - batch.caps[g] * usable).max())
                t = float(a.time_s[g, 0])
                full = int(np.argmax(mem))
                updates[i] = [t, float(mem[full]) / 1e9, float(batch.caps[g, full]) / 1e9, short <= 0,
                              max(short, 0.0) / 1e9, ",".join(map(str, cuts)), workload.global_batch * seq / t,
                              tables.model_flops / (t * tables.peak_flops) if tables.peak_flops else 0.0,
                              *(float(bd[k][g, 0]) for k in ADDITIVE_TERMS)]
                if short <= 0:
                    best = min(best, t)
    names = ["time_s", "memory_gb", "capacity_gb", "fits", "shortfall_gb", "stages", "tokens_per_s", "mfu",
             *ADDITIVE_TERMS]
    for i, values in updates.items():
        for c, x in zip(names, values):
            cols[c][i] = x


def _by_value(column: np.ndarray, rows: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """`rows` grouped by their value in `column`, groups in order of first appearance, rows in order."""
    values = column[rows]
    out: dict[Any, list[int]] = {}
    for r, x in zip(rows.tolist(), values.tolist()):
        out.setdefault(x, []).append(r)
    return [(x, np.array(r)) for x, r in out.items()]


def _bases_at(cols: Mapping[str, np.ndarray], idx: np.ndarray, pp: int, tables: _SearchTables,
              stages: np.ndarray | None = None) -> Bases:
    """The base strategies (one chunk per stage) of candidates `idx`, all of pipeline depth pp."""
    return Bases(pp=pp, v=np.ones(len(idx), dtype=np.int64), dp=cols["dp"][idx], layout=cols["_layout"][idx],
                 infos=tables.infos, key=cols["_cost_key"][idx], keys=tables.keys, stages=stages)


def _memory_aware_splits(cols: Mapping[str, np.ndarray], idx: np.ndarray, model: ModelSpec, workload: Training,
                         ctx: CostContext, usable: float, tables: _SearchTables
                         ) -> list[tuple[int, tuple[int, ...]]]:
    """(candidate, cut points) of the candidates `idx` (one pipeline depth) that some split fits in memory."""
    bases = _bases_at(cols, idx, int(cols["pp"][idx[0]]), tables)
    C, _ = stage_class_costs(model, workload, ctx, bases)
    problems = memory_split_problems(model, workload, ctx, [tables.infos[i] for i in bases.layout.tolist()], C,
                                     [tables.keys[k] for k in bases.key.tolist()], bases.dp.tolist(),
                                     cols["zero"][idx].tolist(), cols["schedule"][idx].tolist(), usable)
    cuts = memory_aware_splits(model, workload, problems)
    return [(i, c) for i, c in zip(idx.tolist(), cuts) if c is not None]


def _formatted(values: np.ndarray, fmt: str) -> np.ndarray:
    """`fmt.format(v)` of each value as an object array, for a `fmt` holding one "{:.1f}".

    Each distinct number of tenths is written once, from integers, where rounding to tenths is clear of a tie
    (there it agrees with float formatting); the other values are formatted as floats."""
    prefix, suffix = fmt.split("{:.1f}")
    v = np.asarray(values, dtype=float)
    scaled = v * 10.0
    with np.errstate(invalid="ignore"):
        clear = (v >= 0) & ~np.signbit(v) & (scaled < 1e9) & (np.abs(scaled - np.floor(scaled) - 0.5) > 1e-6)
    out = np.empty(len(v), dtype=object)
    tenths, inv = np.unique(np.floor(scaled[clear] + 0.5).astype(np.int64), return_inverse=True)
    out[clear] = np.array([f"{prefix}{k // 10}.{k % 10}{suffix}" for k in tenths.tolist()], dtype=object)[inv.ravel()]
    out[~clear] = [fmt.format(x) for x in v[~clear].tolist()]
    return out


def _finalize(row: pd.Series, model: ModelSpec, cluster: Cluster, workload: Any, ctx: CostContext, cache: dict,
              objective: str, key: Any = None) -> Plan:
    if isinstance(workload, Inference):
        sub, e = cache[int(key)]
        return Plan.from_estimate(model, sub, workload, e, objective=objective)
    strat = _strategy_of(row)
    if row["stages"]:
        strat = strat.with_(stages=tuple(int(x) for x in row["stages"].split(",")))
    e = estimate_training(model, cluster, strat, workload, ctx)  # what `estimate` runs, with the search's memo
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
