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


@dataclass(frozen=True)
class PartitionResult:
    boundaries: tuple[int, ...]  # p + 1 cut points, 0 ... L
    objective: float
    stage_costs: tuple[float, ...]

    @property
    def feasible(self) -> bool:
        return np.isfinite(self.objective)


def _stage_matrices(layer_time: np.ndarray, out_cost: np.ndarray, in_cost: np.ndarray, layer_mem: np.ndarray,
                    mem_fixed: np.ndarray, mem_cap: np.ndarray) -> np.ndarray:
    """C[j, a, b] for a < b (inf elsewhere and where stage j would not fit memory)."""
    p, L = layer_time.shape
    zeros = np.zeros((p, 1))
    P = np.concatenate([zeros, np.cumsum(layer_time, axis=1)], axis=1)  # (p, L+1)
    M = np.concatenate([zeros, np.cumsum(layer_mem, axis=1)], axis=1)
    C = P[:, None, :] - P[:, :, None] + out_cost[:, None, :] + in_cost[:, :, None]
    mem = M[:, None, :] - M[:, :, None] + mem_fixed[:, None, None]
    a = np.arange(L + 1)
    valid = (a[:, None] < a[None, :])[None, :, :] & (mem <= mem_cap[:, None, None] * (1 + 1e-12))
    return np.where(valid, C, _INF)


def _bottleneck(C: np.ndarray) -> float:
    p, n, _ = C.shape
    g = np.full(n, _INF)
    g[0] = 0.0
    for j in range(p):
        g = np.min(np.maximum(g[:, None], C[j]), axis=0)
    return float(g[-1])


def _min_sum(C: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Least total cost with every stage <= threshold, for each threshold; plus argmins for backtracking."""
    p, n, _ = C.shape
    f = np.full((len(thresholds), n), _INF)
    f[:, 0] = 0.0
    choices = []
    for j in range(p):
        Cj = np.where(C[j][None, :, :] <= thresholds[:, None, None] * (1 + 1e-12), C[j][None, :, :], _INF)
        cand = f[:, :, None] + Cj  # (T, a, b)
        arg = np.argmin(cand, axis=1)
        f = np.take_along_axis(cand, arg[:, None, :], axis=1)[:, 0, :]
        choices.append(arg)
    return f[:, -1], choices


def _backtrack(choices: list[np.ndarray], k: int, n: int) -> tuple[int, ...]:
    b = n - 1
    cuts = [b]
    for j in range(len(choices) - 1, -1, -1):
        b = int(choices[j][k, b])
        cuts.append(b)
    return tuple(reversed(cuts))


def partition(layer_time: np.ndarray, *, weight: float, out_cost: np.ndarray | None = None,
              in_cost: np.ndarray | None = None, layer_mem: np.ndarray | None = None,
              mem_fixed: np.ndarray | None = None, mem_cap: np.ndarray | None = None,
              max_thresholds: int = 4096) -> PartitionResult:
    """Best contiguous split of L layers into p non-empty stages.

    layer_time: (p, L) time of each layer on each stage's devices.
    weight: A in A * max + sum (micro-batches - 1 for 1F1B and GPipe).
    out_cost, in_cost: (p, L + 1) boundary costs (zeros by default).
    layer_mem: (p, L) bytes of each layer on each stage; mem_fixed, mem_cap: (p,).
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
    C = _stage_matrices(layer_time, out_cost, in_cost, layer_mem, mem_fixed, mem_cap)
    t_star = _bottleneck(C)
    if not np.isfinite(t_star):
        return PartitionResult((), _INF, ())
    s_inf, _ = _min_sum(C, np.array([_INF]))
    s_inf = float(s_inf[0])
    sums, choices = _min_sum(C, np.array([t_star]))
    best_obj = weight * t_star + float(sums[0])
    best = (choices, 0)
    if weight > 0:
        hi = (best_obj - s_inf) / weight
        values = np.unique(C[np.isfinite(C)])
        cand = values[(values > t_star * (1 + 1e-12)) & (values <= hi * (1 + 1e-12))]
        for start in range(0, min(len(cand), max_thresholds), 256):
            batch = cand[start:start + 256]
            if len(batch) == 0 or batch[0] > hi * (1 + 1e-12):
                break
            sums, choices = _min_sum(C, batch)
            objs = weight * batch + sums
            k = int(np.argmin(objs))
            if objs[k] < best_obj - 1e-15:
                best_obj = float(objs[k])
                best = (choices, k)
                hi = (best_obj - s_inf) / weight
    else:
        sums, choices = _min_sum(C, np.array([_INF]))
        best_obj = float(sums[0])
        best = (choices, 0)
    cuts = _backtrack(best[0], best[1], L + 1)
    costs = tuple(float(C[j, cuts[j], cuts[j + 1]]) for j in range(p))
    return PartitionResult(cuts, best_obj, costs)


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


def even_partition(num_layers: int, p: int) -> tuple[int, ...]:
    """Cut points that split `num_layers` entries into p nearly equal stages (larger stages first)."""
    base, extra = divmod(num_layers, p)
    cuts = [0]
    for j in range(p):
        cuts.append(cuts[-1] + base + (1 if j < extra else 0))
    return tuple(cuts)
