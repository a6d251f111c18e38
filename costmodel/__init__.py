"""What a strategy costs: model descriptions, strategies, workloads and `estimate()`."""
from .errors import InvalidStrategyError, ModelConfigError, UnknownModelError, WorkloadError
from .model import LayerSpec, ModelSpec
from .params import CostParams
from .pricing import Estimate, StageEstimate, estimate
from .strategy import Strategy
from .workload import Inference, Training, workload_from_dict

__all__ = [
    "CostParams", "Estimate", "StageEstimate", "estimate", "Inference", "InvalidStrategyError", "LayerSpec", "ModelConfigError", "ModelSpec", "Strategy", "Training",
    "UnknownModelError", "WorkloadError", "workload_from_dict",
]
