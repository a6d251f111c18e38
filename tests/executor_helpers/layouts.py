"""Run many plans inside one process group and compare each with the single-process reference.

    torchrun --nproc-per-node W tests/executor_helpers/layouts.py cases.json results.json

cases.json: {"models": {key: ModelSpec.to_dict()}, "steps": 3, "seed": 0,
             "cases": [{"id": str, "model": key, "strategy": {...}, "workload": {...},
                        "compile": torch.compile backend of the blocks (optional)}]}
Every case must use all W ranks. Rank 0 computes the references (once per model and workload)
and writes one result per case: relative differences of losses, first-step gradients and final
parameters (training) or whether the greedy tokens are identical (inference).
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from costmodel.model import ModelSpec  # noqa: E402
from costmodel.strategy import Strategy  # noqa: E402
from costmodel.workload import Training, workload_from_dict  # noqa: E402
from hardware_profiles.topology import Cluster  # noqa: E402
from planner.plan import Plan  # noqa: E402

from executor.check import validate  # noqa: E402
from executor.parallelize import full_state  # noqa: E402
from executor.reference import generate_reference, train_reference  # noqa: E402
from executor.run import OptimConfig, generate, setup, synthetic_tokens, train  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def worst(got: dict, ref: dict, skip: set[str] = frozenset()) -> tuple[float, str]:
    missing = sorted(set(ref) ^ set(got))
    if missing:
        return float("inf"), f"names differ: {missing[:4]}"
    vals = [(rel(got[k], ref[k]), k) for k in ref if k not in skip]
    return max(vals)


def noise_driven(grads: dict) -> set[str]:
    """Parameters whose true gradient is zero (a key bias: softmax ignores a constant per query);
    their reference gradient is float32 rounding, which Adam turns into O(lr) steps in random
    directions, so their values are noise in every run and are not compared."""
    norms = {k: float(v.norm()) for k, v in grads.items()}
    typical = sorted(norms.values())[len(norms) // 2]
    return {k for k, n in norms.items() if n < 1e-5 * typical}


def main() -> None:
    cases_path, out_path = sys.argv[1], sys.argv[2]
    spec = json.load(open(cases_path))
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    models = {k: ModelSpec.from_dict(v) for k, v in spec["models"].items()}
    steps, seed = spec.get("steps", 3), spec.get("seed", 0)
    cfg = OptimConfig(**spec.get("optim", {}))
    refs: dict = {}
    results = []
    for case in spec["cases"]:
        t0 = time.perf_counter()
        model = models[case["model"]]
        wl = workload_from_dict(case["workload"])
        plan = Plan(model=model, cluster=Cluster.parse(f"1x{world}xH100"), workload=wl,
                    strategy=Strategy.from_dict(case["strategy"]), prediction={"time_s": 1.0})
        shape = validate(plan, world)
        key = (case["model"], json.dumps(case["workload"], sort_keys=True))
        res = {"id": case["id"]}
        try:
            session = setup(plan, seed=seed, device="cpu", shape=shape, reuse_meshes=True,
                            compile_blocks=case.get("compile", False), compile_scope=case.get("compile_scope", "blocks"))
            if isinstance(wl, Training):
                out = train(session, steps, cfg=cfg, capture_grads=True)
                params = full_state(session.parts, shape, session.meshes)
                if rank == 0:
                    if key not in refs:
                        refs[key] = train_reference(model, batch=shape.batch, seq_len=shape.seq_len, steps=steps,
                                                    seed=seed, cfg=cfg, max_positions=shape.max_positions)
                    ref = refs[key]
                    res["loss_rel"] = max(abs(a - b) / abs(b) for a, b in zip(out.losses, ref.losses))
                    res["losses"] = out.losses
                    res["ref_losses"] = ref.losses
                    res["grad_rel"], res["grad_worst"] = worst(out.grads_first_step, ref.grads_first_step,
                                                               noise_driven(ref.grads_first_step))
                    skip = noise_driven(ref.grads_first_step)
                    res["not_compared"] = sorted(skip)
                    res["param_rel"], res["param_worst"] = worst(params, ref.params, skip)
            else:
                prompt = synthetic_tokens(seed, 0, shape.batch, shape.seq_len, model.vocab)
                got = generate(session, prompt, shape.output_tokens)
                if rank == 0:
                    if key not in refs:
                        refs[key] = generate_reference(model, prompt, shape.output_tokens, seed=seed,
                                                       max_positions=shape.max_positions)
                    res["tokens_equal"] = bool(torch.equal(got.tokens, refs[key]))
                    res["tokens"] = got.tokens.tolist()
        except Exception as exc:  # noqa: BLE001 - reported per case; collective errors end the run anyway
            res["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            res["traceback"] = traceback.format_exc()
        res["seconds"] = time.perf_counter() - t0
        if rank == 0:
            results.append(res)
            print(json.dumps({k: v for k, v in res.items() if k not in ("traceback", "losses", "ref_losses", "tokens")}),
                  flush=True)
        dist.barrier()
    if rank == 0:
        tmp = out_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(results, fh, indent=1)
        os.replace(tmp, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
