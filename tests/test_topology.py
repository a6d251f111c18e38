"""Cluster topology: parsing strings and files, bandwidth/latency queries, groups, failures."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

import hardware_profiles as hp
from hardware_profiles.errors import ClusterSpecError, ParplanError, UnknownGPUError
from hardware_profiles.topology import Cluster, Fabric, Network, Node

AMP_YAML = """
# AMP's heterogeneous cluster: 3 x p3.8xlarge (4 V100, NVLink) + 1 x g4dn.12xlarge (4 T4), 10 Gbit/s
network: {kind: ethernet, bandwidth_gbps: 1.25}
nodes:
  - {gpu: V100, gpus_per_node: 4, count: 3, name: p3}
  - {gpu: T4, gpus_per_node: 4, name: g4dn}
"""


@pytest.fixture
def amp() -> Cluster:
    return Cluster.parse("3x4xV100+1x4xT4", inter_node_gbps=1.25)


# -- strings -----------------------------------------------------------------------
def test_parse_nodes_by_gpus():
    c = Cluster.parse("4x8xH100")
    assert (c.num_gpus, c.num_nodes, c.gpus_per_node) == (32, 4, 8)
    assert c.is_homogeneous and c.gpu_types == (hp.get_gpu("H100"),)
    assert c.nodes[0].fabric.kind == "nvswitch"
    assert c.nodes[0].fabric.bandwidth_gbps == hp.get_gpu("H100").nvlink_per_direction_gbps
    assert c.network.kind == "infiniband"
    assert c.describe() == "4x8xH100-SXM-80GB"
    assert Cluster.parse(c.describe()).num_gpus == 32


def test_parse_single_node_and_single_gpu():
    c = Cluster.parse("8xA100")
    assert (c.num_nodes, c.num_gpus) == (1, 8)
    assert c.nodes[0].gpu.name == "A100-SXM-80GB"
    one = Cluster.parse("H100")
    assert (one.num_nodes, one.num_gpus) == (1, 1)
    assert one.nodes[0].fabric.kind == "loopback"
    assert Cluster.parse(one) is one


def test_parse_mixed_cluster_with_network_override(amp):
    assert (amp.num_nodes, amp.num_gpus) == (4, 16)
    assert not amp.is_homogeneous
    assert [g.name for g in amp.gpu_types] == ["V100-SXM2-16GB", "T4"]
    assert all(n.network_gbps == 1.25 for n in amp.nodes)
    assert amp.network.kind == "ethernet"  # a PCIe node in the mix: not an InfiniBand cluster
    assert amp.nodes[0].fabric.kind == "nvlink" and amp.nodes[3].fabric.kind == "pcie"
    assert amp.total_memory_bytes == pytest.approx((12 * 16 + 4 * 16) * 1e9)


def test_parse_keyword_overrides():
    c = Cluster.parse("2x8xH100", inter_node_gbps_per_gpu=25, network="roce", intra_node_gbps=300)
    assert all(n.network_gbps == 200 for n in c.nodes)
    assert c.network.kind == "roce" and c.nodes[0].fabric.bandwidth_gbps == 300
    with pytest.raises(ClusterSpecError, match="per node or per GPU"):
        Cluster.parse("2x8xH100", inter_node_gbps=50, inter_node_gbps_per_gpu=25)
    with pytest.raises(ClusterSpecError, match="unknown network"):
        Cluster.parse("2x8xH100", network="carrier-pigeon")
    with pytest.raises(ClusterSpecError, match="positive"):
        Cluster.parse("2x8xH100", inter_node_gbps=0)


@pytest.mark.parametrize("bad,match", [
    ("", "looks like"), ("0x8xH100", "zero"), ("4x0xH100", "zero"), ("4x8x", "NODESxGPUSxNAME"),
    ("1x128xH100", "more than any node"), ("3x4xV100++1x4xT4", "cannot read"),
])
def test_bad_strings(bad, match):
    with pytest.raises(ClusterSpecError, match=match):
        Cluster.parse(bad)


def test_unknown_gpu_in_string_names_it():
    with pytest.raises(UnknownGPUError, match="H900"):
        Cluster.parse("2x8xH900")


# -- files -------------------------------------------------------------------------
def test_yaml_file_matches_the_string_form(tmp_path, amp):
    p = tmp_path / "amp.yaml"
    p.write_text(AMP_YAML)
    c = Cluster.from_file(p)
    assert c.num_gpus == amp.num_gpus and c.gpus == amp.gpus
    assert [n.network_gbps for n in c.nodes] == [n.network_gbps for n in amp.nodes]
    assert [n.fabric for n in c.nodes] == [n.fabric for n in amp.nodes]
    assert c.network.kind == "ethernet"
    assert c.bandwidth_gbps(0, 12) == amp.bandwidth_gbps(0, 12)
    assert [n.name for n in c.nodes] == ["p30", "p31", "p32", "g4dn"]


def test_json_round_trip(tmp_path, amp):
    p = tmp_path / "amp.json"
    p.write_text(json.dumps(amp.to_dict()))
    assert Cluster.from_file(p) == amp
    assert Cluster.from_dict(amp.to_dict()) == amp


def test_spec_form_in_a_file(tmp_path):
    p = tmp_path / "c.yml"
    p.write_text(yaml.safe_dump({"spec": "2x8xH100", "inter_node_gbps": 50}))
    c = Cluster.from_file(p)
    assert c.num_gpus == 16 and c.nodes[1].network_gbps == 50
    p.write_text(yaml.safe_dump({"spec": "2x8xH100", "inter_node_gbs": 50}))
    with pytest.raises(ClusterSpecError, match="unknown cluster option"):
        Cluster.from_file(p)


@pytest.mark.parametrize("data,match", [
    ({"nodes": [{"gpu": "H900", "gpus_per_node": 8}]}, "H900"),
    ({"nodes": [{"gpu": "H100", "gpus_per_node": 0}]}, "whole number >= 1"),
    ({"nodes": [{"gpu": "H100", "gpus_per_node": 8, "count": 0}]}, "whole number >= 1"),
    ({"nodes": [{"gpu": "H100", "gpus_per_node": 8.5}]}, "whole number"),
    ({"nodes": [{"gpu": "H100", "gpus_per_node": 8, "gpu_count": 8}]}, "unknown keys"),
    ({"nodes": [{"gpus_per_node": 8}]}, "needs 'gpu'"),
    ({"nodes": [{"gpu": "H100"}]}, "gpus_per_node"),
    ({"nodes": []}, "needs 'nodes'"),
    ({"nodes": "8xH100"}, "needs 'nodes'"),
    ({"nodes": ["H100"]}, "must be a mapping"),
    ({"nodes": [{"gpu": "H100", "gpus_per_node": 8}], "network": "ib"}, "must be a mapping"),
    ({"nodes": [{"gpu": "H100", "gpus_per_node": 8}], "network": {"kind": "token-ring"}}, "unknown network"),
    ({"nodes": [{"gpu": "H100", "gpus_per_node": 8, "fabric": {"kind": "warp"}}]}, "unknown intra-node fabric"),
    ({"nodes": [{"gpu": "H100", "gpus_per_node": 8, "fabric": "nvswitch"}]}, "must be a mapping"),
])
def test_invalid_cluster_files(tmp_path, data, match):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ParplanError, match=match):
        Cluster.from_file(p)


def test_non_mapping_malformed_and_missing_files(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- gpu: H100\n- gpu: T4\n")
    with pytest.raises(ClusterSpecError, match="mapping"):
        Cluster.from_file(p)
    p = tmp_path / "broken.yaml"
    p.write_text("nodes: [ {gpu: H100, gpus_per_node: 8\n")
    with pytest.raises(ClusterSpecError, match="not valid yaml"):
        Cluster.from_file(p)
    p = tmp_path / "broken.json"
    p.write_text('{"nodes": [')
    with pytest.raises(ClusterSpecError, match="not valid json"):
        Cluster.from_file(p)
    with pytest.raises(ClusterSpecError, match="does not exist"):
        Cluster.from_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize("data", [
    {"nodes": [{"gpu": "H100", "gpus_per_node": 8}], "netwrok": {"kind": "ethernet"}},
    {"nodes": [{"gpu": "H100", "gpus_per_node": 8}], "network": {"kind": "ethernet", "bandwith_gbps": 3}},
    {"nodes": [{"gpu": "H100", "gpus_per_node": 8, "fabric": {"kind": "nvswitch", "bandwith_gbps": 3}}]},
])
def test_misspelled_keys_are_rejected(data):
    with pytest.raises(ClusterSpecError, match="unknown"):
        Cluster.from_dict(data)


# -- queries on the mixed cluster -------------------------------------------------------
def test_pair_bandwidth_and_latency(amp):
    v100, t4 = hp.get_gpu("V100"), hp.get_gpu("T4")
    fab_v, fab_t = amp.nodes[0].fabric, amp.nodes[3].fabric
    # NVLink pair inside a p3 node
    assert amp.bandwidth_gbps(0, 1) == v100.nvlink_per_direction_gbps == 150
    assert amp.latency_s(0, 1) == pytest.approx(fab_v.latency_s)
    # V100 <-> T4 crosses both nodes' 10 Gbit/s links
    assert amp.bandwidth_gbps(0, 12) == 1.25
    assert amp.bandwidth_gbps(12, 0) == amp.bandwidth_gbps(0, 12)
    assert amp.latency_s(0, 12) == pytest.approx(fab_v.latency_s / 2 + amp.network.latency_s + fab_t.latency_s / 2)
    assert amp.latency_s(0, 12) > amp.latency_s(0, 4) > amp.latency_s(0, 1)
    # T4 pair over PCIe
    assert amp.bandwidth_gbps(12, 13) == t4.pcie_per_direction_gbps == 16
    # a GPU to itself: its own memory
    assert amp.bandwidth_gbps(5, 5) == v100.memory_bandwidth_gbps and amp.latency_s(5, 5) == 0


def test_group_bottleneck_bandwidth(amp):
    assert amp.group_bandwidth_gbps([0, 1, 2, 3]) == 150
    assert amp.group_bandwidth_gbps([12, 13, 14, 15]) == 16
    assert amp.group_bandwidth_gbps([0, 4]) == 1.25
    assert amp.group_bandwidth_gbps([0, 4, 8, 12], groups_sharing_nic=4) == pytest.approx(1.25 / 4)
    assert amp.group_bandwidth_gbps([0, 1, 12, 13]) == 1.25  # the network, not the PCIe pair, is the bottleneck
    assert amp.group_bandwidth_gbps([7]) == math.inf and amp.group_bandwidth_gbps([3, 3]) == math.inf
    with pytest.raises(ParplanError, match="groups_sharing_nic"):
        amp.group_bandwidth_gbps([0, 4], groups_sharing_nic=0)
    h = Cluster.parse("2x8xH100")
    per_node = h.nodes[0].network_gbps
    assert h.group_bandwidth_gbps(range(16)) == min(per_node, h.nodes[0].fabric.bandwidth_gbps)
    assert h.group_bandwidth_gbps([0, 8], groups_sharing_nic=8) == pytest.approx(per_node / 8)


def test_group_latency(amp):
    assert amp.group_latency_s([0, 1, 2]) == pytest.approx(amp.latency_s(0, 1))
    assert amp.group_latency_s([0, 4, 12]) == pytest.approx(max(amp.latency_s(0, 4), amp.latency_s(0, 12)))
    assert amp.group_latency_s([9]) == 0.0


def test_same_node_and_groups_within_node(amp):
    assert amp.same_node([0, 1, 2, 3]) and not amp.same_node([3, 4])
    assert amp.node_groups([0, 5, 6, 13]) == {0: [0], 1: [5, 6], 3: [13]}
    assert amp.groups_within_node(4)
    assert amp.groups_within_node(2, stride=2)  # {0,2}, {1,3}, ... stay inside 4-GPU nodes
    assert not amp.groups_within_node(8)
    assert not amp.groups_within_node(3)  # 16 GPUs do not split into groups of 3
    with pytest.raises(ClusterSpecError, match="outside"):
        amp.same_node([0, 16])


def test_graph_shape(amp):
    g = amp.graph
    gpus = [v for v, d in g.nodes(data=True) if d["kind"] == "gpu"]
    assert len(gpus) == 16 and g.number_of_nodes() == 16 + 4 + 1
    assert sorted(g.nodes[v]["index"] for v in gpus) == list(range(16))
    assert all("bandwidth_gbps" in d and "latency_s" in d for _, _, d in g.edges(data=True))


def test_out_of_range_indices(amp):
    with pytest.raises(ClusterSpecError, match="outside 0..15"):
        amp.bandwidth_gbps(0, 16)
    with pytest.raises(ClusterSpecError):
        amp.latency_s(-1, 0)


def test_numpy_indices_are_accepted(amp):
    assert amp.bandwidth_gbps(np.int64(0), np.int64(1)) == amp.bandwidth_gbps(0, 1)


# -- failures ------------------------------------------------------------------------
def test_without_gpus(amp):
    c = amp.without_gpus([0])
    assert c.num_gpus == 15 and c.nodes[0].num_gpus == 3
    assert c.bandwidth_gbps(0, 1) == 150  # renumbered: old GPUs 1 and 2
    gone = amp.without_gpus([12, 13, 14, 15])
    assert gone.num_nodes == 3 and gone.gpu_types == (hp.get_gpu("V100"),)
    assert amp.num_gpus == 16  # the original is untouched
    with pytest.raises(ClusterSpecError, match="outside"):
        amp.without_gpus([16])
    with pytest.raises(ClusterSpecError, match="no GPUs are left"):
        amp.without_gpus(range(16))


# -- construction in Python ------------------------------------------------------------
def test_cluster_in_one_line_of_python():
    c = Cluster(nodes=(*[Node.of("V100", 4, network_gbps=1.25)] * 3, Node.of("T4", 4, network_gbps=1.25)),
                network=Network("ethernet"))
    assert c.num_gpus == 16 and c.bandwidth_gbps(0, 12) == 1.25


def test_bad_construction():
    with pytest.raises(ClusterSpecError, match="at least one node"):
        Cluster(nodes=())
    with pytest.raises(ClusterSpecError, match="Node objects"):
        Cluster(nodes=("H100",))
    with pytest.raises(ClusterSpecError, match="whole number"):
        Node.of("H100", 0)
    with pytest.raises(ClusterSpecError, match="positive"):
        Fabric("nvlink", -1.0, 1e-6)
    with pytest.raises(ClusterSpecError, match="unknown network"):
        Network("smoke-signals")
    assert Node(gpu="T4", num_gpus=2, fabric=Fabric("pcie", 16, 5e-6), network_gbps=1).gpu is hp.get_gpu("T4")
