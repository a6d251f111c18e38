"""Close the loop: fit the cost model's constants to what the profiler and the executor measured.

- `fit_device(profile, dtype)`: the GEMM roofline of `DevicePerf` (efficiency, its saturation size, the launch
  gap, achieved memory bandwidth) fitted to the profile's GEMM and copy points, through the very function the
  cost model prices GEMMs with, so decode-shaped (memory-bound) and training-shaped (compute-bound) points are
  each explained by the right term.
- `fit_collectives(profile, link_gbps)`: achieved fraction of the link bandwidth and a latency factor, from
  the measured collectives, through `costmodel.comm`.
- `calibrate(...)`: both, plus executor RunReports: the remaining constants (attention efficiency,
  elementwise traffic, overlap, fixed overheads) fitted so `estimate()` reproduces the measured step times.
  The result is a `Calibration` (constants with standard errors) that `save()` writes where `estimate()`
  finds it for that hardware.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import least_squares

from hardware_profiles.catalog import get_gpu
from hardware_profiles.errors import ProfileError
from hardware_profiles.fileio import write_text_atomic
from hardware_profiles.gpu import dtype_bytes

from . import comm
from .fitting import FitResult, fit_params
from .params import CostParams

CALIBRATION_DIR = Path(__file__).with_name("calibrations")


@dataclass(frozen=True)
class DeviceFit:
    """GEMM roofline constants of one GPU and precision, fitted to measured GEMM times."""

    gpu: str
    dtype: str
    gemm_efficiency: float
    gemm_half_flops: float
    kernel_overhead_s: float
    memory_gbps: float
    rms_log_error: float
    points: int

    def __getitem__(self, i: int) -> float:  # behaves as (efficiency, half_flops) like a profile's fit
        return (self.gemm_efficiency, self.gemm_half_flops)[i]


def _gemm_time(m: np.ndarray, n: np.ndarray, k: np.ndarray, peak_flops: float, eff: float, half: float,
               overhead: float, mem_bytes_s: float, b: int) -> np.ndarray:
    flops = 2.0 * m * n * k
    compute = (flops + half) / (peak_flops * eff)
    traffic = (m * k + k * n + m * n) * b / mem_bytes_s
    return np.maximum(compute, traffic) + overhead


def fit_device(profile: Any, dtype: str) -> DeviceFit | None:
    """Fit the GEMM roofline to the profile's points for `dtype`; None when the profile has no usable points."""
    return _fit_device(profile, dtype)


@lru_cache(maxsize=64)
def _fit_device(profile: Any, dtype: str) -> DeviceFit | None:
    pts = [p for p in getattr(profile, "gemm", ()) if p.dtype == dtype and p.time_s > 0]
    name = getattr(getattr(profile, "machine", None), "catalog_name", None)
    if len(pts) < 4 or not name:
        return None
    gpu = get_gpu(name)
    try:
        peak = gpu.peak_tflops(dtype) * 1e12
    except Exception:
        return None
    m = np.array([p.m for p in pts], dtype=float)
    n = np.array([p.n for p in pts], dtype=float)
    k = np.array([p.k for p in pts], dtype=float)
    t = np.array([p.time_s for p in pts])
    b = dtype_bytes(dtype)
    bw = profile.memory_bandwidth_gbps() if callable(getattr(profile, "memory_bandwidth_gbps", None)) else None
    mem0 = (bw or gpu.memory_bandwidth_gbps * 0.85) * 1e9
    # unknowns in log space: efficiency, half-saturation FLOPs, launch gap, memory bandwidth
    lo = np.log([0.05, 1e6, 1e-7, mem0 * 0.3])
    hi = np.log([1.0, 1e12, 1e-4, mem0 * 1.5])
    x0 = np.log([0.75, 1e9, 3e-6, mem0])

    def resid(x: np.ndarray) -> np.ndarray:
        eff, half, ov, mem = np.exp(x)
        return np.log(_gemm_time(m, n, k, peak, eff, half, ov, mem, b) / t)

    res = least_squares(resid, np.clip(x0, lo + 1e-9, hi - 1e-9), bounds=(lo, hi), loss="soft_l1", f_scale=0.1)
    eff, half, ov, mem = np.exp(res.x)
    return DeviceFit(gpu=gpu.name, dtype=dtype, gemm_efficiency=float(eff), gemm_half_flops=float(half),
                     kernel_overhead_s=float(ov), memory_gbps=float(mem / 1e9),
                     rms_log_error=float(np.sqrt(np.mean(res.fun ** 2))), points=len(pts))


@dataclass(frozen=True)
class CollectiveFit:
    efficiency: float  # achieved bus bandwidth / link bandwidth
    latency_s: float  # per algorithm step
    rms_log_error: float
    points: int


_OPS = {"all_reduce": comm.all_reduce_s, "all_gather": comm.all_gather_s, "reduce_scatter": comm.reduce_scatter_s,
        "all_to_all": comm.all_to_all_s}


def fit_collectives(profile: Any, link_gbps: float, ops: Sequence[str] = tuple(_OPS)) -> CollectiveFit | None:
    """Achieved fraction of `link_gbps` (the per-GPU link the cost model assumes) and the per-step latency
    that make `costmodel.comm` reproduce the measured collectives."""
    pts = [p for p in getattr(profile, "collectives", ()) if p.op in ops and p.group_size > 1 and p.time_s > 0]
    if len(pts) < 3:
        return None
    sizes = np.array([p.size_bytes for p in pts], dtype=float)
    groups = np.array([p.group_size for p in pts], dtype=float)
    t = np.array([p.time_s for p in pts])
    funcs = [_OPS[p.op] for p in pts]

    def resid(x: np.ndarray) -> np.ndarray:
        eff, lat = np.exp(x)
        pred = np.array([f(s, g, link_gbps * eff, lat) for f, s, g in zip(funcs, sizes, groups)], dtype=float)
        return np.log(pred / t)

    res = least_squares(resid, np.log([0.8, 5e-6]), bounds=(np.log([0.01, 1e-8]), np.log([1.5, 1e-2])),
                        loss="soft_l1", f_scale=0.1)
    eff, lat = np.exp(res.x)
    return CollectiveFit(efficiency=float(eff), latency_s=float(lat),
                         rms_log_error=float(np.sqrt(np.mean(res.fun ** 2))), points=len(pts))


@dataclass(frozen=True)
class RunRecord:
    """One executor measurement: what ran (model, cluster, strategy, workload) and its measured step time."""

    model: Any
    cluster: Any
    strategy: Any
    workload: Any
    measured_s: float
    label: str = ""

    @classmethod
    def from_report(cls, report: Mapping[str, Any] | str | Path) -> "RunRecord":
        """Read an executor RunReport (dict or JSON file) that embeds its plan (the plan file's sections)."""
        from hardware_profiles.topology import Cluster

        from .model import ModelSpec
        from .strategy import Strategy
        from .workload import workload_from_dict

        if not isinstance(report, Mapping):
            report = json.loads(Path(report).read_text())
        try:
            plan = report["plan"]
            return cls(model=ModelSpec.from_dict(plan["model"]), cluster=Cluster.from_dict(plan["cluster"]),
                       strategy=Strategy.from_dict(plan["strategy"]), workload=workload_from_dict(plan["workload"]),
                       measured_s=float(report["step_time_s"]), label=str(report.get("label", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"not a run report with its plan: {exc}") from None


@dataclass(frozen=True)
class Calibration:
    params: CostParams
    hardware: tuple[str, ...]
    fitted: Mapping[str, float]
    stderr: Mapping[str, float]
    sources: Mapping[str, Any] = field(default_factory=dict)
    date: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def save(self, path: str | Path | None = None) -> Path:
        """Write where `estimate()` looks (costmodel/calibrations/ by default)."""
        if path is None:
            CALIBRATION_DIR.mkdir(exist_ok=True)
            path = CALIBRATION_DIR / f"{'+'.join(self.hardware).lower()}.json"
        return write_text_atomic(path, json.dumps({"hardware": list(self.hardware), "date": self.date,
                                                   "cost_params": self.params.to_dict(), "fitted": dict(self.fitted),
                                                   "stderr": dict(self.stderr), "sources": dict(self.sources)},
                                                  indent=2, default=str))


RUN_FIT_DEFAULT = ("attention_efficiency", "elementwise_factor", "kernel_overhead_s", "dp_overlap",
                   "step_overhead_s")


def calibrate(*, profiles: Sequence[Any] = (), runs: Sequence[RunRecord] = (), base: CostParams | None = None,
              fit: Sequence[str] = RUN_FIT_DEFAULT, dtype: str = "bf16") -> Calibration:
    """Fit the cost model to measurements.

    Microbenchmarks first: each profile's GEMM points set that GPU's efficiency (and the collectives set the
    collective efficiency and latency, relative to the cluster's datasheet links). Then the named constants
    `fit` are fitted to the executor runs with the profile-derived ones held fixed.
    """
    from .pricing import estimate

    params = base or CostParams()
    fitted: dict[str, float] = {}
    stderr: dict[str, float] = {}
    hardware: list[str] = []
    sources: dict[str, Any] = {"profiles": [], "runs": [r.label for r in runs]}
    per_gpu = dict(params.gpu_gemm_efficiency)
    for prof in profiles:
        dev = fit_device(prof, dtype)
        if dev is None:
            raise ProfileError(f"profile {getattr(prof, 'date', '?')} has too few {dtype} GEMM points to fit")
        hardware.append(dev.gpu)
        per_gpu[dev.gpu] = dev.gemm_efficiency
        params = params.replace(gemm_half_flops=dev.gemm_half_flops, kernel_overhead_s=dev.kernel_overhead_s,
                                memory_efficiency=dev.memory_gbps / get_gpu(dev.gpu).memory_bandwidth_gbps)
        fitted.update({f"gpu_gemm_efficiency:{dev.gpu}": dev.gemm_efficiency, "gemm_half_flops": dev.gemm_half_flops,
                       "kernel_overhead_s": dev.kernel_overhead_s, "memory_gbps": dev.memory_gbps})
        sources["profiles"].append({"gpu": dev.gpu, "date": getattr(prof, "date", ""),
                                    "gemm_rms_log_error": dev.rms_log_error})
        n = getattr(getattr(prof, "machine", None), "gpu_count", 1) or 1
        if n > 1:
            link = get_gpu(dev.gpu).intra_node_per_direction_gbps
            col = fit_collectives(prof, link)
            if col is not None:
                base_lat = 2e-6  # the topology's default NVLink/NVSwitch hop
                params = params.replace(collective_efficiency=min(col.efficiency, 1.0),
                                        collective_latency_factor=max(col.latency_s / base_lat, 0.1))
                fitted.update({"collective_efficiency": col.efficiency, "collective_latency_s": col.latency_s})
                sources["profiles"][-1]["collective_rms_log_error"] = col.rms_log_error
    params = params.replace(gpu_gemm_efficiency=tuple(sorted(per_gpu.items())))
    if runs:
        names = [f for f in fit if f not in fitted]

        def predict(p: CostParams) -> np.ndarray:
            return np.array([estimate(r.model, r.cluster, r.strategy, r.workload, params=p, profiles=None).time_s
                             for r in runs])

        res: FitResult = fit_params(params, names, predict, np.array([r.measured_s for r in runs]), max_nfev=150)
        params = res.params
        fitted.update(res.values)
        stderr.update(res.stderr)
        sources["runs_rms_log_error"] = res.rms_log_error
        for r in runs:
            for g in r.cluster.gpu_types:
                if g.name not in hardware:
                    hardware.append(g.name)
    return Calibration(params=params, hardware=tuple(dict.fromkeys(hardware)), fitted=fitted, stderr=stderr,
                       sources=sources)
