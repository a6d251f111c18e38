"""Rules a strategy must obey for a given model, cluster and workload."""
from __future__ import annotations

from hardware_profiles.topology import Cluster

from .errors import InvalidStrategyError
from .model import ModelSpec
from .strategy import Strategy
from .workload import Inference, Training


def check_strategy(model: ModelSpec, cluster: Cluster, strategy: Strategy, workload: Training | Inference) -> None:
    """Raise InvalidStrategyError naming the broken rule; return None when the strategy is valid."""
    s = strategy
    n = cluster.num_gpus
    if s.num_gpus != n:
        raise InvalidStrategyError(
            f"tp x pp x dp = {s.tp} x {s.pp} x {s.dp} = {s.num_gpus} must equal the cluster's {n} GPUs",
            rule="tp*pp*dp==gpus")
    if s.placement is not None and len(s.placement) != n:
        raise InvalidStrategyError(f"placement lists {len(s.placement)} GPUs; the cluster has {n}", rule="placement")
    for b in model.blocks:
        if b.num_heads % s.tp:
            raise InvalidStrategyError(
                f"tp={s.tp} does not divide the {b.num_heads} attention heads of {model.name}", rule="tp|heads")
        if b.num_kv_heads % s.tp:
            raise InvalidStrategyError(
                f"tp={s.tp} does not divide the {b.num_kv_heads} KV heads of {model.name}", rule="tp|kv_heads")
        if b.is_moe:
            if b.num_experts % s.ep:
                raise InvalidStrategyError(
                    f"ep={s.ep} does not divide the {b.num_experts} experts of {model.name}", rule="ep|experts")
            moe_tp = s.moe_tp
            if b.expert_ffn_hidden % moe_tp:
                raise InvalidStrategyError(
                    f"expert width {b.expert_ffn_hidden} is not divisible by its tensor-parallel degree {moe_tp}",
                    rule="moe_tp|expert_ffn")
        elif b.ffn_hidden % s.tp:
            raise InvalidStrategyError(
                f"tp={s.tp} does not divide the MLP width {b.ffn_hidden} of {model.name}", rule="tp|ffn")
    if s.ep > 1 and not model.is_moe:
        raise InvalidStrategyError(f"ep={s.ep} needs a mixture-of-experts model; {model.name} is dense",
                                   rule="ep needs MoE")
    entries = len(model.layers)
    chunks = s.pp * s.virtual_stages
    if chunks > entries:
        raise InvalidStrategyError(
            f"pp={s.pp}" + (f" x virtual_stages={s.virtual_stages}" if s.virtual_stages > 1 else "")
            + f" = {chunks} pipeline chunks exceeds the {entries} layer entries of {model.name} "
            f"(embedding, {model.num_layers} blocks, head)", rule="pp<=layers")
    if s.stages is not None:
        if s.virtual_stages > 1:
            raise InvalidStrategyError("explicit stage cut points are not supported with virtual stages",
                                       rule="stages")
        if s.stages[-1] != entries:
            raise InvalidStrategyError(
                f"stage cut points must end at {entries} (the number of layer entries of {model.name}), "
                f"got {list(s.stages)}", rule="stages")
    if isinstance(workload, Training):
        if workload.global_batch % s.dp:
            raise InvalidStrategyError(
                f"dp={s.dp} does not divide the global batch {workload.global_batch}", rule="dp|batch")
        per_replica = workload.global_batch // s.dp
        if per_replica % s.micro_batch:
            raise InvalidStrategyError(
                f"micro_batch={s.micro_batch} does not divide the per-replica batch {per_replica} "
                f"(global batch {workload.global_batch} / dp {s.dp})", rule="micro_batch|batch")
        if s.schedule == "interleaved" and (per_replica // s.micro_batch) % s.pp:
            raise InvalidStrategyError(
                f"the interleaved schedule needs the number of micro-batches ({per_replica // s.micro_batch}) "
                f"to be a multiple of pp={s.pp}", rule="interleaved micro-batches")
    else:
        if workload.batch % s.dp:
            raise InvalidStrategyError(f"dp={s.dp} does not divide the request batch {workload.batch}",
                                       rule="dp|batch")
        if (workload.batch // s.dp) % s.micro_batch:
            raise InvalidStrategyError(
                f"micro_batch={s.micro_batch} does not divide the per-replica batch {workload.batch // s.dp}",
                rule="micro_batch|batch")
        if s.zero or s.recompute != "none":
            raise InvalidStrategyError("ZeRO and activation recompute apply to training only", rule="inference")
        if s.schedule == "interleaved":
            raise InvalidStrategyError("the interleaved schedule applies to training only", rule="inference")
