"""The search space: every valid way to spread a model over a cluster.

A `Layout` fixes the mesh (tp, pp, dp, ep, EP convention, placement); the
remaining choices (micro-batch, schedule, recompute, sequence parallel, ZeRO)
vary inside it. Only degrees the model and cluster allow are produced:
tp divides the heads, KV heads and MLP widths and fits inside a node, ep divides
the experts, pp is at most the number of layer entries, dp divides the batch.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from costmodel.model import ModelSpec
from costmodel.workload import Inference, Training
from hardware_profiles.topology import Cluster


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


@dataclass(frozen=True)
class SearchSpace:
    """Restrictions on the search; None means "every valid value"."""

    tp: tuple[int, ...] | None = None
    pp: tuple[int, ...] | None = None
    ep: tuple[int, ...] | None = None
    ep_modes: tuple[str, ...] = ("dp", "tp")
    micro_batch: tuple[int, ...] | None = None
    schedules: tuple[str, ...] = ("1f1b", "gpipe", "interleaved")
    virtual_stages: tuple[int, ...] = (2, 4)
    recompute: tuple[str, ...] = ("none", "selective", "full")
    sequence_parallel: tuple[bool, ...] = (False, True)
    zero: tuple[int, ...] = (0, 1, 2, 3)
    max_tp: int | None = None  # default: the GPUs of the smallest node (TP stays inside a node)
    max_placements: int = 24  # node orders tried on a mixed cluster
    gpu_counts: tuple[int, ...] | None = None  # inference: GPU counts to consider (default: powers of 2 up to N)


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    ep: int = 1
    ep_mode: str = "dp"
    placement: tuple[int, ...] | None = None
    num_gpus: int = 0
    node_order: tuple[int, ...] | None = field(default=None, compare=False)


def _ep_options(model: ModelSpec, tp: int, dp: int, space: SearchSpace, is_moe: bool | None = None
                ) -> list[tuple[int, str]]:
    """(ep, EP convention) pairs for a mesh; `is_moe`: `model.is_moe`, when the caller has it already. Empty
    for an MoE model whose experts no pair splits evenly (e.g. tp not dividing the expert width)."""
    if not (model.is_moe if is_moe is None else is_moe):
        return [(1, "dp")]
    experts = [b.num_experts for b in model.blocks if b.is_moe]
    widths = [b.expert_ffn_hidden for b in model.blocks if b.is_moe]
    out = []
    for mode in space.ep_modes:
        pool = dp if mode == "dp" else tp
        for ep in divisors(pool):
            if space.ep is not None and ep not in space.ep:
                continue
            if any(e % ep for e in experts):
                continue
            moe_tp = tp // ep if mode == "tp" else tp
            if any(w % moe_tp for w in widths):
                continue
            if ep == 1 and mode == "tp":
                continue  # same as ep=1 in dp mode
            out.append((ep, mode))
    return out


def node_orders(cluster: Cluster, limit: int) -> list[tuple[int, ...] | None]:
    """Orders in which to lay ranks over nodes. Homogeneous: one (identity). Mixed: every distinct
    sequence of node types for up to 4 nodes (AMP's clusters), else the orders that keep each type's nodes
    together (pipeline stages take contiguous blocks of ranks, so these keep stages on one GPU type);
    same-type nodes always in index order. At most `limit` orders."""
    if cluster.is_homogeneous:
        return [None]
    kinds = [(n.gpu.name, n.num_gpus, n.fabric, n.network_gbps) for n in cluster.nodes]
    distinct = list(dict.fromkeys(kinds))
    pools = {k: [i for i, x in enumerate(kinds) if x == k] for k in distinct}
    if len(kinds) <= 4:
        sequences = _multiset_permutations([distinct.index(k) for k in kinds], limit)
    else:
        sequences = [tuple(t for t in block for _ in pools[distinct[t]])
                     for block in itertools.islice(itertools.permutations(range(len(distinct))), limit)]
    orders = []
    for seq in sequences:
        taken = {k: iter(v) for k, v in pools.items()}
        orders.append(tuple(next(taken[distinct[t]]) for t in seq))
    return orders


def _multiset_permutations(items: list[int], limit: int) -> list[tuple[int, ...]]:
    counts: dict[int, int] = {}
    for x in items:
        counts[x] = counts.get(x, 0) + 1
    out: list[tuple[int, ...]] = []

    def rec(prefix: list[int]) -> None:
        if len(out) >= limit:
            return
        if len(prefix) == len(items):
            out.append(tuple(prefix))
            return
        for x in sorted(counts):
            if counts[x]:
                counts[x] -= 1
                prefix.append(x)
                rec(prefix)
                prefix.pop()
                counts[x] += 1

    rec([])
    return out


def placement_for(cluster: Cluster, order: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if order is None or list(order) == sorted(order):
        return None
    starts = []
    acc = 0
    for n in cluster.nodes:
        starts.append(acc)
        acc += n.num_gpus
    return tuple(g for ni in order for g in range(starts[ni], starts[ni] + cluster.nodes[ni].num_gpus))


def layouts(model: ModelSpec, cluster: Cluster, workload: Training | Inference, space: SearchSpace,
            num_gpus: int | None = None) -> list[Layout]:
    n = num_gpus or cluster.num_gpus
    max_tp = space.max_tp or cluster.gpus_per_node
    entries = len(model.layers)
    batch = workload.global_batch if isinstance(workload, Training) else workload.batch
    orders = node_orders(cluster, space.max_placements) if n == cluster.num_gpus else [None]
    is_moe = model.is_moe
    out = []
    for tp in divisors(n):
        if tp > max_tp or (space.tp is not None and tp not in space.tp) or not model.tp_splits_evenly(tp):
            continue
        if cluster.gpus_per_node % tp and tp <= cluster.gpus_per_node:
            continue
        for pp in divisors(n // tp):
            if pp > entries or (space.pp is not None and pp not in space.pp):
                continue
            dp = n // tp // pp
            if batch % dp:
                continue
            for ep, mode in _ep_options(model, tp, dp, space, is_moe):
                for order in orders:
                    out.append(Layout(tp=tp, pp=pp, dp=dp, ep=ep, ep_mode=mode,
                                      placement=placement_for(cluster, order), num_gpus=n, node_order=order))
    return out


def micro_batches(per_replica: int, space: SearchSpace) -> list[int]:
    opts = divisors(per_replica)
    if space.micro_batch is not None:
        opts = [m for m in opts if m in space.micro_batch]
    return opts
