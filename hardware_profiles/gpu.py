"""`GPUSpec`: what one accelerator can do, from its datasheet, with sources.

Conventions (see the catalog module for the figures themselves):
- FLOP/s are *dense* tensor-core rates. Where a datasheet quotes only sparse
  ("with sparsity") figures, the catalog stores half of them and says so in
  `notes`.
- `nvlink_gbps` and `pcie_gbps` are the bidirectional per-GPU figures vendors
  quote (900 GB/s for H100 SXM NVLink 4, 128 GB/s for PCIe Gen5 x16). The cost
  model uses the per-direction figure (`*_per_direction_gbps`), which is what
  one transfer can reach.
- `gbps` means gigabytes (1e9 bytes) per second throughout the project.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedPrecisionError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")


@dataclass(frozen=True)
class GPUSpec:
    name: str
    architecture: str
    form_factor: str  # "SXM", "PCIe", "OAM"
    memory_gb: float
    memory_bandwidth_gbps: float
    fp32_tflops: float
    tf32_tflops: float | None
    bf16_tflops: float | None
    fp16_tflops: float | None
    fp8_tflops: float | None
    int8_tops: float | None
    nvlink_gbps: float | None  # bidirectional per GPU, as quoted; None where the part has none
    pcie_gen: int
    pcie_gbps: float  # bidirectional x16, as quoted
    tdp_w: float
    price_usd_per_hour: float | None
    price_source: str
    sources: tuple[tuple[str, str], ...]  # (field or group of fields, source)
    aliases: tuple[str, ...] = ()
    notes: str = ""
    vendor: str = "NVIDIA"
    # Which entry a bare model name ("H100", "A100") resolves to.
    default_for_model: bool = False

    # -- derived figures -------------------------------------------------
    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def nvlink_per_direction_gbps(self) -> float | None:
        return None if self.nvlink_gbps is None else self.nvlink_gbps / 2

    @property
    def pcie_per_direction_gbps(self) -> float:
        return self.pcie_gbps / 2

    @property
    def intra_node_per_direction_gbps(self) -> float:
        """What one GPU can send to a peer in its node: NVLink where present, else PCIe."""
        nv = self.nvlink_per_direction_gbps
        return nv if nv is not None else self.pcie_per_direction_gbps

    def peak_tflops(self, dtype: str) -> float:
        """Dense peak rate for a precision; matrix work in fp32 uses TF32 where the part has it
        only if asked for "tf32" explicitly."""
        key = normalize_dtype(dtype)
        value = getattr(self, "int8_tops" if key == "int8" else f"{key}_tflops")
        if value is None:
            have = [p for p in PRECISIONS if getattr(self, "int8_tops" if p == "int8" else f"{p}_tflops")]
            raise UnsupportedPrecisionError(
                f"{self.name} has no {key} tensor rate; it supports {', '.join(have)}"
                + ("; use dtype='fp16' for V100/T4-class parts" if key == "bf16" and self.fp16_tflops else "")
            )
        return float(value)

    def source(self, figure: str) -> str:
        for key, src in self.sources:
            if figure == key or figure in key.replace(" ", "").split(","):
                return src
        for key, src in self.sources:
            if key == "*":
                return src
        return ""

    def summary(self) -> str:
        bf = self.bf16_tflops if self.bf16_tflops else self.fp16_tflops
        label = "bf16" if self.bf16_tflops else "fp16"
        link = f"NVLink {self.nvlink_gbps:g} GB/s" if self.nvlink_gbps else f"PCIe Gen{self.pcie_gen}"
        price = f"${self.price_usd_per_hour:.2f}/h" if self.price_usd_per_hour else "price n/a"
        return (
            f"{self.name:<18} {self.memory_gb:>5g} GB  {self.memory_bandwidth_gbps:>6g} GB/s  "
            f"{bf:>6g} TFLOP/s {label}  {link:<18} {self.tdp_w:>5g} W  {price}"
        )


_DTYPE_ALIASES = {
    "float32": "fp32", "fp32": "fp32", "f32": "fp32",
    "tf32": "tf32", "tensorfloat32": "tf32",
    "bfloat16": "bf16", "bf16": "bf16",
    "float16": "fp16", "fp16": "fp16", "half": "fp16", "f16": "fp16",
    "fp8": "fp8", "float8": "fp8", "e4m3": "fp8", "float8_e4m3fn": "fp8",
    "int8": "int8", "i8": "int8",
}

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


_DTYPE_KEYS = {k.replace("_", ""): v for k, v in _DTYPE_ALIASES.items()}


def normalize_dtype(dtype: str) -> str:
    if dtype in PRECISIONS:
        return dtype
    key = str(dtype).lower().replace("torch.", "").replace("-", "").replace("_", "")
    key = _DTYPE_KEYS.get(key)
    if key is None:
        raise UnsupportedPrecisionError(
            f"unknown precision {dtype!r}; use one of {', '.join(PRECISIONS)}"
        )
    return key


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES[normalize_dtype(dtype)]
