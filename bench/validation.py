"""Loaders and predictors for the outside measurements in bench/validation_data/.

bench/validation_data/ is a verbatim copy of the project's shared validation set
(AMP's 170 real trials, Megatron-LM Table 1, HELM's idealized runtimes); see its
README. This module turns each measured row into the model, cluster, workload and
strategy the cost model prices, so bench/accuracy.py and the tests share one
reading of the data.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import costmodel as cm
from costmodel.catalog import amp_model_name, amp_stage_cuts, get_model
from costmodel.pricing import CostContext
from costmodel.params import CostParams
from costmodel.training import price_training
from hardware_profiles import Cluster, Node
from hardware_profiles.topology import Network

DATA = Path(__file__).with_name("validation_data")

# --------------------------------------------------------------------------- AMP


def amp_cluster(setting: str) -> Cluster:
    """AMP's clusters as its scripts describe them (bandwidths in GB/s per direction)."""
    eth = Network(kind="ethernet", latency_s=30e-6)
    if setting == "homogeneous":  # 4 x g4dn.12xlarge: 4 T4 on PCIe, 50 Gbit/s inside and between nodes
        nodes = [Node.of("T4", 4, intra_node_gbps=6.25, network_gbps=6.25, name=f"g4dn{i}") for i in range(4)]
    elif setting == "het_cluster":  # 3 x p3.8xlarge (V100, NVLink at 170 Gbit/s, 10 Gbit/s out) + 1 x g4dn.12xlarge
        nodes = [Node.of("V100-SXM2-16GB", 4, intra_node_gbps=21.25, network_gbps=1.25, name=f"p3-{i}")
                 for i in range(3)]
        nodes.append(Node.of("T4", 4, intra_node_gbps=6.25, network_gbps=6.25, name="g4dn"))
    elif setting == "het_model":  # 4 x p3.8xlarge
        nodes = [Node.of("V100-SXM2-16GB", 4, intra_node_gbps=21.25, network_gbps=1.25, name=f"p3-{i}")
                 for i in range(4)]
    else:
        raise ValueError(f"unknown AMP setting {setting!r}")
    return Cluster(nodes=tuple(nodes), network=eth)


AMP_BATCH = {"homogeneous": 32, "het_cluster": 32, "het_model": 64}


@dataclass(frozen=True)
class AmpTrial:
    setting: str
    strategy: cm.Strategy | None  # None where AMP's split leaves a stage empty here
    measured_s: float | None  # None: out of memory
    amp_predicted_s: float
    oom: bool
    row: dict = field(default_factory=dict, compare=False)


def amp_trials() -> list[AmpTrial]:
    out = []
    with open(DATA / "amp_trials.csv") as fh:
        for r in csv.DictReader(fh):
            setting = r["setting"]
            cuts = amp_stage_cuts(setting, r["stage_boundaries"])
            tp, dp, pp, mb = int(r["tp"]), int(r["dp"]), int(r["pp"]), int(r["micro_batch"])
            strat = None
            if all(b > a for a, b in zip(cuts, cuts[1:])):
                strat = cm.Strategy(tp=tp, pp=pp, dp=dp, micro_batch=mb, stages=cuts)
            measured = float(r["measured_s"]) if r["measured_s"] else None
            out.append(AmpTrial(setting=setting, strategy=strat, measured_s=measured,
                                amp_predicted_s=float(r["amp_predicted_s"]), oom=r["oom"] == "True", row=r))
    return out


def amp_workload(setting: str, grad_dtype: str | None = None) -> cm.Training:
    """fp16 compute. AMP's real runs all-reduced gradients in fp32 (examples/ds_config.json sets
    "fp32_allreduce": true, so DeepSpeed casts its data-parallel buckets to fp32): predict_amp passes
    grad_dtype=AMP_GRAD_DTYPE. The default (None: fp16) is what tests/test_amp_choice.py plans with."""
    return cm.Training(global_batch=AMP_BATCH[setting], dtype="fp16", grad_dtype=grad_dtype)


AMP_GRAD_DTYPE = "fp32"


def amp_params(setting: str, params: CostParams) -> CostParams:
    """The software AMP ran in `setting`. Its TransGAN port (megatron/model/trans_gan_gen.py,
    ParallelTransGanAttention) reshapes the column-parallel qkv to (num_heads, C / tp / num_heads): every TP
    rank keeps all 4 heads at a tp-th of the head width, so the window score and softmax matrices are not
    split by tensor parallelism (GPT-2's ParallelSelfAttention divides the heads)."""
    if amp_model_name(setting) == "transgan-amp":
        return replace(params, tp_splits_attention_heads=False)
    return params


def predict_amp(trials: list[AmpTrial], params: CostParams) -> tuple[np.ndarray, np.ndarray]:
    """Predicted step time and fits-in-memory for each trial (nan / False where the split is not expressible)."""
    time_s = np.full(len(trials), np.nan)
    fits = np.zeros(len(trials), dtype=bool)
    by_setting: dict[str, list[int]] = {}
    for i, t in enumerate(trials):
        if t.strategy is not None:
            by_setting.setdefault(t.setting, []).append(i)
    for setting, idx in by_setting.items():
        model = get_model(amp_model_name(setting))
        cluster = amp_cluster(setting)  # estimate() applies the node types' network efficiency
        ctx = CostContext(params=amp_params(setting, params), profiles={})
        t, _, f = price_training(model, cluster, amp_workload(setting, AMP_GRAD_DTYPE), ctx,
                                 [trials[i].strategy for i in idx])
        time_s[idx] = t
        fits[idx] = f
    return time_s, fits


# The software stack AMP ran (DeepSpeed + Megatron-LM 1.1.5, fp16, 2021-22): no flash attention, the causal
# half of the score matrix computed, unfused elementwise kernels, and no overlap of the data-parallel all-reduce
# (DeepSpeed's pipeline engine reduces after the last micro-batch). Megatron 1.1.5 wraps every model-parallel
# all-reduce in a timer that calls torch.cuda.synchronize() before and after (megatron/mpu/mappings.py, _reduce),
# so each tensor-parallel collective also costs a host round trip: the GPU drains, then idles while the host
# issues the next kernels. That is the node's host (CPU, driver), so it is fitted per node type
# (`gpu_tp_collective_overhead_s`, keyed by the node's GPU: g4dn = T4 with a Cascade Lake host, p3 = V100 with
# an older Broadwell one). So is the share of its line rate a node's network delivers (`network_efficiency`):
# NCCL over TCP gets far less of a g4dn's 50 Gbit/s than of a p3's 10 Gbit/s. Both are the same in every
# setting and fitted on the training trials only (bench/accuracy.py fits with a Cauchy loss).
# The head's loss traffic is the byte count layercost lists (fp16 logits read, fp32 written and read back):
# head_elementwise_factor=1.0 keeps the blocks' fitted unfused multiplier (3-8 here: many small kernels per block)
# off it. With that multiplier the GPT-2 head stage (vocab 52k) came out several blocks too slow and pp16 plans
# 13-16 % too slow; fitting head_elementwise_factor instead lands at 1.6-2.6 with about the same 5-fold scores
# and a worse leave-homogeneous-out (16.7 % MAPE against 8.9 %).
# The other values are only the fit's starting point: datasheet-plausible efficiencies for a T4 and a V100 and
# about a millisecond for the overheads (tp_collective_overhead_s is where the per-node-type fit starts).
AMP_BASE = CostParams(flash_attention=False, causal_factor=1.0, dp_overlap=0.0,
                      gpu_gemm_efficiency=(("T4", 0.4), ("V100-SXM2-16GB", 0.7)), attention_efficiency=0.3,
                      elementwise_factor=2.0, head_elementwise_factor=1.0, collective_efficiency=0.7,
                      collective_latency_factor=5.0, tp_collective_overhead_s=1e-3)
AMP_FIT = ("gpu_gemm_efficiency:T4", "gpu_gemm_efficiency:V100-SXM2-16GB", "attention_efficiency",
           "elementwise_factor", "collective_efficiency", "collective_latency_factor",
           "network_efficiency:T4", "network_efficiency:V100-SXM2-16GB",
           "gpu_tp_collective_overhead_s:T4", "gpu_tp_collective_overhead_s:V100-SXM2-16GB")
# bounds for constants that costmodel.fitting.BOUNDS does not list
AMP_FIT_BOUNDS = {"tp_collective_overhead_s": (0.0, 0.01)}

# --------------------------------------------------------------------------- Megatron


@dataclass(frozen=True)
class MegatronRun:
    name: str
    model: cm.ModelSpec
    cluster: Cluster
    workload: cm.Training
    tp: int
    pp: int
    dp: int
    time_s: float  # derived: hardware FLOPs / (achieved TFLOP/s x GPUs)
    mfu: float  # model FLOPs (no recompute) / (time x GPUs x 312 TFLOP/s)


def megatron_runs() -> list[MegatronRun]:
    out = []
    with open(DATA / "megatron_table1.csv") as fh:
        for r in csv.DictReader(fh):
            h, layers, B, s, V = int(r["hidden"]), int(r["layers"]), int(r["global_batch"]), int(r["seq_len"]), int(r["vocab"])
            gpus = int(r["gpus"])
            hw_flops = 96 * B * s * layers * h ** 2 * (1 + s / (6 * h) + V / (16 * layers * h))
            t = hw_flops / (float(r["achieved_tflops_per_gpu_incl_recompute"]) * 1e12 * gpus)
            model_flops = hw_flops * 3 / 4  # recompute adds one forward to forward + backward
            name = f"megatron-{_megatron_label(float(r['params_b']))}"
            model = get_model(name)
            cluster = Cluster.parse(f"{gpus // 8}x8xA100-SXM-80GB", inter_node_gbps=200.0)
            out.append(MegatronRun(name=name, model=model, cluster=cluster,
                                   workload=cm.Training(global_batch=B, seq_len=s, dtype="fp16"),
                                   tp=int(r["tp"]), pp=int(r["pp"]), dp=int(r["dp"]), time_s=t,
                                   mfu=model_flops / (t * gpus * 312e12)))
    return out


def _megatron_label(params_b: float) -> str:
    from costmodel.catalog import list_models

    names = [n for n in list_models() if n.startswith("megatron-")]
    best = min(names, key=lambda n: abs(get_model(n).num_params / 1e9 - params_b))
    return best[len("megatron-"):]


def megatron_strategies(run: MegatronRun, params: CostParams) -> cm.Strategy:
    """Micro-batch and schedule are not published: take the fastest the cost model finds for the published
    tp / pp / dp with full recompute (Megatron's own tuning did the same by hand)."""
    import planner

    space = planner.SearchSpace(tp=(run.tp,), pp=(run.pp,), recompute=("full",), zero=(0,),
                                sequence_parallel=(False,), schedules=("1f1b", "interleaved"))
    res = planner.plan(run.model, run.cluster, run.workload, space=space, params=params, profiles=None)
    return res.best.strategy


def predict_megatron(runs: list[MegatronRun], strategies: list[cm.Strategy], params: CostParams) -> np.ndarray:
    out = []
    for run, s in zip(runs, strategies):
        ctx = CostContext(params=params, profiles={})
        t, _, _ = price_training(run.model, run.cluster, run.workload, ctx, [s])
        out.append(float(t[0]))
    return np.array(out)


MEGATRON_BASE = CostParams(flash_attention=False, causal_factor=1.0)
MEGATRON_FIT = ("gemm_efficiency", "elementwise_factor", "collective_efficiency")

# --------------------------------------------------------------------------- HELM


@dataclass(frozen=True)
class HelmModel:
    keys: tuple[str, ...]  # HELM model keys sharing these measurements
    model: cm.ModelSpec
    cluster: Cluster
    strategy: cm.Strategy
    prompt_s: dict[int, float]  # prompt tokens -> P(p), seconds
    beta_s: float


def _helm_layout(model: cm.ModelSpec, gpu: str) -> tuple[Cluster, cm.Strategy]:
    """HELM profiled on the fewest GPUs that fit: A100-80GB TP1 up to 20B, TP4 for 52-100B, TP8 for ~175B;
    the 530B model as 3 x 35 layers on 8 GPUs (here: PP3 x TP8). V100 runs used twice as many GPUs for the
    large models (the smallest TP that fits 32 GB for the small ones)."""
    n = model.num_params / 1e9
    if gpu.startswith("A100"):
        tp = 1 if n <= 21 else 4 if n <= 110 else 8
    else:
        tp = 1 if n <= 12 else 2 if n <= 21 else 8 if n <= 110 else 16
    pp = 3 if n > 400 else 1
    if tp > 8:
        tp, pp = 8, pp * 2
    while tp > 1 and not model.tp_splits_evenly(tp):
        tp //= 2
        pp *= 2
    gpus = tp * pp
    nodes = max(1, gpus // 8)
    per = gpus // nodes
    return Cluster.parse(f"{nodes}x{per}x{gpu}"), cm.Strategy(tp=tp, pp=pp)


def helm_models(gpu: str = "A100-SXM-80GB") -> list[HelmModel]:
    fname = "helm_idealized_runtimes_a100.json" if gpu.startswith("A100") else "helm_idealized_runtimes_v100.json"
    data = json.loads((DATA / fname).read_text())
    # several HELM keys share one set of measurements (davinci / opt-175b, j1-large / curie / TNLGv2_7B, ...):
    # keep one entry per measurement set so no measurement is counted twice
    grouped: dict[tuple, list[str]] = {}
    for key, d in data.items():
        sig = (d["runtime_per_output_token"], tuple(sorted(d["runtime_for_prompt_tokens"].items())))
        grouped.setdefault(sig, []).append(key)
    out = []
    for keys in grouped.values():
        model = get_model(keys[0])
        d = data[keys[0]]
        cluster, strat = _helm_layout(model, gpu)
        out.append(HelmModel(keys=tuple(keys), model=model, cluster=cluster, strategy=strat,
                             prompt_s={int(p): float(v) for p, v in d["runtime_for_prompt_tokens"].items()},
                             beta_s=float(d["runtime_per_output_token"])))
    return out


def predict_helm(models: list[HelmModel], params: CostParams, prompts: dict[str, list[int]] | None = None
                 ) -> tuple[list[np.ndarray], np.ndarray]:
    """Predicted P(p) for each model's prompt sizes, and beta per model."""
    p_out, beta = [], []
    for hm in models:
        sizes = (prompts or {}).get(hm.model.name, sorted(hm.prompt_s))
        vals = []
        for p in sizes:
            e = cm.estimate(hm.model, hm.cluster, hm.strategy,
                            cm.Inference(prompt_tokens=p, output_tokens=2, batch=1, dtype="fp16"),
                            params=params, profiles=None)
            vals.append(e.prefill_s)
        p_out.append(np.array(vals))
        e = cm.estimate(hm.model, hm.cluster, hm.strategy,
                        cm.Inference(prompt_tokens=512, output_tokens=2, batch=1, dtype="fp16"),
                        params=params, profiles=None)
        beta.append(e.per_token_s)
    return p_out, np.array(beta)


# Megatron-LM 2022 text generation, fp16, batch 1: unfused attention over the full score matrix; cuBLAS tiles a
# GEMM's rows by 128; generating the first token needs the last prompt position's logits only. The host floors and
# the two GEMM efficiencies below are starting points of the fit (a floor starting at 0 has no gradient);
# memory_efficiency (streaming elementwise kernels) and attention_efficiency keep the cost model's defaults: the
# data cannot separate them from the GEMM terms (fitted, they ran to their bounds).
HELM_BASE = CostParams(flash_attention=False, causal_factor=1.0, gemm_tile_rows=128, prefill_last_logits_only=True,
                       infer_host_layer_s=5e-4, decode_host_layer_s=5e-4, infer_host_collective_s=5e-5,
                       gemm_memory_efficiency=0.7, gemm_misaligned_efficiency=0.7)
HELM_FIT = ("gemm_efficiency", "gemm_memory_efficiency", "gemm_misaligned_efficiency", "infer_host_layer_s",
            "decode_host_layer_s", "infer_host_collective_s")
HELM_FIT_BOUNDS = {"gemm_memory_efficiency": (0.1, 1.0), "gemm_misaligned_efficiency": (0.1, 1.0),
                   "infer_host_layer_s": (0.0, 0.01), "decode_host_layer_s": (0.0, 0.01),
                   "infer_host_collective_s": (0.0, 0.002)}


def spearman(a: Any, b: Any) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
