"""Tensor parallelism on local shards, in one process: the fused projections split into whole KV groups
and matching gate/up rows at every TP degree, and one TP micro-batch runs Megatron's collectives (one
all-reduce, or all-gather + reduce-scatter with sequence parallelism, around attention and around the
MLP, the same in backward) and dispatches no operation through DTensor. Collective counts come from
torch's "fake" process-group backend (collectives return at once; nothing is sent)."""
from __future__ import annotations

import copy
import os
import sys
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from costmodel.strategy import Strategy  # noqa: E402
from costmodel.workload import Training  # noqa: E402
from hardware_profiles.topology import Cluster  # noqa: E402
from planner.plan import Plan  # noqa: E402

from executor.check import validate  # noqa: E402
from executor.model import build_model, local  # noqa: E402
from executor.parallelize import DTensor, build_meshes, build_parts, move_leaf_grads  # noqa: E402
from executor.run import cross_entropy  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "executor_helpers"))
from cases import tiny_models  # noqa: E402

MODELS = tiny_models()


def _with_weight(module: nn.Module, **weights: torch.Tensor) -> nn.Module:
    out = copy.deepcopy(module)
    for path, value in weights.items():
        owner, name = path.rsplit("_", 1)
        getattr(out, owner).register_parameter(name, nn.Parameter(value.detach().clone()))
    return out


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_contiguous_row_shards_of_the_fused_projections_compute_whole_heads_and_gate_up_pairs(tp):
    spec = MODELS["dense"]  # 8 query heads in 4 KV groups; SwiGLU width 64
    block = build_model(spec, seed=4).layers["1"]
    x = torch.randn(2, 16, spec.hidden, generator=torch.Generator().manual_seed(0))
    attn, mlp = block.attn, block.ffn
    with torch.no_grad():
        # a rank holds rows r of wqkv / w13 and the matching columns of wo / w2: the sum over ranks is the layer
        attn_sum = sum(_with_weight(attn, wqkv_weight=attn.wqkv.weight.chunk(tp)[r],
                                    wo_weight=attn.wo.weight.chunk(tp, dim=1)[r])(x) for r in range(tp))
        mlp_sum = sum(_with_weight(mlp, w13_weight=mlp.w13.weight.chunk(tp)[r],
                                   w2_weight=mlp.w2.weight.chunk(tp, dim=1)[r])(x) for r in range(tp))
        torch.testing.assert_close(attn_sum, attn(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mlp_sum, mlp(x), rtol=1e-5, atol=1e-6)
    assert _with_weight(attn, wqkv_weight=attn.wqkv.weight.chunk(tp)[0]).local_kv_heads() == 4 // tp


class _Ops(TorchDispatchMode):
    """Counts collectives, and records every operation that reached DTensor."""

    def __init__(self):
        super().__init__()
        self.collectives: Counter = Counter()
        self.dtensor_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func.namespace in ("_c10d_functional", "c10d") and name != "wait_tensor" and not name.startswith("_wrap"):
            self.collectives[name] += 1
        if any(issubclass(t, DTensor) for t in types):
            self.dtensor_ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def fake_group():
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    yield
    dist.destroy_process_group()


def _one_micro_batch(sp: bool, recompute: str = "none") -> tuple[_Ops, _Ops, int]:
    spec = MODELS["dense"]
    plan = Plan(model=spec, cluster=Cluster.parse("1x2xH100"), workload=Training(global_batch=2, seq_len=16,
                                                                                  dtype="fp32"),
                strategy=Strategy(tp=2, micro_batch=1, sequence_parallel=sp, recompute=recompute))
    shape = validate(plan, 2)
    meshes = build_meshes(shape, "cpu")
    part = build_parts(spec, shape, meshes, seed=0, device=torch.device("cpu"), compute_dtype=torch.float32)[0]
    model = part.module
    tokens = torch.randint(0, spec.vocab, (1, 17), generator=torch.Generator().manual_seed(0))
    forward, backward = _Ops(), _Ops()
    with forward:
        loss = cross_entropy(model(tokens[:, :-1]), tokens[:, 1:])
    with backward:
        loss.backward()
    sharded = sum(isinstance(p, DTensor) for p in model.parameters())
    # gradients accumulate in plain leaves aliasing the shards; DTensor parameters get them once per step
    assert len(part.leaves) == sharded > 0
    assert all(p.grad is None and leaf.grad is not None for p, leaf in part.leaves)
    move_leaf_grads(part.leaves)
    assert all(isinstance(p.grad, DTensor) == isinstance(p, DTensor) and p.grad is not None
               for p in model.parameters())
    assert all(p.grad.placements == p.placements for p in model.parameters() if isinstance(p, DTensor))
    return forward, backward, sharded


@pytest.mark.parametrize("recompute", ["none", "selective"])
def test_a_tensor_parallel_micro_batch_runs_megatrons_collectives_and_no_dtensor_op(fake_group, recompute):
    blocks = MODELS["dense"].num_layers
    forward, backward, sharded = _one_micro_batch(sp=False, recompute=recompute)
    # forward: attention and MLP outputs, the vocab-parallel embedding; the logits gathered once
    assert forward.collectives == {"all_reduce": 2 * blocks + 1, "all_gather_into_tensor": 1}
    # backward: the inputs of qkv and gate/up, and of the head (selective recompute replays none)
    assert backward.collectives == {"all_reduce": 2 * blocks + 1}
    # no DTensor operation at all: compute and gradients run on plain leaves
    assert forward.dtensor_ops == [] and backward.dtensor_ops == []


def test_sequence_parallel_swaps_each_all_reduce_for_a_reduce_scatter_and_an_all_gather(fake_group):
    blocks = MODELS["dense"].num_layers
    forward, backward, sharded = _one_micro_batch(sp=True)
    # forward: gather before qkv, gate/up and the head (+ the logits); scatter after out, down, embedding
    assert forward.collectives == {"all_gather_into_tensor": 2 * blocks + 2, "reduce_scatter_tensor": 2 * blocks + 1}
    assert backward.collectives == {"all_gather_into_tensor": 2 * blocks + 1, "reduce_scatter_tensor": 2 * blocks + 1}
    assert forward.dtensor_ops == [] and backward.dtensor_ops == []


class _Casts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ == "_to_copy"
        return func(*args, **(kwargs or {}))


def _tp_block():
    spec = MODELS["dense"]
    plan = Plan(model=spec, cluster=Cluster.parse("1x2xH100"), workload=Training(global_batch=2, seq_len=16,
                                                                                  dtype="fp32"),
                strategy=Strategy(tp=2, micro_batch=1))
    shape = validate(plan, 2)
    part = build_parts(spec, shape, build_meshes(shape, "cpu"), seed=0, device=torch.device("cpu"),
                       compute_dtype=torch.float32)[0]
    block = part.module.layers["1"]
    block.leaves = [(p, leaf) for p, leaf in part.leaves if any(p is q for q in block.parameters())]
    return block, spec.hidden


def _accumulate(block, xs, casts=None):
    for p in block.parameters():
        p.grad = None
    for _, leaf in block.leaves:
        leaf.grad = None
    outs = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for i, x in enumerate(xs):
            with casts if (casts is not None and i == len(xs) - 1) else _Nothing():
                y = block(x)
            y.float().sum().backward()
            outs.append(y.detach().float())
    move_leaf_grads(block.leaves)
    return outs, [p.grad.to_local().clone() if isinstance(p.grad, DTensor) else p.grad.clone()
                  for p in block.parameters()]


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_autocast_casts_each_tp_weight_once_per_optimizer_step_with_the_same_gradients(fake_group, monkeypatch):
    import executor.parallelize as par

    block, hidden = _tp_block()
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(1, 16, hidden, generator=gen) for _ in range(3)]
    cached_casts, uncached_casts = _Casts(), _Casts()
    out_a, grads_a = _accumulate(block, xs, cached_casts)
    with monkeypatch.context() as m:  # what autocast alone does: cast the local shard at every use
        m.setattr(par.TPLinear, "_local_weight", lambda self, x: local(self.weight))
        out_b, grads_b = _accumulate(block, xs, uncached_casts)
    linears = sum(isinstance(mod, par.TPLinear) for mod in block.modules())
    assert linears == 4 and uncached_casts.count - cached_casts.count == linears  # third micro-batch: no weight casts
    for a, b in zip(out_a + grads_a, out_b + grads_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # an optimizer step updates the shards in place (foreach and fused kernels bump no version counter, so
    # only the step hook can tell): the next micro-batch sees the new weights
    for kw in ({"foreach": True}, {"fused": True}):
        before, _ = _accumulate(block, xs[:1])
        groups = [[p for p in block.parameters() if isinstance(p, DTensor) == d] for d in (True, False)]
        par.track_weight_updates(torch.optim.AdamW([{"params": g} for g in groups], lr=0.05, **kw), [block]).step()
        after, _ = _accumulate(block, xs[:1])
        with monkeypatch.context() as m:
            m.setattr(par.TPLinear, "_local_weight", lambda self, x: local(self.weight))
            fresh, _ = _accumulate(block, xs[:1])
        torch.testing.assert_close(after[0], fresh[0], rtol=0, atol=0)
        assert not torch.equal(after[0], before[0]), kw
    out_c, _ = _accumulate(block, xs[:1])
    with monkeypatch.context() as m:
        m.setattr(par.TPLinear, "_local_weight", lambda self, x: local(self.weight))
        out_d, _ = _accumulate(block, xs[:1])
    torch.testing.assert_close(out_c[0], out_d[0], rtol=0, atol=0)
    assert not torch.equal(out_c[0], out_a[0])
