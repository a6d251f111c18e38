"""How fast one GPU runs the pieces of a layer: a roofline with an efficiency curve.

`DevicePerf` holds the achievable rates of one GPU type for one precision: from a
measured profile where one exists (hardware_profiles.measured), else from the
datasheet times `CostParams` efficiencies. Timing functions accept numpy arrays
so the planner can price many shapes at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from hardware_profiles.gpu import GPUSpec, dtype_bytes

from .params import CostParams


@dataclass(frozen=True)
class DevicePerf:
    gpu: GPUSpec
    dtype: str
    peak_tflops: float  # dense datasheet rate for dtype
    gemm_efficiency: float
    gemm_half_flops: float
    attention_efficiency: float
    memory_gbps: float  # achievable
    kernel_overhead_s: float
    bytes_per_el: int
    origin: str  # "datasheet" or "measured <date> on <host>"

    @property
    def matmul_flops_per_s(self) -> float:
        return self.peak_tflops * 1e12 * self.gemm_efficiency

    def gemm_time_s(self, m: Any, n: Any, k: Any, count: Any = 1.0) -> Any:
        """Time of `count` GEMMs (m x k) @ (k x n): the larger of compute (on the efficiency curve)
        and memory traffic (each operand read once, result written once), plus a launch gap."""
        m = np.asarray(m, dtype=float)
        flops = 2.0 * m * n * k
        compute = (flops + self.gemm_half_flops) / self.matmul_flops_per_s
        traffic = (m * k + k * n + m * n) * self.bytes_per_el / (self.memory_gbps * 1e9)
        t = np.where(m > 0, np.maximum(compute, traffic) + self.kernel_overhead_s, 0.0)
        return t * count

    def attention_time_s(self, flops: Any, bytes_moved: Any) -> Any:
        compute = np.asarray(flops, dtype=float) / (self.peak_tflops * 1e12 * self.attention_efficiency)
        traffic = np.asarray(bytes_moved, dtype=float) / (self.memory_gbps * 1e9)
        return np.maximum(compute, traffic) + self.kernel_overhead_s

    def memory_time_s(self, bytes_moved: Any, kernels: Any = 0.0) -> Any:
        return np.asarray(bytes_moved, dtype=float) / (self.memory_gbps * 1e9) + kernels * self.kernel_overhead_s


def _matmul_dtype(dtype: str, gpu: GPUSpec) -> str:
    """Matrix precision actually used: fp32 training runs its GEMMs in TF32 where the part has it."""
    return dtype


def device_perf(gpu: GPUSpec, dtype: str, params: CostParams, profile: Any = None) -> DevicePerf:
    return _device_perf(gpu, dtype, params, profile)


@lru_cache(maxsize=256)
def _device_perf(gpu: GPUSpec, dtype: str, params: CostParams, profile: Any) -> DevicePerf:
    peak = gpu.peak_tflops(_matmul_dtype(dtype, gpu))
    eff, half = params.gemm_efficiency_for(gpu.name), params.gemm_half_flops
    mem = gpu.memory_bandwidth_gbps * params.memory_efficiency
    origin = "datasheet"
    overhead = params.kernel_overhead_s
    if profile is not None:
        from .calibrate import fit_device

        fit = fit_device(profile, dtype)
        if fit is not None:  # the roofline itself fitted to the measured GEMMs wins over the datasheet
            eff, half, overhead, mem = fit.gemm_efficiency, fit.gemm_half_flops, fit.kernel_overhead_s, fit.memory_gbps
            origin = f"measured {getattr(profile, 'date', '')}".strip()
    return DevicePerf(gpu=gpu, dtype=dtype, peak_tflops=peak, gemm_efficiency=eff, gemm_half_flops=half,
                      attention_efficiency=params.attention_efficiency, memory_gbps=mem,
                      kernel_overhead_s=overhead, bytes_per_el=dtype_bytes(dtype), origin=origin)
