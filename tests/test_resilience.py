"""Checkpoint interval and recovery pricing (planner.resilience)."""
from __future__ import annotations

import math

import costmodel as cm
import planner
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planner.errors import PlannerOptionError
from planner.resilience import (choose_recovery, daly_interval_s, expected_wall_per_work,
                                optimal_checkpoint_interval, young_interval_s)


def test_young_and_daly_closed_forms():
    assert young_interval_s(60, 3600) == pytest.approx(math.sqrt(2 * 60 * 3600))
    # Daly's estimate is Young's corrected downwards by about C for small C / M
    assert daly_interval_s(1, 1e6) == pytest.approx(math.sqrt(2e6) - 1, rel=1e-3)
    assert daly_interval_s(10, 4) == 4


def test_expected_wall_is_at_least_one_and_grows_with_failures():
    w = expected_wall_per_work(600, 30, 3600 * 24)
    assert w > 1
    assert expected_wall_per_work(600, 30, 3600) > w


@settings(max_examples=60, deadline=None)
@given(step=st.floats(0.1, 30), ckpt=st.floats(1, 600), mtbf=st.floats(600, 1e6), restart=st.floats(0, 300))
def test_optimal_interval_never_loses_to_young_or_daly(step, ckpt, mtbf, restart):
    c = optimal_checkpoint_interval(step, ckpt, mtbf, restart)
    assert c.interval_steps >= 1
    assert c.overhead <= c.young_overhead + 1e-12
    assert c.overhead <= c.daly_overhead + 1e-12


def test_bad_inputs_are_typed_errors():
    with pytest.raises(PlannerOptionError):
        optimal_checkpoint_interval(0, 10, 100)
    with pytest.raises(PlannerOptionError):
        optimal_checkpoint_interval(1, 10, float("nan"))


def _plan():
    return planner.plan("llama3-8b", "2x8xH100", cm.Training(global_batch=64, seq_len=4096), profiles=None).best


def test_short_wait_keeps_the_plan_and_long_wait_replans():
    plan = _plan()
    quick = choose_recovery(plan, [3], remaining_steps=100, replacement_wait_s=10, profiles=None)
    assert quick.choice.action == "wait"
    slow = choose_recovery(plan, [3], remaining_steps=100, replacement_wait_s=1e7, profiles=None)
    assert slow.choice.action == "replan"
    new = slow.choice.plan
    assert new.cluster.num_gpus == 15 and new.strategy.num_gpus == 15
    assert slow.replan.step_time_s >= quick.wait.step_time_s  # the best plan on fewer GPUs is not faster
    assert "GPUs left" in slow.describe() or "replan" in slow.describe()


def _plan_70b():
    return planner.Plan.from_strategy("llama3-70b", "4x8xH100", cm.Strategy(tp=8, pp=4, micro_batch=1),
                                      cm.Training(global_batch=64, seq_len=4096))


def test_plan_gets_the_checkpoint_interval_that_minimises_lost_time():
    from planner.resilience import checkpoint_write_s, optimal_checkpoint_interval, with_checkpointing

    plan = _plan_70b()
    ckpt_s = checkpoint_write_s(plan, storage_gbps_per_node=2.0)
    assert ckpt_s == pytest.approx(12 * plan.model.num_params / (2e9 * 4))
    out, choice = with_checkpointing(plan, 50_000.0, storage_gbps_per_node=2.0, restart_s=300.0)
    expected = optimal_checkpoint_interval(plan.predicted_time_s, ckpt_s, 50_000 * 3600 / 32, 300.0)
    assert out.checkpoint_interval_steps == expected.interval_steps == choice.interval_steps > 0
    assert plan.checkpoint_interval_steps == 0  # the input plan is left as it was
    # rarer failures and faster storage both space checkpoints further apart (or keep them)
    rarer, _ = with_checkpointing(plan, 500_000.0, storage_gbps_per_node=2.0)
    faster, _ = with_checkpointing(plan, 50_000.0, storage_gbps_per_node=20.0)
    assert rarer.checkpoint_interval_steps > out.checkpoint_interval_steps
    assert faster.checkpoint_interval_steps < out.checkpoint_interval_steps
    assert planner.Plan.from_json(out.to_json()).checkpoint_interval_steps == out.checkpoint_interval_steps


def test_checkpointing_bad_inputs_are_typed_errors():
    from planner.resilience import with_checkpointing

    plan = _plan_70b()
    for bad in (0, -1.0, float("nan"), "10"):
        with pytest.raises(PlannerOptionError):
            with_checkpointing(plan, bad)
    with pytest.raises(PlannerOptionError):
        with_checkpointing(plan, 1000.0, storage_gbps_per_node=0.0)
    inf = planner.Plan.from_strategy("llama3-8b", "1x8xH100", cm.Strategy(tp=8),
                                     cm.Inference(prompt_tokens=128, output_tokens=16, batch=8))
    with pytest.raises(PlannerOptionError):
        with_checkpointing(inf, 1000.0)


def test_cli_writes_the_checkpoint_interval_into_the_plan(tmp_path, capsys):
    from planner.__main__ import main

    out = tmp_path / "plan.json"
    assert main(["--model", "llama3-8b", "--cluster", "2x8xH100", "--batch", "64", "--seq", "2048",
                 "--gpu-mtbf-hours", "20000", "--out", str(out), "--top", "1"]) == 0
    assert "checkpoint every" in capsys.readouterr().out
    assert planner.Plan.load(out).checkpoint_interval_steps > 0
