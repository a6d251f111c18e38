"""Shared helpers for the cost-model and planner tests: tiny models, small clusters, and an
independent enumerator of valid strategies and stage splits (brute force must not reuse the
planner's own search-space code)."""
from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import HealthCheck, settings

from costmodel.model import ModelSpec
from costmodel.params import CostParams
from hardware_profiles import Cluster, Node, get_gpu


def fast(max_examples: int):
    """Hypothesis settings for these tests: a modest number of examples, no per-example deadline (the first
    call of a shape fills caches)."""
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Cost constants fixed for the tests, so a calibration file on disk cannot change what is checked.
PARAMS = CostParams()

GPT_STYLE = dict(gated_mlp=False, norm="layernorm", activation="gelu", bias=True, position="rope",
                 tie_embeddings=True)
LLAMA_STYLE = dict(gated_mlp=True, norm="rmsnorm", activation="silu", bias=False, position="rope",
                   tie_embeddings=False)


def tiny_llama(num_layers: int = 4, hidden: int = 64, num_heads: int = 4, num_kv_heads: int = 2,
               ffn_hidden: int = 176, vocab: int = 512, seq_len: int = 32, name: str = "tiny-llama-test"
               ) -> ModelSpec:
    return ModelSpec.decoder(name, num_layers=num_layers, hidden=hidden, num_heads=num_heads,
                             num_kv_heads=num_kv_heads, ffn_hidden=ffn_hidden, vocab=vocab, seq_len=seq_len,
                             **LLAMA_STYLE)


def tiny_gpt(num_layers: int = 4, hidden: int = 64, num_heads: int = 4, vocab: int = 512, seq_len: int = 32,
             name: str = "tiny-gpt-test") -> ModelSpec:
    return ModelSpec.decoder(name, num_layers=num_layers, hidden=hidden, num_heads=num_heads,
                             ffn_hidden=4 * hidden, vocab=vocab, seq_len=seq_len, **GPT_STYLE)


def tiny_moe(num_layers: int = 2, hidden: int = 64, num_heads: int = 4, num_kv_heads: int = 2,
             num_experts: int = 4, top_k: int = 2, expert_ffn_hidden: int = 96, vocab: int = 512,
             seq_len: int = 32, name: str = "tiny-moe-test") -> ModelSpec:
    return ModelSpec.decoder(name, num_layers=num_layers, hidden=hidden, num_heads=num_heads,
                             num_kv_heads=num_kv_heads, vocab=vocab, seq_len=seq_len, num_experts=num_experts,
                             top_k=top_k, expert_ffn_hidden=expert_ffn_hidden, **LLAMA_STYLE)


def gpu_with_memory(name: str, usable_extra_bytes: float | None, params: CostParams = PARAMS):
    """A catalog GPU whose memory is set so that `usable_extra_bytes` remain usable beyond the cost
    model's fixed reserve (None: the datasheet memory). Renamed so no measured profile applies."""
    gpu = get_gpu(name)
    if usable_extra_bytes is None:
        return gpu
    mem_bytes = (params.memory_reserved_bytes + usable_extra_bytes) / params.memory_usable_fraction
    return replace(gpu, name=f"{gpu.name}-test{int(usable_extra_bytes)}", memory_gb=mem_bytes / 1e9, aliases=())


def make_cluster(nodes: list[tuple[object, int]], inter_node_gbps: float | None = None) -> Cluster:
    """nodes: (GPU name or GPUSpec, GPUs per node) per node."""
    return Cluster(nodes=tuple(Node.of(g, n, network_gbps=inter_node_gbps, name=f"node{i}")
                               for i, (g, n) in enumerate(nodes)))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def contiguous_splits(num_entries: int, parts: int):
    """Every way to cut `num_entries` layers into `parts` non-empty contiguous stages, as cut points."""
    for inner in itertools.combinations(range(1, num_entries), parts - 1):
        yield (0, *inner, num_entries)


def node_placements(cluster: Cluster):
    """Every order of the nodes, as a GPU placement (None for the identity order)."""
    starts, acc = [], 0
    for n in cluster.nodes:
        starts.append(acc)
        acc += n.num_gpus
    seen = set()
    for order in itertools.permutations(range(len(cluster.nodes))):
        placement = tuple(g for ni in order for g in range(starts[ni], starts[ni] + cluster.nodes[ni].num_gpus))
        key = placement if placement != tuple(range(cluster.num_gpus)) else None
        if key not in seen:
            seen.add(key)
            yield key


def tp_divides_model(model: ModelSpec, tp: int) -> bool:
    return model.tp_splits_evenly(tp, expert_tp=tp)
