"""`Plan`: a strategy with its context (model, cluster, workload) and its prediction,
serialised to a versioned JSON file that the executor reads.

File format (schema_version 1):

    {"schema": "parplan.plan", "schema_version": 1, "created_utc": "...",
     "model": {...ModelSpec.to_dict()}, "cluster": {...Cluster.to_dict()},
     "workload": {"kind": "training" | "inference", ...},
     "strategy": {...Strategy.to_dict(), stages always filled in},
     "prediction": {"time_s": ..., "memory_per_gpu_bytes": ..., ...},
     "objective": "throughput", "checkpoint_interval_steps": 0}
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from costmodel.model import ModelSpec
from costmodel.strategy import Strategy
from costmodel.workload import Inference, Training, workload_from_dict
from hardware_profiles.errors import ParplanError
from hardware_profiles.topology import Cluster

SCHEMA = "parplan.plan"
SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)


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
        return {
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

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file + rename), so a reader never sees half a plan."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        if not isinstance(data, Mapping):
            raise PlanFileError("a plan file holds a JSON object")
        if data.get("schema") != SCHEMA:
            raise PlanFileError(f"not a plan file: 'schema' is {data.get('schema')!r}, expected {SCHEMA!r}")
        version = data.get("schema_version")
        if version not in SUPPORTED_VERSIONS:
            raise PlanFileError(
                f"plan schema_version {version!r} is not supported by this version (reads {SUPPORTED_VERSIONS}); "
                f"re-create the plan with `python -m planner ... --out plan.json`")
        missing = [k for k in ("model", "cluster", "workload", "strategy") if k not in data]
        if missing:
            raise PlanFileError(f"plan file is missing {missing}; it may be truncated")
        try:
            return cls(
                model=ModelSpec.from_dict(data["model"]),
                cluster=Cluster.from_dict(data["cluster"]),
                workload=workload_from_dict(data["workload"]),
                strategy=Strategy.from_dict(data["strategy"]),
                prediction=dict(data.get("prediction") or {}),
                objective=str(data.get("objective", "throughput")),
                checkpoint_interval_steps=int(data.get("checkpoint_interval_steps", 0)),
            )
        except (ParplanError, ValueError, TypeError, KeyError) as exc:
            raise PlanFileError(f"plan file has an invalid section: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise PlanFileError(f"plan file is not valid JSON (corrupt or truncated?): {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Plan":
        p = Path(path)
        if not p.exists():
            raise PlanFileError(f"plan file {str(p)!r} does not exist")
        return cls.from_json(p.read_text())


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
