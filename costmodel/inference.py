"""Inference in the idealized-runtime form (HELM, Narayanan et al. 2023).

runtime(p, o) = P(p) + beta x (o - 1)
  P(p): prefill of the p-token prompts, which also yields the first output token; mostly compute-bound.
  beta: one decode step for every sequence of the batch; mostly bound by reading weights and KV cache.
Both come from the same per-layer roofline as training (`layercost.layer_inference_cost`), with what
inference adds where CostParams asks for it: a host floor per transformer block (an eager stack's batch-1
decode is bound by issuing kernels, not by the GPU), GEMM row tiles and misaligned shapes in prefill, a
decode's weight-streaming bandwidth, and logits of the last prompt position only. With pipeline stages, a
prefill pipelines its micro-batches, (m - 1) x slowest + sum; a decode step
cycles them, max(m x slowest, sum), since a sequence's next token needs its
previous one to leave the last stage.
"""
from __future__ import annotations

import numpy as np

from hardware_profiles.topology import Cluster

from .comm import p2p_s, with_network_efficiency
from .pricing import CostContext, Estimate, StageEstimate
from .layercost import LayerInferCost, Parallel, layer_inference_cost
from .layers import activation_bytes_per_token, kv_cache_bytes_per_token
from .layout import StageLinks, resolve_layout
from .model import ModelSpec
from .partition import even_partition, partition, split_fits
from .strategy import Strategy
from .workload import Inference

_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


def _costs(model: ModelSpec, links: StageLinks, s: Strategy, w: Inference, ctx: CostContext, *, decode: bool,
           mb: int) -> list[LayerInferCost]:
    p = ctx.params
    dev = ctx.device(links.gpu, w.dtype)
    par = Parallel(tp=s.tp, ep=s.ep, ep_mode=s.ep_mode, sp=False,
                   tp_bw_gbps=links.tp_bw_gbps * p.collective_efficiency,
                   tp_latency_s=links.tp_latency_s * p.collective_latency_factor,
                   ep_bw_gbps=links.ep_bw_gbps * p.collective_efficiency,
                   ep_latency_s=links.ep_latency_s * p.collective_latency_factor)
    context = w.prompt_tokens + w.output_tokens / 2.0  # average context over the decode steps
    classes, index = model.layer_classes
    per_class = []
    for lay in classes:
        # a prefill's head over the last position only prices like a one-token prompt
        tokens = 1 if lay.kind == "head" and p.prefill_last_logits_only and not decode else w.prompt_tokens
        per_class.append(layer_inference_cost(lay, dev, par, p, sequences=mb, prompt_tokens=tokens, context=context,
                                              decode=decode))
    return [per_class[i] for i in index]


_NO_LIMIT = 2 ** 31 - 1


def max_sequences(weight_bytes: np.ndarray, kv_bytes_per_seq: np.ndarray, budget_bytes: np.ndarray,
                  members: list[list[int]] | None = None) -> int:
    """The most sequences one replica's KV cache holds: layer i needs weight_bytes[i] + n x kv_bytes_per_seq[i],
    stage j has budget_bytes[j]. With `members` the split is fixed; without, the best contiguous split for
    the cache is taken (the planner re-splits for a batch), so more memory never lowers the figure."""
    def fits(n: int) -> bool:
        need = weight_bytes + n * kv_bytes_per_seq
        if members is not None:
            return all(need[idx].sum() <= budget_bytes[j] for j, idx in enumerate(members))
        return split_fits(need, budget_bytes)

    if not fits(0):
        return 0
    if not (kv_bytes_per_seq > 0).any():
        return _NO_LIMIT
    lo, hi = 0, 1
    bracketed = False
    # bracket from the pooled-memory estimate (exact for one stage, close for several): a few fits() calls
    # instead of ~60; the bisection below decides either way, so the answer does not depend on the guess
    guess = (float(np.sum(budget_bytes)) - float(np.sum(weight_bytes))) / float(np.sum(kv_bytes_per_seq))
    if 1.0 <= guess < 2.0 ** 28:
        g = int(guess)
        if not fits(g):
            hi, bracketed = g, True
        else:
            lo, step = g, 1
            while lo + step <= 2 ** 29 and fits(lo + step):
                lo, step = lo + step, step * 2
            hi, bracketed = lo + step, lo + step <= 2 ** 29
            if not bracketed:  # far above the estimate: double from scratch
                lo, hi = 0, 1
    while not bracketed and fits(hi):
        lo, hi = hi, hi * 2
        if hi > _NO_LIMIT:
            return _NO_LIMIT
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _weighted_breakdown(weights: np.ndarray, compute: np.ndarray, comm: np.ndarray, p2p: np.ndarray
                        ) -> dict[str, float]:
    return {"compute_s": float(weights @ compute), "tp_comm_s": float(weights @ comm), "pp_comm_s": float(weights @ p2p)}


def estimate_inference(model: ModelSpec, cluster: Cluster, strategy: Strategy, workload: Inference,
                       ctx: CostContext) -> Estimate:
    s, w, prm = strategy, workload, ctx.params
    pp, dp = s.pp, s.dp
    per_replica = w.batch // dp
    # Without pipeline stages nothing is gained by splitting a replica's batch: all its sequences decode
    # together. With stages, micro-batches keep the stages busy.
    mb = per_replica if pp == 1 else s.micro_batch
    m = per_replica // mb
    links = resolve_layout(with_network_efficiency(cluster, prm), s, w.dtype)  # node types' achieved network
    L = len(model.layers)
    b = _BYTES[w.dtype]
    kvb = _BYTES[w.kv_dtype or w.dtype]
    pre = [_costs(model, links[j], s, w, ctx, decode=False, mb=mb) for j in range(pp)]
    dec = [_costs(model, links[j], s, w, ctx, decode=True, mb=mb) for j in range(pp)]
    # the split balances compute only: then it does not move when a link gets faster, and every priced term
    # of a fixed split falls with bandwidth, so a faster network is never slower
    t_pre = np.array([[c.compute_s for c in cj] for cj in pre])
    params_local = np.array([c.params_local for c in pre[0]])
    ctx_len = w.prompt_tokens + w.output_tokens
    kv_seq = np.array([kv_cache_bytes_per_token(lay, kvb) * ctx_len / s.tp for lay in model.layers])  # per sequence
    # transient activations of the widest layer during prefill of one micro-batch
    act = np.array([activation_bytes_per_token(lay, w.prompt_tokens, tp=s.tp, bytes_per_el=b, flash=True)
                    if lay.kind == "transformer" else 0.0 for lay in model.layers])
    transient = float(act.max()) * mb * w.prompt_tokens * 0.5
    reserved = prm.memory_reserved_bytes + transient
    caps = np.array([lk.memory_bytes * prm.memory_usable_fraction for lk in links])
    layer_mem = np.tile(params_local * b + kv_seq * per_replica, (pp, 1))

    act_bytes = mb * w.prompt_tokens * model.hidden * b / s.tp
    tok_bytes = mb * model.hidden * b / s.tp
    if s.stages is not None:
        cuts = s.stages
    elif pp == 1:
        cuts = (0, L)
    else:
        res = partition(t_pre, weight=float(max(m - 1, 0)), layer_mem=layer_mem, mem_fixed=np.full(pp, reserved),
                        mem_cap=caps)
        if not res.feasible:
            res = partition(t_pre, weight=float(max(m - 1, 0)))
        cuts = res.boundaries if res.feasible else even_partition(L, pp)
    members = [list(range(cuts[j], cuts[j + 1])) for j in range(pp)]

    def stage_arrays(costs: list[list[LayerInferCost]], send_bytes: float) -> tuple[np.ndarray, ...]:
        comp = np.array([sum(costs[j][i].compute_s for i in members[j]) for j in range(pp)])
        comm = np.array([sum(costs[j][i].tp_comm_s for i in members[j]) for j in range(pp)])
        send = np.array([float(p2p_s(send_bytes, links[j].next_bw_gbps * prm.collective_efficiency,
                                     links[j].next_latency_s)) if j < pp - 1 else 0.0 for j in range(pp)])
        return comp, comm, send

    pc, pt, ps = stage_arrays(pre, act_bytes)
    dc, dt, ds = stage_arrays(dec, tok_bytes)
    t_p = pc + pt + ps
    t_d = dc + dt + ds
    slow_p, slow_d = int(np.argmax(t_p)), int(np.argmax(t_d))
    w_pre = np.ones(pp)
    w_pre[slow_p] = m
    prefill = float(w_pre @ t_p)
    if m * t_d[slow_d] >= t_d.sum():
        w_dec = np.zeros(pp)
        w_dec[slow_d] = m
    else:
        w_dec = np.ones(pp)
    beta = float(w_dec @ t_d)
    steps = w.output_tokens - 1
    runtime = prefill + beta * steps
    bp = _weighted_breakdown(w_pre, pc, pt, ps)
    bd = _weighted_breakdown(w_dec, dc, dt, ds)
    breakdown = {k: bp[k] + steps * bd[k] for k in bp}
    breakdown.update({"ep_comm_s": 0.0, "bubble_s": 0.0, "dp_comm_exposed_s": 0.0, "optimizer_s": 0.0,
                      "overhead_s": 0.0, "prefill_s": prefill, "decode_s": beta * steps, "per_token_s": beta,
                      "micro_batches": float(m)})

    stage_terms, stage_mem = [], []
    for j in range(pp):
        idx = members[j]
        terms = {"weights": float(params_local[idx].sum()) * b, "gradients": 0.0, "optimizer": 0.0,
                 "activations": transient, "kv_cache": float(kv_seq[idx].sum()) * per_replica,
                 "reserved": prm.memory_reserved_bytes}
        stage_terms.append(terms)
        stage_mem.append(sum(terms.values()))
    stage_mem = np.array(stage_mem)
    over = stage_mem - caps
    fits = bool((over <= 0).all())
    worst, fullest = int(np.argmax(over)), int(np.argmax(stage_mem))
    # a plan's own stages fix the split the cache must fit; otherwise the best split for the cache counts
    per_rep_max = max_sequences(params_local * b, kv_seq, caps - reserved, members if s.stages is not None else None)
    max_batch = min(per_rep_max * dp, _NO_LIMIT)

    price = [g.price_usd_per_hour for g in cluster.gpus]
    cost = runtime / 3600.0 * sum(price) if all(p is not None for p in price) else None
    energy = runtime * sum(g.tdp_w for g in cluster.gpus)
    notes = [] if cost is not None else ["no reference price for some GPU; cost_usd is None"]
    stages = tuple(
        StageEstimate(index=j, first_layer=members[j][0], end_layer=members[j][-1] + 1, gpu=links[j].gpu.name,
                      time_s=float(t_d[j]), compute_s=float(dc[j]), memory_bytes=float(stage_mem[j]),
                      memory_capacity_bytes=float(caps[j]), memory=stage_terms[j]) for j in range(pp))
    final = s if s.stages is not None else s.with_(stages=tuple(int(c) for c in cuts))
    return Estimate(
        kind="inference", strategy=final, time_s=runtime, tokens_per_s=w.batch * w.output_tokens / runtime,
        memory_per_gpu_bytes=float(stage_mem[fullest]), memory_capacity_bytes=float(caps[fullest]), fits=fits,
        shortfall_bytes=float(max(over[worst], 0.0)), memory=stage_terms[worst if not fits else fullest],
        breakdown=breakdown, stages=stages, num_gpus=cluster.num_gpus, ttft_s=prefill, tpot_s=beta,
        prefill_s=prefill, per_token_s=beta, cost_usd=cost, energy_j=energy, max_batch=max_batch,
        notes=tuple(notes))
