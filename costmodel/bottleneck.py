"""The least bottleneck stage time of a split of N identical blocks over p stages, for G groups at once.

Stage j holding k_j blocks takes base_j + k_j * c_j. A threshold t admits
    kmax_j(t) = min(floor((t - base_j) / c_j + 1e-9), N)
blocks on stage j; t is feasible when every kmax_j >= lo_j and they sum to at least N. The least feasible t
is one of the jump points of the kmax_j. Plain bisection on t needs ~52 halvings to pin it down to 1e-15 of
the range; here bisection only narrows the window until no stage has two jumps in it (about log2 of the
range over half the smallest c_j steps), and the jumps inside the window are then ordered and counted.
The threshold returned lies strictly between the least feasible jump and the next distinct one, so the
kmax_j it gives are those just above the optimum, as bisection's would be.
"""
from __future__ import annotations

import numpy as np

_TOL = 1e-9  # slack of the floor in kmax (absorbs rounding where t lands on a jump)
_BISECTION_STEPS = 52  # halvings that take the window below 1e-15 of the range
_SMALL = 1024  # (groups x stages) below which merging identical stages costs more than it saves


def blocks_under(t: np.ndarray, base: np.ndarray, c_safe: np.ndarray) -> np.ndarray:
    """(G, p) floor((t - base) / c + tol): blocks stage j can take with time <= t, before clipping to N."""
    return np.floor((t[:, None] - base) / c_safe + _TOL)


def _feasible(t: np.ndarray, base: np.ndarray, c_safe: np.ndarray, lo: np.ndarray, N: int,
              count: np.ndarray | None = None) -> np.ndarray:
    """Whether threshold t admits a split; `count`: how many identical stages each column stands for."""
    k = np.minimum(blocks_under(t, base, c_safe), N)
    return (k >= lo).all(axis=1) & ((k if count is None else k * count).sum(axis=1) >= N)


def bisect_threshold(base: np.ndarray, c_safe: np.ndarray, lo: np.ndarray, N: int, low: np.ndarray,
                     hi: np.ndarray, steps: int = _BISECTION_STEPS, count: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Plain bisection: `low` infeasible (or 0), `hi` feasible; returns the narrowed (low, hi)."""
    for _ in range(steps):
        mid = 0.5 * (low + hi)
        ok = _feasible(mid, base, c_safe, lo, N, count)
        hi = np.where(ok, mid, hi)
        low = np.where(ok, low, mid)
    return low, hi


def least_feasible_threshold(base: np.ndarray, c: np.ndarray, lo: np.ndarray, N: int) -> np.ndarray:
    """(G,) a feasible threshold just above the least feasible one (see the module docstring).

    base: (G, p); c: (G, p) or (G, 1) time per block (>= 0); lo: (p,) fewest blocks per stage."""
    c_safe = np.maximum(c, 1e-300)
    G = base.shape[0]
    hi = (base + N * c).max(axis=1)
    low = np.zeros(G)
    # 0. start from the continuous estimate: below (N + sum base/c) / sum(1/c) the stages cannot take N
    # blocks; p blocks above it (and with every stage at its minimum) they can. A margin of the smallest
    # block time keeps each end strictly on its side despite rounding.
    cb = np.broadcast_to(c_safe, base.shape)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        inv_sum = np.broadcast_to(1.0 / c_safe, base.shape).sum(axis=1)  # c_safe may be one per group
        b_sum = (base / cb).sum(axis=1)
        c_min = c_safe.min(axis=1)
        low0 = (N + b_sum) / inv_sum - c_min
        hi0 = np.maximum((N + base.shape[1] + b_sum) / inv_sum, (base + lo * cb).max(axis=1)) + c_min
        use = (np.isfinite(low0) & np.isfinite(hi0) & (c_min > 1e-200) & (np.maximum(low0, 0.0) < hi0)
               & (hi0 <= hi))
    low = np.where(use, np.maximum(low0, 0.0), low)
    hi = np.where(use, hi0, hi)
    # from here on only whether stages differ matters: identical stages become one column and a count
    base, c, c_safe, lo, count = _distinct_stages(base, c, c_safe, lo)
    # 1. bisect until the window (low, hi] holds at most one jump of each stage
    narrow = 0.5 * c_min
    for _ in range(2 * _BISECTION_STEPS):
        if not ((hi - low) > narrow).any():
            break
        low, hi = bisect_threshold(base, c_safe, lo, N, low, hi, steps=1, count=count)
    # 2. order the jumps inside the window and find the first after which the split is feasible
    k_low = blocks_under(low, base, c_safe)
    k_hi = blocks_under(hi, base, c_safe)
    jumped = k_hi > k_low
    jump_at = np.where(jumped, np.clip(base + (k_hi - _TOL) * c_safe, low[:, None], hi[:, None]), np.inf)
    rows = np.arange(G)
    by_time = rows[:, None] * base.shape[1] + np.argsort(jump_at, axis=1, kind="stable")  # flat indices, row-wise

    def in_order(x: np.ndarray) -> np.ndarray:
        return np.take(x, by_time)

    at = in_order(jump_at)
    # blocks gained and stages brought up to their least, in jump order (floats, as need_blocks)
    adds = in_order((jumped & (k_low < N)) * count).cumsum(axis=1, dtype=float)
    fixes = in_order((jumped & (k_low < lo) & (k_hi >= lo)) * count).cumsum(axis=1)
    need_blocks = N - (np.minimum(k_low, N) * count).sum(axis=1)
    need_fixes = ((k_low < lo) * count).sum(axis=1)
    nxt = np.concatenate([at[:, 1:], np.full((G, 1), np.inf)], axis=1)
    run_end = np.isfinite(at) & (nxt != at)  # count equal jumps together
    ok = run_end & (adds >= need_blocks[:, None]) & (fixes >= need_fixes[:, None])
    none_needed = (need_blocks <= 0) & (need_fixes == 0)
    first = np.argmax(ok, axis=1)
    t_at = np.where(none_needed, low, at[rows, first])
    t_next = np.where(none_needed, at[:, 0], nxt[rows, first])
    t = 0.5 * (t_at + np.minimum(t_next, hi))
    ends_so_far = np.maximum.accumulate(np.where(run_end, at, -np.inf), axis=1)
    prev = np.where(first > 0, ends_so_far[rows, np.maximum(first - 1, 0)], -np.inf)  # previous distinct jump
    t_before = 0.5 * (np.where(np.isfinite(prev), prev, low) + t_at)
    # 3. check; where the window was not narrow enough (zero-time blocks) or rounding got in the way, bisect
    good = ((k_hi - k_low) <= 1).all(axis=1) & (ok.any(axis=1) | none_needed)
    good &= _feasible(t, base, c_safe, lo, N, count) & (none_needed | ~_feasible(t_before, base, c_safe, lo, N, count))
    if not good.all():
        bad = np.flatnonzero(~good)
        _, t[bad] = bisect_threshold(base[bad], c_safe[bad], lo, N, np.zeros(len(bad)),
                                     (base[bad] + N * c[bad]).max(axis=1), count=count)
    return t


def _distinct_stages(base: np.ndarray, c: np.ndarray, c_safe: np.ndarray, lo: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(base, c, c_safe, lo) keeping one of each set of stages that are identical in every group, and the
    number of stages each kept one stands for (`count`, (p',) float). Stages of a pipeline mostly repeat a few
    kinds (first, last, behind an intra- or an inter-node link), so the search runs on a few columns."""
    G, p = base.shape
    count = np.ones(p)
    if p <= 2 or G * p < _SMALL:
        return base, c, c_safe, lo, count
    per_stage = c.shape[1] == p
    probe = np.arange(1.0, G + 1.0)[:, None]  # any weights: equal columns get equal keys, checked below
    keys = [(base * probe).sum(axis=0), lo]
    if per_stage:
        keys.append((c * probe).sum(axis=0))
    keys = np.stack(keys)
    order = np.lexsort(keys)
    in_order = keys[:, order]
    starts = np.ones(p, dtype=bool)
    starts[1:] = (in_order[:, 1:] != in_order[:, :-1]).any(axis=0)
    if starts.all():
        return base, c, c_safe, lo, count
    first = order[starts]  # one stage of each kind
    inv = np.empty(p, dtype=np.int64)
    inv[order] = np.cumsum(starts) - 1  # the kind of each stage
    rep = first[inv]
    same = (base == base[:, rep]).all() and (lo == lo[rep]).all() and (not per_stage or (c == c[:, rep]).all())
    if not same:
        return base, c, c_safe, lo, count
    count = np.bincount(inv, minlength=len(first)).astype(float)
    if per_stage:
        c, c_safe = c[:, first], c_safe[:, first]
    return base[:, first], c, c_safe, lo[first], count
