"""One training step's precision plumbing in a single process: weights cast once per step
(`cast_weights`) and backward through compiled autograd, both against the plain eager step."""
from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "executor_helpers"))

import costmodel as cm  # noqa: E402
from cases import tiny_models  # noqa: E402
from executor.check import validate  # noqa: E402
from executor.model import Linear  # noqa: E402
from executor.parallelize import cast_weights, drop_weight_casts  # noqa: E402
from executor.run import Trainer, setup  # noqa: E402
from hardware_profiles import Cluster  # noqa: E402
from planner.plan import Plan  # noqa: E402


@pytest.fixture
def one_process():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _plan(micro_batch: int = 2) -> Plan:
    return Plan.from_strategy(tiny_models()["dense"], Cluster.parse("1x1xH100"), cm.Strategy(micro_batch=micro_batch),
                              cm.Training(global_batch=4, seq_len=16, dtype="bf16"))


def _session(compile_backend: bool | str = False, bf16: bool = True):
    plan = _plan()
    s = setup(plan, seed=0, device="cpu", shape=validate(plan, 1), compile_blocks=compile_backend,
              compile_scope="model")
    if bf16:  # CPU runs fp32 by default; autocast to bf16 as on a GPU
        s.compute_dtype, s.autocast = torch.bfloat16, True
    return s


def _grads(session) -> list[torch.Tensor]:
    return [p.grad.clone() for p in session.parts[0].module.parameters()]


def test_step_casts_give_the_eager_autocast_step_exactly(one_process, monkeypatch):
    results = []
    for casts in ("1", "0"):
        monkeypatch.setenv("PARPLAN_STEP_CASTS", casts)
        s = _session()
        trainer = Trainer(s)
        assert trainer.casts_weights == (casts == "1")
        loss, _ = trainer.step(0)
        results.append((loss, _grads(s)))
        # the copies live for one step only: none left for the next step or an evaluation
        assert all(m._weight_cast is None for m in s.parts[0].module.modules() if isinstance(m, Linear))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == loss_b
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cast_copies_feed_every_linear_and_accumulate_fp32_gradients(one_process):
    s = _session(bf16=False)
    model = s.parts[0].module
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    cast_weights([model], torch.bfloat16)
    assert linears and all(m._weight_cast.dtype == torch.bfloat16 and m._weight_cast.grad_fn is not None
                           for m in linears)
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):  # two micro-batches through the same copies: both gradients reach the fp32 weights
            model(tokens).float().pow(2).mean().backward()
    twice = [m.weight.grad.clone() for m in linears]
    drop_weight_casts([model])
    assert all(m._weight_cast is None for m in linears)
    for m in linears:
        m.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(tokens).float().pow(2).mean().backward()
    for m, g in zip(linears, twice):
        assert m.weight.grad.dtype == torch.float32
        torch.testing.assert_close(g, 2 * m.weight.grad, rtol=1e-6, atol=0)


def test_compiled_backward_matches_the_eager_step(one_process, monkeypatch):
    monkeypatch.delenv("PARPLAN_COMPILED_AUTOGRAD", raising=False)
    eager = _session(bf16=False)
    compiled = _session("aot_eager", bf16=False)
    t_eager, t_compiled = Trainer(eager), Trainer(compiled)
    assert t_compiled.compiled_backward and not t_eager.compiled_backward
    for step in range(2):
        la, _ = t_eager.step(step)
        lb, _ = t_compiled.step(step)
        assert lb == pytest.approx(la, rel=1e-6)
    for a, b in zip(_grads(eager), _grads(compiled)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    monkeypatch.setenv("PARPLAN_COMPILED_AUTOGRAD", "0")
    assert not Trainer(compiled).compiled_backward
