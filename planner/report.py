"""Readable text for a PlanResult: the chosen plan, why it won, and the ranked candidates."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from costmodel.pricing import ADDITIVE_TERMS

if TYPE_CHECKING:
    from .search import PlanResult

TERM_LABELS = {
    "compute_s": "compute", "tp_comm_s": "tensor-parallel communication", "ep_comm_s": "expert all-to-all",
    "pp_comm_s": "pipeline sends", "bubble_s": "pipeline bubble", "dp_comm_exposed_s": "exposed data-parallel sync",
    "optimizer_s": "optimizer step", "overhead_s": "fixed overhead",
}
MEMORY_LABELS = {"weights": "weights", "gradients": "gradients", "optimizer": "optimizer state",
                 "activations": "activations", "kv_cache": "KV cache", "reserved": "reserved"}


def _fmt_time(t: float) -> str:
    if t >= 1.0:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.0f} us"


def explain(result: "PlanResult") -> str:
    """Why the best plan beat the runner-up: the term that decided, and faster strategies that were pruned."""
    best = result.best
    eb = best.estimate
    lines = [f"Chosen: {best.strategy.describe()} ({_metric(result, best)})."]
    runner = result.runner_up
    if runner is not None and runner.estimate is not None:
        er = runner.estimate
        diffs = {k: er.breakdown.get(k, 0.0) - eb.breakdown.get(k, 0.0) for k in ADDITIVE_TERMS}
        decider = max(diffs, key=diffs.get)
        gap = er.time_s - eb.time_s
        rel = gap / eb.time_s if eb.time_s else 0.0
        lines.append(
            f"Runner-up with another mesh: {runner.strategy.describe()} ({_metric(result, runner)}), "
            f"{rel:+.1%} in time.")
        tiny = 1e-6 * max(eb.time_s, 1e-12)  # rounding noise is not a reason
        if diffs[decider] > tiny:
            lines.append(
                f"What decided it: {TERM_LABELS[decider]}: {_fmt_time(er.breakdown.get(decider, 0.0))} for the "
                f"runner-up against {_fmt_time(eb.breakdown.get(decider, 0.0))} for the chosen plan.")
            helped = {k: -v for k, v in diffs.items() if v < -tiny}
            if helped:
                k = max(helped, key=helped.get)
                lines.append(f"The runner-up was better on {TERM_LABELS[k]} (by {_fmt_time(helped[k])}), "
                             f"which did not make up for it.")
    df = result.candidates
    faster = df[df["pruned"] & (df["time_s"] < eb.time_s)]
    if len(faster):
        # the faster strategy that came closest to being allowed says most about what limited the choice
        f = faster.loc[(faster["memory_gb"] / faster["capacity_gb"]).idxmin()] if "memory_gb" in faster else \
            faster.sort_values("time_s").iloc[0]
        lines.append(f"{len(faster)} faster strategies were pruned; the closest to fitting ({_row_describe(f)}, "
                     f"{_fmt_time(f['time_s'])}) was rejected: {f['reason']}.")
    mem = eb.memory
    top = max(mem, key=mem.get)
    lines.append(f"Memory on the fullest GPU: {eb.memory_per_gpu_bytes / 1e9:.1f} of "
                 f"{eb.memory_capacity_bytes / 1e9:.1f} GB usable, mostly {MEMORY_LABELS[top]} "
                 f"({mem[top] / 1e9:.1f} GB).")
    return "\n".join(lines)


def _metric(result: "PlanResult", plan) -> str:
    e = plan.estimate
    if e.kind == "training":
        return f"step {_fmt_time(e.time_s)}, {e.tokens_per_s:,.0f} tokens/s, MFU {e.mfu:.1%}"
    return (f"runtime {_fmt_time(e.time_s)}, TTFT {_fmt_time(e.ttft_s)}, TPOT {_fmt_time(e.tpot_s)}, "
            f"{e.tokens_per_s:,.0f} tokens/s on {e.num_gpus} GPUs")


def _row_describe(r: pd.Series) -> str:
    s = f"TP{r['tp']} x PP{r['pp']} x DP{r['dp']}"
    if r["ep"] > 1:
        s += f" x EP{r['ep']}({r['ep_mode']})"
    s += f", mb {r['micro_batch']}"
    if r["pp"] > 1:
        s += f", {r['schedule']}" + (f" v={r['virtual_stages']}" if r["virtual_stages"] > 1 else "")
    if r["recompute"] != "none":
        s += f", rc {r['recompute']}"
    if r["sequence_parallel"]:
        s += ", SP"
    if r["zero"]:
        s += f", Z{r['zero']}"
    return s


def candidates_table(df: pd.DataFrame, top: int = 10) -> str:
    view = df.head(top)
    kind_inf = "ttft_s" in df
    lines = []
    if kind_inf:
        lines.append(f"{'rank':>4}  {'strategy':<44} {'GPUs':>4} {'runtime':>9} {'TTFT':>9} {'TPOT':>9} "
                     f"{'tok/s':>9} {'$/Mtok':>8} {'mem GB':>7}")
    else:
        lines.append(f"{'rank':>4}  {'strategy':<58} {'step':>9} {'tok/s':>10} {'MFU':>6} {'mem GB':>7}")
    for _, r in view.iterrows():
        rank = str(int(r["rank"])) if r["rank"] else "-"
        if kind_inf:
            tokens = r["tokens_per_s"] * r["time_s"]
            usd = r["cost_usd"] / tokens * 1e6 if r["cost_usd"] == r["cost_usd"] and tokens else float("nan")
            lines.append(f"{rank:>4}  {_row_describe(r):<44} {int(r['num_gpus']):>4} {_fmt_time(r['time_s']):>9} "
                         f"{_fmt_time(r['ttft_s']):>9} {_fmt_time(r['tpot_s']):>9} {r['tokens_per_s']:>9,.0f} "
                         f"{usd:>8.3f} {r['memory_gb']:>7.1f}")
        else:
            lines.append(f"{rank:>4}  {_row_describe(r):<58} {_fmt_time(r['time_s']):>9} {r['tokens_per_s']:>10,.0f} "
                         f"{r['mfu']:>6.1%} {r['memory_gb']:>7.1f}")
    return "\n".join(lines)


def text_report(result: "PlanResult", top: int = 10) -> str:
    best = result.best
    e = best.estimate
    w = best.workload
    m = best.model
    out = []
    if e.kind == "training":
        seq = w.seq_len or m.seq_len
        wl = f"training, global batch {w.global_batch} x {seq} tokens, {w.dtype}"
    else:
        wl = (f"inference, batch {w.batch}, prompt {w.prompt_tokens} tokens, {w.output_tokens} output tokens, "
              f"{w.dtype}")
    out.append(f"Plan for {m.name} ({m.num_params / 1e9:.1f} B parameters) on {best.cluster.describe()} "
               f"({best.cluster.num_gpus} GPUs): {wl}")
    out.append("")
    out.append(f"Best strategy: {best.strategy.describe()}")
    out.append("  " + _metric(result, best))
    gb = 1e9
    out.append(f"  memory per GPU: {e.memory_per_gpu_bytes / gb:.1f} of {e.memory_capacity_bytes / gb:.1f} GB usable ("
               + ", ".join(f"{MEMORY_LABELS[k]} {v / gb:.1f}" for k, v in e.memory.items() if v > 0) + ")")
    total = sum(e.breakdown.get(k, 0.0) for k in ADDITIVE_TERMS)
    parts = [f"{TERM_LABELS[k]} {_fmt_time(e.breakdown[k])} ({e.breakdown[k] / total:.0%})"
             for k in ADDITIVE_TERMS if e.breakdown.get(k, 0.0) > 0.005 * total]
    out.append("  time: " + ", ".join(parts))
    if e.kind == "inference":
        cost = f"${e.cost_usd:.4f}" if e.cost_usd is not None else "n/a"
        out.append(f"  idealized runtime = P(prompt) {_fmt_time(e.prefill_s)} + {w.output_tokens - 1} x beta "
                   f"{_fmt_time(e.per_token_s)}; cost {cost}, energy {e.energy_j / 3.6e6:.3f} kWh, "
                   f"largest batch that fits: {e.max_batch}")
    if best.strategy.pp > 1:
        out.append("  stages:")
        for s in e.stages:
            out.append(f"    {s.index:>3}: layers {s.first_layer:>3}-{s.end_layer - 1:<3} on {s.gpu:<16} "
                       f"{_fmt_time(s.time_s):>9} per micro-batch, {s.memory_bytes / gb:6.1f} GB")
    for note in e.notes:
        out.append(f"  note: {note}")
    out.append("")
    out.append("Why:")
    out.extend("  " + line for line in explain(result).splitlines())
    out.append("")
    df = result.candidates
    n_ok = int((~df["pruned"]).sum())
    out.append(f"Top candidates ({len(df)} considered, {n_ok} feasible, searched in "
               f"{result.search_time_s * 1e3:.0f} ms):")
    out.append(candidates_table(df, top))
    return "\n".join(out)
