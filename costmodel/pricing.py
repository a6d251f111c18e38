"""`estimate(model, cluster, strategy, workload)`: time, memory per GPU and a breakdown."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from hardware_profiles.topology import Cluster

from .model import ModelSpec
from .params import CostParams
from .strategy import Strategy
from .workload import Inference, Training

MEMORY_TERMS = ("weights", "gradients", "optimizer", "activations", "kv_cache", "reserved")


@dataclass(frozen=True)
class StageEstimate:
    index: int
    first_layer: int
    end_layer: int  # exclusive
    gpu: str
    time_s: float  # per micro-batch (training) or per pass (inference), communication included
    compute_s: float
    memory_bytes: float
    memory_capacity_bytes: float
    memory: Mapping[str, float]
    forward_s: float = 0.0  # forward compute per micro-batch (training); the rest of compute_s is backward

    @property
    def fits(self) -> bool:
        return self.memory_bytes <= self.memory_capacity_bytes


@dataclass(frozen=True)
class Estimate:
    """What a strategy costs. Training: `time_s` is one optimizer step. Inference: `time_s` is the
    idealized runtime of the whole request batch, P(prompt) + beta x (output - 1)."""

    kind: str
    strategy: Strategy
    time_s: float
    tokens_per_s: float
    memory_per_gpu_bytes: float  # the largest over all GPUs
    memory_capacity_bytes: float  # usable memory of the GPU that holds the most
    fits: bool
    shortfall_bytes: float  # how much the fullest GPU lacks (0 when it fits)
    memory: Mapping[str, float]  # breakdown on the fullest GPU
    breakdown: Mapping[str, float]  # time terms; the additive ones sum to time_s
    stages: tuple[StageEstimate, ...]
    num_gpus: int
    mfu: float | None = None
    hfu: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    prefill_s: float | None = None  # P(prompt): the prompt and the first output token
    per_token_s: float | None = None  # beta: each further output token
    cost_usd: float | None = None
    energy_j: float | None = None
    max_batch: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def step_time_s(self) -> float:
        return self.time_s

    @property
    def bottleneck(self) -> str:
        terms = {k: v for k, v in self.breakdown.items() if k in ADDITIVE_TERMS}
        return max(terms, key=terms.get) if terms else ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data: `dataclasses.asdict`, with the strategy as `Strategy.to_dict` gives it."""
        d = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "strategy":
                d[f.name] = value.to_dict()
            elif f.name == "stages":
                d[f.name] = [asdict(s) for s in value]
            else:
                d[f.name] = _plain(value)
        d["bottleneck"] = self.bottleneck
        return d

    def summary(self) -> str:
        gb = 1e9
        lines = [f"{self.strategy.describe()}"]
        if self.kind == "training":
            lines.append(f"  step {self.time_s * 1e3:.1f} ms, {self.tokens_per_s:,.0f} tokens/s, MFU {self.mfu:.1%}")
        else:
            lines.append(f"  runtime {self.time_s:.3f} s (TTFT {self.ttft_s * 1e3:.1f} ms, TPOT {self.tpot_s * 1e3:.2f} ms), "
                         f"{self.tokens_per_s:,.0f} tokens/s, ${self.cost_usd:.4f}, max batch {self.max_batch}")
        lines.append(f"  memory {self.memory_per_gpu_bytes / gb:.1f} / {self.memory_capacity_bytes / gb:.1f} GB per GPU"
                     + ("" if self.fits else f"  (DOES NOT FIT: short by {self.shortfall_bytes / gb:.1f} GB)"))
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    """A copy of a field value as `dataclasses.asdict` makes it (containers copied, the rest deep-copied)."""
    if isinstance(value, dict):
        return type(value)((_plain(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return copy.deepcopy(value)


# Terms of `breakdown` that add up to `time_s` (the others are informational).
ADDITIVE_TERMS = ("compute_s", "tp_comm_s", "ep_comm_s", "pp_comm_s", "bubble_s", "dp_comm_exposed_s",
                  "optimizer_s", "overhead_s")


def estimate(model: ModelSpec | str, cluster: Cluster | str, strategy: Strategy, workload: Training | Inference,
             *, params: CostParams | None = None, profiles: Any = "auto", layer_times: Any = ()) -> Estimate:
    """Price one strategy. `model` and `cluster` may be names ("llama3-70b", "4x8xH100").

    `params`: cost-model constants (default: calibrated ones for the hardware if saved, else built-in).
    `profiles`: "auto" to use committed/measured hardware profiles, None for datasheet figures only, or a
    mapping from GPU name to a measured profile.
    `layer_times`: measured per-layer times (`costmodel.layertimes.LayerTimes`) that replace the formula for
    the layers' compute where they match the model, GPU and tensor-parallel degree.
    """
    from .catalog import resolve_model
    from .errors import InvalidStrategyError
    from .inference import estimate_inference
    from .training import estimate_training
    from .validate import check_strategy

    model = resolve_model(model)
    cluster = Cluster.parse(cluster)
    if not isinstance(strategy, Strategy):
        raise InvalidStrategyError(f"strategy must be a costmodel.Strategy, got {type(strategy).__name__}",
                                   rule="type")
    if not isinstance(workload, (Training, Inference)):
        from .errors import WorkloadError

        raise WorkloadError(f"workload must be costmodel.Training(...) or costmodel.Inference(...), "
                            f"got {workload!r}")
    check_strategy(model, cluster, strategy, workload)
    ctx = CostContext.make(cluster, workload.dtype, params, profiles, layer_times)
    if isinstance(workload, Training):
        return estimate_training(model, cluster, strategy, workload, ctx)
    if isinstance(workload, Inference):
        return estimate_inference(model, cluster, strategy, workload, ctx)
    from .errors import WorkloadError

    raise WorkloadError(f"workload must be Training or Inference, got {type(workload).__name__}")


@dataclass(frozen=True)
class CostContext:
    """Cost constants, measured profiles, and memo tables for one pricing session (one search)."""

    params: CostParams
    profiles: Mapping[str, Any]
    layer_times: tuple = ()  # measured per-layer times (costmodel.layertimes.LayerTimes), preferred to formulas
    memo: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def make(cls, cluster: Cluster, dtype: str, params: CostParams | None, profiles: Any,
             layer_times: Any = ()) -> "CostContext":
        from .calibrated import params_for_cluster, profiles_for_cluster

        if profiles == "auto":
            prof = profiles_for_cluster(cluster)
        elif profiles is None:
            prof = {}
        else:
            prof = dict(profiles)
        if params is None:
            params = params_for_cluster(cluster)
        return cls(params=params, profiles=prof, layer_times=tuple(layer_times or ()))

    def device(self, gpu: Any, dtype: str) -> Any:
        key = ("device", gpu.name, dtype)
        dev = self.memo.get(key)
        if dev is None:
            from .device import device_perf

            dev = self.memo[key] = device_perf(gpu, dtype, self.params, self.profiles.get(gpu.name))
        return dev
