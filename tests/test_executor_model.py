"""Executor pieces that run in one process: the reference transformer, plan checks, the fake-backend
dry run, reports and the launcher's failure parsing."""
from __future__ import annotations

import json
import os
import sys

import pytest

torch = pytest.importorskip("torch")

from costmodel.model import ModelSpec  # noqa: E402
from costmodel.strategy import Strategy  # noqa: E402
from costmodel.workload import Inference, Training  # noqa: E402
from hardware_profiles.errors import ParplanError  # noqa: E402
from hardware_profiles.topology import Cluster  # noqa: E402
from planner.plan import Plan  # noqa: E402

from executor.check import chunk_ranges, dry_run, validate  # noqa: E402
from executor.errors import PlanMismatchError, UnsupportedPlanError  # noqa: E402
from executor.launch import Failure, parse_failures  # noqa: E402
from executor.model import build_model, init_weights, Transformer  # noqa: E402
from executor.reference import generate_reference  # noqa: E402
from executor.run import Fault, model_flops, write_report  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "executor_helpers"))
from cases import tiny_models  # noqa: E402

MODELS = tiny_models()
TRAIN = Training(global_batch=8, seq_len=16, dtype="fp32")


def plan_for(model: str = "dense", workload=TRAIN, **strategy) -> Plan:
    return Plan(model=MODELS[model], cluster=Cluster.parse("1x8xH100"), workload=workload,
                strategy=Strategy(**strategy), prediction={"time_s": 0.5})


# -- the reference transformer ------------------------------------------------------------
@pytest.mark.parametrize("name", ["dense", "moe"])
def test_parameter_count_matches_the_model_description(name):
    spec = MODELS[name]
    model = build_model(spec, seed=0, device="meta")
    assert sum(p.numel() for p in model.parameters()) == spec.num_params


def test_gpt2_style_model_has_learned_positions_biases_and_a_tied_head():
    model = build_model(MODELS["gpt2"], seed=3)
    emb, head = model.layers["0"], model.layers[str(len(MODELS["gpt2"].layers) - 1)]
    assert emb.pos.weight.shape == (16, 32)
    assert model.layers["1"].attn.wqkv.bias is not None
    assert isinstance(model.layers["1"].attn_norm, torch.nn.LayerNorm)
    assert torch.equal(head.proj.weight, emb.tok.weight)  # tied copies start equal


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (build_model(MODELS["moe"], seed=s) for s in (1, 1, 2))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["layers.2.ffn.experts.w1"], sc["layers.2.ffn.experts.w1"])


def test_a_pipeline_chunk_gets_the_full_models_weights_and_chains_to_the_same_output():
    spec = MODELS["dense"]
    full = build_model(spec, seed=5)
    tokens = torch.randint(0, spec.vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    chunks = []
    for lo, hi in [(0, 3), (3, 8)]:
        with torch.device("meta"):
            m = Transformer(spec)
        for key in list(m.layers.keys()):
            if not lo <= int(key) < hi:
                del m.layers[key]
        m = m.to_empty(device="cpu")
        init_weights(m, 5)
        chunks.append(m)
    for name, p in chunks[1].named_parameters():
        assert torch.equal(p, dict(full.named_parameters())[name])
    with torch.no_grad():
        torch.testing.assert_close(chunks[1](chunks[0](tokens)), full(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["dense", "gpt2", "moe"])
def test_kv_cache_decoding_matches_recomputing_the_sequence(name):
    spec = MODELS[name]
    model = build_model(spec, seed=0)
    prompt = torch.randint(0, spec.vocab, (3, 5), generator=torch.Generator().manual_seed(1))
    want = generate_reference(spec, prompt, 6, seed=0)
    caches = model.new_caches(3, 11, torch.float32, torch.device("cpu"))
    got, cur, pos = [], prompt, 0
    with torch.no_grad():
        for _ in range(6):
            nxt = model(cur, start_pos=pos, caches=caches)[:, -1].argmax(-1)
            pos += cur.shape[1]
            got.append(nxt)
            cur = nxt[:, None]
    assert torch.equal(torch.stack(got, 1), want)


def test_unsupported_model_layout_is_refused():
    spec = MODELS["dense"]
    odd = ModelSpec(name="no-head", layers=spec.layers[:-1], seq_len=16)
    with pytest.raises(UnsupportedPlanError, match="embedding, blocks, head"):
        build_model(odd)


# -- checks before launch --------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, world, match", [
    (dict(tp=2, dp=2), 8, "needs tp x pp x dp = 2 x 1 x 2 = 4 processes but 8"),
    (dict(tp=8), 8, "must divide the attention heads"),
    (dict(dp=8, micro_batch=2), 8, "not divisible by micro_batch"),
    (dict(pp=4, micro_batch=4), 4, "1F1B schedule needs at least pp=4 micro-batches"),
    (dict(pp=2, stages=(0, 3, 7)), 2, "last cut point must be 8"),
    (dict(ep=2, dp=2), 2, "has no experts"),
    (dict(tp=2, sequence_parallel=True), 2, None),
])
def test_validate_refuses_plans_that_cannot_run(kwargs, world, match):
    plan = plan_for(**kwargs)
    if match is None:
        assert validate(plan, world).tp == 2
        return
    with pytest.raises(PlanMismatchError, match=match) as info:
        validate(plan, world)
    assert isinstance(info.value, ParplanError)


def test_validate_knows_moe_and_position_limits():
    with pytest.raises(PlanMismatchError, match="must divide the 8 experts"):
        validate(plan_for("moe", ep=3, dp=3, workload=Training(global_batch=9, seq_len=16, dtype="fp32")), 3)
    long = Inference(prompt_tokens=12, output_tokens=8, batch=2, dtype="fp32")
    with pytest.raises(PlanMismatchError, match="learned positions for 16 tokens"):
        validate(plan_for("gpt2", workload=long), 1)
    assert validate(plan_for("dense", workload=long), 1).max_positions >= 20


def test_stage_cut_points_even_split_and_interleaving():
    spec = MODELS["dense"]  # 8 entries: embedding, 6 blocks, head
    assert chunk_ranges(spec, 2, 1, None) == ((0, 4), (4, 8))
    assert chunk_ranges(spec, 2, 1, (0, 2, 8)) == ((0, 2), (2, 8))
    # interleaved: rank 0 holds 2 entries, rank 1 holds 6, each split into 2 chunks, laid out in model order
    chunks = chunk_ranges(spec, 2, 2, (0, 2, 8))
    assert chunks == ((0, 1), (1, 4), (4, 5), (5, 8))
    per_rank = [sum(b - a for s, (a, b) in enumerate(chunks) if s % 2 == r) for r in range(2)]
    assert per_rank == [2, 6]
    with pytest.raises(PlanMismatchError, match="at least 2 layer entries per pipeline rank"):
        chunk_ranges(spec, 2, 2, (0, 1, 8))


def test_dry_run_with_the_fake_backend_reports_per_rank_shards():
    spec = MODELS["dense"]
    total = spec.num_params
    tp = dry_run(plan_for(tp=2), 2)
    assert [r.rank for r in tp] == [0, 1]
    # per rank: 2 of the 4 KV groups, each 2 query + 1 key + 1 value head of 8; half the gate/up rows
    assert tp[0].shapes["layers.1.attn.wqkv.weight"] == (64, 32)
    assert tp[0].shapes["layers.1.ffn.w13.weight"] == (64, 32)
    assert total / 2 < tp[0].param_numel < total  # norms are replicated
    pp = dry_run(plan_for(pp=2, micro_batch=4), 2)
    assert pp[0].param_numel + pp[1].param_numel == total
    assert pp[0].stages == (0,) and pp[1].stages == (1,)
    zero3 = dry_run(plan_for(dp=2, zero=3, micro_batch=4), 2, ranks=[1])
    assert zero3[0].param_numel == pytest.approx(total / 2, rel=0.01)
    moe = dry_run(plan_for("moe", dp=4, ep=4, micro_batch=2), 4, ranks=[0])
    assert moe[0].shapes["layers.2.ffn.experts.w1"] == (2, 32, 32)  # 8 experts / ep 4; 4 replicas / ep 4 = 1


def test_dry_run_refuses_a_mismatched_plan_without_starting_a_group():
    import torch.distributed as dist

    with pytest.raises(PlanMismatchError):
        dry_run(plan_for(tp=2), 4)
    assert not dist.is_initialized()


# -- reports, flops, faults, launcher output -------------------------------------------------
def test_report_is_written_atomically(tmp_path):
    path = tmp_path / "sub" / "run.json"
    write_report(path, {"step_time_s": 1.0, "predicted_step_time_s": 2.0})
    assert json.loads(path.read_text())["step_time_s"] == 1.0
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]


def test_model_flops_follow_six_n_t_plus_attention():
    plan = plan_for()
    shape = validate(plan, 1)
    spec = MODELS["dense"]
    tokens = 8 * 16
    flops = model_flops(plan, shape)
    non_embedding = spec.num_params - spec.vocab * spec.hidden
    assert 6 * non_embedding * tokens < flops < 6 * non_embedding * tokens * 1.5


def test_fault_spec_parsing_and_firing(monkeypatch):
    assert Fault.parse("kill:1:2") == Fault("kill", 1, 2)
    with pytest.raises(UnsupportedPlanError):
        Fault.parse("explode:1:2")
    monkeypatch.setenv("RANK", "1")
    Fault.parse("oom:1:2").maybe_fire(1)  # not this step
    Fault.parse("oom:0:2").maybe_fire(2)  # not this rank
    with pytest.raises(torch.OutOfMemoryError, match="injected out-of-memory on rank 1"):
        Fault.parse("oom:1:2").maybe_fire(2)


TORCHRUN_TAIL = """
============================================================
executor FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-01-01_00:00:00
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 11)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 11
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-01-01_00:00:00
  host      : localhost
  rank      : 3 (local_rank: 1)
  exitcode  : 1 (pid: 12)
  error_file: /tmp/x/error.json
  traceback : Traceback (most recent call last):
    File "x.py", line 1, in <module>
  RuntimeError: injected fault on rank 3 at step 1

============================================================
"""


def test_launcher_names_the_failing_rank_from_torchruns_summary():
    failures = parse_failures(TORCHRUN_TAIL)
    assert failures[0] == Failure(3, 1, "RuntimeError: injected fault on rank 3 at step 1")
    assert "rank 3 failed (exit code 1): RuntimeError" in failures[0].describe()
    killed = parse_failures(TORCHRUN_TAIL.replace("exitcode  : 1 (pid: 12)", "exitcode  : -9 (pid: 12)"))
    assert killed[0].describe() == "rank 3 died: killed by SIGKILL"


def test_check_command_line_accepts_and_refuses(tmp_path, capsys):
    from executor.check import main

    path = plan_for(pp=2, micro_batch=4).save(tmp_path / "plan.json")
    assert main([str(path), "--world-size", "2", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and len(out["param_bytes_per_rank"]) == 2
    assert main([str(path), "--world-size", "3"]) == 2
    assert "needs tp x pp x dp = 1 x 2 x 1 = 2 processes but 3" in capsys.readouterr().err
