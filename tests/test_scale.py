"""Scale: the planner on 100,000-GPU clusters and 1,000-layer models finishes, or refuses clearly, in
bounded time and memory.

Each case runs in a fresh process (bench/scale.py's `run_child`) under an address-space limit of 4 GiB, so
"bounded memory" is enforced, not only measured: a case that needs more stops with a MemoryError and fails
here. The time limits are generous (minutes for work that takes seconds on an idle 2-core machine): these
tests assert behaviour, not speed; bench/scale.py prints the times.

The two pieces that once made cases run out of time or memory run on their own too, so a regression in
them shows where it is: `Cluster.first_gpus` over 100,000 GPUs (was O(removed GPUs x nodes)) and one stage
split of 1,002 uneven layers (was a 2 GB temporary per threshold batch and thousands of DPs).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from scale import run_child  # noqa: E402

pytestmark = pytest.mark.slow

MEMORY_GB = 4.0
GENEROUS_S = 900.0  # about 40x what the cases take on an idle machine


def _run(name: str, timeout_s: float = GENEROUS_S) -> dict:
    res = run_child(name, timeout_s, MEMORY_GB)
    if "peak_rss_mb" in res:
        assert res["peak_rss_mb"] < MEMORY_GB * 1024, res
    return res


def _assert_plan_fits(res: dict) -> None:
    assert "error" not in res, f"{res['case']}: {res.get('error')}: {res.get('message')}"
    assert res["fits"], res
    assert res["candidates"] > 0 and res["step_s"] > 0


def test_a_million_gpu_cluster_string_parses_in_bounded_memory():
    res = _run("cluster-parse-1M", timeout_s=300)
    assert "error" not in res, res
    assert res["gpus"] == 1_000_000


def test_405b_on_100k_gpus_returns_a_plan_that_fits():
    _assert_plan_fits(_run("405b-100k"))


def test_405b_on_98k_gpus_with_the_usual_batch_returns_a_plan_that_fits():
    _assert_plan_fits(_run("405b-98k"))


def test_405b_on_100k_gpus_refuses_a_batch_no_layout_divides_and_says_what_to_change():
    res = _run("405b-100k-batch2048", timeout_s=300)
    assert res.get("error") == "NoFeasiblePlanError", res
    msg = res["message"]
    assert "tp x pp x dp" in msg and "dividing the batch" in msg and "128" in msg, msg


def test_405b_inference_on_100k_gpus_returns_a_plan_that_fits():
    _assert_plan_fits(_run("405b-100k-infer"))


def test_1000_identical_layers_on_256_gpus_returns_a_plan_that_fits():
    _assert_plan_fits(_run("1000-layers-uniform-256"))


def test_1000_uneven_layers_on_256_gpus_returns_a_plan_that_fits():
    _assert_plan_fits(_run("1000-layers-moe-256"))


@pytest.mark.parametrize("piece", ["first-gpus-65536", "partition-8x1002"])
def test_the_pieces_large_cases_spend_their_time_in_finish(piece):
    res = _run(piece, timeout_s=300)
    assert "error" not in res, res
