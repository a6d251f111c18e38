"""Launch the executor with torchrun on this machine, after checking the plan.

    python -m executor.launch --nproc 4 plan.json --steps 3 --report run.json

Everything after the plan path is forwarded to `python -m executor`. The plan is
checked against the world size (nproc x nnodes) first; a plan that cannot run
is refused before any process starts (exit code 2). Failures are torchrun's:
`--max-restarts 0`, so when a rank raises or dies the agent stops every other
rank; ranks blocked in a collective with a dead peer fail at the process-group
timeout (30 s on CPU by default, `--pg-timeout-s`). Each worker's exception is
recorded through torchelastic's error file (`@record`), and this launcher ends
with one line naming the failing rank and its error. Reports are written only
by rank 0 at the end of a successful run, atomically, so a failure never
touches a report written before.

Many machines: run the same torchrun command on every node (c10d rendezvous
needs no node ranks), e.g. two nodes of 8 GPUs:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \
        --rdzv-endpoint node0.example:29500 --rdzv-id job42 --max-restarts 0 \
        -m executor plan.json --steps 5 --report run.json

or, equivalently, on each node:

    python -m executor.launch --nnodes 2 --nproc 8 --rdzv-endpoint node0.example:29500 \
        --rdzv-id job42 plan.json --steps 5 --report run.json
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Failure:
    rank: int | None
    exitcode: int | None
    error: str

    def describe(self) -> str:
        who = f"rank {self.rank}" if self.rank is not None else "a rank"
        if self.exitcode is not None and self.exitcode < 0:
            try:
                name = signal.Signals(-self.exitcode).name
            except ValueError:
                name = f"signal {-self.exitcode}"
            return f"{who} died: killed by {name}"
        code = f" (exit code {self.exitcode})" if self.exitcode is not None else ""
        return f"{who} failed{code}: {self.error}"


def parse_failures(output: str) -> list[Failure]:
    """Failures from torchrun's summary ("Root Cause" first, then the others)."""
    out: list[Failure] = []
    for section in ("Root Cause", "Failures:"):
        idx = output.rfind(section)
        if idx < 0:
            continue
        block = output[idx:]
        for m in re.finditer(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)"
                             r".*?traceback\s*:\s*(.*?)(?:\n\[\d+\]:|\n-{20,}|\n={20,}|\Z)", block, re.S):
            rank, code, tb = int(m.group(1)), int(m.group(2)), m.group(3).strip()
            lines = [ln.strip() for ln in tb.splitlines() if ln.strip()]
            error = lines[-1] if lines else ""
            if error.startswith("To enable traceback"):
                error = "no error file (the rank exited without a Python exception)"
            f = Failure(rank, code, error)
            if f not in out:
                out.append(f)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(args: argparse.Namespace, forwarded: list[str], log_dir: str) -> list[str]:
    endpoint = args.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(args.nnodes),
            "--nproc-per-node", str(args.nproc), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
            "--rdzv-id", args.rdzv_id, "--max-restarts", "0", "--monitor-interval", "0.5", "--log-dir", log_dir,
            "-m", "executor", *forwarded]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(prog="python -m executor.launch", usage="%(prog)s [--nproc N] [--nnodes M] "
                                 "[--rdzv-endpoint HOST:PORT] plan.json [executor options]",
                                 description="Check a plan, then run it with torchrun on this machine.")
    ap.add_argument("--nproc", type=int, default=None, help="processes on this machine (default: the plan's "
                    "tp x pp x dp / nnodes)")
    ap.add_argument("--nnodes", type=int, default=1)
    ap.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the c10d rendezvous (needed with --nnodes > 1)")
    ap.add_argument("--rdzv-id", default="parplan")
    ap.add_argument("--timeout-s", type=float, default=None, help="stop everything after this long (a last resort)")
    ap.add_argument("--no-check", action="store_true", help="skip checking the plan before launching")
    args, rest = ap.parse_known_args(argv)
    if not rest:
        ap.error("give the plan file")
    return args, rest


def main(argv: list[str] | None = None) -> int:
    from hardware_profiles.errors import ParplanError
    from planner.plan import Plan

    from .check import validate

    args, forwarded = parse_args(argv)
    if args.nnodes > 1 and not args.rdzv_endpoint:
        print("executor.launch: --nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)", file=sys.stderr)
        return 2
    try:
        plan = Plan.load(forwarded[0])
        if args.nproc is None:
            args.nproc = max(1, plan.strategy.num_gpus // args.nnodes)
        if not args.no_check:
            validate(plan, args.nproc * args.nnodes)
    except ParplanError as exc:
        print(f"executor.launch: plan refused before launch: {exc}", file=sys.stderr)
        return 2
    env = worker_env()
    with tempfile.TemporaryDirectory(prefix="parplan-launch-") as log_dir:
        cmd = torchrun_command(args, forwarded, log_dir)
        return run_and_report(cmd, env, args.timeout_s)


def worker_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of torchrun and its workers: this repository importable, one thread per worker."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def dead_ranks(failures: tuple[Failure, ...] | list[Failure]) -> list[int]:
    """Ranks that died, as opposed to ranks that failed because a peer died. torchrun's root cause is the
    failure with the earliest timestamp in whole seconds, which a healthy rank's "connection closed" error
    can tie or beat; a rank killed by a signal (other than torchrun's own SIGTERM) or gone without a
    Python error is the one that died."""
    dead = [f.rank for f in failures if f.rank is not None and (
        (f.exitcode is not None and f.exitcode < 0 and f.exitcode not in (-signal.SIGTERM, -signal.SIGINT))
        or f.error.startswith("no error file"))]
    if not dead and failures and failures[0].rank is not None:
        dead = [failures[0].rank]
    return sorted(set(dead))


@dataclass(frozen=True)
class Outcome:
    """How a torchrun launch ended."""

    returncode: int  # 124 when stopped at the timeout
    failures: tuple[Failure, ...]  # torchrun's summary: root cause first
    output_tail: str
    timed_out: bool


def run_and_report(cmd: list[str], env: dict[str, str], timeout_s: float | None) -> int:
    out = run_torchrun(cmd, env, timeout_s)
    if out.timed_out:
        print(f"executor.launch: stopped after {timeout_s} s", file=sys.stderr)
    elif out.returncode != 0:
        if out.failures:
            dead = set(dead_ranks(out.failures))  # the rank that died first, not a peer that lost it
            ordered = sorted(out.failures, key=lambda f: f.rank not in dead)
            print(f"executor.launch: {ordered[0].describe()}", file=sys.stderr)
            for f in ordered[1:]:
                if f.exitcode not in (-15, None):  # ranks torchrun stopped are not news
                    print(f"executor.launch: then {f.describe()}", file=sys.stderr)
        else:
            print(f"executor.launch: torchrun exited with code {out.returncode}", file=sys.stderr)
    return out.returncode


def run_torchrun(cmd: list[str], env: dict[str, str], timeout_s: float | None, *, echo: bool = True,
                 log_path: str | os.PathLike[str] | None = None) -> Outcome:
    """Run torchrun to the end (or the timeout), echoing and/or logging its output; parse its failures."""
    tail: deque[str] = deque(maxlen=400)
    log = open(log_path, "w") if log_path is not None else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    timed_out = threading.Event()

    def watchdog() -> None:
        if timeout_s is None:
            return
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            if time.monotonic() > deadline:
                timed_out.set()
                os.killpg(proc.pid, signal.SIGTERM)
                time.sleep(10)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.5)

    threading.Thread(target=watchdog, daemon=True).start()
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
            if log is not None:
                log.write(line)
            tail.append(line)
        code = proc.wait()
    finally:
        if log is not None:
            log.close()
    text = "".join(tail)
    if timed_out.is_set():
        return Outcome(124, tuple(parse_failures(text)), text, True)
    return Outcome(code, tuple(parse_failures(text)) if code != 0 else (), text, False)


if __name__ == "__main__":
    sys.exit(main())
