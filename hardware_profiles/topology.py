"""Cluster topology: nodes of GPUs, the fabric inside a node, the network between nodes.

A cluster is a tuple of `Node`s (each: a GPU type, a GPU count, an intra-node
`Fabric` and the node's network bandwidth) plus the inter-node `Network`. Mixed
clusters are ordinary clusters whose nodes differ. The devices and links also
live in a networkx graph (GPU -> node switch -> network core) so questions
about pairs and groups of GPUs are answered from one structure.

Bandwidth conventions (GB/s, per direction):
- `Fabric.bandwidth_gbps`: what one GPU can push into its node's fabric.
- `Node.network_gbps`: what the whole node can push onto the network (all its
  NICs together); a GPU's share depends on how many flows leave the node at once.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np

from .catalog import get_gpu
from .errors import ClusterSpecError, ParplanError
from .gpu import GPUSpec

FABRIC_KINDS = ("nvswitch", "nvlink", "pcie", "infinity_fabric", "loopback")
MAX_GPUS_PER_NODE = 72  # an NVL72 rack is the largest single NVLink domain sold
# Far beyond any cluster built so far (about 200,000 GPUs); it keeps a typo such as "1000000x8xH100" from
# building a billion-entry cluster instead of saying what is wrong.
MAX_GPUS = 1_000_000
NETWORK_KINDS = ("infiniband", "roce", "ethernet", "none")

# Latencies of one hop, seconds (order of magnitude from NCCL tests; the
# calibration loop refines them).
_FABRIC_LATENCY_S = {"nvswitch": 2e-6, "nvlink": 2e-6, "infinity_fabric": 3e-6, "pcie": 5e-6, "loopback": 1e-5}
_NETWORK_LATENCY_S = {"infiniband": 5e-6, "roce": 8e-6, "ethernet": 30e-6, "none": 0.0}


@dataclass(frozen=True)
class Fabric:
    """How the GPUs inside one node talk to each other."""

    kind: str
    bandwidth_gbps: float  # per GPU, per direction
    latency_s: float

    def __post_init__(self) -> None:
        if self.kind not in FABRIC_KINDS:
            raise ClusterSpecError(f"unknown intra-node fabric {self.kind!r}; use one of {', '.join(FABRIC_KINDS)}")
        _check_positive("intra-node bandwidth_gbps", self.bandwidth_gbps)
        _check_non_negative("intra-node latency_s", self.latency_s)


@dataclass(frozen=True)
class Network:
    """The network between nodes (its kind and per-hop latency; bandwidth is per node)."""

    kind: str = "infiniband"
    latency_s: float = _NETWORK_LATENCY_S["infiniband"]

    def __post_init__(self) -> None:
        if self.kind not in NETWORK_KINDS:
            raise ClusterSpecError(f"unknown network {self.kind!r}; use one of {', '.join(NETWORK_KINDS)}")
        _check_non_negative("network latency_s", self.latency_s)


@dataclass(frozen=True)
class Node:
    gpu: GPUSpec
    num_gpus: int
    fabric: Fabric
    network_gbps: float  # whole node, per direction
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.gpu, str):
            object.__setattr__(self, "gpu", get_gpu(self.gpu))
        if not isinstance(self.num_gpus, int) or isinstance(self.num_gpus, bool) or self.num_gpus < 1:
            raise ClusterSpecError(f"a node needs a whole number of GPUs >= 1, got {self.num_gpus!r}")
        _check_positive("network_gbps", self.network_gbps)

    @classmethod
    def of(cls, gpu: str | GPUSpec, num_gpus: int, *, intra_node_gbps: float | None = None,
           intra_node_kind: str | None = None, intra_node_latency_s: float | None = None,
           network_gbps: float | None = None, network_gbps_per_gpu: float | None = None,
           name: str = "") -> "Node":
        """A node with datasheet defaults for anything not given."""
        spec = get_gpu(gpu)
        kind, bw = default_fabric(spec, num_gpus)
        kind = intra_node_kind or kind
        if kind not in FABRIC_KINDS:
            raise ClusterSpecError(f"unknown intra-node fabric {kind!r}; use one of {', '.join(FABRIC_KINDS)}")
        bw = intra_node_gbps if intra_node_gbps is not None else bw
        lat = intra_node_latency_s if intra_node_latency_s is not None else _FABRIC_LATENCY_S[kind]
        if network_gbps is not None and network_gbps_per_gpu is not None:
            raise ClusterSpecError("give network bandwidth per node or per GPU, not both")
        if network_gbps_per_gpu is not None:
            _check_positive("network_gbps_per_gpu", network_gbps_per_gpu)
            net = network_gbps_per_gpu * num_gpus
        elif network_gbps is not None:
            net = network_gbps
        else:
            net = default_network_gbps(spec, num_gpus)
        return cls(gpu=spec, num_gpus=num_gpus, fabric=Fabric(kind, bw, lat), network_gbps=net, name=name)


def default_fabric(gpu: GPUSpec, num_gpus: int) -> tuple[str, float]:
    if num_gpus == 1:
        return "loopback", gpu.memory_bandwidth_gbps
    if gpu.nvlink_gbps:
        kind = "nvswitch" if gpu.architecture in ("Hopper", "Blackwell") or (
            gpu.architecture == "Ampere" and num_gpus > 4) else "nvlink"
        return kind, gpu.nvlink_per_direction_gbps
    if gpu.vendor == "AMD":
        return "infinity_fabric", 7 * 64.0
    return "pcie", gpu.pcie_per_direction_gbps


def default_network_gbps(gpu: GPUSpec, num_gpus: int) -> float:
    """Typical node network for the GPU class: rail-optimised InfiniBand for SXM
    training nodes, Ethernet for PCIe inference nodes."""
    per_gpu_gbit = {"Blackwell": 400, "Hopper": 400, "CDNA3": 400}.get(gpu.architecture)
    if per_gpu_gbit is None:
        if gpu.form_factor == "SXM" and gpu.architecture == "Ampere":
            per_gpu_gbit = 200
        elif gpu.architecture == "Volta":
            return 100 / 8  # 100 Gbit/s per node (p3dn-class)
        else:
            return 50 / 8  # 50 Gbit/s Ethernet per node (g4dn/g5/g6-class)
    if gpu.form_factor != "SXM" and gpu.vendor == "NVIDIA":
        return 200 / 8 * max(1, num_gpus // 4)
    return per_gpu_gbit / 8 * num_gpus


def _default_network_kind(nodes: Sequence[Node]) -> str:
    if all(n.gpu.form_factor in ("SXM", "OAM") for n in nodes):
        return "infiniband"
    return "ethernet"


@dataclass(frozen=True)
class Cluster:
    """Nodes plus the network between them. GPUs are numbered node by node."""

    nodes: tuple[Node, ...]
    network: Network = field(default_factory=Network)

    def __post_init__(self) -> None:
        nodes = tuple(self.nodes) if not isinstance(self.nodes, tuple) else self.nodes
        if not nodes:
            raise ClusterSpecError("a cluster needs at least one node")
        for n in nodes:
            if not isinstance(n, Node):
                raise ClusterSpecError(f"Cluster(nodes=...) takes Node objects (Node.of('H100', 8)), got {n!r}")
        object.__setattr__(self, "nodes", nodes)

    # -- construction --------------------------------------------------
    @classmethod
    def parse(cls, spec: str | "Cluster", *, inter_node_gbps: float | None = None,
              inter_node_gbps_per_gpu: float | None = None, intra_node_gbps: float | None = None,
              intra_node_kind: str | None = None, network: str | None = None,
              inter_node_latency_s: float | None = None, intra_node_latency_s: float | None = None) -> "Cluster":
        """Parse "4x8xH100", "8xA100", "H100" or "3x4xV100+1x4xT4".

        Keyword overrides apply to every node: `inter_node_gbps` is the network
        bandwidth of a node (GB/s per direction, all NICs), `intra_node_gbps` the
        per-GPU bandwidth inside a node.
        """
        if isinstance(spec, Cluster):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise ClusterSpecError(f"a cluster string looks like '4x8xH100' or '3x4xV100+1x4xT4', got {spec!r}")
        nodes: list[Node] = []
        parts = [_parse_part(part, spec) for part in spec.replace(" ", "").split("+")]
        _check_size(sum(count * per_node for count, per_node, _ in parts), repr(spec))
        for count, per_node, gpu_name in parts:
            for _ in range(count):
                nodes.append(Node.of(
                    gpu_name, per_node, intra_node_gbps=intra_node_gbps, intra_node_kind=intra_node_kind,
                    intra_node_latency_s=intra_node_latency_s, network_gbps=inter_node_gbps,
                    network_gbps_per_gpu=inter_node_gbps_per_gpu, name=f"node{len(nodes)}"))
        kind = network or _default_network_kind(nodes)
        if kind not in NETWORK_KINDS:
            raise ClusterSpecError(f"unknown network {kind!r}; use one of {', '.join(NETWORK_KINDS)}")
        lat = inter_node_latency_s if inter_node_latency_s is not None else _NETWORK_LATENCY_S[kind]
        return cls(nodes=tuple(nodes), network=Network(kind, lat))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Cluster":
        """Build from the dict form of a YAML/JSON cluster file (see `to_dict`)."""
        if not isinstance(data, Mapping):
            raise ClusterSpecError(f"a cluster file holds a mapping with 'nodes', got {type(data).__name__}")
        if "spec" in data and "nodes" not in data:
            extra = {k: v for k, v in data.items() if k != "spec"}
            try:
                return cls.parse(data["spec"], **extra)
            except TypeError as exc:
                raise ClusterSpecError(f"unknown cluster option: {exc}") from None
        unknown = set(data) - {"nodes", "network", "name"}
        if unknown:
            raise ClusterSpecError(f"unknown cluster keys {sorted(unknown)}; a cluster file has 'nodes' and "
                                   f"optionally 'network'")
        raw_nodes = data.get("nodes")
        if not isinstance(raw_nodes, Sequence) or isinstance(raw_nodes, (str, bytes)) or not raw_nodes:
            raise ClusterSpecError("a cluster file needs 'nodes': a list of {gpu, gpus_per_node, count, ...}")
        net = data.get("network", {}) or {}
        if not isinstance(net, Mapping):
            raise ClusterSpecError("'network' must be a mapping like {kind: infiniband, bandwidth_gbps: 50}")
        bad = set(net) - {"kind", "bandwidth_gbps", "latency_s"}
        if bad:
            raise ClusterSpecError(f"unknown network keys {sorted(bad)}; use kind, bandwidth_gbps (per node), "
                                   f"latency_s")
        default_net_bw = net.get("bandwidth_gbps")
        nodes: list[Node] = []
        total_gpus = 0
        for i, raw in enumerate(raw_nodes):
            if not isinstance(raw, Mapping):
                raise ClusterSpecError(f"nodes[{i}] must be a mapping like {{gpu: H100, gpus_per_node: 8}}")
            unknown = set(raw) - {"gpu", "gpus_per_node", "num_gpus", "count", "fabric", "network_gbps",
                                  "network_gbps_per_gpu", "name"}
            if unknown:
                raise ClusterSpecError(f"nodes[{i}] has unknown keys {sorted(unknown)}")
            if "gpu" not in raw:
                raise ClusterSpecError(f"nodes[{i}] needs 'gpu' (a catalog name such as 'H100')")
            per_node = raw.get("gpus_per_node", raw.get("num_gpus"))
            if per_node is None:
                raise ClusterSpecError(f"nodes[{i}] needs 'gpus_per_node'")
            count = raw.get("count", 1)
            for label, v in (("gpus_per_node", per_node), ("count", count)):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ClusterSpecError(f"nodes[{i}].{label} must be a whole number >= 1, got {v!r}")
            if per_node > MAX_GPUS_PER_NODE:
                raise ClusterSpecError(f"nodes[{i}].gpus_per_node={per_node} is more than any node holds "
                                       f"({MAX_GPUS_PER_NODE} for NVL72); describe the GPUs as several nodes "
                                       f"with 'count'")
            total_gpus += count * per_node
            _check_size(total_gpus, "the cluster file")
            fab = raw.get("fabric", {}) or {}
            if not isinstance(fab, Mapping):
                raise ClusterSpecError(f"nodes[{i}].fabric must be a mapping like {{kind: nvswitch, bandwidth_gbps: 450}}")
            bad = set(fab) - {"kind", "bandwidth_gbps", "latency_s"}
            if bad:
                raise ClusterSpecError(f"nodes[{i}].fabric has unknown keys {sorted(bad)}; use kind, bandwidth_gbps "
                                       f"(per GPU), latency_s")
            for _ in range(count):
                nodes.append(Node.of(
                    raw["gpu"], per_node, intra_node_kind=fab.get("kind"), intra_node_gbps=fab.get("bandwidth_gbps"),
                    intra_node_latency_s=fab.get("latency_s"),
                    network_gbps=raw.get("network_gbps", default_net_bw if "network_gbps_per_gpu" not in raw else None),
                    network_gbps_per_gpu=raw.get("network_gbps_per_gpu"),
                    name=raw.get("name", f"node{len(nodes)}") if count == 1 else f"{raw.get('name', 'node')}{len(nodes)}"))
        kind = net.get("kind") or _default_network_kind(nodes)
        if kind not in NETWORK_KINDS:
            raise ClusterSpecError(f"unknown network {kind!r}; use one of {', '.join(NETWORK_KINDS)}")
        lat = net.get("latency_s", _NETWORK_LATENCY_S[kind])
        return cls(nodes=tuple(nodes), network=Network(kind, lat))

    @classmethod
    def from_file(cls, path: str | Path) -> "Cluster":
        """Read a YAML (.yaml/.yml) or JSON cluster file."""
        if not isinstance(path, (str, os.PathLike)):
            raise ClusterSpecError(f"a cluster file is given by its path, got {type(path).__name__}")
        p = Path(path)
        if not p.is_file():
            raise ClusterSpecError(f"cluster file {str(p)!r} does not exist" if not p.exists() else
                                   f"cluster file {str(p)!r} is not a file")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ClusterSpecError(f"cannot read cluster file {str(p)!r}: {exc}") from None
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError
            raise ClusterSpecError(f"cluster file {str(p)!r} is not valid {p.suffix[1:] or 'JSON'}: {exc}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": {"kind": self.network.kind, "latency_s": self.network.latency_s},
            "nodes": [
                {"name": n.name, "gpu": n.gpu.name, "gpus_per_node": n.num_gpus, "network_gbps": n.network_gbps,
                 "fabric": {"kind": n.fabric.kind, "bandwidth_gbps": n.fabric.bandwidth_gbps,
                            "latency_s": n.fabric.latency_s}}
                for n in self.nodes
            ],
        }

    # -- basic facts ---------------------------------------------------
    @cached_property
    def num_gpus(self) -> int:
        return sum(n.num_gpus for n in self.nodes)

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @cached_property
    def gpus(self) -> tuple[GPUSpec, ...]:
        """GPU spec of every global GPU index (node by node)."""
        return tuple(n.gpu for n in self.nodes for _ in range(n.num_gpus))

    @cached_property
    def node_index(self) -> tuple[int, ...]:
        """Node of every global GPU index."""
        return tuple(i for i, n in enumerate(self.nodes) for _ in range(n.num_gpus))

    @property
    def is_homogeneous(self) -> bool:
        first = self.nodes[0]
        return all(n.gpu == first.gpu and n.num_gpus == first.num_gpus and n.fabric == first.fabric
                   and n.network_gbps == first.network_gbps for n in self.nodes)

    @property
    def gpu_types(self) -> tuple[GPUSpec, ...]:
        seen: dict[str, GPUSpec] = {}
        for n in self.nodes:
            seen.setdefault(n.gpu.name, n.gpu)
        return tuple(seen.values())

    @property
    def gpus_per_node(self) -> int:
        """GPUs per node where all nodes agree; otherwise the smallest node."""
        return min(n.num_gpus for n in self.nodes)

    @property
    def total_memory_bytes(self) -> float:
        return sum(n.gpu.memory_bytes * n.num_gpus for n in self.nodes)

    def describe(self) -> str:
        parts = []
        i = 0
        while i < len(self.nodes):
            j = i
            while j + 1 < len(self.nodes) and self.nodes[j + 1].gpu == self.nodes[i].gpu and \
                    self.nodes[j + 1].num_gpus == self.nodes[i].num_gpus:
                j += 1
            n = self.nodes[i]
            parts.append(f"{j - i + 1}x{n.num_gpus}x{n.gpu.name}")
            i = j + 1
        return "+".join(parts)

    def summary(self) -> str:
        lines = [f"cluster {self.describe()}: {self.num_gpus} GPUs in {self.num_nodes} node(s), "
                 f"{self.network.kind} network"]
        for n in self.nodes:
            lines.append(f"  {n.name or 'node'}: {n.num_gpus} x {n.gpu.name}, {n.fabric.kind} "
                         f"{n.fabric.bandwidth_gbps:g} GB/s per GPU, network {n.network_gbps:g} GB/s per node")
        return "\n".join(lines)

    def with_nodes(self, nodes: Iterable[Node]) -> "Cluster":
        return replace(self, nodes=tuple(nodes))

    def first_gpus(self, count: int) -> "Cluster":
        """The sub-cluster made of the first `count` GPUs (node by node)."""
        if not isinstance(count, int) or not 1 <= count <= self.num_gpus:
            raise ClusterSpecError(f"cannot take {count} GPUs from a cluster of {self.num_gpus}")
        nodes, left = [], count
        for n in self.nodes:
            if left <= 0:
                break
            nodes.append(n if n.num_gpus <= left else replace(n, num_gpus=left))
            left -= n.num_gpus
        return self.with_nodes(nodes)

    def without_gpus(self, failed: Iterable[int]) -> "Cluster":
        """The cluster left after losing some GPUs (global indices); empty nodes disappear."""
        failed_idx = np.unique(np.fromiter((int(g) for g in failed), dtype=np.int64))
        total = self.num_gpus
        bad = failed_idx[(failed_idx < 0) | (failed_idx >= total)]
        if bad.size:
            raise ClusterSpecError(f"GPU indices {bad[:10].tolist()}{' ...' if bad.size > 10 else ''} are outside "
                                   f"0..{total - 1}")
        sizes = np.array([n.num_gpus for n in self.nodes], dtype=np.int64)
        node_of = np.searchsorted(np.cumsum(sizes), failed_idx, side="right")
        left = sizes - np.bincount(node_of, minlength=len(sizes))
        nodes = [n if lost_none else replace(n, num_gpus=int(k))
                 for n, k, lost_none in zip(self.nodes, left, left == sizes) if k > 0]
        if not nodes:
            raise ClusterSpecError("no GPUs are left in the cluster")
        return self.with_nodes(nodes)

    # -- graph ---------------------------------------------------------
    @cached_property
    def graph(self) -> nx.Graph:
        """GPU vertices ('n{node}.g{i}', attribute `index`), one switch per node, one network core.

        Edge attributes: `bandwidth_gbps` (per direction), `latency_s`.
        """
        g = nx.Graph()
        multi = self.num_nodes > 1
        if multi:
            g.add_node("network", kind="network")
        idx = 0
        for ni, n in enumerate(self.nodes):
            sw = f"n{ni}.switch"
            g.add_node(sw, kind="switch", node=ni)
            for li in range(n.num_gpus):
                gid = f"n{ni}.g{li}"
                g.add_node(gid, kind="gpu", node=ni, index=idx, gpu=n.gpu.name)
                g.add_edge(gid, sw, bandwidth_gbps=n.fabric.bandwidth_gbps, latency_s=n.fabric.latency_s / 2)
                idx += 1
            if multi:
                g.add_edge(sw, "network", bandwidth_gbps=n.network_gbps, latency_s=self.network.latency_s / 2)
        return g

    def _vertex(self, gpu_index: int) -> str:
        if isinstance(gpu_index, numbers.Integral) and not isinstance(gpu_index, bool):
            gpu_index = int(gpu_index)
        if not isinstance(gpu_index, int) or isinstance(gpu_index, bool) or not 0 <= gpu_index < self.num_gpus:
            raise ClusterSpecError(f"GPU index {gpu_index!r} is outside 0..{self.num_gpus - 1}")
        ni = self.node_index[gpu_index]
        local = gpu_index - sum(n.num_gpus for n in self.nodes[:ni])
        return f"n{ni}.g{local}"

    def _path(self, a: int, b: int) -> list[str]:
        return nx.shortest_path(self.graph, self._vertex(a), self._vertex(b))

    def bandwidth_gbps(self, a: int, b: int) -> float:
        """Bottleneck bandwidth of the path between two GPUs (GB/s per direction)."""
        if a == b:
            return self.gpus[self._index(a)].memory_bandwidth_gbps
        path = self._path(a, b)
        return min(self.graph.edges[u, v]["bandwidth_gbps"] for u, v in zip(path, path[1:]))

    def latency_s(self, a: int, b: int) -> float:
        if a == b:
            return 0.0
        path = self._path(a, b)
        return sum(self.graph.edges[u, v]["latency_s"] for u, v in zip(path, path[1:]))

    def same_node(self, group: Iterable[int]) -> bool:
        nodes = {self.node_index[self._index(g)] for g in group}
        return len(nodes) <= 1

    def _index(self, g: int) -> int:
        self._vertex(g)
        return int(g)

    def node_groups(self, group: Iterable[int]) -> dict[int, list[int]]:
        """Members of a group, split by the node they live in."""
        out: dict[int, list[int]] = {}
        for g in group:
            out.setdefault(self.node_index[self._index(g)], []).append(g)
        return out

    def group_bandwidth_gbps(self, group: Sequence[int], *, groups_sharing_nic: int = 1) -> float:
        """Per-direction bandwidth a ring collective over `group` can sustain.

        Inside a node the ring runs at the slowest member's fabric bandwidth. A ring
        that spans nodes crosses each node's network once per direction; NCCL spreads
        it over all NICs, so the node's whole network bandwidth is available, divided
        among the `groups_sharing_nic` groups of the same kind that leave the node at
        the same time (tensor-parallel peers each driving their own data-parallel ring).
        """
        members = list(dict.fromkeys(group))
        if len(members) < 2:
            return math.inf
        if groups_sharing_nic < 1:
            raise ParplanError("groups_sharing_nic must be >= 1")
        by_node = self.node_groups(members)
        bw = math.inf
        for ni, local in by_node.items():
            node = self.nodes[ni]
            if len(local) > 1:
                bw = min(bw, node.fabric.bandwidth_gbps)
            if len(by_node) > 1:
                bw = min(bw, node.network_gbps / groups_sharing_nic)
        return bw

    def group_latency_s(self, group: Sequence[int]) -> float:
        """Worst single-hop latency between consecutive members of a ring over `group`."""
        members = sorted(dict.fromkeys(group))
        if len(members) < 2:
            return 0.0
        by_node = self.node_groups(members)
        if len(by_node) > 1:
            return max(self.latency_s(members[0], m) for m in members if self.node_index[m] != self.node_index[members[0]])
        return self.latency_s(members[0], members[1])

    def groups_within_node(self, size: int, stride: int = 1) -> bool:
        """Whether every group of `size` GPUs at `stride` (consecutive blocks of size*stride) lies in one node."""
        span = size * stride
        if self.num_gpus % span:
            return False
        return all(self.same_node(range(s, s + span, 1)) for s in range(0, self.num_gpus, span))


_PART_RE = re.compile(r"^(?:(\d+)x)?(?:(\d+)x)?(.+)$", re.IGNORECASE)


def _parse_part(part: str, whole: str) -> tuple[int, int, str]:
    m = _PART_RE.match(part)
    if not part or m is None or not m.group(3):
        raise ClusterSpecError(f"cannot read {part!r} in cluster {whole!r}: write NODESxGPUSxNAME, e.g. '4x8xH100'")
    a, b, name = m.groups()
    if any(d is not None and len(d) > 9 for d in (a, b)):
        raise ClusterSpecError(f"{part!r} in cluster {whole!r} asks for more than {MAX_GPUS:,} GPUs; "
                               f"write NODESxGPUSxNAME, e.g. '4x8xH100'")
    if a is not None and b is not None:
        count, per_node = int(a), int(b)
    elif a is not None:
        count, per_node = 1, int(a)
    else:
        count, per_node = 1, 1
    if count < 1 or per_node < 1:
        raise ClusterSpecError(f"{part!r} in cluster {whole!r} asks for zero nodes or GPUs")
    if per_node > MAX_GPUS_PER_NODE:
        raise ClusterSpecError(f"{part!r}: {per_node} GPUs in one node is more than any node holds (72 for NVL72); "
                               f"write NODESxGPUSxNAME, e.g. '{max(1, per_node // 8)}x8x{name}'")
    if re.search(r"\dx", name.lower()) and re.match(r"^\d", name):
        raise ClusterSpecError(f"cannot read {part!r} in cluster {whole!r}: write NODESxGPUSxNAME, e.g. '4x8xH100'")
    return count, per_node, get_gpu(name).name


def _check_size(num_gpus: int, what: str) -> None:
    if num_gpus > MAX_GPUS:
        raise ClusterSpecError(f"{what} describes {num_gpus:,} GPUs; parplan plans clusters of up to {MAX_GPUS:,} "
                               f"GPUs (check the node count: NODESxGPUSxNAME, e.g. '12500x8xH100')")


def _check_positive(label: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ClusterSpecError(f"{label} must be a positive number of GB/s, got {value!r}")


def _check_non_negative(label: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ClusterSpecError(f"{label} must be a non-negative number, got {value!r}")
