"""Training step time and memory for one strategy.

Step time = pipeline time + exposed data-parallel sync + optimizer step + fixed overhead.
Pipeline time with stage times t_j per micro-batch (compute, TP and EP collectives,
stage-to-stage sends), m micro-batches and v virtual stages per device:
    T = m * max_j t_j + (sum_j t_j - max_j t_j) / v
which is (m - 1) * max + sum for GPipe and 1F1B (AMP's form) and m*t + (p-1)*t/v
for uniform interleaved stages (Narayanan et al. 2021).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hardware_profiles.topology import Cluster

from .comm import all_gather_s, all_reduce_s, p2p_s, reduce_scatter_s
from .estimate import CostContext, Estimate, StageEstimate
from .layercost import LayerTrainCost, Parallel, layer_train_cost
from .layers import model_flops_per_token, param_split
from .layout import StageLinks, resolve_layout
from .model import ModelSpec
from .partition import even_partition, partition
from .strategy import Strategy
from .workload import Training

_WEIGHT_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


@dataclass(frozen=True)
class StaticBytes:
    """Bytes per parameter of model state, before ZeRO sharding."""

    weights: float
    gradients: float
    optimizer: float


def static_bytes(workload: Training) -> StaticBytes:
    w = _WEIGHT_BYTES[workload.dtype]
    mixed = w < 4
    if workload.optimizer in ("adam", "adamw"):
        opt = 12.0 if mixed else 8.0  # fp32 master + two moments, or the two moments alone
    else:
        opt = 8.0 if mixed else 4.0  # momentum (+ fp32 master)
    return StaticBytes(weights=float(w), gradients=float(w), optimizer=opt)


def zero_divisors(zero: int, ways: float) -> tuple[float, float, float]:
    """How many ways weights, gradients and optimizer state are sharded under ZeRO."""
    return (ways if zero >= 3 else 1.0, ways if zero >= 2 else 1.0, ways if zero >= 1 else 1.0)


def stage_parallel(strategy: Strategy, links: StageLinks, params_eff: float) -> Parallel:
    return Parallel(tp=strategy.tp, ep=strategy.ep, ep_mode=strategy.ep_mode, sp=strategy.sequence_parallel,
                    tp_bw_gbps=links.tp_bw_gbps * params_eff, tp_latency_s=links.tp_latency_s,
                    ep_bw_gbps=links.ep_bw_gbps * params_eff, ep_latency_s=links.ep_latency_s)


def layer_costs(model: ModelSpec, links: StageLinks, strategy: Strategy, workload: Training, ctx: CostContext
                ) -> list[LayerTrainCost]:
    p = ctx.params
    seq = workload.seq_len or model.seq_len
    dev = ctx.device(links.gpu, workload.dtype)
    par = stage_parallel(strategy, _scaled(links, p.collective_latency_factor), p.collective_efficiency)
    cache: dict = {}
    out = []
    for lay in model.layers:
        key = replace(lay, name="")
        if key not in cache:
            cache[key] = layer_train_cost(lay, dev, par, p, micro_batch=strategy.micro_batch, seq_len=seq,
                                          recompute=strategy.recompute)
        out.append(cache[key])
    return out


def _scaled(links: StageLinks, latency_factor: float) -> StageLinks:
    if latency_factor == 1.0:
        return links
    return replace(links, tp_latency_s=links.tp_latency_s * latency_factor,
                   dp_latency_s=links.dp_latency_s * latency_factor, ep_latency_s=links.ep_latency_s * latency_factor,
                   next_latency_s=links.next_latency_s * latency_factor)


def layer_param_arrays(model: ModelSpec, strategy: Strategy, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer: dense parameters held per GPU, expert parameters held per GPU."""
    dense, expert = [], []
    for lay in model.layers:
        sp = param_split(lay, seq_len)
        dense.append(sp.replicated + sp.tp_sharded / strategy.tp)
        expert.append(sp.expert / (strategy.ep * strategy.moe_tp))
    return np.array(dense), np.array(expert)


def in_flight(schedule: str, p: int, m: int, v: int) -> np.ndarray:
    """Micro-batches whose activations each stage holds at its peak (in units of a whole stage)."""
    j = np.arange(p)
    if schedule == "gpipe":
        return np.full(p, float(m))
    if schedule == "interleaved":
        chunks = np.minimum(m * v, 2 * (p - j - 1) + (v - 1) * p + 1)
        return chunks / v
    return np.minimum(p - j, m).astype(float)


def estimate_training(model: ModelSpec, cluster: Cluster, strategy: Strategy, workload: Training,
                      ctx: CostContext) -> Estimate:
    s = strategy
    prm = ctx.params
    seq = workload.seq_len or model.seq_len
    pp, dp, v = s.pp, s.dp, s.virtual_stages
    m = workload.global_batch // dp // s.micro_batch
    links = resolve_layout(cluster, s, workload.dtype)
    L = len(model.layers)
    b = _WEIGHT_BYTES[workload.dtype]

    # per stage (device) and layer: time per micro-batch, activation bytes, parameters held
    costs = [layer_costs(model, links[j], s, workload, ctx) for j in range(pp)]
    t_layer = np.array([[c.total_s for c in cj] for cj in costs])  # (pp, L)
    act_layer = np.array([[c.activation_bytes for c in cj] for cj in costs])
    dense_p, expert_p = layer_param_arrays(model, s, seq)
    head_tied = model.layers[-1].kind == "head" and model.layers[-1].tied
    sb = static_bytes(workload)
    ew = max(dp // s.ep, 1) if s.ep_mode == "dp" else dp  # replication of expert weights
    wd, gd, od = zero_divisors(s.zero, dp)
    we, ge, oe = zero_divisors(s.zero, ew)
    static_layer = dense_p * (sb.weights / wd + sb.gradients / gd + sb.optimizer / od) + \
        expert_p * (sb.weights / we + sb.gradients / ge + sb.optimizer / oe)
    tied_copy = model.layers[-1].vocab * model.layers[-1].hidden / s.tp if head_tied else 0.0
    flight = in_flight(s.schedule, pp, m, v)
    reserved = prm.memory_reserved_bytes
    if s.zero >= 3:  # all-gathered weights of the largest layer, current and prefetched
        reserved += 2 * float(np.max(dense_p + expert_p)) * sb.weights
    caps = np.array([lk.memory_bytes * prm.memory_usable_fraction for lk in links])

    # boundary traffic: activation of the layer before the cut, one micro-batch, split over TP ranks
    rows = s.micro_batch * seq
    bnd_bytes = np.array([0.0] + [rows * (lay.seq_len or seq) / seq * lay.hidden * b / s.tp
                                  for lay in model.layers])  # index = cut position
    notes: list[str] = []
    if v == 1:
        out_cost = np.zeros((pp, L + 1))
        in_cost = np.zeros((pp, L + 1))
        for j in range(pp):
            if j < pp - 1:
                out_cost[j] = p2p_s(bnd_bytes, links[j].next_bw_gbps * prm.collective_efficiency,
                                    links[j].next_latency_s)
            if j > 0:
                in_cost[j] = p2p_s(bnd_bytes, links[j - 1].next_bw_gbps * prm.collective_efficiency,
                                   links[j - 1].next_latency_s)
        layer_mem = static_layer[None, :] + flight[:, None] * act_layer
        if head_tied and pp > 1:
            layer_mem[1:, -1] += tied_copy * (sb.weights / wd + sb.gradients / gd + sb.optimizer / od)
        if s.stages is not None:
            cuts = s.stages
        else:
            res = partition(t_layer, weight=float(m - 1), out_cost=out_cost, in_cost=in_cost, layer_mem=layer_mem,
                            mem_fixed=np.full(pp, reserved), mem_cap=caps)
            if res.feasible:
                cuts = res.boundaries
            else:  # nothing fits: still price the time-optimal split and report the shortfall
                res = partition(t_layer, weight=float(m - 1), out_cost=out_cost, in_cost=in_cost)
                cuts = res.boundaries if res.feasible else even_partition(L, pp)
        stage_t = np.array([t_layer[j, cuts[j]:cuts[j + 1]].sum() + out_cost[j, cuts[j + 1]] + in_cost[j, cuts[j]]
                            for j in range(pp)])
        stage_p2p = np.array([out_cost[j, cuts[j + 1]] + in_cost[j, cuts[j]] for j in range(pp)])
        members = [list(range(cuts[j], cuts[j + 1])) for j in range(pp)]
    else:
        chunks = pp * v
        chunk_dev = np.arange(chunks) % pp
        t_chunk = t_layer[chunk_dev]
        res = partition(t_chunk, weight=float(m * v - 1))
        cuts = res.boundaries if res.feasible else even_partition(L, chunks)
        members = [[] for _ in range(pp)]
        for c in range(chunks):
            members[c % pp].extend(range(cuts[c], cuts[c + 1]))
        worst_p2p = max((float(p2p_s(bnd_bytes.max(), lk.next_bw_gbps * prm.collective_efficiency,
                                     lk.next_latency_s)) for lk in links[:-1]), default=0.0)
        stage_p2p = np.full(pp, 2.0 * v * worst_p2p)
        stage_t = np.array([t_layer[j, members[j]].sum() for j in range(pp)]) + stage_p2p
        notes.append(f"interleaved: {chunks} chunks, cut points {list(cuts)}")
        cuts = None

    # memory per stage
    stage_mem = []
    stage_terms = []
    for j in range(pp):
        idx = members[j]
        dense_j = float(dense_p[idx].sum()) + (tied_copy if head_tied and pp > 1 and j > 0 and (L - 1) in idx else 0.0)
        expert_j = float(expert_p[idx].sum())
        terms = {
            "weights": dense_j * sb.weights / wd + expert_j * sb.weights / we,
            "gradients": dense_j * sb.gradients / gd + expert_j * sb.gradients / ge,
            "optimizer": dense_j * sb.optimizer / od + expert_j * sb.optimizer / oe,
            "activations": float(act_layer[j, idx].sum()) * flight[j],
            "kv_cache": 0.0,
            "reserved": reserved,
        }
        stage_terms.append(terms)
        stage_mem.append(sum(terms.values()))
    stage_mem = np.array(stage_mem)

    # data-parallel synchronisation, per stage; all stages sync together after the flush
    gb = _WEIGHT_BYTES[workload.grad_dtype or workload.dtype]
    dp_time = np.zeros(pp)
    for j in range(pp):
        lk = links[j]
        bw = lk.dp_bw_gbps * prm.collective_efficiency
        lat = lk.dp_latency_s * prm.collective_latency_factor
        dense_j = float(dense_p[members[j]].sum())
        expert_j = float(expert_p[members[j]].sum())
        t = 0.0
        for count, ways in ((dense_j, dp), (expert_j, ew)):
            if count == 0 or ways == 1:
                continue
            if s.zero == 0:
                t += float(all_reduce_s(count * gb, ways, bw, lat))
            elif s.zero in (1, 2):
                t += float(reduce_scatter_s(count * gb, ways, bw, lat) + all_gather_s(count * sb.weights, ways, bw, lat))
            else:
                per_mb = 2 * all_gather_s(count * sb.weights, ways, bw, lat) + reduce_scatter_s(count * gb, ways, bw, lat)
                t += float(m * per_mb)
        dp_time[j] = t
    bwd_mb = np.array([sum(costs[j][i].bwd_s for i in members[j]) for j in range(pp)])
    compute_mb = np.array([sum(costs[j][i].compute_s for i in members[j]) for j in range(pp)])
    window = prm.dp_overlap * (m * compute_mb if s.zero >= 3 else bwd_mb)
    dp_exposed = np.maximum(dp_time - window, 0.0)

    # optimizer step: memory-bound pass over the local optimizer state
    opt_params = np.array([float(dense_p[members[j]].sum()) / od + float(expert_p[members[j]].sum()) / oe
                           for j in range(pp)])
    opt_time = np.array([opt_params[j] * prm.optimizer_bytes_per_param /
                         (ctx.device(links[j].gpu, workload.dtype).memory_gbps * 1e9) for j in range(pp)])
    tied_sync = 0.0
    if head_tied and pp > 1:
        lk = links[0]
        tied_sync = float(all_reduce_s(tied_copy * gb, 2, min(lk.next_bw_gbps, lk.dp_bw_gbps) * prm.collective_efficiency,
                                       lk.next_latency_s))

    # pipeline
    slow = int(np.argmax(stage_t))
    t_max = float(stage_t[slow])
    pipe = m * t_max + (float(stage_t.sum()) - t_max) / v
    step = pipe + float(dp_exposed.max()) + float(opt_time.max()) + tied_sync + prm.step_overhead_s
    tp_mb = sum(costs[slow][i].tp_comm_s for i in members[slow])
    ep_mb = sum(costs[slow][i].ep_comm_s for i in members[slow])
    rec_mb = sum(costs[slow][i].recompute_s for i in members[slow])
    breakdown = {
        "compute_s": m * float(compute_mb[slow]),
        "tp_comm_s": m * tp_mb,
        "ep_comm_s": m * ep_mb,
        "pp_comm_s": m * float(stage_p2p[slow]),
        "bubble_s": (float(stage_t.sum()) - t_max) / v,
        "dp_comm_exposed_s": float(dp_exposed.max()),
        "optimizer_s": float(opt_time.max()) + tied_sync,
        "overhead_s": prm.step_overhead_s,
        # informational
        "recompute_s": m * rec_mb,
        "dp_comm_total_s": float(dp_time.max()),
        "dp_comm_overlapped_s": float((dp_time - dp_exposed)[int(np.argmax(dp_exposed))]),
        "stage_time_max_s": t_max,
        "micro_batches": float(m),
    }

    # throughput and utilisation
    tokens = workload.global_batch * seq
    model_flops = 3.0 * workload.global_batch * sum(
        model_flops_per_token(lay, seq) * (lay.seq_len or seq) for lay in model.layers)
    peak = sum(_peak(g, workload.dtype) for g in cluster.gpus) * 1e12
    rec_flops = 0.0
    if s.recompute == "full":
        rec_flops = model_flops / 3.0 * sum(1 for lay in model.layers if lay.kind == "transformer") / max(
            sum(1 for lay in model.layers if lay.kind != "embedding"), 1)
    mfu = model_flops / (step * peak) if peak else 0.0
    hfu = (model_flops + rec_flops) / (step * peak) if peak else 0.0

    stages = tuple(
        StageEstimate(index=j, first_layer=min(members[j]), end_layer=max(members[j]) + 1, gpu=links[j].gpu.name,
                      time_s=float(stage_t[j]), compute_s=float(compute_mb[j]), memory_bytes=float(stage_mem[j]),
                      memory_capacity_bytes=float(caps[j]), memory=stage_terms[j])
        for j in range(pp))
    over = stage_mem - caps
    worst = int(np.argmax(over))
    fullest = int(np.argmax(stage_mem))
    fits = bool((over <= 0).all())
    if links[slow].num_gpu_types > 1:
        notes.append(f"stage {slow} mixes GPU types; its slowest GPU ({links[slow].gpu.name}) sets its pace")
    final = s if (s.stages is not None or cuts is None) else s.with_(stages=tuple(int(c) for c in cuts))
    return Estimate(
        kind="training", strategy=final, time_s=step, tokens_per_s=tokens / step,
        memory_per_gpu_bytes=float(stage_mem[fullest]), memory_capacity_bytes=float(caps[fullest]),
        fits=fits, shortfall_bytes=float(max(over[worst], 0.0)), memory=stage_terms[worst if not fits else fullest],
        breakdown=breakdown, stages=stages, num_gpus=cluster.num_gpus, mfu=mfu, hfu=hfu, notes=tuple(notes))


def _peak(gpu, dtype: str) -> float:
    try:
        return gpu.peak_tflops(dtype)
    except Exception:
        return 0.0
