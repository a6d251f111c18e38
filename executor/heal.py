"""Self-healing drill: a rank dies, the planner re-plans for the survivors, training resumes in the new layout.

    python -m executor.heal plan.json --steps 8 --fail-rank 1 --fail-at-step 5 --checkpoint-every 2 \
        --out heal/

1. Runs the plan under torchrun (executor.launch's machinery) with distributed checkpoints every
   `--checkpoint-every` steps (default: the plan's checkpoint_interval_steps) and a fault: torchrun
   rank `--fail-rank` (GPU of that index) dies at the start of step `--fail-at-step` (SIGKILL, or
   `--fail-kind exit`).
2. Detects the failure from torchrun's exit and its failure summary: the dead rank is the one killed by
   a signal or gone without a Python error (the others only lost their peer).
3. Prices recovery with `planner.resilience.choose_recovery`: wait `--replacement-wait-s` for a spare,
   or re-plan onto the surviving GPUs (`Cluster.without_gpus`); the re-plan is timed. `--recovery
   replan|wait` forces one. The new plan is written to OUT/plan_healed.json.
4. Restarts from the newest complete checkpoint on the survivors, in the new layout (the checkpoint is
   resharded on load), and runs to `--steps`. On a GPU machine the survivors are selected with
   CUDA_VISIBLE_DEVICES. ("wait" restarts the old layout at once: on one machine the replacement is
   the same slot; the wait is only priced.)
5. Writes OUT/heal_report.json: failure, detection, re-plan and restart times, time from the failure
   to the first step in the new layout, throughput (steps/s, tokens/s) before and after, the loss of
   every step of both phases, the old and new layouts.

The global batch stays the plan's, so the healed run follows the loss trajectory of an uninterrupted
run (the data stream is a function of seed and step; see executor.checkpoint).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hardware_profiles.errors import ParplanError

from .launch import Failure, Outcome, dead_ranks, run_torchrun, torchrun_command, worker_env

REPORT_SCHEMA = "parplan.heal"
REPORT_SCHEMA_VERSION = 1


class HealError(ParplanError, RuntimeError):
    """A drill that cannot start: bad options or a plan that cannot run; the message says what would work."""


class RecoveryFailedError(HealError):
    """A drill that started but did not heal: the fault did not fire, no rank was named, or the restart
    failed; the message says where the logs are."""


def read_step_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut by the failure
            continue
    return records


def throughput(records: list[dict[str, Any]], tokens_per_step: int) -> dict[str, Any]:
    """Median step time of a phase, leaving out its first step (warm-up) when there are others."""
    times = [r["time_s"] for r in records if r.get("event") == "step"]
    measured = times[1:] if len(times) > 1 else times
    if not measured:
        return {"steps_measured": 0, "step_time_s": None, "steps_per_s": None, "tokens_per_s": None}
    t = statistics.median(measured)
    return {"steps_measured": len(measured), "step_time_s": t, "steps_per_s": 1.0 / t,
            "tokens_per_s": tokens_per_step / t}


def layout_of(plan: Any) -> dict[str, Any]:
    return {"describe": plan.strategy.describe(), "num_gpus": plan.strategy.num_gpus,
            "cluster": plan.cluster.describe(), "strategy": plan.strategy.to_dict(),
            "predicted_step_time_s": plan.prediction.get("time_s") if plan.prediction else None}


@dataclasses.dataclass(frozen=True)
class Phase:
    outcome: Outcome
    launched_unix_s: float
    ended_unix_s: float
    records: list[dict[str, Any]]
    log_path: Path

    @property
    def steps(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == "step"]

    @property
    def start(self) -> dict[str, Any] | None:
        return next((r for r in self.records if r.get("event") == "start"), None)


def _launch(plan_path: Path, nproc: int, forwarded: list[str], *, env: dict[str, str], step_log: Path,
            log_path: Path, timeout_s: float | None, echo: bool) -> Phase:
    step_log.unlink(missing_ok=True)
    ns = argparse.Namespace(nnodes=1, nproc=nproc, rdzv_endpoint=None, rdzv_id=f"heal-{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="parplan-heal-") as tmp:
        cmd = torchrun_command(ns, [str(plan_path), *forwarded, "--step-log", str(step_log)], tmp)
        t0 = time.time()
        outcome = run_torchrun(cmd, env, timeout_s, echo=echo, log_path=log_path)
        t1 = time.time()
    return Phase(outcome, t0, t1, read_step_log(step_log), log_path)


def _survivor_devices(env: dict[str, str], num_gpus: int, failed: list[int]) -> str:
    visible = env.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(num_gpus)]
    return ",".join(d for i, d in enumerate(ids[:num_gpus]) if i not in failed)


def _priced(plan: Any) -> Any:
    """The plan with a predicted step time (choose_recovery needs one to price waiting)."""
    from planner.plan import Plan

    t = plan.prediction.get("time_s") if plan.prediction else None
    if isinstance(t, (int, float)) and t == t:
        return plan
    priced = Plan.from_strategy(plan.model, plan.cluster, plan.strategy, plan.workload)
    return dataclasses.replace(priced, objective=plan.objective,
                               checkpoint_interval_steps=plan.checkpoint_interval_steps)


def recover(plan: Any, failed: list[int], *, remaining_steps: int, steps_since_checkpoint: int,
            replacement_wait_s: float, restart_s: float, mode: str) -> tuple[Any, dict[str, Any]]:
    """The plan to restart with and what the choice cost (re-plan time measured)."""
    from planner.errors import NoFeasiblePlanError
    from planner.resilience import choose_recovery

    from .check import validate

    t0 = time.perf_counter()
    choice = choose_recovery(_priced(plan), failed, remaining_steps=remaining_steps,
                             replacement_wait_s=replacement_wait_s, steps_since_checkpoint=steps_since_checkpoint,
                             restart_s=restart_s, objective=plan.objective)
    replan_s = time.perf_counter() - t0
    picked = choice.choice if mode == "auto" else (choice.wait if mode == "wait" else choice.replan)
    if picked is None:
        raise NoFeasiblePlanError(f"no plan fits the {plan.cluster.num_gpus - len(failed)} surviving GPUs; wait for a "
                                  f"replacement (--recovery wait)")
    new = plan if picked.action == "wait" else dataclasses.replace(
        picked.plan, checkpoint_interval_steps=plan.checkpoint_interval_steps)
    validate(new, new.strategy.num_gpus)  # the planner's choice must run here too
    info = {"action": picked.action, "mode": mode, "chosen_by_planner": choice.choice.action,
            "describe": choice.describe(), "replan_s": replan_s, "search_s": choice.replan_search_s,
            "expected_total_s": {"wait": choice.wait.total_s,
                                 "replan": choice.replan.total_s if choice.replan is not None else None},
            "predicted_step_time_s": {"wait": choice.wait.step_time_s,
                                      "replan": choice.replan.step_time_s if choice.replan is not None else None}}
    return new, info


def heal(plan_path: str | os.PathLike[str], *, steps: int, fail_rank: int, fail_at_step: int, out_dir: str | Path,
         checkpoint_every: int | None = None, checkpoint_dir: str | Path | None = None, fail_kind: str = "kill",
         recovery: str = "auto", replacement_wait_s: float = 3600.0, seed: int = 0, pg_timeout_s: float | None = None,
         timeout_s: float | None = 600.0, echo: bool = False) -> dict[str, Any]:
    """Run the drill (see the module docstring); returns the report, also written to OUT/heal_report.json."""
    from planner.plan import Plan

    from .check import validate
    from .checkpoint import CheckpointError, resolve
    from .run import write_report

    plan = Plan.load(plan_path)
    n = plan.strategy.num_gpus
    validate(plan, n)
    every = checkpoint_every if checkpoint_every is not None else plan.checkpoint_interval_steps
    if not every or every < 1:
        raise HealError("the drill needs checkpoints: give --checkpoint-every K (the plan's "
                        f"checkpoint_interval_steps is {plan.checkpoint_interval_steps})")
    if not 0 <= fail_rank < n:
        raise HealError(f"--fail-rank {fail_rank} is not a rank of the plan's {n} processes (0..{n - 1})")
    if not 1 <= fail_at_step < steps:
        raise HealError(f"--fail-at-step must be in 1..{steps - 1} (a step before the last), got {fail_at_step}")
    if fail_kind not in ("kill", "exit"):
        raise HealError(f"--fail-kind must be kill or exit, got {fail_kind!r}")
    if recovery not in ("auto", "replan", "wait"):
        raise HealError(f"--recovery must be auto, replan or wait, got {recovery!r}")
    if n < 2 and recovery != "wait":
        raise HealError("a plan on one GPU leaves no survivors to re-plan for; use --recovery wait")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else out / "checkpoints"
    if ckpt.exists() and any(ckpt.iterdir()):
        raise HealError(f"checkpoint directory {str(ckpt)!r} is not empty; the drill starts a new run: give an empty "
                        f"--checkpoint-dir or another --out")
    plan = dataclasses.replace(plan, checkpoint_interval_steps=every)
    env = worker_env()
    common = ["--steps", str(steps), "--warmup", "0", "--seed", str(seed), "--checkpoint-dir", str(ckpt),
              "--checkpoint-every", str(every)]
    if pg_timeout_s is not None:
        common += ["--pg-timeout-s", str(pg_timeout_s)]
    tokens_per_step = plan.workload.global_batch * (plan.workload.seq_len or plan.model.seq_len)

    # phase 1: the original layout, until the fault
    first_path = plan.save(out / "plan.json")
    p1 = _launch(first_path, n, [*common, "--report", str(out / "phase1_run.json"),
                                 "--inject-fault", f"{fail_kind}:{fail_rank}:{fail_at_step}"],
                 env=env, step_log=out / "phase1_steps.jsonl", log_path=out / "phase1.log", timeout_s=timeout_s,
                 echo=echo)
    detected = p1.ended_unix_s
    if p1.outcome.returncode == 0:
        raise RecoveryFailedError(f"the run finished without the injected fault firing; see {p1.log_path}")
    if p1.outcome.timed_out:
        raise RecoveryFailedError(f"the first phase was stopped after {timeout_s} s without torchrun ending; "
                                  f"see {p1.log_path}")
    failed = dead_ranks(p1.outcome.failures)
    if not failed:
        raise RecoveryFailedError(f"torchrun failed (exit code {p1.outcome.returncode}) without naming a rank; "
                                  f"see {p1.log_path}")
    last = p1.records[-1]["unix_s"] if p1.records else p1.launched_unix_s
    try:
        resume = resolve(ckpt)
        resume_step = resume.step
    except CheckpointError:  # died before the first checkpoint: start over
        resume, resume_step = None, 0
    steps_done = max((r["step"] + 1 for r in p1.steps), default=0)
    restart_estimate_s = (p1.start["unix_s"] - p1.launched_unix_s) if p1.start else 60.0

    # re-plan for the survivors
    new_plan, choice = recover(plan, failed, remaining_steps=steps - resume_step,
                               steps_since_checkpoint=max(steps_done - resume_step, 0),
                               replacement_wait_s=replacement_wait_s, restart_s=restart_estimate_s, mode=recovery)
    new_path = new_plan.save(out / "plan_healed.json")

    # phase 2: the new layout, from the checkpoint
    env2 = dict(env)
    if choice["action"] == "replan" and plan.cluster.num_nodes == 1:
        env2["CUDA_VISIBLE_DEVICES"] = _survivor_devices(env, n, failed)
    resume_args = ["--resume", str(ckpt)] if resume is not None else []
    p2 = _launch(new_path, new_plan.strategy.num_gpus, [*common, "--report", str(out / "phase2_run.json"),
                                                        *resume_args],
                 env=env2, step_log=out / "phase2_steps.jsonl", log_path=out / "phase2.log", timeout_s=timeout_s,
                 echo=echo)
    if p2.outcome.returncode != 0:
        why = p2.outcome.failures[0].describe() if p2.outcome.failures else f"exit code {p2.outcome.returncode}"
        raise RecoveryFailedError(f"the restart in the new layout failed ({why}); see {p2.log_path}")
    if not p2.steps or p2.start is None:
        raise RecoveryFailedError(f"the restart ran no step; see {p2.log_path}")
    first2 = p2.steps[0]
    first2_end = first2["unix_s"]
    trajectory = {r["step"]: r["loss"] for r in p1.steps if r["step"] < resume_step}
    trajectory.update({r["step"]: r["loss"] for r in p2.steps})
    report = {
        "schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION,
        "plan": str(first_path), "healed_plan": str(new_path), "checkpoint_dir": str(ckpt),
        "steps": steps, "seed": seed, "checkpoint_every": every, "tokens_per_step": tokens_per_step,
        "fault": {"kind": fail_kind, "rank": fail_rank, "at_step": fail_at_step},
        "failure": {"dead_ranks": failed, "torchrun_exit_code": p1.outcome.returncode,
                    "reported": [f.describe() for f in p1.outcome.failures]},
        # the fault fires as step fail_at_step starts, i.e. when rank 0 logged the end of the step (or
        # checkpoint) before it
        "failure_unix_s": last,
        "detected_unix_s": detected,
        "detection_s": detected - last,
        "checkpoint_step": resume_step,
        "steps_done_before_failure": steps_done,
        "steps_recomputed": max(steps_done - resume_step, 0),
        "recovery": choice,
        "replan_s": choice["replan_s"],
        "handover_s": p2.launched_unix_s - detected,  # detection to relaunch: checkpoint lookup, re-plan, plan file
        "restart_s": p2.start["unix_s"] - p2.launched_unix_s,  # launch to ready: processes, group, model, load
        "checkpoint_load_s": p2.start.get("load_s"),
        "failure_to_first_step_start_s": first2["start_unix_s"] - last,
        "failure_to_first_step_s": first2_end - last,  # until the first step in the new layout has finished
        "throughput_before": throughput(p1.records, tokens_per_step),
        "throughput_after": throughput(p2.records, tokens_per_step),
        "old_layout": layout_of(plan), "new_layout": layout_of(new_plan),
        "phase_steps": [{"phase": 1, "step": r["step"], "loss": r["loss"], "time_s": r["time_s"]} for r in p1.steps]
        + [{"phase": 2, "step": r["step"], "loss": r["loss"], "time_s": r["time_s"]} for r in p2.steps],
        "losses": [trajectory.get(i) for i in range(steps)],
        "checkpoints": [{"phase": ph, "step": r["step"], "save_s": r["save_s"]}
                        for ph, p in ((1, p1), (2, p2)) for r in p.records if r.get("event") == "checkpoint"],
        "phase_wall_s": [p1.ended_unix_s - p1.launched_unix_s, p2.ended_unix_s - p2.launched_unix_s],
        "logs": [str(p1.log_path), str(p2.log_path)],
    }
    write_report(out / "heal_report.json", report)
    return report


def summary(report: dict[str, Any]) -> str:
    b, a = report["throughput_before"], report["throughput_after"]

    def tput(t: dict[str, Any]) -> str:
        if t["steps_per_s"] is None:
            return "n/a"
        return f"{t['steps_per_s']:.3g} steps/s, {t['tokens_per_s']:,.0f} tokens/s"

    return "\n".join([
        f"failure: rank(s) {report['failure']['dead_ranks']} died at step {report['fault']['at_step']} "
        f"({report['old_layout']['describe']}); detected after {report['detection_s']:.2f} s",
        f"recovery: {report['recovery']['action']} in {report['replan_s'] * 1e3:.0f} ms of planning -> "
        f"{report['new_layout']['describe']} on {report['new_layout']['num_gpus']} GPUs",
        f"restart: {report['restart_s']:.2f} s (" + (
            f"checkpoint of step {report['checkpoint_step']} loaded in {report['checkpoint_load_s'] or 0:.2f} s"
            if report["checkpoint_step"] else "no checkpoint before the failure: from step 0")
        + f", {report['steps_recomputed']} step(s) recomputed)",
        f"failure -> first step in the new layout: {report['failure_to_first_step_s']:.2f} s",
        f"throughput before: {tput(b)}; after: {tput(a)}",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m executor.heal", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plan")
    ap.add_argument("--steps", type=int, required=True, help="training steps of the whole job")
    ap.add_argument("--fail-rank", type=int, required=True, help="torchrun rank (GPU index) that dies")
    ap.add_argument("--fail-at-step", type=int, required=True, help="it dies as this step starts")
    ap.add_argument("--fail-kind", choices=("kill", "exit"), default="kill")
    ap.add_argument("--checkpoint-every", type=int, default=None, help="default: the plan's checkpoint_interval_steps")
    ap.add_argument("--checkpoint-dir", default=None, help="default: OUT/checkpoints (must be empty)")
    ap.add_argument("--out", default="heal", help="directory for plans, logs and heal_report.json")
    ap.add_argument("--recovery", choices=("auto", "replan", "wait"), default="auto")
    ap.add_argument("--replacement-wait-s", type=float, default=3600.0,
                    help="expected wait for a replacement GPU (prices 'wait' against 're-plan')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pg-timeout-s", type=float, default=None)
    ap.add_argument("--timeout-s", type=float, default=600.0, help="limit per phase")
    ap.add_argument("--verbose", action="store_true", help="echo torchrun's output")
    args = ap.parse_args(argv)
    try:
        report = heal(args.plan, steps=args.steps, fail_rank=args.fail_rank, fail_at_step=args.fail_at_step,
                      out_dir=args.out, checkpoint_every=args.checkpoint_every, checkpoint_dir=args.checkpoint_dir,
                      fail_kind=args.fail_kind, recovery=args.recovery, replacement_wait_s=args.replacement_wait_s,
                      seed=args.seed, pg_timeout_s=args.pg_timeout_s, timeout_s=args.timeout_s, echo=args.verbose)
    except RecoveryFailedError as exc:
        print(f"executor.heal: {exc}", file=sys.stderr)
        return 1
    except ParplanError as exc:
        print(f"executor.heal: {exc}", file=sys.stderr)
        return 2
    print(summary(report))
    print(f"report: {Path(args.out) / 'heal_report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
