"""Side-by-side comparisons priced by the cost model.

- `pure_strategies`: all-DP, all-TP (as far as the heads allow), all-PP and all-EP (MoE models) on the
  whole cluster, each priced with `costmodel.estimate`, beside the planner's mixed plan: the measured
  version of the usual qualitative table (memory per device, communication, latency, throughput).
- `compare_gpus`: the best plan for the same model and workload on clusters of different GPU types,
  with time and dollars per million tokens.
- `inference_sweep`: serving layouts (TP, EP, DP) across batch sizes on one or more clusters: the
  latency-throughput trade-off.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from costmodel.catalog import resolve_model
from costmodel.errors import InvalidStrategyError
from costmodel.layercost import token_count
from costmodel.layers import param_split
from costmodel.model import ModelSpec
from costmodel.params import CostParams
from costmodel.pricing import Estimate, estimate
from costmodel.strategy import Strategy
from costmodel.workload import Inference, Training
from hardware_profiles.errors import ParplanError
from hardware_profiles.topology import Cluster

from .errors import PlannerOptionError
from .space import SearchSpace, divisors, layouts

_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}

PURE_COLUMNS = ["name", "layout", "strategy", "tp", "pp", "dp", "ep", "ep_mode", "micro_batch", "num_gpus",
                "memory_gb", "capacity_gb", "fits", "comm_gb", "comm_s", "comm_exposed_s", "time_s", "tokens_per_s",
                "note"]
GPU_COLUMNS = ["gpu", "nodes", "num_gpus", "cluster", "feasible", "layout", "strategy", "time_s", "tokens_per_s",
               "usd_per_hour", "usd_per_mtok", "memory_gb", "capacity_gb", "note"]
SWEEP_COLUMNS = ["gpu", "cluster", "batch", "layout", "tp", "pp", "dp", "ep", "ep_mode", "num_gpus", "micro_batch",
                 "ttft_s", "tpot_s", "time_s", "tokens_per_s", "usd_per_mtok", "memory_gb", "capacity_gb", "fits"]


def layout_label(s: Strategy) -> str:
    """Short mesh description: 'TP4 x PP8', 'DP8 x EP8(dp)'; degrees of 1 are left out."""
    parts = [f"{k.upper()}{getattr(s, k)}" for k in ("tp", "pp", "dp") if getattr(s, k) > 1]
    if s.ep > 1:
        parts.append(f"EP{s.ep}({s.ep_mode})")
    return " x ".join(parts) or "1 GPU"


# --------------------------------------------------------------------------- communication volume

def comm_volume_bytes(model: ModelSpec | str, est: Estimate, workload: Training | Inference) -> dict[str, float]:
    """Bytes one GPU sends per training step (or per request batch in inference), by kind of communication,
    on the pipeline stage that sends the most. Counts follow the collectives the cost model prices: Megatron
    tensor parallelism (4 all-reduces of the activations per block and micro-batch in training, 2 more with
    full recompute; 2 per block and pass in inference), expert all-to-all (dispatch and combine, forward and
    backward), stage-to-stage sends, and the data-parallel gradient sync (all-reduce; reduce-scatter +
    all-gather under ZeRO-1/2; all-gathers per micro-batch under ZeRO-3). Ring algorithms: an all-reduce over
    n ranks sends 2 (n - 1) / n of the buffer, an all-gather, reduce-scatter or all-to-all (n - 1) / n.

    `est`: the strategy's estimate from `costmodel.estimate` (its strategy and stage boundaries). With
    virtual stages (interleaved) the layers are taken as split evenly into chunks.
    Returns {"tp", "ep", "pp", "dp", "total"} in bytes.
    """
    model = resolve_model(model)
    s = est.strategy
    b = _BYTES[workload.dtype]
    ar = 2.0 * (s.tp - 1) / s.tp
    a2a = (s.ep - 1) / s.ep
    training = isinstance(workload, Training)
    per_stage = []
    for st in est.stages:
        if s.virtual_stages > 1:  # interleaved: stage j holds chunks j, j + p, ... of an even split
            cuts = np.linspace(0, len(model.layers), s.pp * s.virtual_stages + 1).round().astype(int)
            layers = [model.layers[i] for c in range(st.index, s.pp * s.virtual_stages, s.pp)
                      for i in range(cuts[c], cuts[c + 1])]
        else:
            layers = model.layers[st.first_layer:st.end_layer]
        vol = {"tp": 0.0, "ep": 0.0, "pp": 0.0, "dp": 0.0}
        if training:
            seq = workload.seq_len or model.seq_len
            m = workload.global_batch // s.dp // s.micro_batch
            full = s.recompute == "full"
            for lay in layers:
                rows = s.micro_batch * token_count(lay, seq)
                n_ar = (4.0 + (2.0 if full else 0.0)) if lay.kind == "transformer" else 1.0
                vol["tp"] += m * n_ar * ar * rows * lay.hidden * b
                if lay.is_moe and s.ep > 1 and s.ep_mode == "dp":
                    n = 4.0 + (2.0 if full else 0.0)
                    sp = s.tp if s.sequence_parallel else 1
                    vol["ep"] += m * n * a2a * rows * lay.top_k * lay.dispatch_dim * b / sp
            sends = (st.index < s.pp - 1) + (st.index > 0)  # activations forward, their gradients backward
            vol["pp"] = m * sends * s.virtual_stages * s.micro_batch * seq * model.hidden * b / s.tp
            dense = sum(param_split(lay, seq).replicated + param_split(lay, seq).tp_sharded / s.tp for lay in layers)
            expert = sum(param_split(lay, seq).expert / (s.ep * s.moe_tp) for lay in layers)
            grad_b = _BYTES[workload.grad_dtype or workload.dtype]
            ways_e = max(s.dp // s.ep, 1) if s.ep_mode == "dp" else s.dp
            for count, ways in ((dense, s.dp), (expert, ways_e)):
                if ways <= 1:
                    continue
                share = (ways - 1) / ways
                if s.zero == 0:
                    vol["dp"] += 2.0 * share * count * grad_b
                elif s.zero <= 2:
                    vol["dp"] += share * count * (grad_b + b)
                else:
                    vol["dp"] += m * share * count * (2.0 * b + grad_b)
        else:
            per_replica = workload.batch // s.dp
            mb = per_replica if s.pp == 1 else s.micro_batch
            m = per_replica // mb
            steps = workload.output_tokens - 1
            rows_total = m * mb * (workload.prompt_tokens + steps)  # prefill rows, then one row per step
            for lay in layers:
                n_ar = 2.0 if lay.kind == "transformer" else 1.0
                vol["tp"] += n_ar * ar * rows_total * lay.hidden * b
                if lay.is_moe and s.ep > 1 and s.ep_mode == "dp":
                    vol["ep"] += 2.0 * a2a * rows_total * lay.top_k * lay.dispatch_dim * b
            if st.index < s.pp - 1:
                vol["pp"] = rows_total * model.hidden * b / s.tp
        vol["total"] = sum(vol.values())
        per_stage.append(vol)
    return max(per_stage, key=lambda v: v["total"])


# --------------------------------------------------------------------------- pure strategies

def _pure_layouts(model: ModelSpec, n: int) -> list[tuple[str, dict[str, Any], str]]:
    """(name, strategy fields, note) for each pure strategy; degrees the model cannot take spill into DP."""
    out = []
    out.append(("all-DP", dict(dp=n), ""))
    tp = max(d for d in divisors(n) if model.tp_splits_evenly(d, expert_tp=d))
    note = "" if tp == n else (f"TP stops at {tp} ({model.num_heads} heads, {model.num_kv_heads} KV heads); "
                               f"the other {n // tp} ways are data parallel")
    out.append(("all-TP", dict(tp=tp, dp=n // tp), note))
    entries = len(model.layers)
    pp = max(d for d in divisors(n) if d <= entries)
    note = "" if pp == n else f"PP stops at {pp} ({entries} layer entries); the other {n // pp} ways are data parallel"
    out.append(("all-PP", dict(pp=pp, dp=n // pp), note))
    if model.is_moe:
        ep = max(d for d in divisors(n) if d <= model.num_experts and all(
            blk.num_experts % d == 0 for blk in model.blocks if blk.is_moe))
        note = f"experts spread {ep} ways over data-parallel ranks (Megatron EP)"
        if ep < n:
            note += f"; {model.num_experts} experts, so the other {n // ep} ways replicate them"
        out.append(("all-EP", dict(dp=n, ep=ep, ep_mode="dp"), note))
    return out


def _best_micro_batch(model: ModelSpec, cluster: Cluster, base: Strategy, workload: Training | Inference,
                      params: CostParams | None, profiles: Any) -> Estimate:
    """The fastest micro-batch that fits (the leanest when none fits); pipelines need micro-batches, a
    replica without pipeline in inference runs its whole batch at once."""
    batch = workload.global_batch if isinstance(workload, Training) else workload.batch
    if batch % base.dp:  # the cost model's check names the rule (InvalidStrategyError)
        return estimate(model, cluster, base, workload, params=params, profiles=profiles)
    per_replica = batch // base.dp
    options = divisors(per_replica) if (isinstance(workload, Training) or base.pp > 1) else [per_replica]
    ests = [estimate(model, cluster, base.with_(micro_batch=mb), workload, params=params, profiles=profiles)
            for mb in options]
    fitting = [e for e in ests if e.fits]
    if fitting:
        return min(fitting, key=lambda e: e.time_s)
    return min(ests, key=lambda e: e.memory_per_gpu_bytes)


def _pure_row(name: str, model: ModelSpec, est: Estimate, workload: Training | Inference, note: str
              ) -> dict[str, Any]:
    s = est.strategy
    vol = comm_volume_bytes(model, est, workload)
    bd = est.breakdown
    visible = bd.get("tp_comm_s", 0.0) + bd.get("ep_comm_s", 0.0) + bd.get("pp_comm_s", 0.0)
    row = {"name": name, "layout": layout_label(s), "strategy": s.describe(), "tp": s.tp, "pp": s.pp, "dp": s.dp,
           "ep": s.ep, "ep_mode": s.ep_mode, "micro_batch": s.micro_batch, "num_gpus": est.num_gpus,
           "memory_gb": est.memory_per_gpu_bytes / 1e9, "capacity_gb": est.memory_capacity_bytes / 1e9,
           "fits": bool(est.fits), "comm_gb": vol["total"] / 1e9,
           "comm_s": visible + bd.get("dp_comm_total_s", 0.0),
           "comm_exposed_s": visible + bd.get("dp_comm_exposed_s", 0.0), "time_s": est.time_s,
           "tokens_per_s": est.tokens_per_s, "note": note}
    if est.kind == "training":
        row["mfu"] = est.mfu
    else:
        row.update(ttft_s=est.ttft_s, tpot_s=est.tpot_s, cost_usd=est.cost_usd)
    return row


def pure_strategies(model: ModelSpec | str, cluster: Cluster | str, workload: Training | Inference, *,
                    result: Any = None, params: CostParams | None = None, profiles: Any = "auto") -> pd.DataFrame:
    """All-DP, all-TP, all-PP (and all-EP for MoE models) over the whole cluster, beside the planner's plan.

    Each pure strategy is priced with `costmodel.estimate` at its fastest fitting micro-batch (no ZeRO, no
    recompute, no sequence parallelism: the textbook forms). `result`: a PlanResult for the same problem (the
    planner is run when None). Columns: PURE_COLUMNS, plus mfu (training) or ttft_s, tpot_s, cost_usd
    (inference). comm_gb: bytes one GPU sends per step (`comm_volume_bytes`); comm_s: communication time,
    overlapped or not; comm_exposed_s: the part that adds to the step time."""
    model = resolve_model(model)
    cluster = Cluster.parse(cluster)
    rows = []
    for name, fields, note in _pure_layouts(model, cluster.num_gpus):
        base = Strategy(**fields)
        try:
            est = _best_micro_batch(model, cluster, base, workload, params, profiles)
        except InvalidStrategyError as exc:
            rows.append({"name": name, "layout": layout_label(base), "strategy": base.describe(), "tp": base.tp,
                         "pp": base.pp, "dp": base.dp, "ep": base.ep, "ep_mode": base.ep_mode,
                         "micro_batch": np.nan, "num_gpus": cluster.num_gpus, "fits": False,
                         "note": f"not possible: {exc}"})
            continue
        rows.append(_pure_row(name, model, est, workload, note))
    if result is None:
        from .search import plan

        result = plan(model, cluster, workload, params=params, profiles=profiles)
    best = result.best
    rows.append(_pure_row("planner", model, best.estimate, workload,
                          f"the planner's choice ({result.objective})"))
    df = pd.DataFrame(rows)
    extra = ["mfu"] if isinstance(workload, Training) else ["ttft_s", "tpot_s", "cost_usd"]
    return df.reindex(columns=PURE_COLUMNS + extra)


# --------------------------------------------------------------------------- GPU types

def compare_gpus(model: ModelSpec | str, workload: Training | Inference,
                 gpus: Sequence[str] = ("A100", "H100", "H200", "B200", "L40S"), gpus_per_node: int = 8,
                 nodes: int | Iterable[int] = 1, *, objective: str | None = None, params: CostParams | None = None,
                 profiles: Any = "auto", space: SearchSpace | None = None, inter_node_gbps: float | None = None
                 ) -> pd.DataFrame:
    """The best plan on clusters of `nodes` x `gpus_per_node` of each GPU type (`nodes` may be several counts),
    with its time and dollars per million tokens (training: tokens trained; inference: tokens generated, at the
    catalog's reference price). GPU types on which nothing fits get feasible=False and the planner's reason.
    Columns: GPU_COLUMNS plus mfu (training) or ttft_s, tpot_s (inference)."""
    from .search import plan

    model = resolve_model(model)
    counts = [nodes] if isinstance(nodes, int) else list(nodes)
    if not counts or any((not isinstance(c, int)) or c < 1 for c in counts):
        raise PlannerOptionError(f"nodes must be a whole number >= 1 or a list of them, got {nodes!r}")
    training = isinstance(workload, Training)
    rows = []
    for gpu in gpus:
        for count in counts:
            kw = {} if inter_node_gbps is None else {"inter_node_gbps": inter_node_gbps}
            cluster = Cluster.parse(f"{count}x{gpus_per_node}x{gpu}", **kw)
            row: dict[str, Any] = {"gpu": cluster.gpus[0].name, "nodes": count, "num_gpus": cluster.num_gpus,
                                   "cluster": cluster.describe(), "feasible": False}
            try:
                res = plan(model, cluster, workload, objective=objective, space=space, params=params,
                           profiles=profiles)
            except ParplanError as exc:  # NoFeasiblePlanError, or a precision the GPU lacks
                row["note"] = str(exc)
                rows.append(row)
                continue
            e = res.best.estimate
            price = sum(g.price_usd_per_hour or math.nan for g in res.best.cluster.gpus)
            tokens = e.tokens_per_s * e.time_s
            usd = (e.cost_usd if not training else price * e.time_s / 3600.0)
            row.update(feasible=True, layout=layout_label(e.strategy), strategy=e.strategy.describe(),
                       time_s=e.time_s, tokens_per_s=e.tokens_per_s, usd_per_hour=price,
                       usd_per_mtok=(usd / tokens * 1e6) if usd is not None and tokens else math.nan,
                       memory_gb=e.memory_per_gpu_bytes / 1e9, capacity_gb=e.memory_capacity_bytes / 1e9,
                       note="" if e.num_gpus == cluster.num_gpus else f"uses {e.num_gpus} of {cluster.num_gpus} GPUs")
            if training:
                row["mfu"] = e.mfu
            else:
                row.update(ttft_s=e.ttft_s, tpot_s=e.tpot_s, num_gpus=e.num_gpus)
            rows.append(row)
    extra = ["mfu"] if training else ["ttft_s", "tpot_s"]
    return pd.DataFrame(rows).reindex(columns=GPU_COLUMNS + extra)


# --------------------------------------------------------------------------- serving sweep

def inference_sweep(model: ModelSpec | str, clusters: Cluster | str | Sequence[Cluster | str], prompt_tokens: int,
                    output_tokens: int, batches: Sequence[int] = (1, 4, 16, 64, 256), *, dtype: str = "bf16",
                    pp: Sequence[int] = (1,), params: CostParams | None = None, profiles: Any = "auto"
                    ) -> pd.DataFrame:
    """Every serving layout (TP, EP, DP; pipeline depths `pp`) on all GPUs of each cluster, at each batch size,
    priced with `costmodel.estimate`. One row per (cluster, batch, layout); with pipeline stages, the fastest
    micro-batch. Columns: SWEEP_COLUMNS."""
    model = resolve_model(model)
    if isinstance(clusters, (str, Cluster)):
        clusters = [clusters]
    space = SearchSpace(pp=tuple(pp), zero=(0,), recompute=("none",), schedules=("1f1b",))
    rows = []
    for spec in clusters:
        cluster = Cluster.parse(spec)
        price = sum(g.price_usd_per_hour or math.nan for g in cluster.gpus)
        for batch in batches:
            w = Inference(prompt_tokens=prompt_tokens, output_tokens=output_tokens, batch=int(batch), dtype=dtype)
            for lay in layouts(model, cluster, w, space):
                base = Strategy(tp=lay.tp, pp=lay.pp, dp=lay.dp, ep=lay.ep, ep_mode=lay.ep_mode,
                                placement=lay.placement)
                e = _best_micro_batch(model, cluster, base, w, params, profiles)
                tokens = w.batch * w.output_tokens
                rows.append({"gpu": cluster.gpus[0].name if cluster.is_homogeneous else cluster.describe(),
                             "cluster": cluster.describe(), "batch": w.batch, "layout": layout_label(e.strategy),
                             "tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "ep": lay.ep, "ep_mode": lay.ep_mode,
                             "num_gpus": cluster.num_gpus, "micro_batch": e.strategy.micro_batch,
                             "ttft_s": e.ttft_s, "tpot_s": e.tpot_s, "time_s": e.time_s,
                             "tokens_per_s": e.tokens_per_s,
                             "usd_per_mtok": price * e.time_s / 3600.0 / tokens * 1e6,
                             "memory_gb": e.memory_per_gpu_bytes / 1e9,
                             "capacity_gb": e.memory_capacity_bytes / 1e9, "fits": bool(e.fits)})
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)
