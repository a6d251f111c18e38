"""Every layout of world size 2, 4 and 8 for a tiny dense (Llama-style), GPT-2-style and MoE model:
after 3 AdamW steps from one seed, losses, first-step gradients and parameters match a single-process
run within 1e-5 relative (fp32); greedy tokens match exactly.

One torchrun launch per world size runs all its layouts in sequence inside one process group (new
meshes per layout, released after it) and compares each with a reference computed in the same
processes (tests/executor_helpers/layouts.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

HELPERS = Path(__file__).resolve().parent / "executor_helpers"
REPO = HELPERS.parent.parent
sys.path.insert(0, str(HELPERS))
from cases import cases_for, write_cases  # noqa: E402

TOLERANCE = 1e-5


def test_the_layout_list_covers_every_dimension():
    cases = [c for w in (2, 4, 8) for c in cases_for(w)]
    st = [dict({"tp": 1, "pp": 1, "dp": 1}, **c["strategy"]) for c in cases if c["workload"]["kind"] == "training"]
    assert {(s["tp"], s["pp"], s["dp"]) for s in st} >= {(2, 2, 2), (1, 8, 1), (4, 1, 2), (1, 1, 8), (2, 1, 1)}
    assert {s.get("schedule", "1f1b") for s in st if s["pp"] > 1} == {"gpipe", "1f1b", "interleaved"}
    assert {s.get("zero") for s in st if s["dp"] > 1} >= {0, 1, 3}
    assert any(s.get("sequence_parallel") for s in st) and any(s["tp"] > 1 and not s.get("sequence_parallel")
                                                               for s in st)
    assert {(s.get("ep", 1) > 1, s.get("ep_mode", "dp")) for s in st} >= {(True, "dp"), (True, "tp")}
    assert {s.get("recompute", "none") for s in st} == {"none", "full", "selective"}
    assert any(s.get("stages") for s in st)  # uneven cut points given by the plan
    assert any(c.get("compile") and c["strategy"].get("tp", 1) > 1 for c in cases)
    assert {c["model"] for c in cases if c["workload"]["kind"] == "inference"} == {"dense", "moe", "gpt2"}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("world", [2, 4, 8])
def test_every_layout_matches_the_single_process_run(world, tmp_path):
    cases_path, out_path = tmp_path / "cases.json", tmp_path / "results.json"
    write_cases(world, str(cases_path))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(world), str(HELPERS / "layouts.py"), str(cases_path), str(out_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out_path.read_text())
    expected = [c["id"] for c in json.loads(cases_path.read_text())["cases"]]
    assert [r["id"] for r in results] == expected
    bad = []
    for r in results:
        if "error" in r:
            bad.append(f"{r['id']}: {r['error']}")
        elif "tokens_equal" in r:
            if not r["tokens_equal"]:
                bad.append(f"{r['id']}: greedy tokens differ")
        else:
            for key in ("loss_rel", "grad_rel", "param_rel"):
                if not r[key] <= TOLERANCE:
                    bad.append(f"{r['id']}: {key} {r[key]:.2e} ({r.get(key.replace('_rel', '_worst'), '')})")
    assert not bad, "\n".join(bad)
    # the comparison is not vacuous: training moved the loss and something was compared
    training = [r for r in results if "loss_rel" in r]
    assert training and all(r["losses"][0] != r["losses"][-1] for r in training)
