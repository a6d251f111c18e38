"""The cost model against the project's own GPU runs, before and after calibration (issue 6).

    python bench/calibration.py [--compiled] [DIRS or FILES ...] [--fit single,dp2,pp2] [--exclude LABELS]

Reads executor RunReports (each embeds its plan) from the given directories or files (default: the mode's
committed runs on 2x H200, DEFAULT_RUNS), prices every run with the cost model three ways, and reports the error on the
runs NOT used for fitting:
  datasheet   catalog figures only (no measured profile, default constants);
  profiled    the committed microbenchmark profile of the GPU (GEMM roofline, NCCL collectives);
  calibrated  profile + at most three executor runs (--fit) through `costmodel.calibrate`.
Also says whether the predicted best layout is the measured best. Writes bench/results/calibration_<mode>.json
(mode: eager, or compiled with --compiled).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))

from costmodel.calibrate import RUN_FIT_DEFAULT, RunRecord, calibrate  # noqa: E402
from costmodel.calibrated import profiles_for_cluster  # noqa: E402
from costmodel.params import CostParams  # noqa: E402
from costmodel.pricing import estimate  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _compiled(report: dict) -> bool:
    return any("torch.compile" in n for n in report.get("notes") or [])


def _label(stem: str) -> str:
    """A run's layout label without the compile tags of its file name (`tp2_cm_repeat` -> `tp2_repeat`)."""
    return re.sub(r"_cm?(?=_|$)", "", stem)


def load_runs(paths: list[Path], compiled: bool = False, exclude: Sequence[str] = ()) -> list[RunRecord]:
    """The runs of one execution mode from directories of RunReports or single report files: eager, or with
    `compiled` the torch.compile runs. The plan does not say how the executor ran it, so the two modes are
    calibrated apart."""
    files = [f for p in paths for f in (sorted(p.glob("run_*.json")) if p.is_dir() else [p])]
    runs = []
    for f in files:
        r = json.loads(f.read_text())
        label = _label(f.stem[4:])
        if "plan_data" not in r or _compiled(r) != compiled or label in exclude:
            continue
        runs.append(RunRecord.from_report({"plan": r["plan_data"], "step_time_s": r["step_time_s"], "label": label}))
    return runs


GPU = RESULTS / "gpu"
# The runs each mode is scored on by default: eager, and compiled (whole chunks where the layout allows, DP2
# per block); TP2 + sequence parallel left out of the compiled set, its losses showing a fault (see the runs'
# README).
DEFAULT_RUNS = {"eager": [GPU / "runs_2026-11-22_b"],
                "compiled": [GPU / "runs_2026-11-22_d", GPU / "runs_2026-11-22_c" / "run_dp2_c.json"]}
DEFAULT_EXCLUDE = {"eager": (), "compiled": ("tp2_sp", "tp2_sp_after_fix")}
DEFAULT_FIT = ("single", "dp2", "pp2")


def score(paths: Sequence[Path], compiled: bool, fit_labels: Sequence[str] = DEFAULT_FIT,
          params: Sequence[str] = RUN_FIT_DEFAULT, exclude: Sequence[str] = ()) -> dict:
    """Every run priced from the datasheet, the profile, and the profile + calibration on `fit_labels`;
    errors on the runs not fitted, and whether each predicts the measured best."""
    runs = load_runs(list(paths), compiled, exclude)
    mode = "compiled" if compiled else "eager"
    if not runs:
        raise SystemExit(f"no {mode} runs with plans in {[str(d) for d in paths]}")
    if len(fit_labels) > 3:
        raise SystemExit("at most three runs may be used for fitting")
    fit = [r for r in runs if r.label in fit_labels]
    profiles = list(profiles_for_cluster(runs[0].cluster).values())
    cal = calibrate(profiles=profiles, runs=fit, fit=list(params))
    profiled = calibrate(profiles=profiles).params

    def predict(r: RunRecord, how: str) -> float:
        if how == "datasheet":
            return estimate(r.model, r.cluster, r.strategy, r.workload, params=CostParams(), profiles=None).time_s
        p = profiled if how == "profiled" else cal.params
        return estimate(r.model, r.cluster, r.strategy, r.workload, params=p, profiles="auto").time_s

    report: dict = {"dirs": [str(d) for d in paths], "mode": mode, "fit_on": list(fit_labels), "runs": []}
    for r in runs:
        preds = {h: predict(r, h) for h in ("datasheet", "profiled", "calibrated")}
        report["runs"].append({"label": r.label, "strategy": r.strategy.describe(), "measured_s": r.measured_s,
                               "used_for_fit": r.label in fit_labels, **{f"{h}_s": v for h, v in preds.items()},
                               **{f"{h}_error": v / r.measured_s - 1 for h, v in preds.items()}})
    rows = report["runs"]
    held = [x for x in rows if not x["used_for_fit"]]
    for h in ("datasheet", "profiled", "calibrated"):
        errs = np.abs([x[f"{h}_error"] for x in held]) if held else np.array([np.nan])
        report[f"{h}_held_out_max_error"] = float(errs.max())
        report[f"{h}_held_out_median_error"] = float(np.median(errs))
        report[f"{h}_predicted_best"] = min(rows, key=lambda x: x[f"{h}_s"])["label"]
    report["measured_best"] = min(rows, key=lambda x: x["measured_s"])["label"]
    report["calibration"] = {"fitted": dict(cal.fitted), "stderr": dict(cal.stderr)}
    return report


def summary_lines(report: dict) -> list[str]:
    lines = [f"{'run':<18} {'measured':>9} {'datasheet':>10} {'profiled':>10} {'calibrated':>11}"]
    for x in report["runs"]:
        mark = " (fit)" if x["used_for_fit"] else ""
        lines.append(f"{x['label'] + mark:<18} {x['measured_s']:9.3f} {x['datasheet_error']:+10.1%} "
                     f"{x['profiled_error']:+10.1%} {x['calibrated_error']:+11.1%}")
    for h in ("datasheet", "profiled", "calibrated"):
        lines.append(f"{h:<11} held-out error median {report[f'{h}_held_out_median_error']:.1%}, max "
                     f"{report[f'{h}_held_out_max_error']:.1%}; predicted best {report[f'{h}_predicted_best']} "
                     f"(measured best {report['measured_best']})")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="*", help="directories of RunReports, or report files (default: the mode's set)")
    ap.add_argument("--exclude", default=None, help="labels of runs to leave out (e.g. a run whose losses show a fault)")
    ap.add_argument("--fit", default=",".join(DEFAULT_FIT), help="labels of the (at most three) runs to fit on")
    ap.add_argument("--params", default=",".join(RUN_FIT_DEFAULT), help="cost-model constants fitted to the runs")
    ap.add_argument("--compiled", action="store_true", help="the runs made with torch.compile (default: eager)")
    args = ap.parse_args()
    mode = "compiled" if args.compiled else "eager"
    paths = [Path(d) for d in args.dirs] or DEFAULT_RUNS[mode]
    exclude = DEFAULT_EXCLUDE[mode] if args.exclude is None else [x for x in args.exclude.split(",") if x]
    report = score(paths, args.compiled, [x for x in args.fit.split(",") if x],
                   [x for x in args.params.split(",") if x], exclude)
    (RESULTS / f"calibration_{mode}.json").write_text(json.dumps(report, indent=2))
    print(f"{mode} runs from {', '.join(map(str, paths))}; fitted on {', '.join(report['fit_on'])} "
          f"(+ microbenchmark profile)")
    print("\n".join(summary_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
