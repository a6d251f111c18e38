"""The self-healing drill on CPU (a benchmark): TP2 x DP2 on 4 gloo ranks, rank 1 killed at step 5,
re-plan for the 3 survivors, resume from the step-4 checkpoint.

    python bench/heal_drill.py [OUT_DIR]

Prints the heal report's timings and throughput; the report is OUT_DIR/heal/heal_report.json (default
/tmp/parplan_heal), copied to bench/results/heal_drill.json. On 2 CPU cores the 4-rank phase is
oversubscribed, so throughput after the failure can exceed throughput before; the timings of detection,
re-plan and restart are the figures of interest.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "executor_helpers"))

from cases import tiny_models  # noqa: E402

from costmodel.strategy import Strategy  # noqa: E402
from costmodel.workload import Training  # noqa: E402
from hardware_profiles.topology import Cluster  # noqa: E402
from planner.plan import Plan  # noqa: E402


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/parplan_heal")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    plan = Plan(model=tiny_models()["dense"], cluster=Cluster.parse("1x4xH100"),
                workload=Training(global_batch=12, seq_len=16, dtype="fp32"),
                strategy=Strategy(tp=2, dp=2, micro_batch=3, zero=1), prediction={"time_s": 0.01})
    path = plan.save(out / "plan.json")
    cmd = [sys.executable, "-m", "executor.heal", str(path), "--steps", "8", "--fail-rank", "1", "--fail-at-step", "5",
           "--checkpoint-every", "2", "--out", str(out / "heal")]
    subprocess.run(cmd, check=True, cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    report = json.loads((out / "heal" / "heal_report.json").read_text())
    (REPO / "bench" / "results" / "heal_drill.json").write_text(json.dumps(report, indent=2))
    keys = [k for k in report if k.endswith("_s") or "throughput" in k or k in ("old_layout", "new_layout")]
    for k in keys:
        print(f"{k:<40} {report[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
