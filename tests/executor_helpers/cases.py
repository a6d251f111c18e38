"""Tiny models and the layouts the correctness tests run (also usable by hand:
`python tests/executor_helpers/cases.py W out.json` writes the cases for world size W)."""
from __future__ import annotations

import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from costmodel.model import ModelSpec  # noqa: E402

# Adam's eps=1e-8 turns float32 rounding of near-zero gradients into O(lr) update differences
# (splitting the batch in two inside one process already moves parameters by 2e-5 relative);
# with eps=1e-6 the float32 floor is ~5e-7, well inside the 1e-5 tolerance.
OPTIM = {"lr": 1e-3, "eps": 1e-6}


def tiny_models() -> dict[str, ModelSpec]:
    return {
        # Llama style: RMSNorm, RoPE, grouped-query attention (8 heads, 4 KV heads), SwiGLU
        "dense": ModelSpec.decoder("tiny-dense", num_layers=6, hidden=32, num_heads=8, num_kv_heads=4, head_dim=8,
                                   ffn_hidden=64, vocab=64, seq_len=16),
        # GPT-2 style: LayerNorm, learned positions, GELU, biases, tied embeddings
        "gpt2": ModelSpec.decoder("tiny-gpt2", num_layers=4, hidden=32, num_heads=4, ffn_hidden=64, vocab=64,
                                  seq_len=16, norm="layernorm", activation="gelu", gated_mlp=False, bias=True,
                                  position="learned", tie_embeddings=True),
        # MoE: 8 experts top-2 with a shared expert, first block dense
        "moe": ModelSpec.decoder("tiny-moe", num_layers=4, hidden=32, num_heads=4, num_kv_heads=4, ffn_hidden=64,
                                 vocab=64, seq_len=16, num_experts=8, top_k=2, expert_ffn_hidden=32, shared_experts=1,
                                 first_dense_layers=1),
    }


TRAIN = {"kind": "training", "global_batch": 8, "seq_len": 16, "dtype": "fp32"}
INFER = {"kind": "inference", "prompt_tokens": 6, "output_tokens": 4, "batch": 4, "dtype": "fp32"}


GPT2_AT_8 = {(2, 2, 2), (4, 2, 1), (1, 4, 2), (2, 1, 4)}  # tied embeddings across stages, with TP and DP


def factorizations(world: int, max_tp: int = 4) -> list[tuple[int, int, int]]:
    out = []
    for tp in range(1, max_tp + 1):
        for pp in range(1, world + 1):
            if world % (tp * pp) == 0:
                out.append((tp, pp, world // (tp * pp)))
    return out


def cases_for(world: int) -> list[dict]:
    """Every (tp, pp, dp) factorization that can run for each model, with schedules, ZeRO, sequence
    parallel, recompute, micro-batching and expert parallelism rotated so that each option meets each
    degree. At 8 ranks (slow on a 2-core machine) the MoE model gets one expert-parallel convention per
    factorization (alternating), one micro-batch per step without pipelining, and the GPT-2 model
    and inference the multi-dimensional layouts only."""
    cases: list[dict] = []
    schedules = itertools.cycle(["1f1b", "gpipe", "interleaved"])
    zeros = itertools.cycle([3, 0, 1])
    recomputes = itertools.cycle(["none", "full", "none", "selective"])
    sp_flip = itertools.cycle([True, False])
    ep_turn = itertools.cycle([0, -1])
    big = world > 4
    for model in ("dense", "moe", "gpt2"):
        for tp, pp, dp in factorizations(world):
            if model == "gpt2" and big and (tp, pp, dp) not in GPT2_AT_8:
                continue
            st: dict = {"tp": tp, "pp": pp, "dp": dp}
            per_replica = TRAIN["global_batch"] // dp
            if pp > 1:
                st["micro_batch"] = max(1, per_replica // pp)
                sched = next(schedules)
                st.update(schedule=sched, virtual_stages=2 if sched == "interleaved" else 1)
                if not _runs(model, st, TRAIN, world):
                    st.update(schedule="1f1b", virtual_stages=1)
            else:
                st["micro_batch"] = per_replica if per_replica < 4 or big else per_replica // 2
            if dp > 1:
                st["zero"] = next(zeros)
            if tp > 1:
                st["sequence_parallel"] = next(sp_flip)
            st["recompute"] = next(recomputes)
            options = _ep_options(tp, dp) if model == "moe" else [(1, "dp")]
            if big and len(options) > 1:
                options = [options[next(ep_turn)]]
            for ep, mode in options:
                strategy = dict(st, ep=ep, ep_mode=mode) if model == "moe" else st
                if _runs(model, strategy, TRAIN, world):
                    cases.append(_case(model, strategy, TRAIN))
    if world == 2:  # uneven stage cut points from the plan, plain and interleaved
        for extra in ({}, {"schedule": "interleaved", "virtual_stages": 2}):
            st = dict({"pp": 2, "micro_batch": 2, "stages": [0, 3, 8]}, **extra)
            cases.append(dict(_case("dense", st, TRAIN), id=f"train-dense-pp2-stages038-{st.get('schedule', '1f1b')}"))
        # compiled blocks around the tensor-parallel collectives (aot_eager: the graph capture and autograd
        # of the collectives, without compiling C++ kernels on a CPU test machine)
        for model in ("dense", "gpt2"):
            st = {"tp": 2, "micro_batch": 2, "sequence_parallel": True, "recompute": "selective"}
            cases.append(dict(_case(model, st, TRAIN), id=f"train-{model}-tp2-sp-selective-compiled",
                              compile="aot_eager"))
        # each pipeline chunk compiled whole (one graph over embedding, blocks and head; with the loss when
        # the chunk is the whole model)
        for model, st in (("dense", {"tp": 2, "micro_batch": 2}), ("dense", {"pp": 2, "micro_batch": 2}),
                          ("dense", {"tp": 2, "micro_batch": 1, "sequence_parallel": True}),
                          ("gpt2", {"tp": 2, "micro_batch": 2})):
            label = "-".join(f"{k}{v}" for k, v in (("tp", st.get("tp", 1)), ("pp", st.get("pp", 1))) if v > 1)
            label += "-sp" if st.get("sequence_parallel") else ""
            cases.append(dict(_case(model, st, TRAIN), id=f"train-{model}-{label}-model-compiled",
                              compile="aot_eager", compile_scope="model"))
    # inference: greedy tokens must match exactly
    for model in ("dense", "moe", "gpt2"):
        for tp, pp, dp in factorizations(world):
            if big and (model == "gpt2" or sorted((tp, pp, dp)).count(1) > 1):
                continue
            st = {"tp": tp, "pp": pp, "dp": dp}
            if model == "moe":
                ep, mode = _ep_options(tp, dp)[-1]
                st.update(ep=ep, ep_mode=mode)
            if _runs(model, st, INFER, world):
                cases.append(_case(model, st, INFER))
    return cases


def _runs(model: str, strategy: dict, workload: dict, world: int) -> bool:
    """Whether the executor accepts the layout (what a planner could emit for this model)."""
    from costmodel.strategy import Strategy
    from costmodel.workload import workload_from_dict
    from hardware_profiles.errors import ParplanError
    from hardware_profiles.topology import Cluster
    from planner.plan import Plan

    from executor.check import validate

    try:
        plan = Plan(model=tiny_models()[model], cluster=Cluster.parse(f"1x{world}xH100"),
                    workload=workload_from_dict(workload), strategy=Strategy.from_dict(strategy))
        validate(plan, world)
        return True
    except ParplanError:
        return False


def _ep_options(tp: int, dp: int) -> list[tuple[int, str]]:
    """Largest expert parallelism of each convention (plus none when neither applies)."""
    opts = []
    if dp > 1:
        opts.append((min(dp, 8), "dp"))
    if tp > 1:
        opts.append((tp, "tp"))
    return opts or [(1, "dp")]


def _case(model: str, strategy: dict, workload: dict) -> dict:
    bits = [f"{k}{v}" for k, v in strategy.items() if k in ("tp", "pp", "dp", "ep")]
    extra = [str(strategy[k]) for k in ("schedule", "ep_mode", "recompute") if k in strategy]
    if strategy.get("zero") is not None and strategy.get("dp", 1) > 1:
        extra.append(f"z{strategy['zero']}")
    if strategy.get("sequence_parallel"):
        extra.append("sp")
    return {"id": f"{workload['kind'][:5]}-{model}-{'x'.join(bits)}-{'-'.join(extra)}", "model": model,
            "strategy": strategy, "workload": workload}


def write_cases(world: int, path: str, cases: list[dict] | None = None) -> None:
    data = {"models": {k: v.to_dict() for k, v in tiny_models().items()}, "steps": 3, "seed": 0, "optim": OPTIM,
            "cases": cases if cases is not None else cases_for(world)}
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)


if __name__ == "__main__":
    write_cases(int(sys.argv[1]), sys.argv[2])
    print(len(cases_for(int(sys.argv[1]))), "cases")
