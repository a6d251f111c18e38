"""The calibration loop: plan, run the top candidates, calibrate, plan again (with a stand-in runner)."""
from __future__ import annotations

import json

import costmodel as cm
import pytest
from costmodel.pricing import estimate
from executor.loop import LocalRun, calibration_loop
from hardware_profiles import Cluster


def _fake_runner(slowdown: float):
    """Measures every plan as `slowdown` x what default constants predict (a stack slower than assumed)."""

    def run(plan, out_dir, label, *, steps, warmup, timeout_s):
        t = estimate(plan.model, plan.cluster, plan.strategy, plan.workload, params=cm.CostParams(),
                     profiles=None).time_s
        report = {"step_time_s": slowdown * t, "plan_data": plan.to_dict(), "label": label}
        return LocalRun(label, report, 0.0, "")

    return run


def test_loop_calibrates_and_lowers_the_error(tmp_path):
    cluster = Cluster.parse("1x4xH100")
    wl = cm.Training(global_batch=16, seq_len=1024)
    rep = calibration_loop("llama3-8b", cluster, wl, top_k=3, out_dir=tmp_path, runner=_fake_runner(1.6))
    assert len(rep["runs"]) == 3
    before = [abs(e) for e in rep["error_before"]]
    after = [abs(e) for e in rep["error_after"]]
    assert max(after) < max(before)
    assert max(after) < 0.15
    saved = json.loads((tmp_path / "loop_report.json").read_text())
    assert saved["best_after"] and saved["calibration"]["fitted"]
    assert (tmp_path / "calibration.json").exists()


def test_loop_refuses_when_nothing_ran(tmp_path):
    def failing(plan, out_dir, label, **_):
        return LocalRun(label, None, 0.0, "boom")

    from hardware_profiles.errors import ParplanError

    with pytest.raises(ParplanError, match="no candidate run finished"):
        calibration_loop("llama3-8b", Cluster.parse("1x2xH100"), cm.Training(global_batch=8, seq_len=1024),
                         top_k=2, out_dir=tmp_path, runner=failing)
