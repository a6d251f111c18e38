"""Collective and point-to-point communication times (alpha-beta model, NCCL conventions).

`size_bytes` is the full buffer (all-reduce: the tensor each rank holds; all-gather:
the gathered result; reduce-scatter: the input; all-to-all: what one rank sends
in total, its own share included). Bandwidths are per direction, already the
group's bottleneck. Latency grows with log2 of the group (tree/hierarchical
algorithms); bandwidth terms follow the ring algorithm. All functions accept
numpy arrays.
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np


def _steps(n: Any) -> Any:
    return np.ceil(np.log2(np.maximum(np.asarray(n, dtype=float), 1.0)))


def all_reduce_s(size_bytes: Any, n: Any, bw_gbps: Any, latency_s: Any) -> Any:
    n = np.asarray(n, dtype=float)
    t = 2.0 * (n - 1) / np.maximum(n, 1) * size_bytes / (np.asarray(bw_gbps) * 1e9) + 2.0 * _steps(n) * latency_s
    return np.where(n > 1, t, 0.0)


def all_gather_s(size_bytes: Any, n: Any, bw_gbps: Any, latency_s: Any) -> Any:
    n = np.asarray(n, dtype=float)
    t = (n - 1) / np.maximum(n, 1) * size_bytes / (np.asarray(bw_gbps) * 1e9) + _steps(n) * latency_s
    return np.where(n > 1, t, 0.0)


reduce_scatter_s = all_gather_s


def all_to_all_s(size_bytes: Any, n: Any, bw_gbps: Any, latency_s: Any) -> Any:
    n = np.asarray(n, dtype=float)
    t = (n - 1) / np.maximum(n, 1) * size_bytes / (np.asarray(bw_gbps) * 1e9) + (n - 1) * latency_s
    return np.where(n > 1, t, 0.0)


def p2p_s(size_bytes: Any, bw_gbps: Any, latency_s: Any) -> Any:
    size = np.asarray(size_bytes, dtype=float)
    return np.where(size > 0, size / (np.asarray(bw_gbps) * 1e9) + latency_s, 0.0)


def with_network_efficiency(cluster: Any, params: Any) -> Any:
    """`cluster` with each node's network and fabric bandwidth scaled by `params.network_efficiency_for` and
    `params.fabric_efficiency_for` (node GPU): the share of its line rate a node type's NICs, network stack and
    intra-node fabric deliver to NCCL. The same cluster object when no node type has an entry, and one object
    per (cluster, efficiencies), so caches keyed by the cluster's identity keep working."""
    if not params.network_efficiency and not params.fabric_efficiency:
        return cluster
    return _scaled_cluster(cluster, params.network_efficiency, params.fabric_efficiency)


@lru_cache(maxsize=64)
def _scaled_cluster(cluster: Any, network: tuple[tuple[str, float], ...], fabric: tuple[tuple[str, float], ...]
                    ) -> Any:
    net, fab = dict(network), dict(fabric)
    scale = [(net.get(n.gpu.name, 1.0), fab.get(n.gpu.name, 1.0)) for n in cluster.nodes]
    if all(e == (1.0, 1.0) for e in scale):
        return cluster
    nodes = tuple(replace(n, network_gbps=n.network_gbps * en,
                          fabric=replace(n.fabric, bandwidth_gbps=n.fabric.bandwidth_gbps * ef))
                  for n, (en, ef) in zip(cluster.nodes, scale))
    return replace(cluster, nodes=nodes)
