"""The executor end to end under torchrun (CPU, gloo): reports, two agents on loopback, and faults."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from costmodel.strategy import Strategy  # noqa: E402
from costmodel.workload import Inference, Training  # noqa: E402
from hardware_profiles.topology import Cluster  # noqa: E402
from planner.plan import Plan  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "executor_helpers"))
from cases import tiny_models  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FAULT_DEADLINE_S = 60

pytestmark = pytest.mark.slow


def save_plan(tmp_path: Path, name: str = "plan.json", model: str = "dense", workload=None, **strategy) -> Path:
    workload = workload or Training(global_batch=8, seq_len=16, dtype="fp32")
    plan = Plan(model=tiny_models()[model], cluster=Cluster.parse("1x8xH100"), workload=workload,
                strategy=Strategy(**strategy), prediction={"time_s": 0.25, "memory_per_gpu_bytes": 2e9,
                                                           "tokens_per_s": 1000.0})
    return plan.save(tmp_path / name)


def launch(*args: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "executor.launch", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - t0


def test_launcher_runs_a_plan_and_writes_the_report(tmp_path):
    plan = save_plan(tmp_path, pp=2, micro_batch=2)
    report = tmp_path / "run.json"
    proc, _ = launch("--nproc", "2", str(plan), "--steps", "2", "--warmup", "1", "--report", str(report))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["step_time_s"] > 0 and data["predicted_step_time_s"] == 0.25
    assert data["time_ratio"] == pytest.approx(data["step_time_s"] / 0.25)
    assert len(data["step_times_s"]) == 3 and len(data["losses"]) == 3
    assert data["world_size"] == 2 and len(data["peak_memory_bytes_per_rank"]) == 2
    assert all(m > 0 for m in data["peak_memory_bytes_per_rank"])
    assert data["tokens_per_s"] == pytest.approx(8 * 16 / data["step_time_s"])
    assert 0 < data["mfu"] < 1 and data["torch_version"] == torch.__version__
    assert data["shape"]["chunks"] == [[0, 4], [4, 8]]


def test_placement_maps_logical_ranks_onto_other_processes_and_training_still_matches(tmp_path):
    from executor.reference import train_reference

    plan = save_plan(tmp_path, tp=2, pp=2, micro_batch=4, schedule="gpipe", placement=(2, 0, 3, 1))
    report = tmp_path / "placed.json"
    proc, _ = launch("--nproc", "4", str(plan), "--steps", "3", "--warmup", "0", "--report", str(report))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["process_of_rank"] == [2, 0, 3, 1]  # logical rank r ran on GPU/process placement[r]
    ref = train_reference(tiny_models()["dense"], batch=8, seq_len=16, steps=3)
    assert data["losses"] == pytest.approx(ref.losses, rel=1e-5)


def test_inference_report_has_time_to_first_token_and_per_token_time(tmp_path):
    plan = save_plan(tmp_path, model="moe", tp=2, ep=2, ep_mode="tp",
                     workload=Inference(prompt_tokens=6, output_tokens=5, batch=2, dtype="fp32"))
    report = tmp_path / "infer.json"
    proc, _ = launch("--nproc", "2", str(plan), "--steps", "2", "--report", str(report))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["mode"] == "inference"
    assert 0 < data["ttft_s"] < data["step_time_s"] and data["tpot_s"] > 0
    assert len(data["generated_tokens"]) == 2 and len(data["generated_tokens"][0]) == 5


def test_two_torchrun_agents_on_loopback_run_one_plan(tmp_path):
    plan = save_plan(tmp_path, tp=2, dp=2, micro_batch=4, zero=3)
    report = tmp_path / "two-nodes.json"
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "executor.launch", "--nnodes", "2", "--nproc", "2", "--rdzv-endpoint",
           f"127.0.0.1:{port}", "--rdzv-id", "loopback-test", str(plan), "--steps", "2", "--report", str(report)]
    agents = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    outputs = [a.communicate(timeout=240)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    data = json.loads(report.read_text())
    assert data["world_size"] == 4 and len(data["peak_memory_bytes_per_rank"]) == 4


def test_mismatched_plan_is_refused_before_any_process_starts(tmp_path):
    plan = save_plan(tmp_path, tp=2, dp=2, micro_batch=4)
    proc, elapsed = launch("--nproc", "2", str(plan), "--steps", "1", "--report", str(tmp_path / "r.json"),
                           timeout=60)
    assert proc.returncode == 2
    assert "refused before launch" in proc.stderr and "4 processes but 2 were launched" in proc.stderr
    assert "torch.distributed.run" not in proc.stdout and not (tmp_path / "r.json").exists()
    bad_model = save_plan(tmp_path, "tp8.json", tp=8)
    proc, _ = launch("--nproc", "8", str(bad_model), "--steps", "1", timeout=60)
    assert proc.returncode == 2 and "must divide the attention heads" in proc.stderr


def test_workers_refuse_a_mismatched_plan_before_joining_a_process_group(tmp_path):
    plan = save_plan(tmp_path, tp=2, dp=2, micro_batch=4)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                           "-m", "executor", str(plan), "--steps", "1"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "plan refused" in proc.stderr and "4 processes but 2 were launched" in proc.stderr


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> tuple[Path, bytes]:
    """A plan and the report of a successful run of it."""
    root = tmp_path_factory.mktemp("earlier")
    plan = save_plan(root, dp=2, micro_batch=4)
    ok, _ = launch("--nproc", "2", str(plan), "--steps", "1", "--warmup", "0", "--report", str(root / "run.json"))
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    return plan, (root / "run.json").read_bytes()


@pytest.mark.parametrize("kind, expect", [
    ("raise", "rank 1 failed (exit code 1): RuntimeError: injected fault on rank 1 at step 1"),
    ("oom", "OutOfMemoryError: injected out-of-memory on rank 1 at step 1"),
    ("kill", "rank 1 died: killed by SIGKILL"),
    ("hang", "rank "),
])
def test_a_failing_rank_stops_every_rank_and_is_named(tmp_path, earlier_run, kind, expect):
    plan, before = earlier_run
    report = tmp_path / "run.json"
    report.write_bytes(before)
    args = ["--nproc", "2", str(plan), "--steps", "3", "--warmup", "0", "--report", str(report),
            "--inject-fault", f"{kind}:1:1"]
    if kind == "hang":
        args += ["--pg-timeout-s", "10"]
    proc, elapsed = launch(*args, timeout=FAULT_DEADLINE_S + 60)
    assert proc.returncode != 0
    assert elapsed < FAULT_DEADLINE_S, f"took {elapsed:.0f} s"
    assert expect in proc.stderr, proc.stderr[-3000:]
    if kind == "hang":  # the healthy rank gives up at the process-group timeout and is the one named
        assert "rank 0 failed" in proc.stderr
    assert report.read_bytes() == before  # the earlier report is intact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.json")] == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cuda_graphs_needs_compile_and_selects_the_reduce_overhead_mode(monkeypatch, capsys):
    from executor.run import _cuda_graphs, parse_args

    monkeypatch.setenv("PARPLAN_COMPILE_MODE", "")  # recorded, so the value parse_args sets is undone
    with pytest.raises(SystemExit) as exc:
        parse_args(["plan.json", "--cuda-graphs"])
    assert exc.value.code == 2 and "add --compile" in capsys.readouterr().err
    assert not _cuda_graphs()
    args = parse_args(["plan.json", "--compile", "model", "--cuda-graphs"])
    assert args.compile == "model" and _cuda_graphs()
