"""On AMP's own settings, the planner's choice measured well in AMP's real trials (issue 4).

Default cost constants, nothing fitted on AMP's data. The search is limited to what AMP's trials cover
(no recompute, no ZeRO, 1F1B, AMP's rank order); a choice is looked up in the trials by (micro-batch,
tp, dp, pp): het_cluster and het_model must pick a strategy measured faster than the Megatron-heuristic
baseline (1.97 s and 1.89 s), homogeneous one within 5% of the measured best.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import costmodel as cm  # noqa: E402
import planner  # noqa: E402
from costmodel.catalog import amp_model_name  # noqa: E402
from validation import amp_cluster, amp_trials, amp_workload  # noqa: E402

SPACE = planner.SearchSpace(recompute=("none",), zero=(0,), sequence_parallel=(False,), schedules=("1f1b",),
                            max_placements=1, ep_modes=("dp",))


def _measured(setting: str, s: cm.Strategy) -> float | None:
    for t in amp_trials():
        r = t.row
        if t.setting == setting and (int(r["tp"]), int(r["dp"]), int(r["pp"]), int(r["micro_batch"])) == (
                s.tp, s.dp, s.pp, s.micro_batch):
            return t.measured_s
    return None


@pytest.mark.parametrize("setting,bound", [("homogeneous", None), ("het_cluster", 1.97), ("het_model", 1.89)])
def test_planner_choice_measured_well(setting, bound):
    res = planner.plan(amp_model_name(setting), amp_cluster(setting), amp_workload(setting), space=SPACE,
                       params=cm.CostParams(), profiles=None)
    measured = _measured(setting, res.best.strategy)
    assert measured is not None, f"AMP never ran (or ran out of memory with) {res.best.strategy.describe()}"
    best = min(t.measured_s for t in amp_trials() if t.setting == setting and t.measured_s)
    if bound is None:
        assert measured <= 1.05 * best
    else:
        assert measured < bound
