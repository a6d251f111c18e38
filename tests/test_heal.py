"""Self-healing on CPU (gloo): layout-independent distributed checkpoints, and the heal drill that kills a
rank, re-plans for the survivors and resumes in the new layout on the same loss trajectory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from costmodel.strategy import Strategy  # noqa: E402
from costmodel.workload import Training  # noqa: E402
from hardware_profiles.errors import ParplanError  # noqa: E402
from hardware_profiles.topology import Cluster  # noqa: E402
from planner.plan import Plan  # noqa: E402

from executor.checkpoint import MARKER_NAME, CheckpointError, check_compatible, resolve, scan  # noqa: E402
from executor.heal import HealError, dead_ranks, heal  # noqa: E402
from executor.launch import Failure  # noqa: E402
from executor.reference import train_reference  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "executor_helpers"))
from cases import tiny_models  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BATCH, SEQ = 12, 16  # 4, 3 and 2 data-parallel replicas all divide the global batch
STEPS, FAIL_AT, EVERY = 8, 5, 2
TOL = 1e-5

pytestmark = pytest.mark.slow


def save_plan(path: Path, model: str = "dense", gpus: int = 4, **strategy) -> Path:
    plan = Plan(model=tiny_models()[model], cluster=Cluster.parse(f"1x{gpus}xH100"),
                workload=Training(global_batch=BATCH, seq_len=SEQ, dtype="fp32"), strategy=Strategy(**strategy),
                prediction={"time_s": 0.01})
    return plan.save(path)


def run(module: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def reference_losses(model: str, steps: int) -> list[float]:
    return train_reference(tiny_models()[model], batch=BATCH, seq_len=SEQ, steps=steps).losses


def assert_on_trajectory(losses: dict[int, float], ref: list[float]) -> None:
    worst = max(abs(v - ref[s]) for s, v in losses.items())
    assert worst <= TOL, {s: (v, ref[s]) for s, v in losses.items()}


# -- the full drill --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def healed(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """TP2 x DP2 on 4 ranks; rank 1 is killed as step 5 starts; the planner re-plans for 3 survivors."""
    root = tmp_path_factory.mktemp("heal")
    plan = save_plan(root / "plan_in.json", tp=2, dp=2, micro_batch=3, zero=1)
    proc = run("executor.heal", str(plan), "--steps", str(STEPS), "--fail-rank", "1", "--fail-at-step",
               str(FAIL_AT), "--checkpoint-every", str(EVERY), "--out", str(root / "out"), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "out", json.loads((root / "out" / "heal_report.json").read_text()), proc


def test_heal_resumes_on_the_survivors_on_the_uninterrupted_trajectory(healed):
    out, rep, proc = healed
    ref = reference_losses("dense", STEPS)
    assert rep["failure"]["dead_ranks"] == [1]
    assert rep["old_layout"]["num_gpus"] == 4 and rep["new_layout"]["num_gpus"] == 3
    assert rep["new_layout"]["strategy"] != rep["old_layout"]["strategy"]
    assert Plan.load(out / "plan_healed.json").strategy.num_gpus == 3
    assert rep["recovery"]["action"] == "replan" and rep["replan_s"] > 0
    # the newest complete checkpoint before the failure; the step after it ran twice
    assert rep["checkpoint_step"] == 4 and rep["steps_done_before_failure"] == FAIL_AT
    assert rep["steps_recomputed"] == 1
    phase1 = {r["step"]: r["loss"] for r in rep["phase_steps"] if r["phase"] == 1}
    phase2 = {r["step"]: r["loss"] for r in rep["phase_steps"] if r["phase"] == 2}
    assert sorted(phase1) == list(range(FAIL_AT)) and sorted(phase2) == list(range(4, STEPS))
    assert_on_trajectory(phase1, ref)
    assert_on_trajectory(phase2, ref)
    assert len(rep["losses"]) == STEPS and None not in rep["losses"]
    assert_on_trajectory(dict(enumerate(rep["losses"])), ref)
    run2 = json.loads((out / "phase2_run.json").read_text())
    assert run2["first_step"] == 4 and run2["world_size"] == 3 and run2["resumed_from"].endswith("step_00000004")


def test_heal_report_times_the_recovery(healed):
    _, rep, proc = healed
    assert 0 <= rep["detection_s"] < 60
    assert 0 < rep["checkpoint_load_s"] < rep["restart_s"]
    # failure -> first step covers detection, re-planning, restart and that step
    assert rep["handover_s"] >= rep["replan_s"]
    assert rep["failure_to_first_step_s"] >= rep["detection_s"] + rep["handover_s"] + rep["restart_s"] - 0.01
    assert rep["failure_to_first_step_s"] > rep["failure_to_first_step_start_s"] > 0
    for phase in ("throughput_before", "throughput_after"):
        t = rep[phase]
        assert t["steps_measured"] >= 2 and t["steps_per_s"] == pytest.approx(1 / t["step_time_s"])
        assert t["tokens_per_s"] == pytest.approx(BATCH * SEQ * t["steps_per_s"])
    assert "failure -> first step in the new layout" in proc.stdout


def test_resume_under_pipeline_parallel_ignores_a_partial_checkpoint(healed, tmp_path):
    """The drill's last checkpoint (DP3 on 3 ranks) resumes under PP2 on 2 ranks; a newer checkpoint whose
    save never finished (no marker) is passed over."""
    out, _, _ = healed
    ck = tmp_path / "ck"
    shutil.copytree(out / "checkpoints", ck)
    assert [i.step for i in scan(ck).complete][-1] == STEPS
    partial = ck / "step_00000010"
    shutil.copytree(ck / f"step_{STEPS:08d}", partial)
    (partial / MARKER_NAME).unlink()
    (partial / "__2_0.distcp").unlink()
    assert resolve(ck).step == STEPS and partial in scan(ck).partial
    plan = save_plan(tmp_path / "pp2.json", gpus=2, pp=2, micro_batch=3, schedule="gpipe")
    report = tmp_path / "run.json"
    proc = run("executor.launch", "--nproc", "2", str(plan), "--steps", str(STEPS + 2), "--warmup", "0",
               "--resume", str(ck), "--report", str(report))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["first_step"] == STEPS and data["resumed_from"].endswith(f"step_{STEPS:08d}")
    assert_on_trajectory({STEPS + i: v for i, v in enumerate(data["losses"])}, reference_losses("dense", STEPS + 2))


def test_experts_reshard_between_expert_parallel_conventions(tmp_path):
    """MoE: saved under TP2 x EP2 (experts split inside the TP group), resumed under DP2 x EP2 (experts split
    over data-parallel ranks, FSDP2 ZeRO-3)."""
    ck = tmp_path / "ck"
    first = save_plan(tmp_path / "a.json", "moe", gpus=2, tp=2, ep=2, ep_mode="tp", micro_batch=6)
    proc = run("executor.launch", "--nproc", "2", str(first), "--steps", "2", "--warmup", "0",
               "--checkpoint-dir", str(ck), "--checkpoint-every", "2", "--report", str(tmp_path / "a_run.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    second = save_plan(tmp_path / "b.json", "moe", gpus=2, dp=2, ep=2, ep_mode="dp", micro_batch=3, zero=3)
    proc = run("executor.launch", "--nproc", "2", str(second), "--steps", "4", "--warmup", "0", "--resume", str(ck),
               "--report", str(tmp_path / "b_run.json"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = reference_losses("moe", 4)
    a = json.loads((tmp_path / "a_run.json").read_text())["losses"]
    b = json.loads((tmp_path / "b_run.json").read_text())
    assert b["first_step"] == 2
    assert_on_trajectory({0: a[0], 1: a[1], 2: b["losses"][0], 3: b["losses"][1]}, ref)


# -- typed errors, no process group -----------------------------------------------------------------
def _fake_checkpoint(root: Path, step: int, marker: dict | str | None, metadata: bool = True) -> Path:
    d = root / f"step_{step:08d}"
    d.mkdir(parents=True)
    (d / "__0_0.distcp").write_bytes(b"\0" * 16)
    if metadata:
        (d / ".metadata").write_bytes(b"\0")
    if marker is not None:
        (d / MARKER_NAME).write_text(marker if isinstance(marker, str) else json.dumps(marker))
    return d


def _marker(step: int, **over) -> dict:
    from executor.checkpoint import model_digest

    m = {"schema": "parplan.checkpoint", "schema_version": 1, "step": step, "seed": 0, "model_name": "tiny-dense",
         "model_sha256": model_digest(tiny_models()["dense"]), "global_batch": BATCH, "seq_len": SEQ, "layout": {},
         "world_size": 2, "save_s": 0.1, "created_utc": "2025-01-01T00:00:00+00:00", "torch_version": "x"}
    m.update(over)
    return m


def test_missing_and_empty_checkpoint_directories_say_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(tmp_path / "nowhere")
    _fake_checkpoint(tmp_path, 4, None)  # a save that never finished
    with pytest.raises(CheckpointError, match=r"no complete checkpoint .*1 partial one\(s\) \(step_00000004\).*"
                                              r"run without --resume"):
        resolve(tmp_path)
    with pytest.raises(CheckpointError, match="is partial"):
        resolve(tmp_path / "step_00000004")


def test_newest_complete_checkpoint_wins_and_partial_ones_are_ignored(tmp_path):
    _fake_checkpoint(tmp_path, 2, _marker(2))
    _fake_checkpoint(tmp_path, 4, _marker(4))
    _fake_checkpoint(tmp_path, 6, None)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    found = scan(tmp_path)
    assert [i.step for i in found.complete] == [2, 4] and [p.name for p in found.partial] == ["step_00000006"]
    assert resolve(tmp_path).step == 4
    assert resolve(tmp_path / "step_00000002").step == 2


def test_keeping_the_newest_checkpoints_removes_older_and_stale_partial_ones(tmp_path):
    from executor.checkpoint import _prune

    for step in (2, 4, 6):
        _fake_checkpoint(tmp_path, step, _marker(step))
    _fake_checkpoint(tmp_path, 5, None)  # cut short before the newest complete one: stale
    _fake_checkpoint(tmp_path, 8, None)  # newer than the newest complete one: maybe being written, kept
    _prune(tmp_path, newest=6, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000004", "step_00000006", "step_00000008"]


@pytest.mark.parametrize("marker, metadata, expect", [
    ("{not json", True, "corrupt marker"),
    (_marker(4, schema="other"), True, "corrupt marker"),
    ({**_marker(4), "step": -1}, True, "corrupt marker"),
    ({"schema": "parplan.checkpoint", "schema_version": 1}, True, "corrupt marker"),
    (_marker(4), False, "no DCP .metadata"),
])
def test_malformed_checkpoints_are_typed_errors(tmp_path, marker, metadata, expect):
    _fake_checkpoint(tmp_path, 2, _marker(2))
    _fake_checkpoint(tmp_path, 4, marker, metadata=metadata)
    with pytest.raises(CheckpointError, match=expect) as err:
        resolve(tmp_path)
    assert "delete that directory" in str(err.value) and isinstance(err.value, ParplanError)


def test_a_checkpoint_of_another_model_seed_or_length_is_refused(tmp_path):
    plan = Plan.load(save_plan(tmp_path / "p.json", gpus=2, dp=2, micro_batch=6))
    ok = resolve(_fake_checkpoint(tmp_path, 4, _marker(4)))
    assert check_compatible(ok, plan, seed=0, total_steps=8) == []
    with pytest.raises(CheckpointError, match="--seed 0"):
        check_compatible(ok, plan, seed=1, total_steps=8)
    with pytest.raises(CheckpointError, match="ask for more steps"):
        check_compatible(ok, plan, seed=0, total_steps=4)
    other = resolve(_fake_checkpoint(tmp_path, 6, _marker(6, model_sha256="0" * 64, model_name="tiny-moe")))
    with pytest.raises(CheckpointError, match="holds model 'tiny-moe'"):
        check_compatible(other, plan, seed=0, total_steps=8)


def test_resume_from_a_missing_checkpoint_is_refused_before_any_process_group(tmp_path):
    plan = save_plan(tmp_path / "one.json", gpus=1, micro_batch=12)
    t0 = time.monotonic()
    proc = run("executor", str(plan), "--steps", "2", "--resume", str(tmp_path / "nowhere"),
               "--report", str(tmp_path / "r.json"), timeout=120)
    assert proc.returncode == 2 and "checkpoint refused" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.json").exists()
    assert time.monotonic() - t0 < 60


def test_dead_rank_is_the_killed_one_not_torchruns_root_cause():
    lost = "RuntimeError: Connection closed by peer [127.0.0.1]:1234"
    failures = [Failure(0, 1, lost), Failure(1, -9, "<N/A>"), Failure(2, -15, "<N/A>")]
    assert dead_ranks(failures) == [1]
    assert dead_ranks([Failure(0, 1, lost), Failure(3, 3, "no error file (the rank exited without a Python "
                                                            "exception)")]) == [3]
    assert dead_ranks([Failure(2, 1, "RuntimeError: boom")]) == [2]  # nothing else to go on: the root cause


@pytest.mark.parametrize("options, expect", [
    ({"fail_at_step": 8}, "--fail-at-step must be in 1..7"),
    ({"fail_rank": 4}, "--fail-rank 4 is not a rank"),
    ({"checkpoint_every": 0}, "needs checkpoints"),
])
def test_heal_refuses_bad_options_before_launching(tmp_path, options, expect):
    plan = save_plan(tmp_path / "p.json", tp=2, dp=2, micro_batch=3)
    kw = dict(steps=8, fail_rank=1, fail_at_step=5, checkpoint_every=2, out_dir=tmp_path / "out")
    kw.update(options)
    with pytest.raises(HealError, match=expect):
        heal(plan, **kw)
    assert not (tmp_path / "out" / "phase1.log").exists()
