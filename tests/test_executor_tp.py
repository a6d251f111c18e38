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
from executor.model import build_model  # noqa: E402
from executor.parallelize import DTensor, build_meshes, build_parts  # noqa: E402
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
        if func.namespace in ("_c10d_functional", "c10d") and name != "wait_tensor":
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
    model = build_parts(spec, shape, meshes, seed=0, device=torch.device("cpu"),
                        compute_dtype=torch.float32)[0].module
    tokens = torch.randint(0, spec.vocab, (1, 17), generator=torch.Generator().manual_seed(0))
    forward, backward = _Ops(), _Ops()
    with forward:
        loss = cross_entropy(model(tokens[:, :-1]), tokens[:, 1:])
    with backward:
        loss.backward()
    assert all(isinstance(p.grad, DTensor) == isinstance(p, DTensor) and p.grad is not None
               for p in model.parameters())
    return forward, backward, sum(isinstance(p, DTensor) for p in model.parameters())


@pytest.mark.parametrize("recompute", ["none", "selective"])
def test_a_tensor_parallel_micro_batch_runs_megatrons_collectives_and_no_dtensor_op(fake_group, recompute):
    blocks = MODELS["dense"].num_layers
    forward, backward, sharded = _one_micro_batch(sp=False, recompute=recompute)
    # forward: attention and MLP outputs, the vocab-parallel embedding; the logits gathered once
    assert forward.collectives == {"all_reduce": 2 * blocks + 1, "all_gather_into_tensor": 1}
    # backward: the inputs of qkv and gate/up, and of the head (selective recompute replays none)
    assert backward.collectives == {"all_reduce": 2 * blocks + 1}
    # the only DTensor operation: autograd storing each sharded parameter's gradient
    assert forward.dtensor_ops == [] and backward.dtensor_ops == ["aten.detach.default"] * sharded


def test_sequence_parallel_swaps_each_all_reduce_for_a_reduce_scatter_and_an_all_gather(fake_group):
    blocks = MODELS["dense"].num_layers
    forward, backward, sharded = _one_micro_batch(sp=True)
    # forward: gather before qkv, gate/up and the head (+ the logits); scatter after out, down, embedding
    assert forward.collectives == {"all_gather_into_tensor": 2 * blocks + 2, "reduce_scatter_tensor": 2 * blocks + 1}
    assert backward.collectives == {"all_gather_into_tensor": 2 * blocks + 1, "reduce_scatter_tensor": 2 * blocks + 1}
    assert forward.dtensor_ops == [] and backward.dtensor_ops == ["aten.detach.default"] * sharded
