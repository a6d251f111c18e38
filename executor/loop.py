"""The calibration loop: plan, run the top candidates briefly, calibrate the cost model, plan again.

    python -m executor.loop --model llama-1.5b --cluster 1x2xH200 --batch 8 --seq 4096 \
        --top-k 3 --steps 4 --budget-s 600 --out loop/

1. `planner.plan` ranks every strategy with the cost model as it stands (measured profiles where committed).
2. The best `--top-k` strategies with distinct meshes run for a few steps each with the executor on this
   machine (torchrun, one process per GPU), while the time budget lasts.
3. `costmodel.calibrate` fits the cost constants to the committed microbenchmark profiles of these GPUs plus
   those runs; the result is saved (`--install` puts it where `estimate()` picks it up for this hardware).
4. The search runs again with the calibrated constants; the report says how the ranking and the
   predicted/measured error changed (loop_report.json in --out).
AMP does this by hand with its optional real trials; here it is one bounded command.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hardware_profiles.errors import ParplanError


@dataclass(frozen=True)
class LocalRun:
    label: str
    report: dict | None  # the executor's RunReport, with the plan under "plan_data"
    wall_s: float
    log: str


def run_local(plan: Any, out_dir: Path, label: str, *, steps: int = 4, warmup: int = 2, timeout_s: float = 300.0,
              extra_args: Sequence[str] = ()) -> LocalRun:
    """Run a plan on this machine under torchrun (one process per GPU of the plan) and read its report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plan_path = plan.save(out_dir / f"plan_{label}.json")
    report = out_dir / f"run_{label}.json"
    n = plan.strategy.num_gpus
    repo = str(Path(__file__).resolve().parent.parent)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", "executor",
           str(plan_path), "--steps", str(steps), "--warmup", str(warmup), "--report", str(report), *extra_args]
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "NCCL_NVLS_ENABLE": "0"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        log = proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-20000:]
        ok = proc.returncode == 0 and report.exists()
    except subprocess.TimeoutExpired as exc:
        log, ok = f"timed out after {timeout_s} s\n{exc.stdout or ''}\n{exc.stderr or ''}", False
    wall = time.perf_counter() - t0
    (out_dir / f"log_{label}.txt").write_text(log)
    if not ok:
        return LocalRun(label, None, wall, log)
    data = json.loads(report.read_text())
    data["label"] = label
    data["plan_data"] = plan.to_dict()
    report.write_text(json.dumps(data, indent=2))
    return LocalRun(label, data, wall, log)


def _distinct_top(candidates: Any, k: int) -> list[int]:
    seen, rows = set(), []
    for i, r in candidates[~candidates["pruned"]].iterrows():
        key = (r["tp"], r["pp"], r["dp"], r["ep"])
        if key in seen:
            continue
        seen.add(key)
        rows.append(i)
        if len(rows) == k:
            break
    return rows


def calibration_loop(model: Any, cluster: Any, workload: Any, *, top_k: int = 3, steps: int = 4, warmup: int = 2,
                     budget_s: float = 600.0, out_dir: str | Path = "loop", install: bool = False,
                     runner: Any = run_local) -> dict[str, Any]:
    import planner
    from costmodel.calibrate import RunRecord, calibrate
    from costmodel.calibrated import profiles_for_cluster
    from costmodel.pricing import estimate

    out = Path(out_dir)
    t_start = time.perf_counter()
    before = planner.plan(model, cluster, workload)
    rows = _distinct_top(before.candidates, top_k)
    runs: list[LocalRun] = []
    for i, idx in enumerate(rows):
        if time.perf_counter() - t_start > budget_s:
            break
        r = before.candidates.loc[idx]
        strat = planner.search._strategy_of(r)
        plan = planner.Plan.from_strategy(before.best.model, before.best.cluster, strat, workload)
        remaining = max(budget_s - (time.perf_counter() - t_start), 30.0)
        runs.append(runner(plan, out, f"cand{i}", steps=steps, warmup=warmup, timeout_s=remaining))
    done = [r for r in runs if r.report is not None]
    if not done:
        raise ParplanError(f"no candidate run finished (see the logs in {out}); nothing to calibrate from")
    records = [RunRecord.from_report({"plan": r.report["plan_data"], "step_time_s": r.report["step_time_s"],
                                      "label": r.label}) for r in done]
    profiles = list(profiles_for_cluster(before.best.cluster).values())
    cal = calibrate(profiles=profiles, runs=records)
    cal_path = cal.save(out / "calibration.json") if not install else cal.save()
    after = planner.plan(model, cluster, workload, params=cal.params)

    def err(params: Any) -> list[float]:
        return [estimate(r.model, r.cluster, r.strategy, r.workload, params=params, profiles="auto").time_s
                / r.measured_s - 1 for r in records]

    report = {
        "runs": [{"label": r.label, "strategy": r.report["plan_data"]["strategy"] if r.report else None,
                  "measured_s": r.report["step_time_s"] if r.report else None, "wall_s": r.wall_s} for r in runs],
        "error_before": err(before.params), "error_after": err(cal.params),
        "best_before": before.best.strategy.describe(), "best_after": after.best.strategy.describe(),
        "top_before": [before.candidates.loc[i, ["tp", "pp", "dp", "micro_batch", "time_s"]].to_dict() for i in rows],
        "top_after": after.candidates.head(top_k)[["tp", "pp", "dp", "micro_batch", "time_s"]].to_dict("records"),
        "calibration": {"path": str(cal_path), "fitted": dict(cal.fitted), "stderr": dict(cal.stderr)},
        "elapsed_s": time.perf_counter() - t_start,
    }
    (out / "loop_report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def main(argv: list[str] | None = None) -> int:
    import costmodel as cm
    from hardware_profiles import Cluster

    ap = argparse.ArgumentParser(prog="python -m executor.loop", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=600.0)
    ap.add_argument("--out", default="loop")
    ap.add_argument("--install", action="store_true", help="save the calibration where estimate() finds it")
    args = ap.parse_args(argv)
    try:
        rep = calibration_loop(args.model, Cluster.parse(args.cluster),
                               cm.Training(global_batch=args.batch, seq_len=args.seq, dtype=args.dtype),
                               top_k=args.top_k, steps=args.steps, warmup=args.warmup, budget_s=args.budget_s,
                               out_dir=args.out, install=args.install)
    except ParplanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"best before: {rep['best_before']}\nbest after:  {rep['best_after']}")
    for r, e0, e1 in zip(rep["runs"], rep["error_before"], rep["error_after"]):
        print(f"  {r['label']}: measured {r['measured_s']:.3f} s, predicted error {e0:+.1%} -> {e1:+.1%}")
    print(f"calibration saved to {rep['calibration']['path']} ({rep['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
