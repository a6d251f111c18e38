"""Training step time and memory.

Step time = pipeline time + exposed data-parallel sync + optimizer step + fixed overhead.
Pipeline time with stage times t_j per micro-batch (compute, TP and EP collectives,
stage-to-stage sends), m micro-batches and v virtual stages per device:
    T = m * max_j t_j + (sum_j t_j - max_j t_j) / v
which is (m - 1) * max + sum for GPipe and 1F1B (AMP's form) and m*t + (p-1)*t/v
for uniform interleaved stages (Narayanan et al. 2021).

Everything is computed for a batch of G strategies at once (same pipeline depth
and virtual stages), held as columns (`Bases`: a mesh-layout index and a cost-key
index per strategy, no `Strategy` object per candidate), so the planner prices
thousands of candidates with a few numpy operations and `estimate()` is the same
code with G = 1:
1. per-layer-class costs on each stage's devices (`class_cost_table`),
2. the split of layers into stages: closed form for uniform models, exact DP
   otherwise, memory-aware DP when asked (`build_stage_batch`),
3. every ZeRO stage and schedule over each split (`assemble`).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from functools import cached_property
from typing import NamedTuple, Sequence

import numpy as np

from hardware_profiles.topology import Cluster

from .bottleneck import least_feasible_threshold
from .comm import all_gather_s, all_reduce_s, p2p_s, reduce_scatter_s, with_network_efficiency
from .pricing import CostContext, Estimate, StageEstimate
from .layercost import Parallel, layer_train_cost, token_count
from .layertimes import find as find_layer_times
from .layers import attention_flops_per_token, model_flops_per_token, param_split
from .layout import StageLinks, resolve_layout
from .model import ModelSpec
from .partition import even_partition, partition, split_fits
from .strategy import Strategy
from .workload import Training

_WEIGHT_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
SCHEDULE_CODES = {"1f1b": 0, "gpipe": 1, "interleaved": 2}
# per-class cost fields, per micro-batch: forward, backward, recompute, TP comm, EP comm (s); activations (bytes)
FWD, BWD, REC, TPC, EPC, ACT = range(6)


@dataclass(frozen=True)
class StaticBytes:
    """Bytes per parameter of model state, before ZeRO sharding."""

    weights: float
    gradients: float
    optimizer: float


def static_bytes(workload: Training) -> StaticBytes:
    w = _WEIGHT_BYTES[workload.dtype]
    mixed = w < 4
    if workload.optimizer in ("adam", "adamw"):
        opt = 12.0 if mixed else 8.0  # fp32 master + two moments, or the two moments alone
    else:
        opt = 8.0 if mixed else 4.0  # momentum (+ fp32 master)
    return StaticBytes(weights=float(w), gradients=float(w), optimizer=opt)


def _zero_div(zero: np.ndarray, ways: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How many ways weights, gradients and optimizer state are sharded under each ZeRO stage."""
    return (np.where(zero >= 3, ways, 1.0), np.where(zero >= 2, ways, 1.0), np.where(zero >= 1, ways, 1.0))


def expert_ways(s: Strategy) -> int:
    """Data-parallel replication of expert weights (Megatron EP carves ep out of dp)."""
    return max(s.dp // s.ep, 1) if s.ep_mode == "dp" else s.dp


def class_cost_table(model: ModelSpec, ctx: CostContext, workload: Training,
                     requests: Sequence[tuple[StageLinks, Strategy]]) -> np.ndarray:
    """Costs of every layer class for each (stage links, strategy) request: array (n, K, 6).

    Requests that differ only in micro-batch share one vectorised call per layer class."""
    prm = ctx.params
    seq = workload.seq_len or model.seq_len
    classes, _ = model.layer_classes
    out = np.zeros((len(requests), len(classes), 6))
    memo = ctx.memo.setdefault(("class_costs", id(model), seq, workload.dtype), {})
    groups: dict[tuple, list[int]] = {}
    for i, (lk, s) in enumerate(requests):
        hit = memo.get((lk.device_key, s.tp, s.ep, s.ep_mode, s.sequence_parallel, s.recompute, s.micro_batch))
        if hit is not None:
            out[i] = hit
            continue
        key = (lk.device_key, s.tp, s.ep, s.ep_mode, s.sequence_parallel, s.recompute)
        groups.setdefault(key, []).append(i)
    for key, idx in groups.items():
        lk, s = requests[idx[0]]
        dev = ctx.device(lk.gpu, workload.dtype)
        lf = prm.collective_latency_factor
        par = Parallel(tp=s.tp, ep=s.ep, ep_mode=s.ep_mode, sp=s.sequence_parallel,
                       tp_bw_gbps=lk.tp_bw_gbps * prm.collective_efficiency, tp_latency_s=lk.tp_latency_s * lf,
                       ep_bw_gbps=lk.ep_bw_gbps * prm.collective_efficiency, ep_latency_s=lk.ep_latency_s * lf)
        mbs = np.array([requests[i][1].micro_batch for i in idx], dtype=float)
        uniq, inv = np.unique(mbs, return_inverse=True)
        for k, lay in enumerate(classes):
            c = layer_train_cost(lay, dev, par, prm, micro_batch=uniq, seq_len=seq, recompute=s.recompute)
            cols = [c.fwd_s, c.bwd_s, c.recompute_s, c.tp_comm_s, c.ep_comm_s, c.activation_bytes]
            for f, col in enumerate(cols):
                out[idx, k, f] = np.broadcast_to(np.asarray(col, dtype=float), uniq.shape)[inv]
        measured = find_layer_times(ctx.layer_times, model.name, lk.gpu.name, s.tp)
        if measured is not None:  # measured compute replaces the formula's
            per_sample = measured.per_class(model.layer_classes[1], len(classes))
            fwd = (mbs[:, None] if measured.scales_with_batch else np.ones_like(mbs)[:, None]) * per_sample[None, :]
            out[idx, :, FWD] = fwd
            out[idx, :, BWD] = measured.backward_factor * fwd
            is_block = np.array([lay.kind == "transformer" for lay in classes])
            out[idx, :, REC] = fwd * is_block if s.recompute == "full" else 0.0
            if measured.includes_tp_comm:
                out[idx, :, TPC] = 0.0
        if prm.host_layer_s > 0:
            _host_floor(out, idx, classes, prm.host_layer_s * (4 / 3 if s.recompute == "full" else 1.0))
        for i in idx:
            s_i = requests[i][1]
            memo[key + (s_i.micro_batch,)] = out[i].copy()
    return out


def _host_floor(out: np.ndarray, idx: list[int], classes: Sequence, host_s: float) -> None:
    """Stretch each transformer block's compute so forward + backward (+ replay) + its collectives take at
    least `host_s`: the GPU waits for the host in between its kernels (full recompute replays the forward,
    about a third more host work). The wait is booked as compute, spread in proportion."""
    for k, lay in enumerate(classes):
        if lay.kind != "transformer":
            continue
        total = out[idx, k, FWD] + out[idx, k, BWD] + out[idx, k, REC] + out[idx, k, TPC] + out[idx, k, EPC]
        compute = out[idx, k, FWD] + out[idx, k, BWD] + out[idx, k, REC]
        scale = np.where((total < host_s) & (compute > 0), 1 + (host_s - total) / np.maximum(compute, 1e-30), 1.0)
        for f in (FWD, BWD, REC):
            out[idx, k, f] *= scale


def class_params(model: ModelSpec, s: Strategy, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer class: dense and expert parameters one GPU holds."""
    classes, _ = model.layer_classes
    dense, expert = [], []
    for lay in classes:
        sp = param_split(lay, seq_len)
        dense.append(sp.replicated + sp.tp_sharded / s.tp)
        expert.append(sp.expert / (s.ep * s.moe_tp))
    return np.array(dense), np.array(expert)


def in_flight(schedule: np.ndarray, p: int, m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Micro-batches whose activations each stage holds at its peak, in whole-stage units: (G, V, p).

    `schedule` is (V,) shared by all groups or (G, V)."""
    sch = np.asarray(schedule)
    sch = sch[None, :, None] if sch.ndim == 1 else sch[:, :, None]
    m = np.asarray(m, dtype=float)[:, None, None]
    v = np.asarray(v, dtype=float)[:, None, None]
    j = np.arange(p)[None, None, :]
    one_f = np.minimum(p - j, m)
    inter = np.minimum(m * v, 2 * (p - j - 1) + (v - 1) * p + 1) / v
    return np.where(sch == SCHEDULE_CODES["gpipe"], m, np.where(sch == SCHEDULE_CODES["interleaved"], inter, one_f))


class CostKey(NamedTuple):
    """What a layer class's cost depends on besides the stage's devices (a `Strategy` has the same fields)."""

    tp: int
    ep: int
    ep_mode: str
    sequence_parallel: bool
    recompute: str
    micro_batch: int

    @property
    def moe_tp(self) -> int:
        return self.tp // self.ep if self.ep_mode == "tp" else self.tp


@dataclass(frozen=True, eq=False)
class Bases:
    """G strategies sharing pp and virtual stages, as columns (ZeRO stage and schedule left to `assemble`):
    what `build_stage_batch` prices. `layout` indexes `infos` (one per mesh layout), `key` indexes `keys`;
    a search builds these directly instead of one `Strategy` per candidate."""

    pp: int
    v: int
    dp: np.ndarray  # (G,) int
    layout: np.ndarray  # (G,) int
    infos: tuple[LayoutInfo, ...]
    key: np.ndarray  # (G,) int
    keys: tuple[CostKey, ...]
    stages: np.ndarray | None = None  # (G, p*v + 1) given cut points, rows of -1 where none is given
    strategies: tuple[Strategy, ...] | None = None  # where built from Strategy objects

    def __len__(self) -> int:
        return len(self.dp)

    def take(self, idx: np.ndarray) -> "Bases":
        idx = np.asarray(idx, dtype=np.int64)
        return replace(self, dp=self.dp[idx], layout=self.layout[idx], key=self.key[idx],
                       stages=None if self.stages is None else self.stages[idx],
                       strategies=None if self.strategies is None else tuple(self.strategies[i] for i in idx))

    def key_column(self, field: str) -> np.ndarray:
        """(G,) one field of each strategy's cost key."""
        return _key_columns(self.keys)[field][self.key]

    @cached_property
    def expert_ways(self) -> np.ndarray:
        """(G,) data-parallel replication of expert weights (see `expert_ways`)."""
        ep = self.key_column("ep")
        return np.where(self.key_column("ep_mode") == "dp", np.maximum(self.dp // ep, 1), self.dp)


_KEY_COLUMNS: dict[int, tuple[tuple, dict]] = {}


def _key_columns(keys: tuple[CostKey, ...]) -> dict[str, np.ndarray]:
    hit = _KEY_COLUMNS.get(id(keys))
    if hit is not None and hit[0] is keys:
        return hit[1]
    cols = {f: np.array([getattr(k, f) for k in keys], dtype=object if f in ("ep_mode", "recompute") else None)
            for f in CostKey._fields}
    if len(_KEY_COLUMNS) > 256:
        _KEY_COLUMNS.clear()
    _KEY_COLUMNS[id(keys)] = (keys, cols)
    return cols


def bases_of(cluster: Cluster, workload: Training, ctx: CostContext, strategies: Sequence[Strategy]) -> Bases:
    """`Bases` of Strategy objects that share pp and virtual stages."""
    strategies = tuple(strategies)
    G = len(strategies)
    infos: list = []
    keys: list[CostKey] = []
    info_at: dict[int, int] = {}
    key_at: dict[CostKey, int] = {}
    layout = np.empty(G, dtype=np.int64)
    key = np.empty(G, dtype=np.int64)
    for g, s in enumerate(strategies):
        info = layout_info(cluster, s, workload, ctx)
        li = info_at.get(id(info))
        if li is None:
            li = info_at[id(info)] = len(infos)
            infos.append(info)
        layout[g] = li
        ck = CostKey(s.tp, s.ep, s.ep_mode, s.sequence_parallel, s.recompute, s.micro_batch)
        ki = key_at.get(ck)
        if ki is None:
            ki = key_at[ck] = len(keys)
            keys.append(ck)
        key[g] = ki
    stages = None
    if any(s.stages is not None for s in strategies):
        width = max(len(s.stages) for s in strategies if s.stages is not None)
        stages = np.full((G, width), -1, dtype=np.int64)
        for g, s in enumerate(strategies):
            if s.stages is not None:
                stages[g] = s.stages
    s0 = strategies[0]
    return Bases(pp=s0.pp, v=s0.virtual_stages, dp=np.array([s.dp for s in strategies], dtype=np.int64),
                 layout=layout, infos=tuple(infos), key=key, keys=tuple(keys), stages=stages, strategies=strategies)


@dataclass(frozen=True)
class StageBatch:
    """G strategies (same pp and virtual stages) with their layers split into stages.

    Arrays are (G, p) per stage and per micro-batch unless noted; `cuts` is (G, p*v + 1)."""

    bases: Bases
    cuts: np.ndarray
    m: np.ndarray  # (G,) micro-batches per step
    exact: np.ndarray  # (G,) whether the split is the time-optimal one (or given)
    pipe_lower_bound_s: np.ndarray  # (G,) no split can make the pipeline faster than this
    stage_t: np.ndarray
    compute_mb: np.ndarray
    bwd_mb: np.ndarray
    tp_mb: np.ndarray
    ep_mb: np.ndarray
    p2p_mb: np.ndarray
    rec_mb: np.ndarray
    dense_params: np.ndarray
    expert_params: np.ndarray
    act_mb: np.ndarray
    max_layer_params: np.ndarray  # (G,)
    tied_sync_s: np.ndarray  # (G,)
    dp_bw: np.ndarray
    dp_lat: np.ndarray
    mem_gbps: np.ndarray
    caps: np.ndarray

    @property
    def pp(self) -> int:
        return self.bases.pp

    @property
    def v(self) -> int:
        return self.bases.v

    @property
    def G(self) -> int:
        return len(self.bases)

    @property
    def strategies(self) -> tuple[Strategy, ...] | None:
        return self.bases.strategies

    def links_of(self, g: int) -> tuple[StageLinks, ...]:
        return self.bases.infos[int(self.bases.layout[g])].links


def _uniform_cuts(T: np.ndarray, extra: np.ndarray, num_blocks: int) -> np.ndarray:
    """Exact bottleneck split of [embed, N blocks, head] for G groups at once, from the least feasible stage time
    (`least_feasible_threshold`).

    T: (G, p, 3) stage-device time of (embedding, block, head); extra: (G, p) constant per-stage cost."""
    G, p, _ = T.shape
    N = num_blocks
    e, c, h = T[:, 0, 0], T[:, 0, 1], T[:, -1, 2]
    base = extra.copy()
    base[:, 0] += e
    base[:, -1] += h
    lo = np.ones(p)
    lo[0] = 0
    lo[-1] = 0 if p > 1 else N
    if p == 1:
        return np.tile(np.array([0, N + 2]), (G, 1))
    c_safe = np.maximum(c, 1e-300)[:, None]
    hi = least_feasible_threshold(base, c[:, None], lo, N)
    kmax = np.minimum(np.floor((hi[:, None] - base) / c_safe + 1e-9), N)
    k = np.zeros((G, p))
    left = np.full(G, float(N))
    for j in range(p):
        k[:, j] = np.minimum(kmax[:, j], left - lo[j + 1:].sum())
        left -= k[:, j]
    cuts = np.zeros((G, p + 1))
    cuts[:, 1:] = 1 + np.cumsum(k, axis=1)
    cuts[:, -1] += 1
    return cuts.astype(np.int64)


def _greedy_fill(t: np.ndarray, base: np.ndarray, c: np.ndarray, lo: np.ndarray, N: int, order: np.ndarray,
                 inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For thresholds t (G, n): the least-total assignment of N blocks with every stage <= t, filling the fastest
    stages first. Returns blocks per stage (G, n, p) and feasibility (G, n)."""
    kmax = np.floor((t[:, :, None] - base[:, None, :]) / np.maximum(c, 1e-300)[:, None, :] + 1e-9)
    kmax = np.clip(kmax, -1, N)
    feasible = (kmax >= lo).all(axis=2) & (kmax.sum(axis=2) >= N)
    room = np.take_along_axis(kmax - lo, np.broadcast_to(order[:, None, :], kmax.shape), axis=2)
    before = np.cumsum(room, axis=2) - room
    fill = np.clip(N - lo.sum() - before, 0, room)
    k = lo + np.take_along_axis(fill, np.broadcast_to(inv[:, None, :], fill.shape), axis=2)
    return k, feasible


def _uniform_cuts_mixed(T: np.ndarray, extra: np.ndarray, num_blocks: int, weight: np.ndarray,
                        per_stage_thresholds: int = 8, bottleneck_only: bool = False
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact split of [embed, N blocks, head] when stages run at different speeds, on A * max + sum.

    T: (G, p, 3) time of (embedding, block, head) on each stage's devices; extra: (G, p) constant per-stage
    cost; weight: (G,) A. For a bottleneck threshold t the least total puts each block on the fastest stage
    with room (exchange argument); the optimum's bottleneck is one of the values base_j + k c_j, and it lies in
    [t*, t* + (total(t*) - least total) / A] where t* is the least feasible bottleneck. That interval usually
    holds a few values per stage; groups where it holds more are solved over all values.

    Returns (cuts, exact, lower bound of A * max + sum). With `bottleneck_only`, stops at the least-total split
    under t* (exact where the interval is a single point) so a search can solve exactly only where it matters."""
    G, p, _ = T.shape
    N = num_blocks
    if p == 1:
        return np.tile(np.array([0, N + 2]), (G, 1)), np.ones(G, dtype=bool), np.zeros(G)
    c = T[:, :, 1]
    base = extra.copy()
    base[:, 0] += T[:, 0, 0]
    base[:, -1] += T[:, -1, 2]
    lo = np.ones(p)
    lo[0] = lo[-1] = 0
    order = np.argsort(c, axis=1)
    inv = np.argsort(order, axis=1)
    hi = least_feasible_threshold(base, c, lo, N)  # just above the least feasible bottleneck t*
    k_star, _ = _greedy_fill(hi[:, None], base, c, lo, N, order, inv)
    times = base + k_star[:, 0] * c
    t_star = times.max(axis=1)
    total = times.sum(axis=1)
    k_inf, _ = _greedy_fill(np.full((G, 1), np.inf), base, c, lo, N, order, inv)
    least = (base + k_inf[:, 0] * c).sum(axis=1)
    t_hi = t_star + (total - least) / np.maximum(weight, 1e-12)
    lower = weight * t_star + least
    if bottleneck_only:
        exact = (total - least) <= 1e-12 * np.maximum(total, 1e-30)
        return _cuts_from_blocks(k_star[:, 0]), exact, lower
    # candidate bottlenecks in [t*, t_hi]: the first few values base_j + k c_j above t* on each stage
    k0 = np.ceil((t_star[:, None] - base) / np.maximum(c, 1e-300) - 1e-9)
    steps = np.arange(per_stage_thresholds)
    cand = (base[:, :, None] + (k0[:, :, None] + steps) * c[:, :, None]).reshape(G, -1)
    cand = np.concatenate([t_star[:, None], cand], axis=1)
    beyond = (base + (k0 + per_stage_thresholds) * c <= t_hi[:, None] * (1 + 1e-12)).any(axis=1)
    inside = cand <= t_hi[:, None] * (1 + 1e-12)
    inside[:, 0] = True
    gi, ci = np.nonzero(inside)  # only the candidates inside the interval need a fill
    k, ok = _greedy_fill(cand[gi, ci][:, None], base[gi], c[gi], lo, N, order[gi], inv[gi])
    tm = base[gi] + k[:, 0] * c[gi]
    obj = np.full(cand.shape, np.inf)
    obj[gi, ci] = np.where(ok[:, 0], weight[gi] * tm.max(axis=1) + tm.sum(axis=1), np.inf)
    best = np.argmin(obj, axis=1)
    rows = np.arange(G)
    kb = k[np.searchsorted(gi, rows) + np.cumsum(inside, axis=1)[rows, best] - 1, 0]
    kb = np.where((weight <= 0)[:, None], k_inf[:, 0], kb)  # A = 0: only the total counts
    wide = np.flatnonzero(beyond & (weight > 0))
    for start in range(0, len(wide), max(1, 2_000_000 // max(p * p * (N + 1), 1))):  # every value, in chunks
        gs = wide[start:start + max(1, 2_000_000 // max(p * p * (N + 1), 1))]
        all_t = (base[gs][:, :, None] + np.arange(N + 1)[None, None, :] * c[gs][:, :, None]).reshape(len(gs), -1)
        kg, okg = _greedy_fill(all_t, base[gs], c[gs], lo, N, order[gs], inv[gs])
        tg = base[gs][:, None, :] + kg * c[gs][:, None, :]
        og = np.where(okg, weight[gs][:, None] * tg.max(axis=2) + tg.sum(axis=2), np.inf)
        kb[gs] = kg[np.arange(len(gs)), np.argmin(og, axis=1)]
    return _cuts_from_blocks(kb), np.ones(G, dtype=bool), lower


def _cuts_from_blocks(k: np.ndarray) -> np.ndarray:
    """Cut points of [embed, blocks..., head] from blocks per stage (G, p)."""
    cuts = np.zeros((k.shape[0], k.shape[1] + 1), dtype=np.int64)
    cuts[:, 1:] = 1 + np.cumsum(k, axis=1)
    cuts[:, -1] += 1
    return cuts


def _boundary_bytes(model: ModelSpec, workload: Training, micro_batch: np.ndarray, tp: np.ndarray,
                    ctx: CostContext | None = None) -> np.ndarray:
    """(G, L + 1): bytes each TP rank sends at a cut before layer i (one micro-batch of activations)."""
    seq = workload.seq_len or model.seq_len
    b = _WEIGHT_BYTES[workload.dtype]
    memo = {} if ctx is None else ctx.memo
    hfac = memo.get(("boundary", id(model), seq))
    if hfac is None:
        hfac = memo[("boundary", id(model), seq)] = np.array(
            [0.0] + [token_count(lay, seq) * lay.hidden for lay in model.layers])
    scale = np.asarray(micro_batch, dtype=np.int64) * b / np.asarray(tp, dtype=np.int64)
    return scale[:, None] * hfac[None, :]


@dataclass(frozen=True)
class LayoutInfo:
    """What one mesh layout implies for every stage, computed once per search."""

    links: tuple[StageLinks, ...]
    dev_ids: np.ndarray  # (p,) index of each stage's device key in the context's registry
    same_stage: bool
    nb_bw: np.ndarray  # (p,) stage-to-stage bandwidth (already times collective efficiency)
    nb_lat: np.ndarray
    dp_bw: np.ndarray
    dp_lat: np.ndarray
    mem_gbps: np.ndarray
    caps: np.ndarray


def layout_info(cluster: Cluster, s: Strategy, workload: Training, ctx: CostContext) -> LayoutInfo:
    key = ("layout", id(cluster), s.tp, s.pp, s.dp, s.ep, s.ep_mode, s.placement, workload.dtype)
    info = ctx.memo.get(key)
    if info is not None:
        return info
    prm = ctx.params
    links = resolve_layout(with_network_efficiency(cluster, prm), s, workload.dtype)  # node types' achieved network
    registry = ctx.memo.setdefault("device_keys", {})
    dev_links = ctx.memo.setdefault("device_links", {})
    dev_ids = np.array([registry.setdefault(lk.device_key, len(registry)) for lk in links])
    for d, lk in zip(dev_ids, links):
        dev_links.setdefault(int(d), lk)
    info = ctx.memo[key] = LayoutInfo(
        links=links, dev_ids=dev_ids, same_stage=bool((dev_ids == dev_ids[0]).all()),
        nb_bw=np.array([lk.next_bw_gbps for lk in links]) * prm.collective_efficiency,
        nb_lat=np.array([lk.next_latency_s for lk in links]) * prm.collective_latency_factor,
        dp_bw=np.array([lk.dp_bw_gbps for lk in links]) * prm.collective_efficiency,
        dp_lat=np.array([lk.dp_latency_s for lk in links]) * prm.collective_latency_factor,
        mem_gbps=np.array([ctx.device(lk.gpu, workload.dtype).memory_gbps for lk in links]),
        caps=np.array([lk.memory_bytes * prm.memory_usable_fraction for lk in links]))
    return info


def _class_params_cached(model: ModelSpec, s: Strategy | CostKey, seq: int, ctx: CostContext
                         ) -> tuple[np.ndarray, ...]:
    key = ("class_params", id(model), s.tp, s.ep, s.moe_tp, seq)
    out = ctx.memo.get(key)
    if out is None:
        d, e = class_params(model, s, seq)
        out = ctx.memo[key] = (d, e, float(np.max(d + e)))
    return out


def _requests(bases: Bases, dev: np.ndarray, ctx: CostContext) -> tuple[np.ndarray, list]:
    """Codes of the distinct (stage devices, cost key) pairs of `dev` (G, p), and one cost request for each."""
    n = len(bases.keys)
    code = dev * n + bases.key[:, None]
    uniq, inv = np.unique(code.ravel(), return_inverse=True)
    dev_links = ctx.memo["device_links"]
    requests = [(dev_links[int(u) // n], bases.keys[int(u) % n]) for u in uniq]
    return inv.reshape(code.shape), requests


def prime_class_costs(model: ModelSpec, workload: Training, ctx: CostContext,
                      groups: Sequence[Bases]) -> None:
    """Price the layer classes of every strategy of a search in one `class_cost_table` call, so the later
    per-bucket calls find them in the memo: one vectorised call per layer class and (devices, tp, ep, SP,
    recompute) covers every micro-batch size of the whole search. All `groups` share one `keys` tuple."""
    requests: dict[tuple, tuple] = {}
    dev_links = ctx.memo.get("device_links", {})
    for bases in groups:
        used, inv = np.unique(bases.layout, return_inverse=True)
        dev = np.array([bases.infos[u].dev_ids for u in used])[inv]
        n = len(bases.keys)
        for u in np.unique((dev * n + bases.key[:, None]).ravel()):
            d, k = divmod(int(u), n)
            requests.setdefault((d, k), (dev_links[d], bases.keys[k]))
    table = class_cost_table(model, ctx, workload, list(requests.values()))
    if not groups or len({id(b.keys) for b in groups}) != 1:
        return
    # lookup tables for `build_stage_batch`: request row by (device id, cost key), class parameters by key
    keys = groups[0].keys
    lut = np.full((len(dev_links), len(keys)), -1, dtype=np.int64)
    for r, (d, k) in enumerate(requests):
        lut[d, k] = r
    seq = workload.seq_len or model.seq_len
    cp = [_class_params_cached(model, k, seq, ctx) for k in keys]
    ctx.memo[("primed", id(model), seq, workload.dtype)] = _Primed(
        keys=keys, lut=lut, table=table, dense=np.array([c[0] for c in cp]), expert=np.array([c[1] for c in cp]),
        max_layer=np.array([c[2] for c in cp]))


@dataclass(frozen=True, eq=False)
class _Primed:
    """Every cost request of a search, priced once (`prime_class_costs`)."""

    keys: tuple[CostKey, ...]
    lut: np.ndarray  # (devices, keys) row of `table`, -1 where not priced
    table: np.ndarray  # (rows, K, 6)
    dense: np.ndarray  # (keys, K) class parameters per cost key
    expert: np.ndarray
    max_layer: np.ndarray


def build_stage_batch(model: ModelSpec, cluster: Cluster, workload: Training, ctx: CostContext,
                      strategies: Sequence[Strategy] | Bases, *, cuts: np.ndarray | None = None,
                      split: str = "optimal") -> StageBatch:
    """Costs of G strategies sharing pp and virtual stages, with the time-optimal split (or the given `cuts`,
    or each strategy's own `stages`).

    split="even": where the optimal split needs the general DP (non-uniform models, stages on different
    devices), use an even split instead and mark the group inexact; `pipe_lower_bound_s` then bounds what
    the optimal split could reach, so a search can run the DP only where it might matter."""
    bases = strategies if isinstance(strategies, Bases) else bases_of(cluster, workload, ctx, strategies)
    prm = ctx.params
    seq = workload.seq_len or model.seq_len
    G = len(bases)
    p, v = bases.pp, bases.v
    L = len(model.layers)
    classes, cls_index = model.layer_classes
    cls_index = np.asarray(cls_index)
    K = len(classes)
    used, linv = np.unique(bases.layout, return_inverse=True)
    infos = [bases.infos[u] for u in used]

    def per_layout(attr: str) -> np.ndarray:
        return np.array([getattr(info, attr) for info in infos])[linv]

    dev = per_layout("dev_ids")
    primed = ctx.memo.get(("primed", id(model), seq, workload.dtype))
    if primed is not None and primed.keys is bases.keys and dev.max() < len(primed.lut):
        ridx = primed.lut[dev, bases.key[:, None]]
        if (ridx < 0).any():
            primed = None
    else:
        primed = None
    if primed is not None:
        C = primed.table[ridx]
    else:
        ridx, requests = _requests(bases, dev, ctx)
        C = class_cost_table(model, ctx, workload, requests)[ridx]  # (G, p, K, 6)
    t_cls = C[..., FWD] + C[..., BWD] + C[..., REC] + C[..., TPC] + C[..., EPC]  # (G, p, K)
    same_stage = per_layout("same_stage")
    tp = bases.key_column("tp")
    micro_batch = bases.key_column("micro_batch")
    m = workload.global_batch // bases.dp // micro_batch

    bnd = _boundary_bytes(model, workload, micro_batch, tp, ctx)
    nb_bw = per_layout("nb_bw")
    nb_lat = per_layout("nb_lat")
    chunks = p * v

    exact = np.ones(G, dtype=bool)
    mixed_lb = np.zeros(G)  # objective lower bound from the mixed closed form, where it ran
    if cuts is None:
        cuts = np.zeros((G, chunks + 1), dtype=np.int64)
        given = np.zeros(G, dtype=bool) if bases.stages is None else bases.stages[:, 0] >= 0
        if given.any():
            cuts[given] = bases.stages[given]
        todo = np.flatnonzero(~given)
        if len(todo):
            fast = todo if model.is_uniform else np.array([], dtype=np.int64)
            if len(fast):  # uniform model: closed forms, and every cut sends the same bytes
                T3 = t_cls[fast][:, :, [cls_index[0], cls_index[1], cls_index[-1]]]
                same = same_stage[fast]
                if v == 1:
                    out = np.where(np.arange(p) < p - 1, p2p_s(bnd[fast, 1:2], nb_bw[fast], nb_lat[fast]), 0.0)
                    inn = np.zeros_like(out)
                    inn[:, 1:] = p2p_s(bnd[fast, 1:2], nb_bw[fast, :-1], nb_lat[fast, :-1])
                    extra = out + inn
                else:
                    T3 = np.tile(T3, (1, v, 1))  # chunk c runs on stage c % p
                    extra = np.zeros((len(fast), chunks))
                if same.any():
                    cuts[fast[same]] = _uniform_cuts(T3[same], extra[same], L - 2)
                if (~same).any():
                    mixed = fast[~same]
                    weight = (m[mixed] * v - 1).astype(float)
                    cuts[mixed], ok, lower = _uniform_cuts_mixed(T3[~same], extra[~same], L - 2, weight,
                                                                 bottleneck_only=split == "even")
                    exact[mixed] = ok
                    mixed_lb[mixed] = lower
            slow = todo[:0] if model.is_uniform else todo
            if split == "even":
                for g in slow:
                    cuts[g] = even_partition(L, chunks)
                    exact[g] = False
                slow = slow[:0]
            for g in slow:
                t_layer = t_cls[g][:, cls_index]  # (p, L)
                if v == 1:
                    out, inn = _p2p_matrices(bnd[g], nb_bw[g], nb_lat[g], p)
                    res = partition(t_layer, weight=float(m[g] - 1), out_cost=out, in_cost=inn)
                else:
                    res = partition(t_layer[np.arange(chunks) % p], weight=float(m[g] * v - 1))
                cuts[g] = res.boundaries if res.feasible else even_partition(L, chunks)
    cuts = np.asarray(cuts, dtype=np.int64)

    # layer-class counts per stage: (G, p, K)
    onehot_prefix = np.zeros((L + 1, K))
    onehot_prefix[1:] = np.cumsum(np.eye(K)[cls_index], axis=0)
    chunk_counts = onehot_prefix[cuts[:, 1:]] - onehot_prefix[cuts[:, :-1]]  # (G, chunks, K)
    counts = chunk_counts.reshape(G, v, p, K).sum(axis=1) if v > 1 else chunk_counts

    fields = (counts[None] * np.ascontiguousarray(np.moveaxis(C, 3, 0))).sum(axis=3)  # (6, G, p)

    def per_stage(field: int) -> np.ndarray:
        return fields[field]

    if v == 1:
        gi = np.arange(G)[:, None]
        out_b = bnd[gi, cuts[:, 1:]]  # bytes leaving stage j at its end
        in_b = bnd[gi, cuts[:, :-1]]
        p2p = np.zeros((G, p))
        p2p[:, :-1] += p2p_s(out_b[:, :-1], nb_bw[:, :-1], nb_lat[:, :-1])
        p2p[:, 1:] += p2p_s(in_b[:, 1:], nb_bw[:, :-1], nb_lat[:, :-1])
    else:
        worst = p2p_s(bnd.max(axis=1)[:, None], nb_bw[:, :-1], nb_lat[:, :-1]).max(axis=1)
        p2p = np.repeat((2.0 * v * worst)[:, None], p, axis=1)
    compute = per_stage(FWD) + per_stage(BWD) + per_stage(REC)
    tp_mb, ep_mb = per_stage(TPC), per_stage(EPC)
    p2p = p2p + prm.microbatch_overhead_s  # per micro-batch bookkeeping, counted with the stage-to-stage sends

    if primed is not None:
        dense_cls, expert_cls, max_layer = (primed.dense[bases.key], primed.expert[bases.key],
                                            primed.max_layer[bases.key])
    else:
        ukeys, kinv = np.unique(bases.key, return_inverse=True)
        cp = [_class_params_cached(model, bases.keys[k], seq, ctx) for k in ukeys]
        dense_cls = np.array([c[0] for c in cp])[kinv]  # (G, K)
        expert_cls = np.array([c[1] for c in cp])[kinv]
        max_layer = np.array([c[2] for c in cp])[kinv]
    dense_params = (counts * dense_cls[:, None, :]).sum(axis=2)
    expert_params = (counts * expert_cls[:, None, :]).sum(axis=2)
    head = model.layers[-1]
    tied_sync = np.zeros(G)
    if head.kind == "head" and head.tied and p > 1:
        # the tied copy's gradient is all-reduced by the pipeline engine itself, in the weights' precision
        # (DeepSpeed's allreduce_tied_weight_gradients, Megatron's embedding all-reduce), not through the
        # data-parallel buckets that `grad_dtype` describes
        gb = _WEIGHT_BYTES[workload.dtype]
        copy = head.vocab * head.hidden / tp
        dense_params[:, -1] += copy  # the last stage keeps its own copy of the tied embedding
        first = [info.links[0] for info in infos]
        bw = np.array([min(lk.next_bw_gbps, lk.dp_bw_gbps) * prm.collective_efficiency for lk in first])[linv]
        lat = np.array([lk.next_latency_s for lk in first])[linv]
        tied_sync = np.asarray(all_reduce_s(copy * gb, 2, bw, lat), dtype=float)
    # lower bound of the pipeline time over every split. t_min: each layer class on its fastest stage; stage j
    # is at least f_j times slower on every class, so the slowest stage needs at least
    # sum(t_min) / sum_j(1 / f_j) (all stages finishing together), and at least one layer's time
    n_cls = np.bincount(cls_index, minlength=K)
    t_min = t_cls.min(axis=1)  # (G, K)
    lb_sum = (t_min * n_cls).sum(axis=1)
    present = (n_cls > 0)[None, None, :] & (t_min[:, None, :] > 0)
    ratio = np.where(present, t_cls / np.where(t_min > 0, t_min, 1.0)[:, None, :], np.inf).min(axis=2)  # (G, p)
    ratio = np.where(np.isfinite(ratio), np.maximum(ratio, 1.0), 1.0)
    lb_max = np.maximum(np.where(n_cls > 0, t_min, 0.0).max(axis=1), lb_sum / (1.0 / ratio).sum(axis=1))
    pipe_lb = (m - 1.0 / v) * lb_max + lb_sum / v
    if v == 1:
        pipe_lb = np.maximum(pipe_lb, mixed_lb)
    return StageBatch(
        bases=bases, cuts=cuts, m=m, exact=exact,
        pipe_lower_bound_s=pipe_lb,
        stage_t=compute + tp_mb + ep_mb + p2p, compute_mb=compute, bwd_mb=per_stage(BWD), tp_mb=tp_mb,
        ep_mb=ep_mb, p2p_mb=p2p, rec_mb=per_stage(REC), dense_params=dense_params, expert_params=expert_params,
        act_mb=per_stage(ACT), max_layer_params=max_layer, tied_sync_s=tied_sync,
        dp_bw=per_layout("dp_bw"), dp_lat=per_layout("dp_lat"), mem_gbps=per_layout("mem_gbps"),
        caps=per_layout("caps"))


def _p2p_matrices(bnd: np.ndarray, nb_bw: np.ndarray, nb_lat: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(p, L + 1) cost of the forward send at a stage's end cut and the backward send at its start cut."""
    out = np.zeros((p, len(bnd)))
    inn = np.zeros((p, len(bnd)))
    for j in range(p):
        if j < p - 1:
            out[j] = p2p_s(bnd, nb_bw[j], nb_lat[j])
        if j > 0:
            inn[j] = p2p_s(bnd, nb_bw[j - 1], nb_lat[j - 1])
    return out, inn


def memory_aware_cuts(model: ModelSpec, cluster: Cluster, workload: Training, ctx: CostContext, s: Strategy,
                      usable: float = 1.0) -> tuple[int, ...] | None:
    """AMP's pipeline DP with memory limits for one strategy (its own ZeRO stage and schedule); None when no
    split fits (decided first by an exact reachability test, so hopeless strategies cost no DP)."""
    if s.virtual_stages > 1 or s.pp == 1:
        return None
    info = layout_info(cluster, s, workload, ctx)
    m = workload.global_batch // s.dp // s.micro_batch
    p, L = s.pp, len(model.layers)
    classes, cls_index = model.layer_classes
    cls_index = np.asarray(cls_index)
    links = info.links
    reqs = [(links[j], s) for j in range(p)]
    C = class_cost_table(model, ctx, workload, reqs)  # (p, K, 6)
    t_layer = (C[..., FWD] + C[..., BWD] + C[..., REC] + C[..., TPC] + C[..., EPC])[:, cls_index]
    act_layer = C[..., ACT][:, cls_index]
    seq = workload.seq_len or model.seq_len
    dense_cls, expert_cls, max_layer = _class_params_cached(model, s, seq, ctx)
    sb = static_bytes(workload)
    zero = np.array([s.zero])
    wd, gd, od = (float(x[0]) for x in _zero_div(zero, np.array([s.dp])))
    we, ge, oe = (float(x[0]) for x in _zero_div(zero, np.array([expert_ways(s)])))
    static = dense_cls[cls_index] * (sb.weights / wd + sb.gradients / gd + sb.optimizer / od) + \
        expert_cls[cls_index] * (sb.weights / we + sb.gradients / ge + sb.optimizer / oe)
    flight = in_flight(np.array([SCHEDULE_CODES[s.schedule]]), p, np.array([m]), np.array([1]))[0, 0]
    layer_mem = static[None, :] + flight[:, None] * act_layer
    head = model.layers[-1]
    if head.kind == "head" and head.tied:
        layer_mem[1:, -1] += head.vocab * head.hidden / s.tp * (sb.weights / wd + sb.gradients / gd + sb.optimizer / od)
    reserved = float(_reserved(ctx.params.memory_reserved_bytes, zero, np.array([max_layer]), sb)[0, 0])
    caps = info.caps * usable
    if not split_fits(layer_mem, caps - reserved):
        return None
    out, inn = _p2p_matrices(_boundary_bytes(model, workload, np.array([s.micro_batch]), np.array([s.tp]))[0], info.nb_bw, info.nb_lat, p)
    res = partition(t_layer, weight=float(m - 1), out_cost=out, in_cost=inn, layer_mem=layer_mem,
                    mem_fixed=np.full(p, reserved), mem_cap=caps)
    return res.boundaries if res.feasible else None


def _reserved(base: float, zero: np.ndarray, max_layer_params: np.ndarray, sb: StaticBytes) -> np.ndarray:
    """(G, V): fixed reserve, plus the all-gathered weights of the largest layer (current and prefetched) under
    ZeRO-3. `zero` is (V,) or (G, V)."""
    z = np.asarray(zero)
    z = z[None, :] if z.ndim == 1 else z
    return base + np.where(z >= 3, 2 * np.asarray(max_layer_params)[:, None] * sb.weights, 0.0)


@dataclass(frozen=True)
class Assembled:
    """Prices of V variants (ZeRO stage, schedule) over each of G splits: (G, V) or (G, V, p)."""

    time_s: np.ndarray
    pipeline_s: np.ndarray
    bubble_s: np.ndarray
    dp_total_s: np.ndarray
    dp_exposed_s: np.ndarray
    optimizer_s: np.ndarray
    memory: dict
    stage_mem: np.ndarray
    slow: np.ndarray  # (G,) index of the slowest stage


def assemble(batch: StageBatch, workload: Training, ctx: CostContext, zero: np.ndarray, schedule: np.ndarray
             ) -> Assembled:
    """Price V (ZeRO stage, schedule) variants per group: `zero` and `schedule` are (V,) shared by all groups,
    or (G, V) for per-group variants. Model state and data-parallel sync depend only on the ZeRO stage and
    activations only on the schedule, so shared variants are computed once per distinct value of each."""
    prm = ctx.params
    G, p = batch.stage_t.shape
    zero, schedule = np.asarray(zero), np.asarray(schedule)
    if zero.ndim == 1 and schedule.ndim == 1:
        zu, zi = np.unique(zero, return_inverse=True)
        su, si = np.unique(schedule, return_inverse=True)
        zero, schedule = np.broadcast_to(zu, (G, len(zu))), su
    else:
        zero = np.broadcast_to(zero, (G, zero.shape[-1])) if zero.ndim == 1 else zero
        schedule = np.broadcast_to(schedule, (G, schedule.shape[-1])) if schedule.ndim == 1 else schedule
        zi = si = np.arange(zero.shape[1])
    V = len(zi)
    sb = static_bytes(workload)
    dp = batch.bases.dp.astype(float)
    ew = batch.bases.expert_ways.astype(float)
    z = zero[:, :, None]  # (G, Z, 1)
    wd, gd, od = _zero_div(z, dp[:, None, None])
    we, ge, oe = _zero_div(z, ew[:, None, None])
    dense = batch.dense_params[:, None, :]
    expert = batch.expert_params[:, None, :]
    flight = in_flight(schedule, p, batch.m, np.full(G, batch.v))  # (G, S, p)
    reserved = _reserved(prm.memory_reserved_bytes, zero, batch.max_layer_params, sb)[:, :, None]
    if batch.expert_params.any():
        weights = dense * sb.weights / wd + expert * sb.weights / we
        gradients = dense * sb.gradients / gd + expert * sb.gradients / ge
        optimizer = dense * sb.optimizer / od + expert * sb.optimizer / oe
        opt_params = dense / od + expert / oe
    else:  # no experts: the expert terms add exact zeros
        weights = dense * sb.weights / wd
        gradients = dense * sb.gradients / gd
        optimizer = dense * sb.optimizer / od
        opt_params = dense / od
    activations = batch.act_mb[:, None, :] * flight
    static = weights + gradients + optimizer
    memory = {
        "weights": weights[:, zi], "gradients": gradients[:, zi], "optimizer": optimizer[:, zi],
        "activations": activations[:, si], "kv_cache": np.zeros((G, V, p)),
        "reserved": np.broadcast_to(reserved[:, zi], (G, V, p)),
    }
    stage_mem = static[:, zi] + activations[:, si] + reserved[:, zi]

    gb = _WEIGHT_BYTES[workload.grad_dtype or workload.dtype]
    bw, lat = batch.dp_bw[:, None, :], batch.dp_lat[:, None, :]
    m = batch.m[:, None, None].astype(float)
    dp_time = np.zeros((G, zero.shape[1], p))
    for count, ways in ((dense, dp[:, None, None]), (expert, ew[:, None, None])):
        ar = all_reduce_s(count * gb, ways, bw, lat)
        rs = reduce_scatter_s(count * gb, ways, bw, lat)
        ag = all_gather_s(count * sb.weights, ways, bw, lat)
        term = np.where(z == 0, ar, np.where(z <= 2, rs + ag, m * (2 * ag + rs)))
        dp_time = dp_time + np.where(count > 0, term, 0.0)  # no parameters of a kind: no collective, no latency
    window = prm.dp_overlap * np.where(z >= 3, m * batch.compute_mb[:, None, :], batch.bwd_mb[:, None, :])
    exposed = np.maximum(dp_time - window, 0.0).max(axis=2)[:, zi]
    opt_time = opt_params * prm.optimizer_bytes_per_param / (batch.mem_gbps[:, None, :] * 1e9)
    slow = np.argmax(batch.stage_t, axis=1)
    t_max = batch.stage_t.max(axis=1)
    bubble = (batch.stage_t.sum(axis=1) - t_max) / batch.v
    pipe = batch.m * t_max + bubble
    opt_total = (opt_time.max(axis=2) + batch.tied_sync_s[:, None])[:, zi]
    step = pipe[:, None] + exposed + opt_total + prm.step_overhead_s
    return Assembled(time_s=step, pipeline_s=np.broadcast_to(pipe[:, None], (G, V)),
                     bubble_s=np.broadcast_to(bubble[:, None], (G, V)), dp_total_s=dp_time[:, zi],
                     dp_exposed_s=exposed, optimizer_s=opt_total, memory=memory, stage_mem=stage_mem,
                     slow=slow)


def breakdown_arrays(batch: StageBatch, a: Assembled) -> dict[str, np.ndarray]:
    """The additive time terms, (G, V): they sum to `a.time_s`."""
    gi = np.arange(batch.G)
    m = batch.m.astype(float)
    slow = a.slow
    V = a.time_s.shape[1]

    def rep(x: np.ndarray) -> np.ndarray:
        return np.repeat((m * x[gi, slow])[:, None], V, axis=1)

    return {
        "compute_s": rep(batch.compute_mb), "tp_comm_s": rep(batch.tp_mb), "ep_comm_s": rep(batch.ep_mb),
        "pp_comm_s": rep(batch.p2p_mb), "bubble_s": np.asarray(a.bubble_s), "dp_comm_exposed_s": a.dp_exposed_s,
        "optimizer_s": a.optimizer_s,
        "overhead_s": a.time_s - a.pipeline_s - a.dp_exposed_s - a.optimizer_s,
    }


def model_flops_per_step(model: ModelSpec, workload: Training) -> float:
    seq = workload.seq_len or model.seq_len
    return 3.0 * workload.global_batch * sum(model_flops_per_token(lay, seq) * token_count(lay, seq)
                                             for lay in model.layers)


def recompute_flops_per_sample(model: ModelSpec, recompute: str, seq: int) -> float:
    """Forward FLOPs executed again per sample by activation recompute (full: whole blocks; selective:
    the attention core)."""
    if recompute == "none":
        return 0.0
    total = 0.0
    for lay in model.layers:
        if lay.kind != "transformer":
            continue
        tokens = token_count(lay, seq)
        span = lay.attention_span or tokens
        if recompute == "full":
            total += model_flops_per_token(lay, seq) * tokens
        else:
            total += attention_flops_per_token(lay, span) * tokens
    return total


def peak_flops(cluster: Cluster, dtype: str) -> float:
    total = 0.0
    for g in cluster.gpus:
        try:
            total += g.peak_tflops(dtype) * 1e12
        except Exception:
            pass
    return total


def price_training(model: ModelSpec, cluster: Cluster, workload: Training, ctx: CostContext,
                   strategies: Sequence[Strategy]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step time, largest per-GPU memory and fits for many strategies at once (each with its own ZeRO stage,
    schedule and, if given, stage cut points; otherwise the time-optimal split)."""
    n = len(strategies)
    time_s, mem, fits = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(strategies):
        buckets.setdefault((s.pp, s.virtual_stages), []).append(i)
    for idx in buckets.values():
        group = [strategies[i] for i in idx]
        batch = build_stage_batch(model, cluster, workload, ctx, group)
        zero = np.array([[s.zero] for s in group])
        sched = np.array([[SCHEDULE_CODES[s.schedule]] for s in group])
        a = assemble(batch, workload, ctx, zero, sched)
        time_s[idx] = a.time_s[:, 0]
        stage_mem = a.stage_mem[:, 0]
        mem[idx] = stage_mem.max(axis=1)
        fits[idx] = (stage_mem <= batch.caps).all(axis=1)
    return time_s, mem, fits


EXHAUSTIVE_SPLITS = 20  # below this many contiguous splits, try them all on the full step time


def all_splits(num_layers: int, p: int) -> np.ndarray | None:
    """Every split of `num_layers` entries into p non-empty contiguous stages, or None when there are more than
    EXHAUSTIVE_SPLITS. The DP optimises the pipeline; the optimizer step and data-parallel sync also depend on
    the split (through each stage's parameters), so small problems are solved on the full step time."""
    if p < 2 or math.comb(num_layers - 1, p - 1) > EXHAUSTIVE_SPLITS:
        return None
    inner = np.array(list(itertools.combinations(range(1, num_layers), p - 1)), dtype=np.int64).reshape(-1, p - 1)
    n = len(inner)
    return np.concatenate([np.zeros((n, 1), dtype=np.int64), inner, np.full((n, 1), num_layers)], axis=1)


def best_of_splits(time_s: np.ndarray, stage_mem: np.ndarray, caps: np.ndarray) -> int:
    """Index of the fastest split that fits (the fastest overall when none fits)."""
    fits = (stage_mem <= caps).all(axis=-1)
    return int(np.argmin(np.where(fits, time_s, time_s + 1e30)))


def estimate_training(model: ModelSpec, cluster: Cluster, strategy: Strategy, workload: Training,
                      ctx: CostContext) -> Estimate:
    s = strategy
    cuts = None
    zero, sched = np.array([s.zero]), np.array([SCHEDULE_CODES[s.schedule]])
    if s.stages is None and s.virtual_stages == 1:
        splits = all_splits(len(model.layers), s.pp)
        if splits is not None:
            batch = build_stage_batch(model, cluster, workload, ctx, [s] * len(splits), cuts=splits)
            a = assemble(batch, workload, ctx, zero, sched)
            g = best_of_splits(a.time_s[:, 0], a.stage_mem[:, 0], batch.caps)
            return to_estimate(model, cluster, workload, batch, a, g, 0)
    if s.stages is None and s.pp > 1 and s.virtual_stages == 1:
        first = build_stage_batch(model, cluster, workload, ctx, [s])
        a = assemble(first, workload, ctx, np.array([s.zero]), np.array([SCHEDULE_CODES[s.schedule]]))
        if (a.stage_mem[0, 0] > first.caps[0]).any():
            aware = memory_aware_cuts(model, cluster, workload, ctx, s)
            if aware is not None:
                cuts = np.array([aware])
        if cuts is None:
            return to_estimate(model, cluster, workload, first, a, 0, 0)
    batch = build_stage_batch(model, cluster, workload, ctx, [s], cuts=cuts)
    a = assemble(batch, workload, ctx, np.array([s.zero]), np.array([SCHEDULE_CODES[s.schedule]]))
    return to_estimate(model, cluster, workload, batch, a, 0, 0)


def to_estimate(model: ModelSpec, cluster: Cluster, workload: Training, batch: StageBatch, a: Assembled, g: int,
                var: int, strategy: Strategy | None = None) -> Estimate:
    s = strategy or batch.strategies[g]
    p = s.pp
    seq = workload.seq_len or model.seq_len
    m = int(batch.m[g])
    slow = int(a.slow[g])
    step = float(a.time_s[g, var])
    stage_mem = a.stage_mem[g, var]
    terms = [{k: float(v[g, var, j]) for k, v in a.memory.items()} for j in range(p)]
    caps = batch.caps[g]
    over = stage_mem - caps
    worst, fullest = int(np.argmax(over)), int(np.argmax(stage_mem))
    fits = bool((over <= 0).all())
    bd = breakdown_arrays(batch, a)
    breakdown = {k: float(v[g, var]) for k, v in bd.items()}
    exposed_stage = int(np.argmax(a.dp_total_s[g, var]))
    breakdown.update({
        "recompute_s": m * float(batch.rec_mb[g, slow]),
        "dp_comm_total_s": float(a.dp_total_s[g, var].max()),
        "dp_comm_overlapped_s": float(a.dp_total_s[g, var, exposed_stage]) - float(a.dp_exposed_s[g, var]),
        "stage_time_max_s": float(batch.stage_t[g, slow]),
        "micro_batches": float(m),
    })
    model_flops = model_flops_per_step(model, workload)
    peak = peak_flops(cluster, workload.dtype)
    rec_flops = workload.global_batch * recompute_flops_per_sample(model, s.recompute, seq)
    cuts = tuple(int(c) for c in batch.cuts[g])
    links = batch.links_of(g)
    notes = []
    if links[slow].num_gpu_types > 1:
        notes.append(f"stage {slow} mixes GPU types; its slowest GPU ({links[slow].gpu.name}) sets its pace")
    if s.virtual_stages > 1:
        notes.append(f"interleaved: {len(cuts) - 1} chunks, cut points {list(cuts)}")
        members = [[i for c in range(j, len(cuts) - 1, p) for i in range(cuts[c], cuts[c + 1])] for j in range(p)]
        final = s
    else:
        members = [list(range(cuts[j], cuts[j + 1])) for j in range(p)]
        final = s if s.stages is not None else s.with_(stages=cuts)
    stages = tuple(
        StageEstimate(index=j, first_layer=min(members[j]), end_layer=max(members[j]) + 1, gpu=links[j].gpu.name,
                      time_s=float(batch.stage_t[g, j]), compute_s=float(batch.compute_mb[g, j]),
                      memory_bytes=float(stage_mem[j]), memory_capacity_bytes=float(caps[j]), memory=terms[j],
                      forward_s=float(batch.compute_mb[g, j] - batch.bwd_mb[g, j] - batch.rec_mb[g, j]))
        for j in range(p))
    return Estimate(
        kind="training", strategy=final, time_s=step, tokens_per_s=workload.global_batch * seq / step,
        memory_per_gpu_bytes=float(stage_mem[fullest]), memory_capacity_bytes=float(caps[fullest]), fits=fits,
        shortfall_bytes=float(max(over[worst], 0.0)), memory=terms[worst if not fits else fullest],
        breakdown=breakdown, stages=stages, num_gpus=cluster.num_gpus,
        mfu=model_flops / (step * peak) if peak else 0.0,
        hfu=(model_flops + rec_flops) / (step * peak) if peak else 0.0, notes=tuple(notes))
