"""Which GPUs and links each pipeline stage uses under a strategy's rank layout.

For every stage: its slowest GPU (it paces the stage), its smallest memory, and
the bottleneck bandwidth and latency of its tensor-parallel, data-parallel and
expert-parallel groups and of the link to the next stage. Groups of one kind
that leave a node at the same time share the node's network: all data-parallel
rings of all stages run together after the pipeline flush, all stage-to-stage
sends of one boundary run together.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from hardware_profiles.gpu import GPUSpec
from hardware_profiles.topology import Cluster

from .strategy import Strategy


@dataclass(frozen=True)
class StageLinks:
    gpu: GPUSpec  # slowest GPU of the stage (lowest peak rate for the precision)
    memory_bytes: float  # smallest GPU memory of the stage
    num_gpu_types: int
    tp_bw_gbps: float
    tp_latency_s: float
    dp_bw_gbps: float
    dp_latency_s: float
    ep_bw_gbps: float
    ep_latency_s: float
    next_bw_gbps: float  # per stage-to-stage pair, to the next stage (inf for the last stage)
    next_latency_s: float
    tp_in_node: bool
    dp_in_node: bool

    @property
    def device_key(self) -> tuple:
        """What a layer's own cost depends on: the GPU and the TP and EP links."""
        return (self.gpu.name, self.tp_bw_gbps, self.tp_latency_s, self.ep_bw_gbps, self.ep_latency_s)


@dataclass(frozen=True)
class _ClusterArrays:
    node_of_gpu: np.ndarray
    fabric_bw: np.ndarray  # per node
    fabric_lat: np.ndarray
    net_bw: np.ndarray
    net_lat: float
    type_of_gpu: np.ndarray  # index into `types` of every GPU
    types: tuple[GPUSpec, ...]  # the distinct GPU specs, in order of first appearance


class _PerCluster:
    """Memo tables keyed by cluster identity. Hashing a frozen `Cluster` walks every node (about a millisecond
    at 2,048 nodes), so lookups go by id(); a weak reference guards against a reused id."""

    def __init__(self, max_clusters: int = 64) -> None:
        self._tables: dict[int, tuple[weakref.ref, dict]] = {}
        self._max = max_clusters

    def table(self, cluster: Cluster) -> dict:
        entry = self._tables.get(id(cluster))
        if entry is None or entry[0]() is not cluster:
            if len(self._tables) >= self._max:
                self._tables.clear()
            entry = self._tables[id(cluster)] = (weakref.ref(cluster), {})
        return entry[1]

    def clear(self) -> None:
        self._tables.clear()


_MEMO = _PerCluster()


def clear_caches() -> None:
    """Forget every cluster's resolved layouts (benchmarks time searches cold)."""
    _MEMO.clear()


def _arrays(cluster: Cluster) -> _ClusterArrays:
    table = _MEMO.table(cluster)
    arr = table.get("arrays")
    if arr is None:
        arr = table["arrays"] = _cluster_arrays(cluster)
    return arr


def _cluster_arrays(cluster: Cluster) -> _ClusterArrays:
    type_ids: dict[GPUSpec, int] = {}
    node_type = [type_ids.setdefault(n.gpu, len(type_ids)) for n in cluster.nodes]
    node_of_gpu = np.asarray(cluster.node_index, dtype=np.int64)
    return _ClusterArrays(
        node_of_gpu=node_of_gpu,
        fabric_bw=np.array([n.fabric.bandwidth_gbps for n in cluster.nodes], dtype=float),
        fabric_lat=np.array([n.fabric.latency_s for n in cluster.nodes], dtype=float),
        net_bw=np.array([n.network_gbps for n in cluster.nodes], dtype=float),
        net_lat=float(cluster.network.latency_s),
        type_of_gpu=np.asarray(node_type, dtype=np.int64)[node_of_gpu],
        types=tuple(type_ids),
    )


def _row_min(x: np.ndarray) -> np.ndarray:
    """Minimum of each row; column by column when rows are short (numpy reduces a short axis slowly)."""
    return np.minimum.reduce(list(x.T)) if x.shape[1] <= 8 else x.min(axis=1)


def _row_max(x: np.ndarray) -> np.ndarray:
    return np.maximum.reduce(list(x.T)) if x.shape[1] <= 8 else x.max(axis=1)


def _groups_bandwidth(arr: _ClusterArrays, groups: np.ndarray, num_stages: int, *, rows_sorted: bool = False,
                      share_by_stage: bool = False, memo: dict | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bottleneck bandwidth, latency and in-node flag per stage for a batch of concurrent groups.

    groups: (G, S) GPU indices, the groups of stage j in rows [j G / num_stages, (j + 1) G / num_stages).
    Returns arrays of length num_stages (min bandwidth, max latency over the stage's groups; whether all of
    them stay inside one node). Groups that leave a node share its network with the other leaving groups
    (of the same stage, with `share_by_stage`). `rows_sorted`: every row's GPU indices increase (the default
    placement), so its nodes are already in order. `memo`: where to keep each group's links (meshes of other
    shapes often hold the very same tensor-parallel groups).
    """
    G, S = groups.shape
    if S < 2 or G == 0:
        return np.full(num_stages, np.inf), np.zeros(num_stages), np.ones(num_stages, dtype=bool)
    if memo is not None and not share_by_stage:  # then each group's links do not depend on the stages
        key = ("groups", groups.shape, rows_sorted, groups.tobytes())
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = _group_links(arr, groups, num_stages, rows_sorted, share_by_stage)
        bw, lat, spans = hit
    else:
        bw, lat, spans = _group_links(arr, groups, num_stages, rows_sorted, share_by_stage)
    per_stage = (num_stages, G // num_stages)
    in_node = (~spans).reshape(per_stage).all(axis=1)
    return bw.reshape(per_stage).min(axis=1), lat.reshape(per_stage).max(axis=1), in_node


def _group_links(arr: _ClusterArrays, groups: np.ndarray, num_stages: int, rows_sorted: bool, share_by_stage: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G,) bottleneck bandwidth, latency and whether it leaves its node, of each group (see `_groups_bandwidth`)."""
    G, S = groups.shape
    nodes = arr.node_of_gpu[groups]
    if rows_sorted:  # node indices never decrease with the GPU index
        sorted_nodes = nodes
    elif S == 2:
        sorted_nodes = np.stack([np.minimum(nodes[:, 0], nodes[:, 1]), np.maximum(nodes[:, 0], nodes[:, 1])], axis=1)
    else:
        sorted_nodes = np.sort(nodes, axis=1)  # (G, S)
    spans = sorted_nodes[:, 0] != sorted_nodes[:, -1]
    # fabric hop: a node holding >= 2 members of the group
    dup = sorted_nodes[:, 1:] == sorted_nodes[:, :-1]
    bw = _row_min(np.where(dup, arr.fabric_bw[sorted_nodes[:, 1:]], np.inf))
    lat = _row_max(np.where(dup, arr.fabric_lat[sorted_nodes[:, 1:]], 0.0))
    if spans.any():
        # how many spanning groups (of the same sharing set) touch each node: they share its network
        num_nodes = len(arr.net_bw)
        sets = np.repeat(np.arange(num_stages), G // num_stages) if share_by_stage else np.zeros(G, dtype=np.int64)
        slot = sets[:, None] * num_nodes + sorted_nodes  # (set, node) of every member
        first = np.ones((G, S), dtype=bool)
        first[:, 1:] = ~dup
        sharing = np.bincount(slot[first & spans[:, None]], minlength=(int(sets[-1]) + 1) * num_nodes)
        # a spanning group's members cover exactly its nodes, so the minimum over members is over its nodes
        net = np.where(spans, _row_min(arr.net_bw[sorted_nodes] / np.maximum(sharing[slot], 1)), np.inf)
        bw = np.minimum(bw, net)
        lat = np.where(spans, np.maximum(lat, arr.net_lat + _row_max(arr.fabric_lat[sorted_nodes])), lat)
    return bw, lat, spans


def resolve_layout(cluster: Cluster, strategy: Strategy, dtype: str) -> tuple[StageLinks, ...]:
    s = strategy
    return _resolve(cluster, s.tp, s.pp, s.dp, s.ep, s.ep_mode, s.placement, dtype)


def _resolve(cluster: Cluster, tp: int, pp: int, dp: int, ep: int, ep_mode: str, placement: tuple[int, ...] | None,
             dtype: str) -> tuple[StageLinks, ...]:
    table = _MEMO.table(cluster)
    key = (tp, pp, dp, ep, ep_mode, placement, dtype)
    links = table.get(key)
    if links is None:
        if len(table) > 4096:
            table.clear()
        links = table[key] = _resolve_uncached(cluster, tp, pp, dp, ep, ep_mode, placement, dtype)
    return links


def _resolve_uncached(cluster: Cluster, tp: int, pp: int, dp: int, ep: int, ep_mode: str,
                      placement: tuple[int, ...] | None, dtype: str) -> tuple[StageLinks, ...]:
    arr = _arrays(cluster)
    memo = _MEMO.table(cluster)
    n = pp * dp * tp
    ordered = placement is None  # the default placement: GPUs in order, so each group's rows come sorted
    placement = np.arange(n) if placement is None else np.asarray(placement)
    mesh = placement.reshape(pp, dp, tp)  # GPU index of (stage, replica, tp rank)
    stage_ids = np.arange(pp)
    # tensor-parallel groups: (pp*dp, tp)
    tp_bw, tp_lat, tp_in = _groups_bandwidth(arr, mesh.reshape(pp * dp, tp), pp, rows_sorted=ordered, memo=memo)
    # data-parallel groups: (pp*tp, dp), all stages at once
    dp_groups = mesh.transpose(0, 2, 1).reshape(pp * tp, dp)
    dp_bw, dp_lat, dp_in = _groups_bandwidth(arr, dp_groups, pp, rows_sorted=ordered, memo=memo)
    # expert-parallel groups
    if ep > 1 and ep_mode == "dp":
        g = mesh.reshape(pp, dp // ep, ep, tp).transpose(0, 1, 3, 2).reshape(pp * (dp // ep) * tp, ep)
        ep_bw, ep_lat, _ = _groups_bandwidth(arr, g, pp, rows_sorted=ordered)
    elif ep > 1:
        g = mesh.reshape(pp, dp, tp // ep, ep).reshape(pp * dp * (tp // ep), ep)
        ep_bw, ep_lat, _ = _groups_bandwidth(arr, g, pp, rows_sorted=ordered)
    else:
        ep_bw, ep_lat = np.full(pp, np.inf), np.zeros(pp)
    # stage-to-stage pairs: the sends of one boundary run together, boundaries apart
    nb_bw, nb_lat = np.full(pp, np.inf), np.zeros(pp)
    if pp > 1:
        pairs = np.stack([mesh[:-1].reshape(pp - 1, -1), mesh[1:].reshape(pp - 1, -1)], axis=2).reshape(-1, 2)
        nb_bw[:-1], nb_lat[:-1], _ = _groups_bandwidth(arr, pairs, pp - 1, rows_sorted=ordered, share_by_stage=True)
    # GPU types present on each stage; stages with the same types share their slowest GPU and smallest memory
    present = np.zeros((pp, len(arr.types)), dtype=bool)
    present[np.repeat(stage_ids, dp * tp), arr.type_of_gpu[mesh.reshape(-1)]] = True
    devices: dict[tuple[bool, ...], tuple[GPUSpec, float, int]] = {}
    for row in map(tuple, present.tolist()):
        if row not in devices:
            gpus = [t for t, here in zip(arr.types, row) if here]
            slow = min(gpus, key=lambda s: (_rate(s, dtype), s.memory_bandwidth_gbps))
            devices[row] = (slow, min(s.memory_bytes for s in gpus), len(gpus))
    stage_devices = [devices[row] for row in map(tuple, present.tolist())]
    made: dict[tuple, StageLinks] = {}  # stages alike share one object (most of a long pipeline is)
    out = []
    for (gpu, mem, types), *links in zip(stage_devices, tp_bw.tolist(), tp_lat.tolist(), dp_bw.tolist(),
                                         dp_lat.tolist(), ep_bw.tolist(), ep_lat.tolist(), nb_bw.tolist(),
                                         nb_lat.tolist(), tp_in.tolist(), dp_in.tolist()):
        key = (id(gpu), mem, types, *links)
        lk = made.get(key)
        if lk is None:
            tb, tl, db, dl, eb, el, nb, nl, ti, di = links
            lk = made[key] = StageLinks(
                gpu=gpu, memory_bytes=mem, num_gpu_types=types, tp_bw_gbps=tb, tp_latency_s=tl, dp_bw_gbps=db,
                dp_latency_s=dl, ep_bw_gbps=eb, ep_latency_s=el, next_bw_gbps=nb, next_latency_s=nl, tp_in_node=ti,
                dp_in_node=di)
        out.append(lk)
    return tuple(out)


def _rate(gpu: GPUSpec, dtype: str) -> float:
    try:
        return gpu.peak_tflops(dtype)
    except Exception:
        return 0.0
