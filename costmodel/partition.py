"""Split consecutive layers into pipeline stages: exact dynamic programming (AMP's objective).

Stage j covering layers [a, b) costs
    C_j(a, b) = sum of its layers' times on stage j's devices + out_j[b] + in_j[a]
(out: sending activations to the next stage, in: sending gradients back) and
must fit memory: sum of its layers' bytes on stage j + fixed_j <= cap_j.

Objective: A * max_j C_j + sum_j C_j, which is the 1F1B/GPipe step time with
A = micro-batches - 1. Exact: for a threshold T, a DP gives the least sum with
every stage <= T; the optimum is A * T + S(T) minimised over the finitely many
stage costs T. The search starts at the bottleneck optimum T* and stops at
(best - S_inf) / A, which for uniform layers is T* itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_INF = np.inf
_TOL = 1 + 1e-12
# Work arrays are sized so one (thresholds, L+1, band) temporary stays near 128 MB of float64.
_BATCH_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class PartitionResult:
    boundaries: tuple[int, ...]  # p + 1 cut points, 0 ... L
    objective: float
    stage_costs: tuple[float, ...]

    @property
    def feasible(self) -> bool:
        return np.isfinite(self.objective)


class _Stages:
    """Stage costs in band form: G[j][b, d - 1] is the cost of stage j covering layers [b - d, b), inf where
    that range starts before layer 0 or does not fit stage j's memory. Only lengths d <= w are kept: no stage
    of a split whose stages all cost <= T is longer than `width(T)`, so DPs under a threshold need only the
    band, O(p L w) instead of O(p L^2) (a 1,000-layer model over 256 stages has w of about 8)."""

    def __init__(self, layer_time, out_cost, in_cost, layer_mem, mem_fixed, mem_cap):
        self.p, self.L = layer_time.shape
        zeros = np.zeros((self.p, 1))
        self.P = np.concatenate([zeros, np.cumsum(layer_time, axis=1)], axis=1)  # (p, L+1)
        self.M = np.concatenate([zeros, np.cumsum(layer_mem, axis=1)], axis=1)
        self.out, self.inn = out_cost, in_cost
        self.fixed, self.cap = mem_fixed, mem_cap * _TOL
        # the k cheapest layers of each stage bound how many layers fit under a threshold or in memory
        self.min_time_prefix = np.concatenate([zeros, np.cumsum(np.sort(layer_time, axis=1), axis=1)], axis=1)
        self.min_mem_prefix = np.concatenate([zeros, np.cumsum(np.sort(layer_mem, axis=1), axis=1)], axis=1)
        self._band: np.ndarray | None = None

    def width(self, threshold: float) -> int:
        longest = self.L - self.p + 1
        by_mem = (self.min_mem_prefix + self.fixed[:, None] <= self.cap[:, None]).sum(axis=1) - 1
        w = int(by_mem.max())
        if np.isfinite(threshold):
            w = min(w, int(((self.min_time_prefix <= threshold * _TOL).sum(axis=1) - 1).max()))
        return max(1, min(w, longest))

    def band(self, w: int) -> np.ndarray:
        """(p, L+1, w) stage costs. The widest band asked so far is kept and narrower ones are its leading
        columns (column d - 1 does not depend on the width)."""
        if self._band is None or self._band.shape[2] < w:
            ends = (slice(None), slice(None), None)  # stage j ends at b: (p, L+1, 1)
            cost = self.P[ends] - _before(self.P, w, 0.0) + self.out[ends] + _before(self.inn, w, 0.0)
            mem = self.M[ends] - _before(self.M, w, 0.0) + self.fixed[:, None, None]
            ok = np.arange(self.L + 1)[:, None] >= np.arange(1, w + 1)[None, :]  # the stage starts at >= 0
            self._band = np.where(ok[None] & (mem <= self.cap[:, None, None]), cost, _INF)
        return self._band[:, :, :w]

    def cost(self, j: int, a: int, b: int) -> float:
        if b <= a or self.M[j, b] - self.M[j, a] + self.fixed[j] > self.cap[j]:
            return _INF
        return float(self.P[j, b] - self.P[j, a] + self.out[j, b] + self.inn[j, a])


def _before(f: np.ndarray, w: int, fill: float) -> np.ndarray:
    """f[..., b - d] for d = 1..w as a (..., n, w) view, `fill` where b - d < 0."""
    padded = np.concatenate([np.full(f.shape[:-1] + (w,), fill), f], axis=-1)
    n = f.shape[-1]
    return np.lib.stride_tricks.sliding_window_view(padded, w, axis=-1)[..., :n, ::-1]


class _Previous:
    """A DP row f (..., n) and the view f[..., b - d] for d = 1..w as (..., n, w), inf where b - d < 0: the
    view is made once and shows whatever row is `set` last."""

    def __init__(self, shape: tuple[int, ...], w: int):
        self._padded = np.full(shape[:-1] + (w + shape[-1],), _INF)
        self._w = w
        self.view = np.lib.stride_tricks.sliding_window_view(self._padded, w, axis=-1)[..., :shape[-1], ::-1]

    def set(self, f: np.ndarray) -> None:
        self._padded[..., self._w:] = f


def _bottleneck(st: _Stages, w: int) -> float:
    """Least possible largest stage cost (min-max DP), using stages of at most w layers."""
    G = st.band(w)
    g = np.full(st.L + 1, _INF)
    g[0] = 0.0
    prev = _Previous(g.shape, w)
    for j in range(st.p):
        prev.set(g)
        g = np.min(np.maximum(prev.view, G[j]), axis=1)
    return float(g[-1])


def _min_sum(st: _Stages, thresholds: np.ndarray, w: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Least total cost with every stage <= threshold, for each threshold; plus the chosen stage lengths
    (argmin d - 1, per stage) for backtracking."""
    G = st.band(w)
    n = st.L + 1
    f = np.full((len(thresholds), n), _INF)
    f[:, 0] = 0.0
    lim = (thresholds * _TOL)[:, None, None]
    choices = []
    prev = _Previous(f.shape, w)
    for j in range(st.p):
        prev.set(f)
        cand = prev.view + np.where(G[j][None] <= lim, G[j][None], _INF)  # (T, n, w)
        choices.append(np.argmin(cand, axis=2))
        f = cand.min(axis=2)  # the value argmin picks
    return f[:, -1], choices


def _backtrack(choices: list[np.ndarray], k: int, n: int) -> tuple[int, ...]:
    b = n - 1
    cuts = [b]
    for j in range(len(choices) - 1, -1, -1):
        b = b - 1 - int(choices[j][k, b])
        cuts.append(b)
    return tuple(reversed(cuts))


def partition(layer_time: np.ndarray, *, weight: float, out_cost: np.ndarray | None = None,
              in_cost: np.ndarray | None = None, layer_mem: np.ndarray | None = None,
              mem_fixed: np.ndarray | None = None, mem_cap: np.ndarray | None = None,
              max_thresholds: int = 4096) -> PartitionResult:
    """Best contiguous split of L layers into p non-empty stages.

    layer_time: (p, L) time of each layer on each stage's devices (>= 0).
    weight: A in A * max + sum (micro-batches - 1 for 1F1B and GPipe).
    out_cost, in_cost: (p, L + 1) boundary costs (>= 0, zeros by default).
    layer_mem: (p, L) bytes of each layer on each stage (>= 0); mem_fixed, mem_cap: (p,).
    """
    layer_time = np.asarray(layer_time, dtype=float)
    p, L = layer_time.shape
    if p > L:
        return PartitionResult((), _INF, ())
    out_cost = np.zeros((p, L + 1)) if out_cost is None else np.asarray(out_cost, dtype=float)
    in_cost = np.zeros((p, L + 1)) if in_cost is None else np.asarray(in_cost, dtype=float)
    layer_mem = np.zeros((p, L)) if layer_mem is None else np.asarray(layer_mem, dtype=float)
    mem_fixed = np.zeros(p) if mem_fixed is None else np.asarray(mem_fixed, dtype=float)
    mem_cap = np.full(p, _INF) if mem_cap is None else np.asarray(mem_cap, dtype=float)
    st = _Stages(layer_time, out_cost, in_cost, layer_mem, mem_fixed, mem_cap)
    # an even split, where it fits, bounds the bottleneck and so the band the exact DP needs
    even = even_partition(L, p)
    t_even = max(st.cost(j, even[j], even[j + 1]) for j in range(p))
    t_star = _bottleneck(st, st.width(t_even))
    if not np.isfinite(t_star):
        return PartitionResult((), _INF, ())
    if weight > 0:
        best_obj, cuts = _threshold_search(st, t_star, float(weight), max_thresholds, layer_time)
    else:
        sums, choices = _min_sum(st, np.array([_INF]), st.width(_INF))
        best_obj, cuts = float(sums[0]), _backtrack(choices, 0, L + 1)
    costs = tuple(st.cost(j, cuts[j], cuts[j + 1]) for j in range(p))
    return PartitionResult(cuts, best_obj, costs)


def _threshold_search(st: _Stages, t_star: float, weight: float, max_thresholds: int, layer_time: np.ndarray
                      ) -> tuple[float, tuple[int, ...]]:
    """min over thresholds T of weight * T + S(T), S(T) the least sum with every stage <= T.

    The optimum's T is one of the stage costs in [t_star, hi], hi = (best so far - a lower bound on S) /
    weight. S is non-increasing in T, so on an interval of candidate thresholds [T_lo, T_hi] whose ends are
    evaluated, no interior T scores below weight * T_(lo+1) + S(T_hi): intervals whose bound cannot beat
    the best so far are dropped unevaluated, the rest are split at a few interior points and evaluated in
    one batch. Exact over the first `max_thresholds` candidates, with far fewer DPs than trying each one
    when layer times are uneven.
    """
    n = st.L + 1
    w = st.width(t_star)
    sums, choices = _min_sum(st, np.array([t_star]), w)
    best_obj = weight * t_star + float(sums[0])
    best_cuts = _backtrack(choices, 0, n)
    # every layer runs on some stage, and every stage pays one send and one receive
    s_low = float(layer_time.min(axis=0).sum() + st.out.min(axis=1).sum() + st.inn.min(axis=1).sum())
    hi = (best_obj - s_low) / weight
    w = st.width(hi)
    G = st.band(w)
    values = np.unique(G[(G > t_star * _TOL) & (G <= hi * _TOL)])
    cand = np.concatenate([[t_star], values])[:max_thresholds + 1]
    step = int(max(1, min(256, _BATCH_ELEMENTS // (n * w))))
    known = {0: float(sums[0])}

    def evaluate(idx: list[int]) -> None:
        nonlocal best_obj, best_cuts
        for start in range(0, len(idx), step):
            chunk = idx[start:start + step]
            sums, choices = _min_sum(st, cand[chunk], w)
            objs = weight * cand[chunk] + sums
            known.update(zip(chunk, sums.tolist()))
            k = int(np.argmin(objs))
            if objs[k] < best_obj - 1e-15:
                best_obj = float(objs[k])
                best_cuts = _backtrack(choices, k, n)

    last = len(cand) - 1
    if last > 0:
        evaluate([last])
    intervals = [(0, last)] if last > 1 else []
    while intervals:
        bound = (best_obj - s_low) / weight * _TOL
        live = [(a, b) for a, b in intervals
                if b - a > 1 and cand[a + 1] <= bound and weight * cand[a + 1] + known[b] < best_obj - 1e-15]
        if not live:
            break
        per = max(1, min(16, step * 4 // len(live)))
        points, intervals = [], []
        for a, b in live:
            inner = [int(i) for i in np.unique(np.linspace(a, b, per + 2).round().astype(int)[1:-1]) if a < i < b]
            points += inner
            ends = [a, *inner, b]
            intervals += list(zip(ends[:-1], ends[1:]))
        evaluate(points)
    return best_obj, best_cuts


def uniform_partition(first_s: float, block_s: float, last_s: float, num_blocks: int, stage_extra_s: np.ndarray
                      ) -> PartitionResult | None:
    """Exact bottleneck split of [first, num_blocks x identical block, last] into p stages, where stage j
    also pays the constant `stage_extra_s[j]` (its stage-to-stage sends).

    Every split has the same total, so the bottleneck optimum is the optimum of A * max + sum for any A.
    Binary search over the finitely many possible stage times; O(p log(p N)). The result's `objective` is
    the bottleneck stage time. Returns None when no split into non-empty stages exists.
    """
    extra = np.asarray(stage_extra_s, dtype=float)
    p = len(extra)
    N = num_blocks
    if p > N + 2:
        return None
    base = extra.copy()
    base[0] += first_s
    base[-1] += last_s
    lo = np.ones(p, dtype=np.int64)
    lo[0] = 0
    lo[-1] = 0 if p > 1 else N
    if p == 1:
        t = float(base[0] + N * block_s)
        return PartitionResult((0, N + 2), t, (t,))
    if lo.sum() > N:
        return None
    if block_s <= 0:
        k = lo.copy()
        k[0] += N - lo.sum()
    else:
        cand = np.unique((base[:, None] + np.arange(N + 1)[None, :] * block_s).ravel())

        def feasible(t: float) -> bool:
            kmax = np.floor((t - base) / block_s + 1e-9)
            return bool((kmax >= lo).all() and np.minimum(kmax, N).sum() >= N)

        lo_i, hi_i = 0, len(cand) - 1
        if not feasible(cand[hi_i]):
            return None
        while lo_i < hi_i:
            mid = (lo_i + hi_i) // 2
            if feasible(cand[mid]):
                hi_i = mid
            else:
                lo_i = mid + 1
        t_star = cand[lo_i]
        kmax = np.minimum(np.floor((t_star - base) / block_s + 1e-9).astype(np.int64), N)
        k = np.zeros(p, dtype=np.int64)
        left = N
        for j in range(p):
            k[j] = min(kmax[j], left - lo[j + 1:].sum())
            left -= k[j]
    cuts = [0, 1 + int(k[0])]
    for j in range(1, p):
        cuts.append(cuts[-1] + int(k[j]))
    cuts[-1] += 1  # the last entry (head) belongs to the last stage
    costs = tuple(float(base[j] + k[j] * block_s) for j in range(p))
    return PartitionResult(tuple(cuts), max(costs), costs)


def split_fits(need: np.ndarray, budget: np.ndarray) -> bool:
    """Whether layers, in order, fill len(budget) contiguous non-empty stages with stage j's layers within
    budget[j]. `need`: (L,) bytes per layer, or (p, L) when a layer costs each stage differently (activations
    in flight differ by stage). Exact: the layer boundaries reachable after each stage, as a boolean array
    (taking the longest prefix per stage is not: a small stage early can leave room for a large one later)."""
    budget = np.asarray(budget, dtype=float)
    return bool(splits_fit(np.asarray(need, dtype=float)[None], budget[None])[0])


def splits_fit(need: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """`split_fits` of R problems with the same number of stages and layers at once: need (R, p, L) or
    (R, L) bytes (>= 0), budget (R, p); (R,) bool."""
    need, budget = np.asarray(need, dtype=float), np.asarray(budget, dtype=float)
    R, p = budget.shape
    L = np.shape(need)[-1]
    prefix = np.zeros((p, R, L + 1))  # stage-major, so each stage's rows are one block
    per_stage = need[:, None] if need.ndim == 2 else need
    np.cumsum(np.broadcast_to(np.moveaxis(per_stage, 1, 0), (p, R, L)), axis=2, out=prefix[..., 1:])
    # furthest boundary a stage starting at each boundary can reach (its layers' bytes within the budget)
    ends = _count_at_most(prefix, prefix + budget.T[..., None] * _TOL).reshape(p, -1) - 1
    at = np.arange(L + 1)
    row_start = np.arange(R)[:, None] * (L + 1)
    reach = np.broadcast_to(at == 0, (R, L + 1))
    for j in range(p):
        # the furthest end never decreases with the start, so boundary b is reachable iff the last reachable
        # boundary before b reaches it
        last = np.maximum.accumulate(np.where(reach, at, -1), axis=1)[:, :-1]  # before b = 1..L
        reach = np.zeros((R, L + 1), dtype=bool)
        reach[:, 1:] = (last >= 0) & (np.take(ends[j], np.maximum(last, 0) + row_start) >= at[1:])
    return reach[:, L]


def _count_at_most(rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """For rows sorted ascending along the last axis: how many of a row's values are <= each q (the same
    shape as rows), i.e. searchsorted(row, q, side="right") row by row, from one sort of each row merged with
    its queries (stable, so on ties the row's value comes first)."""
    n = rows.shape[-1]
    order = np.argsort(np.concatenate([rows, q], axis=-1), axis=-1, kind="stable")
    seen = np.cumsum(order < n, axis=-1)  # row values at or before each sorted position
    out = np.empty_like(seen)
    np.put_along_axis(out, order, seen, axis=-1)
    return out[..., n:]


def even_partition(num_layers: int, p: int) -> tuple[int, ...]:
    """Cut points that split `num_layers` entries into p nearly equal stages (larger stages first)."""
    base, extra = divmod(num_layers, p)
    cuts = [0]
    for j in range(p):
        cuts.append(cuts[-1] + base + (1 if j < extra else 0))
    return tuple(cuts)
