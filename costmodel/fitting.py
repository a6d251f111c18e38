"""Fit cost-model constants (`CostParams`) to measured times with scipy's robust least squares.

Parameters are addressed by name: a `CostParams` field ("gemm_efficiency") or a
per-GPU efficiency ("gpu_gemm_efficiency:T4"). Each is searched inside bounds
(normalised to [0, 1]); residuals are log(predicted / measured), so a 10% miss
weighs the same on a 1 ms and a 10 s run; the soft-L1 loss keeps one odd
measurement from dragging the rest. Standard errors come from the Jacobian at the
optimum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.optimize import least_squares

from hardware_profiles.errors import ProfileError

from .params import PER_GPU_FIELDS, CostParams

BOUNDS: Mapping[str, tuple[float, float]] = {
    "gemm_efficiency": (0.05, 1.0),
    "gemm_half_flops": (1e6, 1e12),
    "attention_efficiency": (0.02, 1.0),
    "causal_factor": (0.4, 1.0),
    "memory_efficiency": (0.1, 1.0),
    "elementwise_factor": (0.3, 30.0),
    "head_elementwise_factor": (0.3, 30.0),
    "kernel_overhead_s": (0.0, 2e-4),
    "layer_overhead_s": (0.0, 0.05),
    "decode_layer_overhead_s": (0.0, 0.01),
    "collective_efficiency": (0.02, 1.0),
    "collective_latency_factor": (0.1, 2000.0),
    "dp_overlap": (0.0, 1.0),
    "tp_overlap": (0.0, 0.9),
    "tp_collective_overhead_s": (0.0, 0.01),
    "step_overhead_s": (0.0, 10.0),
    "microbatch_overhead_s": (0.0, 0.1),
    "host_layer_s": (0.0, 0.1),
    "activation_overhead": (0.8, 3.0),
    "memory_reserved_bytes": (0.0, 8e9),
    "optimizer_bytes_per_param": (8.0, 200.0),
    "gpu_gemm_efficiency": (0.02, 1.0),
    "gpu_tp_collective_overhead_s": (0.0, 0.01),
    "network_efficiency": (0.05, 1.0),
    "fabric_efficiency": (0.05, 1.0),
    "gpu_host_layer_s": (0.0, 0.1),
}


def apply(base: CostParams, values: Mapping[str, float]) -> CostParams:
    """`base` with named values replaced ("gpu_gemm_efficiency:T4" sets one GPU's efficiency; the same
    "field:GPU" form addresses every per-GPU field in `PER_GPU_FIELDS`)."""
    changes: dict[str, object] = {}
    per_gpu = {f: dict(getattr(base, f)) for f in PER_GPU_FIELDS}
    touched: set[str] = set()
    for name, v in values.items():
        field, _, gpu = name.partition(":")
        if gpu and field in per_gpu:
            per_gpu[field][gpu] = float(v)
            touched.add(field)
        elif name in CostParams.__dataclass_fields__ and name not in per_gpu:
            changes[name] = float(v)
        else:
            raise ProfileError(f"unknown cost parameter {name!r}; per-GPU fields take the form "
                               f"'<field>:<GPU name>' for {', '.join(PER_GPU_FIELDS)}")
    for field in touched:
        changes[field] = tuple(sorted(per_gpu[field].items()))
    return base.replace(**changes)


def current(base: CostParams, name: str) -> float:
    field, _, gpu = name.partition(":")
    if gpu and field in PER_GPU_FIELDS:
        return float(getattr(base, PER_GPU_FIELDS[field])(gpu))
    if name == "head_elementwise_factor":
        return base.head_elementwise_factor_value
    return float(getattr(base, name))


@dataclass(frozen=True)
class FitResult:
    params: CostParams
    values: Mapping[str, float]
    stderr: Mapping[str, float]  # standard error of each fitted value (same units)
    rms_log_error: float  # root mean square of log(predicted / measured) at the optimum
    n_points: int
    evaluations: int

    def describe(self) -> str:
        return ", ".join(f"{k}={v:.4g}±{self.stderr.get(k, float('nan')):.2g}" for k, v in self.values.items())


def fit_params(base: CostParams, names: Sequence[str], predict: Callable[[CostParams], np.ndarray],
               measured: np.ndarray, *, bounds: Mapping[str, tuple[float, float]] | None = None,
               loss: str = "soft_l1", f_scale: float = 0.1, max_nfev: int = 200) -> FitResult:
    """Fit `names` so that predict(params) matches `measured` (positive times)."""
    measured = np.asarray(measured, dtype=float)
    if measured.size == 0 or not np.all(measured > 0):
        raise ProfileError("fitting needs at least one positive measurement")
    bnds = []
    for n in names:
        key = n.split(":", 1)[0]
        b = (bounds or {}).get(n) or BOUNDS.get(n) or BOUNDS.get(key)
        if b is None:
            raise ProfileError(f"no bounds known for {n!r}; pass bounds={{'{n}': (low, high)}}")
        bnds.append(b)
    lo = np.array([b[0] for b in bnds])
    hi = np.array([b[1] for b in bnds])
    x0 = np.clip((np.array([current(base, n) for n in names]) - lo) / (hi - lo), 1e-3, 1 - 1e-3)
    evals = [0]

    def params_at(x: np.ndarray) -> CostParams:
        return apply(base, {n: lo[i] + x[i] * (hi[i] - lo[i]) for i, n in enumerate(names)})

    def residuals(x: np.ndarray) -> np.ndarray:
        evals[0] += 1
        pred = np.asarray(predict(params_at(x)), dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.log(np.maximum(pred, 1e-12) / measured)
        return np.where(np.isfinite(r), r, 10.0)

    res = least_squares(residuals, x0, bounds=(0.0, 1.0), loss=loss, f_scale=f_scale, max_nfev=max_nfev,
                        diff_step=1e-3, x_scale=1.0)
    values = {n: float(lo[i] + res.x[i] * (hi[i] - lo[i])) for i, n in enumerate(names)}
    dof = max(len(measured) - len(names), 1)
    s2 = float(np.sum(res.fun ** 2)) / dof
    try:
        cov = np.linalg.pinv(res.jac.T @ res.jac) * s2
        se = np.sqrt(np.clip(np.diag(cov), 0.0, None)) * (hi - lo)
    except np.linalg.LinAlgError:
        se = np.full(len(names), np.nan)
    return FitResult(params=params_at(res.x), values=values, stderr={n: float(se[i]) for i, n in enumerate(names)},
                     rms_log_error=float(np.sqrt(np.mean(res.fun ** 2))), n_points=len(measured),
                     evaluations=evals[0])
