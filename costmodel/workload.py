"""Workloads: what the cluster is asked to do (train steps, or serve a batch of requests)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from hardware_profiles.gpu import normalize_dtype

from .errors import WorkloadError
from .model import MAX_DIM


def _positive_int(label: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise WorkloadError(f"{label} must be a whole number >= 1, got {v!r}")
    if v > MAX_DIM:  # far beyond real batches and contexts; larger numbers overflow the cost terms
        raise WorkloadError(f"{label}={v:,} is beyond what parplan prices (at most {MAX_DIM:,})")


@dataclass(frozen=True)
class Training:
    """One optimizer step over `global_batch` sequences of `seq_len` tokens.

    `seq_len=None` takes the model's sequence length. `dtype` is the compute
    precision (bf16 by default; fp16 for V100/T4-class parts). Mixed precision
    keeps fp32 master weights and Adam moments (12 bytes per parameter); `optimizer="sgd"`
    keeps fp32 master weights and momentum (8 bytes).
    """

    global_batch: int
    seq_len: int | None = None
    dtype: str = "bf16"
    optimizer: str = "adam"
    grad_dtype: str | None = None  # gradient reduction precision; None = dtype

    def __post_init__(self) -> None:
        _positive_int("global_batch", self.global_batch)
        if self.seq_len is not None:
            _positive_int("seq_len", self.seq_len)
        object.__setattr__(self, "dtype", _dtype(self.dtype))
        if self.grad_dtype is not None:
            object.__setattr__(self, "grad_dtype", _dtype(self.grad_dtype))
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise WorkloadError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {self.optimizer!r}")

    kind = "training"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "training", **asdict(self)}


@dataclass(frozen=True)
class Inference:
    """Serve `batch` requests of `prompt_tokens` prompt tokens and `output_tokens` generated tokens.

    Priced with the idealized-runtime form: runtime = P(prompt) + beta x (output - 1).
    """

    prompt_tokens: int
    output_tokens: int
    batch: int = 1
    dtype: str = "bf16"
    kv_dtype: str | None = None  # None = dtype

    def __post_init__(self) -> None:
        _positive_int("prompt_tokens", self.prompt_tokens)
        _positive_int("output_tokens", self.output_tokens)
        _positive_int("batch", self.batch)
        object.__setattr__(self, "dtype", _dtype(self.dtype))
        if self.kv_dtype is not None:
            object.__setattr__(self, "kv_dtype", _dtype(self.kv_dtype))

    kind = "inference"

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "inference", **asdict(self)}


Workload = Training | Inference


def _dtype(d: str) -> str:
    try:
        return normalize_dtype(d)
    except Exception as exc:
        raise WorkloadError(str(exc)) from None


def workload_from_dict(data: Mapping[str, Any]) -> Workload:
    if not isinstance(data, Mapping):
        raise WorkloadError("a workload is a mapping with 'kind': 'training' or 'inference'")
    d = dict(data)
    kind = d.pop("kind", None)
    try:
        if kind == "training":
            return Training(**d)
        if kind == "inference":
            return Inference(**d)
    except TypeError as exc:
        raise WorkloadError(f"malformed {kind} workload: {exc}") from None
    raise WorkloadError(f"workload kind must be 'training' or 'inference', got {kind!r}")
