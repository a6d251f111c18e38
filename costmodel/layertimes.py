"""Measured per-layer times: what a layer really costs on a GPU, preferred over the formula.

`from_module(..., measure_time=True)` measures them on the local device; profiles of other machines can be
loaded the same way. A `LayerTimes` holds the forward time per sample of every entry of a model's
`layers` on one GPU type at one tensor-parallel degree. Training then prices a layer's forward at
micro_batch x that time and its backward at `backward_factor` x the forward (AMP's assumption); the
communication terms stay analytic unless `includes_tp_comm` says the measurement already holds them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hardware_profiles.errors import ProfileError


@dataclass(frozen=True)
class LayerTimes:
    model: str  # ModelSpec.name it was measured for
    gpu: str  # catalog name
    tp: int
    forward_s_per_sample: tuple[float, ...]  # one per entry of ModelSpec.layers
    backward_factor: float = 2.0
    includes_tp_comm: bool = True
    scales_with_batch: bool = True  # False: the time was measured per micro-batch and is taken as fixed
    source: str = ""

    def __post_init__(self) -> None:
        vals = tuple(float(v) for v in self.forward_s_per_sample)
        if not vals or any(not np.isfinite(v) or v < 0 for v in vals):
            raise ProfileError("layer times must be finite, non-negative seconds")
        object.__setattr__(self, "forward_s_per_sample", vals)

    def per_class(self, class_index: Sequence[int], num_classes: int) -> np.ndarray:
        """Mean measured forward time per sample of each layer class."""
        idx = np.asarray(class_index)
        if len(idx) != len(self.forward_s_per_sample):
            raise ProfileError(f"layer times for {self.model!r} list {len(self.forward_s_per_sample)} layers; the "
                               f"model has {len(idx)}")
        t = np.asarray(self.forward_s_per_sample)
        return np.array([t[idx == k].mean() if (idx == k).any() else 0.0 for k in range(num_classes)])


def find(layer_times: Sequence[LayerTimes], model_name: str, gpu: str, tp: int) -> LayerTimes | None:
    for lt in layer_times:
        if lt.model == model_name and lt.gpu == gpu and lt.tp == tp:
            return lt
    return None
