"""Which GPUs and links each pipeline stage uses under a strategy's rank layout.

For every stage: its slowest GPU (it paces the stage), its smallest memory, and
the bottleneck bandwidth and latency of its tensor-parallel, data-parallel and
expert-parallel groups and of the link to the next stage. Groups of one kind
that leave a node at the same time share the node's network: all data-parallel
rings of all stages run together after the pipeline flush, all stage-to-stage
sends of one boundary run together.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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
    gpu_of: tuple[GPUSpec, ...]


@lru_cache(maxsize=64)
def _arrays(cluster: Cluster) -> _ClusterArrays:
    return _ClusterArrays(
        node_of_gpu=np.asarray(cluster.node_index, dtype=np.int64),
        fabric_bw=np.array([n.fabric.bandwidth_gbps for n in cluster.nodes], dtype=float),
        fabric_lat=np.array([n.fabric.latency_s for n in cluster.nodes], dtype=float),
        net_bw=np.array([n.network_gbps for n in cluster.nodes], dtype=float),
        net_lat=float(cluster.network.latency_s),
        gpu_of=cluster.gpus,
    )


def _groups_bandwidth(arr: _ClusterArrays, groups: np.ndarray, stage_of_group: np.ndarray, num_stages: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bottleneck bandwidth, latency and in-node flag per stage for a batch of concurrent groups.

    groups: (G, S) GPU indices. Returns arrays of length num_stages (min bandwidth, max latency over the
    stage's groups; whether all of them stay inside one node).
    """
    G, S = groups.shape
    bw_stage = np.full(num_stages, np.inf)
    lat_stage = np.zeros(num_stages)
    in_node = np.ones(num_stages, dtype=bool)
    if S < 2 or G == 0:
        return bw_stage, lat_stage, in_node
    nodes = arr.node_of_gpu[groups]  # (G, S)
    sorted_nodes = np.sort(nodes, axis=1)
    spans = sorted_nodes[:, 0] != sorted_nodes[:, -1]
    # fabric hop: a node holding >= 2 members of the group
    dup = sorted_nodes[:, 1:] == sorted_nodes[:, :-1]
    fab = np.where(dup, arr.fabric_bw[sorted_nodes[:, 1:]], np.inf).min(axis=1)
    fab_lat = np.where(dup, arr.fabric_lat[sorted_nodes[:, 1:]], 0.0).max(axis=1)
    bw = fab.copy()
    lat = fab_lat.copy()
    if spans.any():
        # how many spanning groups touch each node (they share its network)
        g_idx = np.repeat(np.arange(G), S)
        pairs = np.unique(np.stack([g_idx, nodes.ravel()], axis=1)[np.repeat(spans, S)], axis=0)
        sharing = np.bincount(pairs[:, 1], minlength=len(arr.net_bw))
        per_pair = arr.net_bw[pairs[:, 1]] / np.maximum(sharing[pairs[:, 1]], 1)
        net = np.full(G, np.inf)
        np.minimum.at(net, pairs[:, 0], per_pair)
        bw = np.minimum(bw, net)
        lat = np.where(spans, np.maximum(lat, arr.net_lat + arr.fabric_lat[nodes].max(axis=1)), lat)
    np.minimum.at(bw_stage, stage_of_group, bw)
    np.maximum.at(lat_stage, stage_of_group, lat)
    np.logical_and.at(in_node, stage_of_group, ~spans)
    return bw_stage, lat_stage, in_node


def resolve_layout(cluster: Cluster, strategy: Strategy, dtype: str) -> tuple[StageLinks, ...]:
    s = strategy
    return _resolve(cluster, s.tp, s.pp, s.dp, s.ep, s.ep_mode, s.placement, dtype)


@lru_cache(maxsize=4096)
def _resolve(cluster: Cluster, tp: int, pp: int, dp: int, ep: int, ep_mode: str, placement: tuple[int, ...] | None,
             dtype: str) -> tuple[StageLinks, ...]:
    arr = _arrays(cluster)
    n = pp * dp * tp
    placement = np.arange(n) if placement is None else np.asarray(placement)
    mesh = placement.reshape(pp, dp, tp)  # GPU index of (stage, replica, tp rank)
    stage_ids = np.arange(pp)
    # tensor-parallel groups: (pp*dp, tp)
    tp_bw, tp_lat, tp_in = _groups_bandwidth(arr, mesh.reshape(pp * dp, tp), np.repeat(stage_ids, dp), pp)
    # data-parallel groups: (pp*tp, dp), all stages at once
    dp_groups = mesh.transpose(0, 2, 1).reshape(pp * tp, dp)
    dp_bw, dp_lat, dp_in = _groups_bandwidth(arr, dp_groups, np.repeat(stage_ids, tp), pp)
    # expert-parallel groups
    if ep > 1 and ep_mode == "dp":
        g = mesh.reshape(pp, dp // ep, ep, tp).transpose(0, 1, 3, 2).reshape(pp * (dp // ep) * tp, ep)
        ep_bw, ep_lat, _ = _groups_bandwidth(arr, g, np.repeat(stage_ids, (dp // ep) * tp), pp)
    elif ep > 1:
        g = mesh.reshape(pp, dp, tp // ep, ep).reshape(pp * dp * (tp // ep), ep)
        ep_bw, ep_lat, _ = _groups_bandwidth(arr, g, np.repeat(stage_ids, dp * (tp // ep)), pp)
    else:
        ep_bw, ep_lat = np.full(pp, np.inf), np.zeros(pp)
    # stage-to-stage pairs at each boundary
    nb_bw, nb_lat = np.full(pp, np.inf), np.zeros(pp)
    for j in range(pp - 1):
        pairs = np.stack([mesh[j].ravel(), mesh[j + 1].ravel()], axis=1)
        bw, lat, _ = _groups_bandwidth(arr, pairs, np.zeros(len(pairs), dtype=np.int64), 1)
        nb_bw[j], nb_lat[j] = bw[0], lat[0]
    out = []
    for j in range(pp):
        gpus = {arr.gpu_of[g] for g in mesh[j].ravel()}
        slow = min(gpus, key=lambda s: (_rate(s, dtype), s.memory_bandwidth_gbps))
        out.append(StageLinks(
            gpu=slow, memory_bytes=min(s.memory_bytes for s in gpus), num_gpu_types=len(gpus),
            tp_bw_gbps=float(tp_bw[j]), tp_latency_s=float(tp_lat[j]),
            dp_bw_gbps=float(dp_bw[j]), dp_latency_s=float(dp_lat[j]),
            ep_bw_gbps=float(ep_bw[j]), ep_latency_s=float(ep_lat[j]),
            next_bw_gbps=float(nb_bw[j]), next_latency_s=float(nb_lat[j]),
            tp_in_node=bool(tp_in[j]), dp_in_node=bool(dp_in[j])))
    return tuple(out)


def _rate(gpu: GPUSpec, dtype: str) -> float:
    try:
        return gpu.peak_tflops(dtype)
    except Exception:
        return 0.0
