"""Pricing failures: how often to checkpoint, and whether to wait for a replacement or re-plan onto survivors.

Checkpoint interval. With failures arriving as a Poisson process of rate 1/M (M = mean time between
failures of the whole job), checkpoints costing C seconds every tau seconds of work and a restart costing
R, the expected wall time per unit of useful work is (Daly 2006, exact for exponential failures)

    W(tau) = M * exp(R / M) * (exp((tau + C) / M) - 1) / tau.

Young's rule tau = sqrt(2 C M) (and Daly's first correction) minimise first-order approximations of W;
`optimal_checkpoint_interval` minimises W itself over whole training steps, so it is never worse than
either on the model both start from, and the difference grows as C approaches M.

Recovery. When GPUs fail, waiting for replacements costs the wait plus a restart at the old throughput;
re-planning onto the survivors costs a plan, a restart, and every remaining step at the new (slower)
step time. Both lose the work done since the last checkpoint. `choose_recovery` prices both with the
cost model and returns the cheaper, with the numbers.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from .errors import NoFeasiblePlanError, PlannerOptionError


def expected_wall_per_work(interval_s: float, checkpoint_s: float, mtbf_s: float, restart_s: float = 0.0) -> float:
    """Daly's W(tau): expected wall seconds per second of useful work (>= 1)."""
    if interval_s <= 0 or mtbf_s <= 0:
        raise PlannerOptionError("interval_s and mtbf_s must be positive")
    m = mtbf_s
    return m * math.exp(restart_s / m) * math.expm1((interval_s + checkpoint_s) / m) / interval_s


def young_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Young (1974): sqrt(2 C M)."""
    return math.sqrt(2.0 * checkpoint_s * mtbf_s)


def daly_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Daly (2006) higher-order estimate; M when C >= 2M."""
    c, m = checkpoint_s, mtbf_s
    if c >= 2 * m:
        return m
    r = c / (2 * m)
    return math.sqrt(2 * c * m) * (1 + math.sqrt(r) / 3 + r / 9) - c


@dataclass(frozen=True)
class CheckpointChoice:
    interval_steps: int
    interval_s: float
    overhead: float  # expected wall time per useful time, minus 1 (0.05 = 5% lost to checkpoints and failures)
    young_interval_steps: int
    young_overhead: float
    daly_interval_steps: int
    daly_overhead: float


def optimal_checkpoint_interval(step_time_s: float, checkpoint_s: float, mtbf_s: float,
                                restart_s: float = 0.0) -> CheckpointChoice:
    """Checkpoint every this many steps to minimise expected lost time (exact exponential model)."""
    for name, v in (("step_time_s", step_time_s), ("checkpoint_s", checkpoint_s), ("mtbf_s", mtbf_s)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise PlannerOptionError(f"{name} must be a positive number of seconds, got {v!r}")

    def w_steps(k: float) -> float:
        return expected_wall_per_work(max(k, 1.0) * step_time_s, checkpoint_s, mtbf_s, restart_s)

    hi = max(2.0, 20 * young_interval_s(checkpoint_s, mtbf_s) / step_time_s)
    res = minimize_scalar(lambda lk: w_steps(math.exp(lk)), bounds=(0.0, math.log(hi)), method="bounded")
    k0 = math.exp(res.x)
    best = min({max(1, math.floor(k0)), max(1, math.ceil(k0))}, key=w_steps)

    def as_steps(t: float) -> int:
        return max(1, round(t / step_time_s))

    y, d = as_steps(young_interval_s(checkpoint_s, mtbf_s)), as_steps(daly_interval_s(checkpoint_s, mtbf_s))
    return CheckpointChoice(interval_steps=best, interval_s=best * step_time_s, overhead=w_steps(best) - 1,
                            young_interval_steps=y, young_overhead=w_steps(y) - 1,
                            daly_interval_steps=d, daly_overhead=w_steps(d) - 1)


# What a distributed checkpoint writes per parameter: fp32 weights and AdamW's two fp32 moments.
CHECKPOINT_BYTES_PER_PARAM = 12
# Write bandwidth each node gets from checkpoint storage when every node writes at once (a parallel file
# system's share per client, or a local NVMe). An assumption: pass the measured figure where known.
DEFAULT_STORAGE_GBPS_PER_NODE = 2.0
# Seconds from a failure to training again: detection, restart, checkpoint load (bench/heal_drill.py
# measures ~15 s for a small job; large jobs spend minutes in rendezvous and loading).
DEFAULT_RESTART_S = 300.0


def checkpoint_write_s(plan: Any, storage_gbps_per_node: float = DEFAULT_STORAGE_GBPS_PER_NODE) -> float:
    """Seconds to write one checkpoint of `plan`'s model and optimizer state, all nodes writing in parallel."""
    if not (math.isfinite(storage_gbps_per_node) and storage_gbps_per_node > 0):
        raise PlannerOptionError(f"storage_gbps_per_node must be positive, got {storage_gbps_per_node!r}")
    state_bytes = CHECKPOINT_BYTES_PER_PARAM * plan.model.num_params
    return state_bytes / (storage_gbps_per_node * 1e9 * len(plan.cluster.nodes))


def with_checkpointing(plan: Any, gpu_mtbf_hours: float, *,
                       storage_gbps_per_node: float = DEFAULT_STORAGE_GBPS_PER_NODE,
                       restart_s: float = DEFAULT_RESTART_S) -> tuple[Any, CheckpointChoice]:
    """`plan` with `checkpoint_interval_steps` set to the interval that minimises expected lost time, for
    GPUs that each fail once per `gpu_mtbf_hours` on average (the job fails N times as often on N GPUs)."""
    if plan.workload.kind != "training":
        raise PlannerOptionError("checkpoint intervals apply to training plans")
    if not (isinstance(gpu_mtbf_hours, (int, float)) and math.isfinite(gpu_mtbf_hours) and gpu_mtbf_hours > 0):
        raise PlannerOptionError(f"gpu_mtbf_hours must be a positive number of hours, got {gpu_mtbf_hours!r}")
    job_mtbf_s = gpu_mtbf_hours * 3600.0 / plan.cluster.num_gpus
    choice = optimal_checkpoint_interval(plan.predicted_time_s, checkpoint_write_s(plan, storage_gbps_per_node),
                                         job_mtbf_s, restart_s)
    return replace(plan, checkpoint_interval_steps=choice.interval_steps), choice


@dataclass(frozen=True)
class RecoveryOption:
    action: str  # "wait" or "replan"
    total_s: float  # expected seconds until the remaining steps are done
    step_time_s: float
    plan: Any  # the Plan to run (old plan for "wait", new plan for "replan")
    detail: str


@dataclass(frozen=True)
class RecoveryChoice:
    choice: RecoveryOption
    wait: RecoveryOption
    replan: RecoveryOption | None
    replan_search_s: float  # how long re-planning took

    def describe(self) -> str:
        alt = self.replan if self.choice is self.wait else self.wait
        alt_s = f"{alt.total_s:,.0f} s" if alt is not None else "impossible"
        return (f"{self.choice.action}: {self.choice.total_s:,.0f} s to finish ({self.choice.detail}); "
                f"the other option needs {alt_s}")


def choose_recovery(plan: Any, failed_gpus: list[int], *, remaining_steps: int, replacement_wait_s: float,
                    steps_since_checkpoint: int = 0, restart_s: float = 60.0, **plan_kwargs: Any) -> RecoveryChoice:
    """Wait for replacements or re-plan onto the surviving GPUs, whichever finishes the job sooner."""
    from .search import plan as search

    if remaining_steps < 0 or replacement_wait_s < 0 or steps_since_checkpoint < 0:
        raise PlannerOptionError("remaining_steps, replacement_wait_s and steps_since_checkpoint must be >= 0")
    old_step = float(plan.prediction.get("time_s", float("nan")))
    if not np.isfinite(old_step):
        raise PlannerOptionError("the plan carries no predicted step time; price it first (Plan.from_strategy)")
    lost = steps_since_checkpoint * old_step
    wait = RecoveryOption("wait", replacement_wait_s + restart_s + lost + remaining_steps * old_step, old_step, plan,
                          f"wait {replacement_wait_s:,.0f} s for {len(failed_gpus)} GPU(s), keep "
                          f"{plan.strategy.describe()}")
    t0 = time.perf_counter()
    survivors = plan.cluster.without_gpus(failed_gpus)
    try:
        res = search(plan.model, survivors, plan.workload, **plan_kwargs)
        new = res.best
    except NoFeasiblePlanError:
        new = None
    search_s = time.perf_counter() - t0
    replan = None
    if new is not None:
        new_step = new.predicted_time_s
        replan = RecoveryOption("replan", search_s + restart_s + lost + remaining_steps * new_step, new_step, new,
                                f"{survivors.num_gpus} GPUs left, {new.strategy.describe()}, step "
                                f"{new_step:.3g} s against {old_step:.3g} s")
    choice = wait if replan is None or wait.total_s <= replan.total_s else replan
    return RecoveryChoice(choice=choice, wait=wait, replan=replan, replan_search_s=search_s)
