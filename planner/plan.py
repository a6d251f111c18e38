"""`Plan`: a strategy with its context (model, cluster, workload) and its prediction,
serialised to a versioned JSON file that the executor reads.

File format (schema_version 1):

    {"schema": "parplan.plan", "schema_version": 1, "created_utc": "...",
     "model": {...ModelSpec.to_dict()}, "cluster": {...Cluster.to_dict()},
     "workload": {"kind": "training" | "inference", ...},
     "strategy": {...Strategy.to_dict(), stages always filled in},
     "prediction": {"time_s": ..., "memory_per_gpu_bytes": ..., ...},
     "objective": "throughput", "checkpoint_interval_steps": 0, "sha256": "..."}

`sha256` is the SHA-256 of every other key except `created_utc`, as compact JSON with sorted keys. A file
whose content does not match it (bit rot, a partial copy, a hand edit) is refused; delete the key to
accept a deliberate hand edit. A file without it is read unchecked.

Version policy. `SCHEMA_VERSION` goes up by one whenever a change would make an older reader misread a
file (a renamed, removed or re-interpreted key); adding an optional key with a default does not need a new
version. A reader reads every version in `SUPPORTED_VERSIONS` by upgrading the file's dict one version at
a time (`_UPGRADES[v]` turns version v into v + 1) and then reading the current form, so an upgrade step is
the only code an old version costs. A file newer than this reader is refused with a message to upgrade
parplan or re-create the plan; a file older than the oldest supported version is refused with a message
to re-create it. Version 0 is the draft format written before plans carried `objective` and
`checkpoint_interval_steps`: it is read with the defaults (the workload kind's default objective, no
checkpoints).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from costmodel.model import ModelSpec
from costmodel.strategy import Strategy
from costmodel.workload import Inference, Training, workload_from_dict
from hardware_profiles.errors import ParplanError
from hardware_profiles.fileio import write_text_atomic
from hardware_profiles.topology import Cluster

SCHEMA = "parplan.plan"
SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (0, 1)
_DEFAULT_OBJECTIVE = {"training": "throughput", "inference": "latency"}
_REMAKE = "re-create the plan with `python -m planner ... --out plan.json`"


class PlanFileError(ParplanError, ValueError):
    """A plan file that is missing, corrupt, truncated or of an unsupported version."""


@dataclass(frozen=True)
class Plan:
    model: ModelSpec
    cluster: Cluster
    workload: Training | Inference
    strategy: Strategy
    prediction: Mapping[str, Any] = field(default_factory=dict)
    objective: str = "throughput"
    checkpoint_interval_steps: int = 0
    estimate: Any = field(default=None, compare=False, repr=False)  # the costmodel Estimate, when in memory

    # -- construction --------------------------------------------------------
    @classmethod
    def from_strategy(cls, model: Any, cluster: Any, strategy: Strategy, workload: Training | Inference,
                      **kwargs: Any) -> "Plan":
        """Price a strategy you chose yourself (no search) and wrap it as a plan."""
        from costmodel import estimate as _estimate
        from costmodel.catalog import resolve_model

        model = resolve_model(model)
        cluster = Cluster.parse(cluster)
        est = _estimate(model, cluster, strategy, workload, **kwargs)
        return cls.from_estimate(model, cluster, workload, est)

    @classmethod
    def from_estimate(cls, model: ModelSpec, cluster: Cluster, workload: Training | Inference, est: Any,
                      objective: str = "throughput") -> "Plan":
        return cls(model=model, cluster=cluster, workload=workload, strategy=est.strategy,
                   prediction=est.to_dict(), objective=objective, estimate=est)

    # -- facts -----------------------------------------------------------------
    @property
    def predicted_time_s(self) -> float:
        return float(self.prediction.get("time_s", float("nan")))

    def describe(self) -> str:
        return f"{self.model.name} on {self.cluster.describe()}: {self.strategy.describe()}"

    def with_strategy(self, strategy: Strategy) -> "Plan":
        return replace(self, strategy=strategy, prediction={}, estimate=None)

    # -- JSON --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": self.model.to_dict(),
            "cluster": self.cluster.to_dict(),
            "workload": self.workload.to_dict(),
            "strategy": self.strategy.to_dict(),
            "prediction": _jsonable(dict(self.prediction)),
            "objective": self.objective,
            "checkpoint_interval_steps": self.checkpoint_interval_steps,
        }
        d["sha256"] = _digest(d)
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file + rename), so a reader never sees half a plan."""
        return write_text_atomic(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        """Read the dict form of a plan file of any supported schema version (see the module docstring)."""
        if not isinstance(data, Mapping):
            raise PlanFileError(f"a plan file holds a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise PlanFileError(f"not a plan file: 'schema' is {data.get('schema')!r}, expected {SCHEMA!r}")
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise PlanFileError(f"plan file has no valid schema_version (got {version!r}, expected a whole number); "
                                f"it may be corrupt: {_REMAKE}")
        if version > SCHEMA_VERSION:
            raise PlanFileError(
                f"plan schema_version {version} is newer than this parplan reads (versions {SUPPORTED_VERSIONS[0]} "
                f"to {SCHEMA_VERSION}): upgrade parplan, or {_REMAKE}")
        if version not in SUPPORTED_VERSIONS:
            raise PlanFileError(
                f"plan schema_version {version} is older than this parplan reads (versions {SUPPORTED_VERSIONS[0]} "
                f"to {SCHEMA_VERSION}): {_REMAKE}")
        missing = [k for k in ("model", "cluster", "workload", "strategy") if k not in data]
        if missing:
            raise PlanFileError(f"plan file is missing {missing}; it may be truncated")
        if "sha256" in data and data["sha256"] != _digest(data):
            raise PlanFileError(
                "plan file is corrupt: its content does not match its sha256 (bit rot, a partial copy or a hand "
                f"edit); {_REMAKE}, or delete the 'sha256' key to accept a deliberate edit")
        data = dict(data)
        while version < SCHEMA_VERSION:
            data = _UPGRADES[version](data)
            version += 1
        try:
            workload = workload_from_dict(data["workload"])
            plan = cls(
                model=ModelSpec.from_dict(data["model"]),
                cluster=Cluster.from_dict(data["cluster"]),
                workload=workload,
                strategy=Strategy.from_dict(data["strategy"]),
                prediction=_prediction(data.get("prediction")),
                objective=_objective(data.get("objective", _DEFAULT_OBJECTIVE[workload.kind]), workload.kind),
                checkpoint_interval_steps=_steps(data.get("checkpoint_interval_steps", 0)),
            )
        except (ParplanError, ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError,
                RecursionError) as exc:
            raise PlanFileError(f"plan file has an invalid section: {exc}") from None
        return plan

    @classmethod
    def from_json(cls, text: str | bytes) -> "Plan":
        if not isinstance(text, (str, bytes, bytearray)):
            raise PlanFileError(f"a plan is JSON text, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8 in bytes, absurd nesting
            raise PlanFileError(f"plan file is not valid JSON (corrupt or truncated?): {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Plan":
        if not isinstance(path, (str, os.PathLike)):
            raise PlanFileError(f"a plan file is given by its path, got {type(path).__name__}")
        p = Path(path)
        if not p.is_file():
            raise PlanFileError(f"plan file {str(p)!r} does not exist" if not p.exists() else
                                f"plan file {str(p)!r} is not a file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PlanFileError(f"plan file {str(p)!r} is not UTF-8 text (corrupt?): {exc}") from None
        except OSError as exc:
            raise PlanFileError(f"cannot read plan file {str(p)!r}: {exc}") from None
        return cls.from_json(text)


def _digest(data: Mapping[str, Any]) -> str:
    """SHA-256 of the plan without its timestamp and checksum, as canonical JSON (what a reader re-computes
    from the parsed file is the same string: floats round-trip through JSON exactly)."""
    body = {k: v for k, v in data.items() if k not in ("sha256", "created_utc")}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise PlanFileError(f"plan content cannot be written as JSON: {exc}") from None
    return hashlib.sha256(text.encode()).hexdigest()


def _upgrade_v0(data: dict[str, Any]) -> dict[str, Any]:
    """Version 0 -> 1: objective and checkpoint_interval_steps did not exist; take their defaults."""
    kind = data["workload"].get("kind") if isinstance(data["workload"], Mapping) else None
    data.setdefault("objective", _DEFAULT_OBJECTIVE.get(kind, "throughput"))
    data.setdefault("checkpoint_interval_steps", 0)
    data["schema_version"] = 1
    return data


_UPGRADES = {0: _upgrade_v0}


def _objective(value: Any, kind: str) -> str:
    from .search import INFERENCE_OBJECTIVES, TRAINING_OBJECTIVES

    allowed = TRAINING_OBJECTIVES if kind == "training" else INFERENCE_OBJECTIVES
    if not isinstance(value, str) or value not in allowed:
        raise PlanFileError(f"objective {value!r} is not one of {', '.join(allowed)} for {kind}")
    return value


def _steps(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise PlanFileError(f"checkpoint_interval_steps must be a whole number >= 0 (0 = never), got {value!r}")
    return value


def _prediction(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PlanFileError(f"prediction must be a mapping of predicted figures, got {type(value).__name__}")
    return dict(value)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
