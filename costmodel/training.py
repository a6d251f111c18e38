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

import functools
import itertools
import math
import operator
from dataclasses import dataclass, replace
from functools import cached_property
from typing import NamedTuple, Sequence

import numpy as np

from hardware_profiles.topology import Cluster

from .bottleneck import least_feasible_threshold
from .comm import all_gather_s, all_reduce_s, p2p_s, reduce_scatter_s, with_network_efficiency
from .pricing import CostContext, Estimate, StageEstimate
from .layercost import Parallel, layer_train_times_by_recompute, token_count
from .layertimes import find as find_layer_times
from .layers import attention_flops_per_token, model_flops_per_token, param_split
from .layout import StageLinks, resolve_layout
from .model import ModelSpec
from .partition import even_partition, partition, splits_fit
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


def take_rows(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a[idx] along the first axis. np.take copies each selected row whole; fancy indexing copies a row's
    elements one by one, which dominates when rows are short and many."""
    return np.take(a, idx, axis=0)


def take_pairs(a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """a[rows, cols] (the trailing axes kept whole), through one flat index instead of two."""
    flat = a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])
    return np.take(flat, np.asarray(rows) * a.shape[1] + cols, axis=0)


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
        key = (lk.device_key, s.tp, s.ep, s.ep_mode, s.sequence_parallel, s.recompute)
        hit = memo.get(key + (s.micro_batch,))
        if hit is not None:
            out[i] = hit
            continue
        groups.setdefault(key, []).append(i)
    for key, idx in groups.items():
        lk, s = requests[idx[0]]
        mbs = np.array([requests[i][1].micro_batch for i in idx], dtype=float)
        uniq, inv = np.unique(mbs, return_inverse=True)
        block = _class_costs(model, ctx, workload, lk, s, uniq)  # (micro-batch sizes, K, 6)
        out[idx] = block[inv]
        for mb, row in zip(uniq.tolist(), block):
            memo[key + (int(mb),)] = row
    return out


def _class_costs(model: ModelSpec, ctx: CostContext, workload: Training, lk: StageLinks, s: Strategy | CostKey,
                 micro_batches: np.ndarray) -> np.ndarray:
    """(len(micro_batches), K, 6) costs of every layer class on one stage's devices, per micro-batch size."""
    return _class_costs_by_recompute(model, ctx, workload, lk, s, micro_batches, (s.recompute,))[0]


def _class_costs_by_recompute(model: ModelSpec, ctx: CostContext, workload: Training, lk: StageLinks,
                              s: Strategy | CostKey, micro_batches: np.ndarray, recomputes: Sequence[str]
                              ) -> list[np.ndarray]:
    """`_class_costs` under each recompute policy (the one in `s` is ignored): the forward work they share is
    priced once per layer class."""
    prm = ctx.params
    seq = workload.seq_len or model.seq_len
    classes, _ = model.layer_classes
    dev = ctx.device(lk.gpu, workload.dtype)
    lf = prm.collective_latency_factor
    par = Parallel(tp=s.tp, ep=s.ep, ep_mode=s.ep_mode, sp=s.sequence_parallel,
                   tp_bw_gbps=lk.tp_bw_gbps * prm.collective_efficiency, tp_latency_s=lk.tp_latency_s * lf,
                   ep_bw_gbps=lk.ep_bw_gbps * prm.collective_efficiency, ep_latency_s=lk.ep_latency_s * lf)
    blocks = [np.empty((len(micro_batches), len(classes), 6)) for _ in recomputes]
    for k, lay in enumerate(classes):
        by_rec = layer_train_times_by_recompute(lay, dev, par, prm, micro_batch=micro_batches, seq_len=seq,
                                                recomputes=recomputes)
        for block, times in zip(blocks, by_rec):
            for f, col in enumerate(times):  # FWD, BWD, REC, TPC, EPC, ACT
                block[:, k, f] = col
    measured = find_layer_times(ctx.layer_times, model.name, lk.gpu.name, s.tp)
    for block, rec in zip(blocks, recomputes):
        if measured is not None:  # measured compute replaces the formula's
            per_sample = measured.per_class(model.layer_classes[1], len(classes))
            scale = micro_batches if measured.scales_with_batch else np.ones_like(micro_batches)
            fwd = scale[:, None] * per_sample[None, :]
            block[:, :, FWD] = fwd
            block[:, :, BWD] = measured.backward_factor * fwd
            is_block = np.array([lay.kind == "transformer" for lay in classes])
            block[:, :, REC] = fwd * is_block if rec == "full" else 0.0
            if measured.includes_tp_comm:
                block[:, :, TPC] = 0.0
        if prm.host_layer_s > 0:
            _host_floor(block, slice(None), classes, prm.host_layer_s * (4 / 3 if rec == "full" else 1.0))
    return blocks


def _host_floor(out: np.ndarray, idx: list[int] | slice, classes: Sequence, host_s: float) -> None:
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
    m = np.asarray(m, dtype=float)[:, None, None]
    v = np.asarray(v, dtype=float)[:, None, None]
    j = np.arange(p, dtype=float)[None, None, :]  # floats throughout: mixed int/float ufuncs go through buffers
    one_f = np.minimum(p - j, m)
    inter = np.minimum(m * v, 2 * (p - j - 1) + (v - 1) * p + 1) / v
    by_code = np.concatenate([one_f, np.broadcast_to(m, one_f.shape), inter], axis=1)  # 1F1B, GPipe, interleaved
    code = np.where((sch == SCHEDULE_CODES["gpipe"]) | (sch == SCHEDULE_CODES["interleaved"]), sch, 0)
    return _pick(by_code, code)


def _pick(by_case: np.ndarray, case: np.ndarray) -> np.ndarray:
    """(G, V, ...) from per-case values `by_case` (G, C, ...): variant v of group g takes case[v] (shared by
    all groups, (V,)) or case[g, v] ((G, V))."""
    case = np.asarray(case)
    if case.ndim == 1:
        return np.take(by_case, case, axis=1)
    return take_pairs(by_case, np.arange(len(by_case))[:, None], case)


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
    """G strategies sharing pp, as columns (ZeRO stage and schedule left to `assemble`): what
    `build_stage_batch` prices. `layout` indexes `infos` (one per mesh layout), `key` indexes `keys`;
    a search builds these directly instead of one `Strategy` per candidate."""

    pp: int
    v: np.ndarray  # (G,) int virtual stages per device
    dp: np.ndarray  # (G,) int
    layout: np.ndarray  # (G,) int
    infos: tuple[LayoutInfo, ...]
    key: np.ndarray  # (G,) int
    keys: tuple[CostKey, ...]
    stages: np.ndarray | None = None  # (G, p*v + 1) given cut points (-1 after a row's last), rows of -1 where none
    strategies: tuple[Strategy, ...] | None = None  # where built from Strategy objects

    def __len__(self) -> int:
        return len(self.dp)

    def take(self, idx: np.ndarray) -> "Bases":
        idx = np.asarray(idx, dtype=np.int64)
        return replace(self, v=self.v[idx], dp=self.dp[idx], layout=self.layout[idx], key=self.key[idx],
                       stages=None if self.stages is None else self.stages[idx],
                       strategies=None if self.strategies is None else tuple(self.strategies[i] for i in idx))

    @staticmethod
    def concat(parts: Sequence["Bases"]) -> "Bases":
        """The strategies of several `Bases` with the same pp, layouts and cost keys, in order."""
        first = parts[0]
        if len(parts) == 1:
            return first
        if any(b.pp != first.pp or b.infos is not first.infos or b.keys is not first.keys for b in parts):
            raise ValueError("Bases.concat needs the same pp, layouts and cost keys")
        stages = None
        if any(b.stages is not None for b in parts):
            width = max(b.stages.shape[1] for b in parts if b.stages is not None)
            stages = np.full((sum(len(b) for b in parts), width), -1, dtype=np.int64)
            at = 0
            for b in parts:
                if b.stages is not None:
                    stages[at:at + len(b), :b.stages.shape[1]] = b.stages
                at += len(b)
        strategies = None
        if all(b.strategies is not None for b in parts):
            strategies = tuple(s for b in parts for s in b.strategies)
        return replace(first, v=np.concatenate([b.v for b in parts]), dp=np.concatenate([b.dp for b in parts]),
                       layout=np.concatenate([b.layout for b in parts]),
                       key=np.concatenate([b.key for b in parts]), stages=stages, strategies=strategies)

    def key_column(self, field: str) -> np.ndarray:
        """(G,) one field of each strategy's cost key."""
        return _key_columns(self.keys)[field][self.key]

    @property
    def key_columns(self) -> dict[str, np.ndarray]:
        """Each field of the cost keys, by index into `keys`."""
        return _key_columns(self.keys)

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
    fields = zip(*keys) if keys else [()] * len(CostKey._fields)
    cols = {f: np.array(values, dtype=object if f in ("ep_mode", "recompute") else None)
            for f, values in zip(CostKey._fields, fields)}
    if len(_KEY_COLUMNS) > 256:
        _KEY_COLUMNS.clear()
    _KEY_COLUMNS[id(keys)] = (keys, cols)
    return cols


def bases_of(cluster: Cluster, workload: Training, ctx: CostContext, strategies: Sequence[Strategy]) -> Bases:
    """`Bases` of Strategy objects that share pp."""
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
    return Bases(pp=s0.pp, v=np.array([s.virtual_stages for s in strategies], dtype=np.int64),
                 dp=np.array([s.dp for s in strategies], dtype=np.int64),
                 layout=layout, infos=tuple(infos), key=key, keys=tuple(keys), stages=stages, strategies=strategies)


@dataclass(frozen=True)
class StageBatch:
    """G strategies (same pp) with their layers split into stages.

    Arrays are (G, p) per stage and per micro-batch unless noted; `cuts` is (G, p * max(v) + 1), each row's
    p*v + 1 cut points followed by -1 (`cuts_of`)."""

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
    def v(self) -> np.ndarray:
        """(G,) virtual stages per device."""
        return self.bases.v

    @property
    def G(self) -> int:
        return len(self.bases)

    @property
    def strategies(self) -> tuple[Strategy, ...] | None:
        return self.bases.strategies

    def links_of(self, g: int) -> tuple[StageLinks, ...]:
        return self.bases.infos[int(self.bases.layout[g])].links

    def cuts_of(self, g: int) -> tuple[int, ...]:
        """Cut points of group g: p*v + 1 of them."""
        return tuple(int(c) for c in self.cuts[g, :self.pp * int(self.v[g]) + 1])


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
    cuts = np.zeros((G, p + 1))
    cuts[:, 1:] = 1 + _front_loaded_prefix(kmax, lo, N)
    cuts[:, -1] += 1
    return cuts.astype(np.int64)


def _uniform_cuts_memo(T: np.ndarray, extra: np.ndarray, num_blocks: int, memo: dict | None) -> np.ndarray:
    """`_uniform_cuts`, answered from `memo` when the very same batch was split before: with interleaving, a
    search meets the same chunks again under other (pp, v) of equal pp * v (their chunks cost the same). Batches
    are filed by their sums (hashing the whole arrays would cost more than most lookups save) and compared bit
    for bit."""
    if memo is None:
        return _uniform_cuts(T, extra, num_blocks)
    key = ("uniform_cuts", T.shape, num_blocks, float(T.sum()), float(extra.sum()))
    hit = memo.get(key)
    if hit is not None and _same_bits(hit[0], T) and _same_bits(hit[1], extra):
        return hit[2]
    cuts = _uniform_cuts(T, extra, num_blocks)
    memo[key] = (T.copy(), extra.copy(), cuts)
    return cuts


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint64), np.ascontiguousarray(b).view(np.uint64))


def _front_loaded_prefix(kmax: np.ndarray, lo: np.ndarray, N: int) -> np.ndarray:
    """(G, p) blocks on stages 0..j when each stage in turn takes as many as it may (kmax_j) while leaving the
    later stages their least (lo): S_j = min(S_(j-1) + kmax_j, N - sum(lo[j+1:])). With P the prefix sums of
    kmax, S_j = P_j + min(0, min over i <= j of (N - sum(lo[i+1:]) - P_i)). Whole numbers, so exact in floats."""
    prefix = np.cumsum(kmax, axis=1)
    later_least = np.cumsum(lo[::-1])[::-1] - lo  # sum(lo[j+1:])
    return prefix + np.minimum(np.minimum.accumulate((N - later_least) - prefix, axis=1), 0.0)


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
    bnd = _Boundary.of(model, workload, micro_batch, tp, ctx)
    return bnd.scale[:, None] * bnd.per_cut[None, :]


def _activations_per_cut(model: ModelSpec, seq: int, ctx: CostContext | None) -> np.ndarray:
    """(L + 1,) activation elements per sample crossing a cut before layer i (0 before the first)."""
    memo = {} if ctx is None else ctx.memo
    hfac = memo.get(("boundary", id(model), seq))
    if hfac is None:
        per_class = [token_count(lay, seq) * lay.hidden for lay in model.layer_classes[0]]
        hfac = memo[("boundary", id(model), seq)] = np.array([0.0] + _per_layer(model, per_class))
    return hfac


@dataclass(frozen=True)
class _Boundary:
    """Bytes each TP rank sends at a cut before layer i, for G groups: scale[g] * per_cut[i] (one micro-batch of
    activations); the (G, L + 1) table `_boundary_bytes` gives is only formed where asked."""

    scale: np.ndarray  # (G,)
    per_cut: np.ndarray  # (L + 1,)

    @classmethod
    def of(cls, model: ModelSpec, workload: Training, micro_batch: np.ndarray, tp: np.ndarray,
           ctx: CostContext | None) -> "_Boundary":
        b = _WEIGHT_BYTES[workload.dtype]
        scale = np.asarray(micro_batch, dtype=np.int64) * b / np.asarray(tp, dtype=np.int64)
        return cls(scale=scale, per_cut=_activations_per_cut(model, workload.seq_len or model.seq_len, ctx))

    def take(self, rows: np.ndarray | slice) -> "_Boundary":
        return _Boundary(scale=self.scale[rows], per_cut=self.per_cut)

    def at(self, cuts: np.ndarray) -> np.ndarray:
        """(G, n) bytes at cut indices `cuts` ((G, n) or (n,))."""
        return self.scale[:, None] * self.per_cut[cuts]

    def row(self, g: int) -> np.ndarray:
        return self.scale[g] * self.per_cut

    def largest(self) -> np.ndarray:
        """(G,) the most bytes any cut sends (scale >= 0, so the largest per-cut figure decides)."""
        return self.scale * self.per_cut.max()


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
    # stages often share one StageLinks object: work out each distinct one once, then spread by stage
    distinct = {id(lk): lk for lk in links}
    at = {i: n for n, i in enumerate(distinct)}
    stage = np.array([at[id(lk)] for lk in links])
    uniq = list(distinct.values())
    ids = [registry.setdefault(lk.device_key, len(registry)) for lk in uniq]
    for d, lk in zip(ids, uniq):
        dev_links.setdefault(d, lk)
    dev_ids = np.array(ids)[stage]

    def per_stage(values: list) -> np.ndarray:
        return np.array(values)[stage]

    info = ctx.memo[key] = LayoutInfo(
        links=links, dev_ids=dev_ids, same_stage=bool((dev_ids == dev_ids[0]).all()),
        nb_bw=per_stage([lk.next_bw_gbps for lk in uniq]) * prm.collective_efficiency,
        nb_lat=per_stage([lk.next_latency_s for lk in uniq]) * prm.collective_latency_factor,
        dp_bw=per_stage([lk.dp_bw_gbps for lk in uniq]) * prm.collective_efficiency,
        dp_lat=per_stage([lk.dp_latency_s for lk in uniq]) * prm.collective_latency_factor,
        mem_gbps=per_stage([ctx.device(lk.gpu, workload.dtype).memory_gbps for lk in uniq]),
        caps=per_stage([lk.memory_bytes * prm.memory_usable_fraction for lk in uniq]))
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
    """Price the layer classes of every (stage devices, cost key) of a search once, into a table that
    `build_stage_batch` looks rows up in: one vectorised call per layer class and (devices, tp, ep, SP,
    recompute) covers every micro-batch size of the whole search. All `groups` share one `keys` tuple."""
    if not groups:
        return
    if len({id(b.keys) for b in groups}) != 1:  # no common key index: price each group's requests
        for bases in groups:
            class_cost_table(model, ctx, workload, _requests(bases, _stage_devices(bases), ctx)[1])
        return
    keys = groups[0].keys
    n = len(keys)
    dev_links = ctx.memo.get("device_links", {})
    codes = np.unique(np.concatenate([(_stage_devices(b) * n + b.key[:, None]).ravel() for b in groups]))
    dev_of, key_of = np.divmod(codes, n)
    cols = _key_columns(keys)
    # requests that differ only in micro-batch and recompute share their forward work: one call prices them
    _, family = np.unique(np.stack([dev_of, *(np.unique(cols[f], return_inverse=True)[1].ravel()[key_of]
                                              for f in ("tp", "ep", "ep_mode", "sequence_parallel"))], axis=1),
                          axis=0, return_inverse=True)
    family = family.ravel()
    order = np.argsort(family, kind="stable")
    starts = np.flatnonzero(np.diff(family[order], prepend=-1))
    table = np.empty((len(codes), len(model.layer_classes[0]), 6))
    mb_of = cols["micro_batch"][key_of].astype(float)
    recs, rec_of = np.unique(cols["recompute"][key_of], return_inverse=True)
    rec_of = rec_of.ravel()
    for members in np.split(order, starts[1:]):
        uniq = np.unique(mb_of[members])
        used = np.unique(rec_of[members])
        blocks = _class_costs_by_recompute(model, ctx, workload, dev_links[int(dev_of[members[0]])],
                                           keys[int(key_of[members[0]])], uniq, recs[used].tolist())
        at = np.searchsorted(used, rec_of[members])
        mb_at = np.searchsorted(uniq, mb_of[members])
        for j, block in enumerate(blocks):
            sel = at == j
            table[members[sel]] = block[mb_at[sel]]
    lut = np.full((len(dev_links), n), -1, dtype=np.int64)
    lut[dev_of, key_of] = np.arange(len(codes))
    ctx.memo[("primed", id(model), workload.seq_len or model.seq_len, workload.dtype)] = _Primed(
        keys=keys, lut=lut, table=table, **_params_by_key(model, workload, ctx, keys))


def _params_by_key(model: ModelSpec, workload: Training, ctx: CostContext, keys: tuple[CostKey, ...]
                   ) -> dict[str, np.ndarray]:
    """Dense and expert parameters per layer class (keys, K) and the largest layer (keys,) of each cost key;
    each distinct (tp, ep, expert tp) worked out once."""
    seq = workload.seq_len or model.seq_len
    cols = _key_columns(keys)
    moe_tp = np.where(cols["ep_mode"] == "tp", cols["tp"] // cols["ep"], cols["tp"])
    degrees, first, inv = np.unique(np.stack([cols["tp"], cols["ep"], moe_tp], axis=1), axis=0, return_index=True,
                                    return_inverse=True)
    cp = [_class_params_cached(model, keys[i], seq, ctx) for i in first.tolist()]
    idx = inv.ravel()
    return {"dense": np.array([c[0] for c in cp])[idx], "expert": np.array([c[1] for c in cp])[idx],
            "max_layer": np.array([c[2] for c in cp])[idx]}


def _stage_devices(bases: Bases) -> np.ndarray:
    """(G, p) device id of every stage of each strategy."""
    used, inv = np.unique(bases.layout, return_inverse=True)
    return take_rows(np.array([bases.infos[u].dev_ids for u in used]), inv)


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
    """Costs of G strategies sharing pp, with the time-optimal split (or the given `cuts`, (G, p * max(v) + 1),
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
        return take_rows(np.array([getattr(info, attr) for info in infos]), linv)

    C, primed = stage_class_costs(model, workload, ctx, bases, per_layout("dev_ids"))  # (G, p, K, 6)
    t_cls = C[..., FWD] + C[..., BWD] + C[..., REC] + C[..., TPC] + C[..., EPC]  # (G, p, K)
    tp = bases.key_column("tp")
    micro_batch = bases.key_column("micro_batch")
    m = workload.global_batch // bases.dp // micro_batch

    bnd = _Boundary.of(model, workload, micro_batch, tp, ctx)
    nb_bw = per_layout("nb_bw")
    nb_lat = per_layout("nb_lat")
    by_v = _rows_by_value(v)

    exact = np.ones(G, dtype=bool)
    mixed_lb = np.zeros(G)  # objective lower bound from the mixed closed form, where it ran
    if cuts is None:
        cuts = np.full((G, p * int(v.max()) + 1), -1, dtype=np.int64)
        given = np.zeros(G, dtype=bool) if bases.stages is None else bases.stages[:, 0] >= 0
        if given.any():
            cuts[given, :bases.stages.shape[1]] = bases.stages[given]
        for vv, rows in by_v:
            todo = _as_index(rows, G)[~given[rows]]
            if len(todo):
                cuts[todo, :p * vv + 1], exact[todo], mixed_lb[todo] = _split_layers(
                    model, t_cls[todo], per_layout("same_stage")[todo], m[todo], bnd.take(todo), nb_bw[todo],
                    nb_lat[todo], p, vv, split, ctx.memo)
    cuts = np.asarray(cuts, dtype=np.int64)

    counts = np.empty((G, p, K))  # layer-class counts per stage
    p2p = np.zeros((G, p))
    onehot_prefix = np.zeros((L + 1, K))
    onehot_prefix[1:] = np.cumsum(np.eye(K)[cls_index], axis=0)
    for vv, rows in by_v:
        c = cuts[rows, :p * vv + 1]
        at_cuts = take_rows(onehot_prefix, c)  # class counts before each cut (g, chunks + 1, K)
        chunk_counts = at_cuts[:, 1:] - at_cuts[:, :-1]  # (g, chunks, K)
        counts[rows] = chunk_counts.reshape(-1, vv, p, K).sum(axis=1) if vv > 1 else chunk_counts
        p2p[rows] = _p2p_per_micro_batch(bnd.take(rows), c, nb_bw[rows], nb_lat[rows], p, vv)

    fields = np.moveaxis(_weighted_class_sum(counts, C), 2, 0)  # (6, G, p)

    def per_stage(field: int) -> np.ndarray:
        return fields[field]

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
    dense_params = _weighted_class_sum(counts, dense_cls[:, None, :, None])[..., 0]
    expert_params = _weighted_class_sum(counts, expert_cls[:, None, :, None])[..., 0]
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
    pipe_lb = _pipeline_lower_bound(t_cls, cls_index, K, m, v, per_layout("same_stage"))
    pipe_lb = np.where(v == 1, np.maximum(pipe_lb, mixed_lb), pipe_lb)
    return StageBatch(
        bases=bases, cuts=cuts, m=m, exact=exact,
        pipe_lower_bound_s=pipe_lb,
        stage_t=compute + tp_mb + ep_mb + p2p, compute_mb=compute, bwd_mb=per_stage(BWD), tp_mb=tp_mb,
        ep_mb=ep_mb, p2p_mb=p2p, rec_mb=per_stage(REC), dense_params=dense_params, expert_params=expert_params,
        act_mb=per_stage(ACT), max_layer_params=max_layer, tied_sync_s=tied_sync,
        dp_bw=per_layout("dp_bw"), dp_lat=per_layout("dp_lat"), mem_gbps=per_layout("mem_gbps"),
        caps=per_layout("caps"))


def _weighted_class_sum(counts: np.ndarray, per_class: np.ndarray) -> np.ndarray:
    """(G, p, F): sum over layer classes k of counts[..., k] * per_class[..., k, :], with counts (G, p, K) and
    per_class broadcasting to (G, p, K, F); in numpy's order of a sum over the classes (`_sum_last`)."""
    K = counts.shape[2]
    if K >= 8:
        return np.ascontiguousarray(np.moveaxis(counts[..., None] * per_class, 2, -1)).sum(axis=-1)
    total = counts[:, :, 0, None] * per_class[:, :, 0]
    for k in range(1, K):
        total = total + counts[:, :, k, None] * per_class[:, :, k]
    return total


def stage_class_costs(model: ModelSpec, workload: Training, ctx: CostContext, bases: Bases,
                      dev: np.ndarray | None = None) -> tuple[np.ndarray, "_Primed | None"]:
    """(G, p, K, 6) layer-class costs on every stage of each strategy (`dev`: (G, p) stage device ids), from the
    search's primed table where it covers them (returned too), else from `class_cost_table`."""
    seq = workload.seq_len or model.seq_len
    dev = _stage_devices(bases) if dev is None else dev
    primed = ctx.memo.get(("primed", id(model), seq, workload.dtype))
    if primed is not None and primed.keys is bases.keys and dev.max() < len(primed.lut):
        ridx = primed.lut[dev, bases.key[:, None]]
        if not (ridx < 0).any():
            return take_rows(primed.table, ridx), primed
    ridx, requests = _requests(bases, dev, ctx)
    return take_rows(class_cost_table(model, ctx, workload, requests), ridx), None


def _rows_by_value(v: np.ndarray) -> list[tuple[int, slice | np.ndarray]]:
    """(value, rows holding it) for each distinct value of `v`; rows as a slice when all share one."""
    first = int(v[0])
    if (v == first).all():
        return [(first, slice(None))]
    return [(int(x), np.flatnonzero(v == x)) for x in np.unique(v)]


def _as_index(rows: slice | np.ndarray, n: int) -> np.ndarray:
    return np.arange(n) if isinstance(rows, slice) else rows


def _split_layers(model: ModelSpec, t_cls: np.ndarray, same_stage: np.ndarray, m: np.ndarray, bnd: _Boundary,
                  nb_bw: np.ndarray, nb_lat: np.ndarray, p: int, v: int, split: str, memo: dict | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut points (G, p*v + 1) of G groups sharing v, whether each is the optimal split, and the lower bound of
    the pipeline objective the mixed closed form gives (0 where it did not run). See `build_stage_batch`."""
    G = len(m)
    L = len(model.layers)
    _, cls_index = model.layer_classes
    cls_index = np.asarray(cls_index)
    chunks = p * v
    cuts = np.zeros((G, chunks + 1), dtype=np.int64)
    exact = np.ones(G, dtype=bool)
    mixed_lb = np.zeros(G)
    todo = np.arange(G)
    fast = todo if model.is_uniform else np.array([], dtype=np.int64)
    if len(fast):  # uniform model: closed forms, and every cut sends the same bytes
        T3 = np.take(take_rows(t_cls, fast), [cls_index[0], cls_index[1], cls_index[-1]], axis=2)
        same = same_stage[fast]
        if v == 1:
            first_cut = bnd.take(fast).at(np.array([1]))  # every cut sends what a block's input holds
            out = np.where(np.arange(p) < p - 1, p2p_s(first_cut, nb_bw[fast], nb_lat[fast]), 0.0)
            inn = np.zeros_like(out)
            inn[:, 1:] = p2p_s(first_cut, nb_bw[fast, :-1], nb_lat[fast, :-1])
            extra = out + inn
        else:
            T3 = np.tile(T3, (1, v, 1))  # chunk c runs on stage c % p
            extra = np.zeros((len(fast), chunks))
        if same.any():
            cuts[fast[same]] = _uniform_cuts_memo(T3[same], extra[same], L - 2, memo)
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
            out, inn = _p2p_matrices(bnd.row(g), nb_bw[g], nb_lat[g], p)
            res = partition(t_layer, weight=float(m[g] - 1), out_cost=out, in_cost=inn)
        else:
            res = partition(t_layer[np.arange(chunks) % p], weight=float(m[g] * v - 1))
        cuts[g] = res.boundaries if res.feasible else even_partition(L, chunks)
    return cuts, exact, mixed_lb


def _p2p_per_micro_batch(bnd: _Boundary, cuts: np.ndarray, nb_bw: np.ndarray, nb_lat: np.ndarray, p: int,
                         v: int) -> np.ndarray:
    """(G, p) stage-to-stage send time per micro-batch for G groups sharing v, from their cut points."""
    G = len(bnd.scale)
    if v > 1:  # every chunk boundary sends; bound by the largest activation
        worst = p2p_s(bnd.largest()[:, None], nb_bw[:, :-1], nb_lat[:, :-1]).max(axis=1)
        return np.repeat((2.0 * v * worst)[:, None], p, axis=1)
    out_b = bnd.at(cuts[:, 1:])  # bytes leaving stage j at its end
    in_b = bnd.at(cuts[:, :-1])
    p2p = np.zeros((G, p))
    p2p[:, :-1] += p2p_s(out_b[:, :-1], nb_bw[:, :-1], nb_lat[:, :-1])
    p2p[:, 1:] += p2p_s(in_b[:, 1:], nb_bw[:, :-1], nb_lat[:, :-1])
    return p2p


def _pipeline_lower_bound(t_cls: np.ndarray, cls_index: np.ndarray, K: int, m: np.ndarray, v: np.ndarray,
                          same_stage: np.ndarray) -> np.ndarray:
    """(G,) lower bound of the pipeline time over every split. t_min: each layer class on its fastest stage;
    stage j is at least f_j times slower on every class, so the slowest stage needs at least
    sum(t_min) / sum_j(1 / f_j) (all stages finishing together), and at least one layer's time. Where every
    stage runs on the same devices (`same_stage`), f_j = 1."""
    n_cls = np.bincount(cls_index, minlength=K).astype(float)
    m, v = m.astype(float), v.astype(float)
    mixed = np.flatnonzero(~same_stage)
    t_min = t_cls[:, 0, :].copy()  # (G, K)
    spread = np.full(len(t_cls), float(t_cls.shape[1]))  # sum_j 1 / f_j
    if len(mixed):
        t_mixed = t_cls[mixed]
        t_min[mixed] = t_mixed.min(axis=1)
        tm = t_min[mixed]
        present = (n_cls > 0)[None, None, :] & (tm[:, None, :] > 0)
        ratio = _min_last(np.where(present, t_mixed / np.where(tm > 0, tm, 1.0)[:, None, :], np.inf))  # (g, p)
        ratio = np.where(np.isfinite(ratio), np.maximum(ratio, 1.0), 1.0)
        spread[mixed] = (1.0 / ratio).sum(axis=1)
    lb_sum = _sum_last(t_min * n_cls)
    lb_max = np.maximum(_max_last(np.where(n_cls > 0, t_min, 0.0)), lb_sum / spread)
    return (m - 1.0 / v) * lb_max + lb_sum / v


# Reductions over a short last axis (layer classes): numpy reduces such an axis slowly, so these combine its
# slices instead, in numpy's own order (left to right below 8 terms; numpy's pairwise sum from 8 on).
def _sum_last(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] >= 8:
        return x.sum(axis=-1)
    total = x[..., 0].copy()
    for k in range(1, x.shape[-1]):
        total = total + x[..., k]
    return total


def _min_last(x: np.ndarray) -> np.ndarray:
    return np.minimum.reduce(list(np.moveaxis(x, -1, 0))) if x.shape[-1] < 8 else x.min(axis=-1)


def _max_last(x: np.ndarray) -> np.ndarray:
    return np.maximum.reduce(list(np.moveaxis(x, -1, 0))) if x.shape[-1] < 8 else x.max(axis=-1)


def _p2p_matrices(bnd: np.ndarray, nb_bw: np.ndarray, nb_lat: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(p, L + 1) cost of the forward send at a stage's end cut and the backward send at its start cut."""
    out = np.zeros((p, len(bnd)))
    inn = np.zeros((p, len(bnd)))
    if p > 1:
        sends = p2p_s(bnd[None, :], nb_bw[:p - 1, None], nb_lat[:p - 1, None])  # over the link after stage j
        out[:-1] = sends
        inn[1:] = sends
    return out, inn


def memory_aware_cuts(model: ModelSpec, cluster: Cluster, workload: Training, ctx: CostContext, s: Strategy,
                      usable: float = 1.0) -> tuple[int, ...] | None:
    """AMP's pipeline DP with memory limits for one strategy (its own ZeRO stage and schedule); None when no
    split fits (decided first by an exact reachability test, so hopeless strategies cost no DP)."""
    if s.virtual_stages > 1 or s.pp == 1:
        return None
    info = layout_info(cluster, s, workload, ctx)
    C = class_cost_table(model, ctx, workload, [(lk, s) for lk in info.links])  # (p, K, 6)
    return memory_aware_split(model, workload, ctx, info, C, s, s.dp, s.zero, s.schedule, usable)


def memory_aware_split(model: ModelSpec, workload: Training, ctx: CostContext, info: LayoutInfo, C: np.ndarray,
                       key: CostKey | Strategy, dp: int, zero: int, schedule: str, usable: float = 1.0
                       ) -> tuple[int, ...] | None:
    """`memory_aware_cuts` for one strategy given as its mesh layout, cost key (a `Strategy` will do), data
    parallelism, ZeRO stage and schedule, with its stages' layer-class costs C (p, K, 6)."""
    problems = memory_split_problems(model, workload, ctx, [info], C[None], [key], [dp], [zero], [schedule], usable)
    return memory_aware_splits(model, workload, problems)[0]


class MemorySplitProblems(NamedTuple):
    """R strategies' splits of layers under memory limits, all with p stages: per-stage layer times and bytes
    (R, p, L), what each stage holds besides its layers (R,) and what it may hold (R, p)."""

    infos: Sequence[LayoutInfo]
    keys: Sequence[CostKey | Strategy]
    m: np.ndarray  # (R,) micro-batches per step
    t_layer: np.ndarray
    layer_mem: np.ndarray
    reserved: np.ndarray
    caps: np.ndarray

    @property
    def budget(self) -> np.ndarray:
        """(R, p) bytes left to each stage's layers."""
        return self.caps - self.reserved[:, None]


def memory_split_problems(model: ModelSpec, workload: Training, ctx: CostContext, infos: Sequence[LayoutInfo],
                          C: np.ndarray, keys: Sequence[CostKey | Strategy], dp: Sequence[int], zero: Sequence[int],
                          schedule: Sequence[str], usable: float = 1.0) -> MemorySplitProblems:
    """The memory-aware split problems of R strategies with p stages (see `memory_aware_split`), given as their
    mesh layouts, cost keys, data parallelism, ZeRO stages and schedules, with layer-class costs C (R, p, K, 6)."""
    dp, zero = [int(d) for d in dp], [int(z) for z in zero]
    R, p = C.shape[:2]
    m = np.array([workload.global_batch // d // k.micro_batch for d, k in zip(dp, keys)])
    _, cls_index = model.layer_classes
    cls_index = np.asarray(cls_index)
    t_layer = (C[..., FWD] + C[..., BWD] + C[..., REC] + C[..., TPC] + C[..., EPC])[:, :, cls_index]
    act_layer = C[..., ACT][:, :, cls_index]
    seq = workload.seq_len or model.seq_len
    params = [_class_params_cached(model, k, seq, ctx) for k in keys]
    sb = static_bytes(workload)
    dense_bytes, expert_bytes = [], []  # bytes of model state per parameter, after ZeRO sharding
    for k, d, z in zip(keys, dp, zero):
        ways = max(d // k.ep, 1) if k.ep_mode == "dp" else d  # expert replication (see `expert_ways`)
        # ZeRO-z shards weights (z >= 3), gradients (z >= 2) and optimizer state (z >= 1) over the replicas
        wd, gd, od = (float(d) if z >= least else 1.0 for least in (3, 2, 1))
        we, ge, oe = (float(ways) if z >= least else 1.0 for least in (3, 2, 1))
        dense_bytes.append(sb.weights / wd + sb.gradients / gd + sb.optimizer / od)
        expert_bytes.append(sb.weights / we + sb.gradients / ge + sb.optimizer / oe)
    static = (np.array([c[0] for c in params])[:, cls_index] * np.array(dense_bytes)[:, None]
              + np.array([c[1] for c in params])[:, cls_index] * np.array(expert_bytes)[:, None])
    codes = np.array([[SCHEDULE_CODES[x]] for x in schedule])
    flight = in_flight(codes, p, m, np.ones(R, dtype=np.int64))[:, 0]  # (R, p)
    layer_mem = static[:, None, :] + flight[:, :, None] * act_layer
    head = model.layers[-1]
    if head.kind == "head" and head.tied:
        tied_bytes = [head.vocab * head.hidden / k.tp * b for k, b in zip(keys, dense_bytes)]
        layer_mem[:, 1:, -1] += np.array(tied_bytes)[:, None]
    reserved = _reserved(ctx.params.memory_reserved_bytes, np.array(zero)[:, None],
                         np.array([c[2] for c in params]), sb)[:, 0]
    caps = np.array([info.caps for info in infos]) * usable
    return MemorySplitProblems(infos=infos, keys=keys, m=m, t_layer=t_layer, layer_mem=layer_mem,
                               reserved=reserved, caps=caps)


def memory_aware_splits(model: ModelSpec, workload: Training, problems: MemorySplitProblems
                        ) -> list[tuple[int, ...] | None]:
    """`memory_aware_split` of each problem: the reachability test that rules out the hopeless ones runs for
    all of them at once, the DP for the rest."""
    fits = splits_fit(problems.layer_mem, problems.budget)
    return [_solve_memory_split(model, workload, problems, r) if ok else None for r, ok in enumerate(fits.tolist())]


def _solve_memory_split(model: ModelSpec, workload: Training, problems: MemorySplitProblems, r: int
                        ) -> tuple[int, ...] | None:
    """AMP's pipeline DP under problem r's memory limits: the cut points, or None when no split fits."""
    info, key = problems.infos[r], problems.keys[r]
    p = len(info.links)
    bnd = _boundary_bytes(model, workload, np.array([key.micro_batch]), np.array([key.tp]))[0]
    out, inn = _p2p_matrices(bnd, info.nb_bw, info.nb_lat, p)
    res = partition(problems.t_layer[r], weight=float(problems.m[r] - 1), out_cost=out, in_cost=inn,
                    layer_mem=problems.layer_mem[r], mem_fixed=np.full(p, problems.reserved[r]),
                    mem_cap=problems.caps[r])
    return res.boundaries if res.feasible else None


def _reserved(base: float, zero: np.ndarray, max_layer_params: np.ndarray, sb: StaticBytes) -> np.ndarray:
    """(G, V): fixed reserve, plus the all-gathered weights of the largest layer (current and prefetched) under
    ZeRO-3. `zero` is (V,) or (G, V)."""
    z = np.asarray(zero)
    z = z[None, :] if z.ndim == 1 else z
    return base + np.where(z >= 3, 2 * np.asarray(max_layer_params)[:, None] * sb.weights, 0.0)


@dataclass(frozen=True)
class Assembled:
    """Prices of V variants (ZeRO stage, schedule) over each of G splits: (G, V) or (G, V, p).

    Model state and data-parallel sync depend only on the ZeRO stage, activations only on the schedule: they
    are kept once per distinct ZeRO stage (`zero_of`: the index of each variant's) and per distinct schedule
    (`schedule_of`), and spread over the V variants only where asked (`stage_mem_at`, `memory`). Weights,
    gradients and optimizer state are kept unsharded and sharded (`state_cases`, (G, 2, p)); `zero` (G, Z)
    says which each ZeRO stage uses."""

    time_s: np.ndarray
    pipeline_s: np.ndarray
    bubble_s: np.ndarray
    dp_exposed_s: np.ndarray
    optimizer_s: np.ndarray
    slow: np.ndarray  # (G,) index of the slowest stage
    zero: np.ndarray  # (G, Z) the distinct ZeRO stages
    state_cases: dict  # weights, gradients, optimizer: (G, 2, p) bytes unsharded, sharded
    reserved_by_zero: np.ndarray  # (G, Z, 1) bytes
    static_by_zero: np.ndarray  # (G, Z, p) weights + gradients + optimizer
    dp_cases: np.ndarray  # (G, 3, p) data-parallel sync time of each pattern (see `assemble`)
    sync: np.ndarray  # (Z,) or (G, Z) the pattern of each ZeRO stage
    activations_by_schedule: np.ndarray  # (G, S, p) bytes
    flight_by_schedule: np.ndarray  # (G, S, p) micro-batches in flight (`in_flight`)
    zero_of: np.ndarray  # (V,)
    schedule_of: np.ndarray  # (V,)

    def stage_mem_at(self, g: np.ndarray, var: np.ndarray) -> np.ndarray:
        """(n, p) bytes on each stage of group g[i] under variant var[i]."""
        z, s = self.zero_of[var], self.schedule_of[var]
        return (take_pairs(self.static_by_zero, g, z) + take_pairs(self.activations_by_schedule, g, s)
                + take_pairs(self.reserved_by_zero, g, z))

    @cached_property
    def stage_mem(self) -> np.ndarray:
        """(G, V, p) bytes on each stage."""
        zi, si = self.zero_of, self.schedule_of
        return self.static_by_zero[:, zi] + self.activations_by_schedule[:, si] + self.reserved_by_zero[:, zi]

    @cached_property
    def memory(self) -> dict:
        """Each memory term, (G, V, p) bytes."""
        zi, si = self.zero_of, self.schedule_of
        shape = self.stage_mem.shape
        terms = {name: _pick(self.state_cases[name], (self.zero >= least).astype(np.int64))[:, zi]
                 for name, least in _SHARDED_FROM.items()}
        return {**terms, "activations": self.activations_by_schedule[:, si], "kv_cache": np.zeros(shape),
                "reserved": np.broadcast_to(self.reserved_by_zero[:, zi], shape)}

    @cached_property
    def dp_total_s(self) -> np.ndarray:
        """(G, V, p) data-parallel sync time of each stage, before overlap."""
        return _pick(self.dp_cases, self.sync)[:, self.zero_of]


# ZeRO stage from which each kind of model state is sharded over the data-parallel group
_SHARDED_FROM = {"weights": 3, "gradients": 2, "optimizer": 1}


def assemble(batch: StageBatch, workload: Training, ctx: CostContext, zero: np.ndarray, schedule: np.ndarray
             ) -> Assembled:
    """Price V (ZeRO stage, schedule) variants per group: `zero` and `schedule` are (V,) shared by all groups,
    or (G, V) for per-group variants. Model state and data-parallel sync depend only on the ZeRO stage and
    activations only on the schedule, so shared variants are computed once per distinct value of each; and
    each of them takes one of a few values (sharded or not, one sync pattern of three), worked out once."""
    prm = ctx.params
    G, p = batch.stage_t.shape
    zero, schedule = np.asarray(zero), np.asarray(schedule)
    if zero.ndim == 1 and schedule.ndim == 1:
        zu, zi = np.unique(zero, return_inverse=True)
        su, si = np.unique(schedule, return_inverse=True)
        zero, schedule = np.broadcast_to(zu, (G, len(zu))), su
        by_zero = zu  # the same for every group
    else:
        zero = np.broadcast_to(zero, (G, zero.shape[-1])) if zero.ndim == 1 else zero
        schedule = np.broadcast_to(schedule, (G, schedule.shape[-1])) if schedule.ndim == 1 else schedule
        zi = si = np.arange(zero.shape[1])
        by_zero = zero
    V = len(zi)
    sb = static_bytes(workload)
    dp = batch.bases.dp.astype(float)
    dense = batch.dense_params[:, None, :]
    expert = batch.expert_params[:, None, :]
    flight = in_flight(schedule, p, batch.m, batch.v)  # (G, S, p)
    reserved = _reserved(prm.memory_reserved_bytes, zero, batch.max_layer_params, sb)[:, :, None]
    has_experts = bool(batch.expert_params.any())
    shards = np.stack([np.ones(G), dp], axis=1)[:, :, None]  # (G, 2, 1): unsharded, sharded
    if has_experts:
        ew = batch.bases.expert_ways.astype(float)
        expert_shards = np.stack([np.ones(G), ew], axis=1)[:, :, None]
        state = {"weights": dense * sb.weights / shards + expert * sb.weights / expert_shards,
                 "gradients": dense * sb.gradients / shards + expert * sb.gradients / expert_shards,
                 "optimizer": dense * sb.optimizer / shards + expert * sb.optimizer / expert_shards}
        opt_params = dense / shards + expert / expert_shards
    else:  # no experts: the expert terms add exact zeros
        state = {"weights": dense * sb.weights / shards, "gradients": dense * sb.gradients / shards,
                 "optimizer": dense * sb.optimizer / shards}
        opt_params = dense / shards
    sharded = {name: (by_zero >= least).astype(np.int64) for name, least in _SHARDED_FROM.items()}
    static = (_pick(state["weights"], sharded["weights"]) + _pick(state["gradients"], sharded["gradients"])
              + _pick(state["optimizer"], sharded["optimizer"]))
    activations = batch.act_mb[:, None, :] * flight

    # data-parallel sync: all-reduce (ZeRO-0), reduce-scatter + all-gather (1, 2), per micro-batch (3)
    gb = _WEIGHT_BYTES[workload.grad_dtype or workload.dtype]
    bw, lat = batch.dp_bw[:, None, :], batch.dp_lat[:, None, :]
    m = batch.m[:, None, None].astype(float)
    kinds = ((dense, dp[:, None, None]), (expert, ew[:, None, None])) if has_experts else ((dense, dp[:, None, None]),)
    dp_cases = 0.0
    for count, ways in kinds:  # without experts their term adds exact zeros
        ar = all_reduce_s(count * gb, ways, bw, lat)
        rs = reduce_scatter_s(count * gb, ways, bw, lat)
        ag = all_gather_s(count * sb.weights, ways, bw, lat)
        cases = np.concatenate([ar, rs + ag, m * (2 * ag + rs)], axis=1)  # (G, 3, p)
        dp_cases = dp_cases + np.where(count > 0, cases, 0.0)  # no parameters of a kind: no collective, no latency
    sync = np.where(by_zero == 0, 0, np.where(by_zero <= 2, 1, 2))  # which sync pattern each ZeRO stage uses
    windows = prm.dp_overlap * np.concatenate([batch.bwd_mb[:, None, :], m * batch.compute_mb[:, None, :]], axis=1)
    # exposed sync of each pattern; ZeRO-3 (pattern 2) overlaps with the whole pipeline, the others with backward
    exposed_cases = np.maximum(dp_cases - windows[:, [0, 0, 1]], 0.0).max(axis=2)  # (G, 3)
    exposed = np.take(_pick(exposed_cases[:, :, None], sync)[:, :, 0], zi, axis=1)
    opt_time = opt_params * prm.optimizer_bytes_per_param / (batch.mem_gbps[:, None, :] * 1e9)  # (G, 2, p)
    opt_cases = opt_time.max(axis=2) + batch.tied_sync_s[:, None]
    opt_total = np.take(_pick(opt_cases[:, :, None], sharded["optimizer"])[:, :, 0], zi, axis=1)
    slow = np.argmax(batch.stage_t, axis=1)
    t_max = batch.stage_t.max(axis=1)
    bubble = (batch.stage_t.sum(axis=1) - t_max) / batch.v
    pipe = batch.m * t_max + bubble
    step = pipe[:, None] + exposed + opt_total + prm.step_overhead_s
    return Assembled(time_s=step, pipeline_s=np.broadcast_to(pipe[:, None], (G, V)),
                     bubble_s=np.broadcast_to(bubble[:, None], (G, V)), dp_exposed_s=exposed,
                     optimizer_s=opt_total, slow=slow, zero=zero, state_cases=state, reserved_by_zero=reserved,
                     static_by_zero=static, dp_cases=dp_cases, sync=sync,
                     activations_by_schedule=activations, flight_by_schedule=flight, zero_of=zi, schedule_of=si)


def breakdown_arrays(batch: StageBatch, a: Assembled) -> dict[str, np.ndarray]:
    """The additive time terms, (G, V): they sum to `a.time_s`."""
    G, V = a.time_s.shape
    return breakdown_at(batch, a, np.repeat(np.arange(G), V), np.tile(np.arange(V), G), shape=(G, V))


def breakdown_at(batch: StageBatch, a: Assembled, g: np.ndarray, var: np.ndarray,
                 shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
    """The additive time terms of group g[i] under variant var[i], (n,) (or `shape`): they sum to its time."""
    m = batch.m.astype(float)
    at_slowest = np.arange(batch.G) * batch.pp + a.slow  # flat index of each group's slowest stage

    def per_group(x: np.ndarray) -> np.ndarray:  # per micro-batch on the slowest stage, times micro-batches
        return (m * np.take(x, at_slowest))[g]

    time_s = take_pairs(a.time_s, g, var)
    pipeline = a.pipeline_s[:, 0][g]
    exposed = take_pairs(a.dp_exposed_s, g, var)
    optimizer = take_pairs(a.optimizer_s, g, var)
    out = {
        "compute_s": per_group(batch.compute_mb), "tp_comm_s": per_group(batch.tp_mb),
        "ep_comm_s": per_group(batch.ep_mb), "pp_comm_s": per_group(batch.p2p_mb),
        "bubble_s": a.bubble_s[:, 0][g], "dp_comm_exposed_s": exposed, "optimizer_s": optimizer,
        "overhead_s": time_s - pipeline - exposed - optimizer,
    }
    return out if shape is None else {k: v.reshape(shape) for k, v in out.items()}


def model_flops_per_step(model: ModelSpec, workload: Training) -> float:
    seq = workload.seq_len or model.seq_len
    per_class = [model_flops_per_token(lay, seq) * token_count(lay, seq) for lay in model.layer_classes[0]]
    return 3.0 * workload.global_batch * sum(_per_layer(model, per_class))


def _per_layer(model: ModelSpec, per_class: list[float]) -> list[float]:
    """A value per layer class spread over the model's layers, in order (summing it adds layer by layer, as a
    loop over the layers would)."""
    return [per_class[k] for k in model.layer_classes[1]]


def recompute_flops_per_sample(model: ModelSpec, recompute: str, seq: int) -> float:
    """Forward FLOPs executed again per sample by activation recompute (full: whole blocks; selective:
    the attention core)."""
    if recompute == "none":
        return 0.0
    per_class = []
    for lay in model.layer_classes[0]:
        tokens = token_count(lay, seq)
        span = lay.attention_span or tokens
        if lay.kind != "transformer":
            per_class.append(None)
        elif recompute == "full":
            per_class.append(model_flops_per_token(lay, seq) * tokens)
        else:
            per_class.append(attention_flops_per_token(lay, span) * tokens)
    total = 0.0
    for x in _per_layer(model, per_class):
        if x is not None:
            total += x
    return total


def peak_flops(cluster: Cluster, dtype: str) -> float:
    """Sum of every GPU's peak rate for `dtype` (FLOP/s), GPU by GPU; GPUs without one count nothing."""
    gpus = cluster.gpus
    rates: dict[int, float | None] = {}  # by GPU spec; clusters repeat a few specs many times
    for g in {id(g): g for g in gpus}.values():
        try:
            rates[id(g)] = g.peak_tflops(dtype) * 1e12
        except Exception:
            rates[id(g)] = None
    per_gpu = [rates[id(g)] for g in gpus]
    return functools.reduce(operator.add, (r for r in per_gpu if r is not None), 0.0)


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
    cuts = batch.cuts_of(g)
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
