"""A standalone HTML report for a PlanResult: one file, plots embedded as base64 PNG, no external links.

    python -m planner --model llama3-70b --cluster 4x8xH100 --report plan.html
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

from costmodel.pricing import ADDITIVE_TERMS, MEMORY_TERMS

from .report import MEMORY_LABELS, TERM_LABELS, _fmt_time, _row_describe

if TYPE_CHECKING:
    from .search import PlanResult

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #555; margin-top: 0; }
.best { background: #f4f8fc; border-left: 4px solid #4C72B0; padding: 0.6em 1em; }
.strategy { font-size: 1.25em; font-weight: 600; }
pre { background: #f7f7f7; padding: 0.8em; white-space: pre-wrap; font-size: 0.92em; }
table.data { border-collapse: collapse; font-size: 0.88em; }
table.data th, table.data td { border-bottom: 1px solid #e3e3e3; padding: 0.25em 0.7em; text-align: right; }
table.data th { background: #fafafa; }
table.data td:nth-child(2), table.data th:nth-child(2) { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.note { color: #8a5a00; }
footer { margin-top: 3em; color: #888; font-size: 0.85em; }
"""


def _png(draw: Callable[[Any], Any], figsize: tuple[float, float]) -> str:
    """Draw into a fresh Figure (no pyplot state) and return it as a base64 data URI."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    draw(fig.subplots())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0, classes="data", na_rep="-")


def _breakdown_tables(e: Any) -> tuple[str, str]:
    gb = 1e9
    mem_total = sum(e.memory.get(k, 0.0) for k in MEMORY_TERMS) or 1.0
    mem = pd.DataFrame([{"part": MEMORY_LABELS[k], "GB": f"{e.memory[k] / gb:.2f}",
                         "share": f"{e.memory[k] / mem_total:.0%}"} for k in MEMORY_TERMS if e.memory.get(k, 0) > 0])
    total = sum(e.breakdown.get(k, 0.0) for k in ADDITIVE_TERMS) or 1.0
    tim = pd.DataFrame([{"term": TERM_LABELS[k], "time": _fmt_time(e.breakdown[k]),
                         "share": f"{e.breakdown[k] / total:.1%}"}
                        for k in ADDITIVE_TERMS if e.breakdown.get(k, 0.0) > 1e-4 * total])
    return _table(mem), _table(tim)


def gpu_order(placement: str, cluster: Any) -> str:
    """GPU types in rank order, runs merged: 'V100 x8, T4 x4, V100 x4' (pipeline stages take ranks in order)."""
    from .plots import _short_gpu

    names = [g.name for g in cluster.gpus]
    idx = [int(x) for x in placement.split(",")] if placement else list(range(len(names)))
    runs: list[list[Any]] = []
    for i in idx:
        n = _short_gpu(names[i]) if i < len(names) else "?"
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    return ", ".join(f"{n} x{c}" for n, c in runs)


def _candidates_table(df: pd.DataFrame, top: int, inference: bool, cluster: Any = None,
                      reasons: bool = False) -> pd.DataFrame:
    from .plots import usd_per_million_tokens

    view = df.head(top).copy()
    out = pd.DataFrame({"rank": [str(int(r)) if r else "-" for r in view["rank"]],
                        "strategy": view.apply(_row_describe, axis=1)})
    out["GPUs"] = view["num_gpus"].astype(int).to_numpy()
    out["runtime" if inference else "step"] = [_fmt_time(t) for t in view["time_s"]]
    out["tokens/s"] = [f"{v:,.0f}" for v in view["tokens_per_s"]]
    if inference:
        out["TTFT"] = [_fmt_time(t) for t in view["ttft_s"]]
        out["TPOT"] = [_fmt_time(t) for t in view["tpot_s"]]
        out["$/M tokens"] = [f"{v:.3f}" for v in usd_per_million_tokens(view)]
    else:
        out["MFU"] = [f"{v:.1%}" for v in view["mfu"]]
    out["memory GB"] = [f"{m:.1f} / {c:.1f}" for m, c in zip(view["memory_gb"], view["capacity_gb"])]
    if cluster is not None and not cluster.is_homogeneous and "placement" in view:
        out["GPUs in rank order"] = [gpu_order(p, cluster) for p in view["placement"].fillna("")]
    if reasons:
        out["rejected because"] = view["reason"].fillna("").to_numpy()
    return out


def render_html(result: "PlanResult", top: int = 25) -> str:
    """The report as one HTML string."""
    from . import plots
    from .report import _metric

    best = result.best
    e = best.estimate
    m, w = best.model, best.workload
    inference = e.kind == "inference"
    if inference:
        wl = (f"inference: batch {w.batch}, prompt {w.prompt_tokens} tokens, {w.output_tokens} output tokens, "
              f"{w.dtype}")
    else:
        wl = f"training: global batch {w.global_batch} x {w.seq_len or m.seq_len} tokens, {w.dtype}"
    df = result.candidates
    n_ok = int((~df["pruned"]).sum())
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(f'Plan: {m.name} on {best.cluster.describe()}')}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>Parallel plan for {esc(m.name)} ({m.num_params / 1e9:.1f} B parameters)</h1>",
        f'<p class="sub">{esc(best.cluster.describe())} ({best.cluster.num_gpus} GPUs); {esc(wl)}; objective '
        f"{esc(result.objective)}; {len(df)} strategies considered, {n_ok} feasible, searched in "
        f"{result.search_time_s * 1e3:.0f} ms</p>",
        '<div class="best"><div>Chosen strategy</div>',
        f'<div class="strategy">{esc(best.strategy.describe())}</div>',
        f"<p>{esc(_metric(result, best))}<br>memory on the fullest GPU: {e.memory_per_gpu_bytes / 1e9:.1f} of "
        f"{e.memory_capacity_bytes / 1e9:.1f} GB usable</p></div>",
        "<h2>Why this plan won</h2>", f"<pre>{esc(result.explain())}</pre>",
    ]
    for note in e.notes:
        parts.append(f'<p class="note">note: {esc(note)}</p>')
    mem_table, time_table = _breakdown_tables(e)
    n_top = len(plots.top_distinct(df, 6))
    parts += ["<h2>Memory per GPU</h2>",
              _img(_png(lambda ax: plots.plot_memory(result, ax=ax), (11, 0.6 * n_top + 1.8)),
                   "memory per GPU of the top candidates"),
              "<p>The chosen plan, on its fullest GPU:</p>", mem_table]
    if best.strategy.pp > 1:
        parts.append(_img(_png(lambda ax: plots.plot_stage_memory(result, ax=ax),
                               (max(6.0, 0.9 * best.strategy.pp + 4), 4.2)), "memory by pipeline stage"))
    parts += ["<h2>Where the time goes</h2>",
              _img(_png(lambda ax: plots.plot_time(result, ax=ax), (11, 0.6 * n_top + 1.8)),
                   "time breakdown of the top candidates"),
              "<p>The chosen plan:</p>", time_table]
    if best.strategy.pp > 1 or not inference:
        parts += ["<h2>Pipeline timeline</h2>",
                  _img(_png(lambda ax: plots.plot_timeline(result, ax=ax), (12, 0.45 * best.strategy.pp + 2.2)),
                       "pipeline timeline of the chosen plan")]
    parts += ["<h2>Trade-offs</h2>",
              _img(_png(lambda ax: plots.plot_pareto(result, ax=ax), (10, 5.5)), "Pareto front"),
              f"<h2>Ranked candidates (top {min(top, n_ok)})</h2>",
              _table(_candidates_table(df[~df["pruned"]], top, inference, best.cluster))]
    pruned = df[df["pruned"] & (df["time_s"] < e.time_s)].sort_values("time_s")
    if len(pruned):
        parts += [f"<h2>Faster strategies that were rejected ({len(pruned)})</h2>",
                  _table(_candidates_table(pruned, 10, inference, best.cluster, reasons=True))]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts += [f"<footer>parplan strategy report, {stamp}. Times and memory are cost-model predictions.</footer>",
              "</body></html>"]
    return "\n".join(parts)


def write_html_report(result: "PlanResult", path: str | os.PathLike[str]) -> Path:
    """Write the report to `path` (parent folders are made) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")
    return path
