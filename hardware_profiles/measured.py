"""Measured profiles: what microbenchmarks saw on a real machine, the fits the cost
model uses, and the merge with the datasheet (the measurement wins).

Conventions
- GEMM: `tflops` = 2*m*n*k / time_s / 1e12 (median over timed runs).
- Memory copy: `bandwidth_gbps` counts bytes read + bytes written (2 x buffer size
  for a device-to-device copy), which is how HBM datasheet bandwidth is quoted.
- Collectives follow NCCL-tests: `size_bytes` is the per-rank buffer the op is
  named for (the input of all-reduce, reduce-scatter and all-to-all, the output of
  all-gather, the message of send/recv); algbw = size_bytes / time_s and
  busbw = algbw x 2(n-1)/n for all-reduce, x (n-1)/n for all-gather,
  reduce-scatter and all-to-all, x 1 for send/recv.
- `gbps` = 1e9 bytes per second.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .catalog import get_gpu
from .errors import ParplanError, ProfileError, UnknownGPUError, UnsupportedPrecisionError
from .gpu import PRECISIONS, GPUSpec, normalize_dtype

PROFILE_FORMAT = "parplan-measured-profile"
PROFILE_VERSION = 1
PROFILE_DIR_ENV = "PARPLAN_PROFILE_DIR"
PACKAGE_PROFILE_DIR = Path(__file__).with_name("profiles")

COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
_OP_ALIASES = {
    "allreduce": "all_reduce", "allgather": "all_gather", "reducescatter": "reduce_scatter",
    "alltoall": "all_to_all", "sendrecv": "send_recv", "p2p": "send_recv",
}


def normalize_op(op: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", str(op).lower())
    norm = _OP_ALIASES.get(key)
    if norm is None:
        raise ParplanError(f"unknown collective {op!r}; use one of {', '.join(COLLECTIVE_OPS)}")
    return norm


def bus_factor(op: str, group_size: int) -> float:
    """NCCL-tests factor turning algorithm bandwidth into bus bandwidth."""
    op = normalize_op(op)
    n = int(group_size)
    if n < 1:
        raise ParplanError(f"group size must be >= 1, got {group_size!r}")
    if op == "send_recv":
        return 1.0
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    return (n - 1) / n


# -- records ------------------------------------------------------------------
@dataclass(frozen=True)
class MachineInfo:
    hostname: str
    gpu_name: str  # as the driver reports it ("NVIDIA H100 80GB HBM3"), or "cpu"
    catalog_name: str | None  # the matching catalog entry, if any
    gpu_count: int
    driver_version: str | None = None
    cuda_version: str | None = None
    torch_version: str | None = None


@dataclass(frozen=True)
class GemmPoint:
    m: int
    n: int
    k: int
    dtype: str
    time_s: float
    tflops: float

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.n * self.k


@dataclass(frozen=True)
class CopyPoint:
    size_bytes: int  # size of the buffer copied
    time_s: float
    bandwidth_gbps: float  # (read + write) bytes / time_s

    @property
    def bytes_moved(self) -> int:
        return 2 * self.size_bytes


@dataclass(frozen=True)
class CollectivePoint:
    op: str
    group_size: int
    size_bytes: int
    time_s: float
    algbw_gbps: float
    busbw_gbps: float


# -- fits ---------------------------------------------------------------------
@dataclass(frozen=True)
class EfficiencyFit:
    """achieved/peak = eff_max / (1 + half_flops / flops), flops = 2mnk per GEMM.

    Behaves as the pair `(eff_max, half_flops)` (unpacking, `fit[0]`); the standard
    errors come from the fit's covariance (inf where too few points to estimate them).
    """

    dtype: str
    peak_tflops: float
    peak_origin: str  # "datasheet" or "max measured" (no catalog peak for this machine)
    eff_max: float
    half_flops: float
    eff_max_stderr: float
    half_flops_stderr: float
    num_points: int

    def _pair(self) -> tuple[float, float]:
        return self.eff_max, self.half_flops

    def __iter__(self) -> Iterator[float]:
        return iter(self._pair())

    def __getitem__(self, i: int) -> float:
        return self._pair()[i]

    def __len__(self) -> int:
        return 2

    def efficiency(self, flops: float) -> float:
        return self.eff_max / (1.0 + self.half_flops / max(float(flops), 1e-30))

    def tflops(self, m: int, n: int, k: int) -> float:
        return self.peak_tflops * self.efficiency(2.0 * m * n * k)


@dataclass(frozen=True)
class BandwidthFit:
    """time_s = latency_s + factor x bytes / (bandwidth_gbps x 1e9).

    Behaves as the pair `(bandwidth_gbps, latency_s)`. For collectives `factor` is the
    NCCL-tests bus factor, so `bandwidth_gbps` is a bus bandwidth; for memory
    copies it is 2 (read + write).
    """

    bandwidth_gbps: float
    latency_s: float
    bandwidth_stderr_gbps: float
    latency_stderr_s: float
    num_points: int
    bytes_factor: float

    def _pair(self) -> tuple[float, float]:
        return self.bandwidth_gbps, self.latency_s

    def __iter__(self) -> Iterator[float]:
        return iter(self._pair())

    def __getitem__(self, i: int) -> float:
        return self._pair()[i]

    def __len__(self) -> int:
        return 2

    def time_s(self, size_bytes: float) -> float:
        return self.latency_s + self.bytes_factor * size_bytes / (self.bandwidth_gbps * 1e9)


def fit_efficiency_curve(flops: Sequence[float], efficiency: Sequence[float]) -> tuple[float, float, float, float]:
    """Fit eff = eff_max / (1 + half / flops); returns (eff_max, half, eff_max_se, half_se).

    Residuals are relative (each point counts the same whatever its size); the
    half-point is fitted in log10 so shapes spanning nine decades condition well.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    x = np.asarray(flops, dtype=float)
    y = np.asarray(efficiency, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        raise ProfileError(f"an efficiency fit needs at least 2 positive points, got {len(x)}")

    def model(xv: np.ndarray, eff_max: float, log_half: float) -> np.ndarray:
        return eff_max / (1.0 + 10.0 ** (log_half - np.log10(xv)))

    # Start from the best point and the size where efficiency first reaches half of it.
    e0 = float(y.max())
    below = x[y < 0.5 * e0]
    h0 = float(np.log10(below.max() if len(below) else x.min()))
    try:
        with warnings.catch_warnings():  # too few points for a covariance: reported as inf stderr
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, pcov = curve_fit(model, x, y, p0=(e0, h0), sigma=y, absolute_sigma=False,
                                   bounds=([0.0, -6.0], [np.inf, 30.0]), maxfev=20000)
    except (RuntimeError, ValueError) as exc:
        raise ProfileError(f"the GEMM efficiency fit did not converge: {exc}") from None
    eff_max, log_half = (float(v) for v in popt)
    half = 10.0 ** log_half
    se = _stderrs(pcov, len(x))
    return eff_max, half, se[0], half * math.log(10.0) * se[1]


def fit_linear_time(x_bytes: Sequence[float], time_s: Sequence[float]) -> tuple[float, float, float, float]:
    """Fit time = latency + x / bandwidth (x already multiplied by any bytes factor).

    Returns (bandwidth_gbps, latency_s, bandwidth_se_gbps, latency_se_s); residuals
    are relative so small and large messages both count.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    x = np.asarray(x_bytes, dtype=float)
    t = np.asarray(time_s, dtype=float)
    ok = np.isfinite(x) & np.isfinite(t) & (x > 0) & (t > 0)
    x, t = x[ok], t[ok]
    if len(x) < 2:
        raise ProfileError(f"a bandwidth fit needs at least 2 positive points, got {len(x)}")
    if len(np.unique(x)) < 2:
        raise ProfileError("a bandwidth fit needs at least 2 different sizes")

    def model(xv: np.ndarray, latency_us: float, inv_bw_ns_per_byte: float) -> np.ndarray:
        return latency_us * 1e-6 + xv * inv_bw_ns_per_byte * 1e-9

    # Seeds: the largest message gives the bandwidth, the smallest the latency.
    i_big, i_small = int(np.argmax(x)), int(np.argmin(x))
    inv0 = max(t[i_big] / x[i_big] * 1e9, 1e-12)
    lat0 = max((t[i_small] - x[i_small] * inv0 * 1e-9) * 1e6, 1e-3)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            popt, pcov = curve_fit(model, x, t, p0=(lat0, inv0), sigma=t, absolute_sigma=False,
                                   bounds=([0.0, 1e-15], [np.inf, np.inf]), maxfev=20000)
    except (RuntimeError, ValueError) as exc:
        raise ProfileError(f"the bandwidth fit did not converge: {exc}") from None
    lat_us, inv = (float(v) for v in popt)
    se = _stderrs(pcov, len(x))
    bw_gbps = 1.0 / inv  # bytes per ns == GB/s
    return bw_gbps, lat_us * 1e-6, se[1] / inv ** 2, se[0] * 1e-6


def _stderrs(pcov: np.ndarray, n_points: int) -> tuple[float, float]:
    if n_points <= 2 or not np.all(np.isfinite(pcov)):
        return math.inf, math.inf
    d = np.sqrt(np.clip(np.diag(pcov), 0.0, None))
    return float(d[0]), float(d[1])


# -- the profile ----------------------------------------------------------------
@dataclass(frozen=True)
class MeasuredProfile:
    machine: MachineInfo
    date: str  # UTC, ISO 8601
    gemm: tuple[GemmPoint, ...] = ()
    copy: tuple[CopyPoint, ...] = ()
    collectives: tuple[CollectivePoint, ...] = ()
    backend: str | None = None  # torch.distributed backend of the collectives ("nccl", "gloo")
    device: str = "cpu"  # what the GEMM and copy timings ran on ("cuda", "cpu")
    collective_dtype: str | None = None
    duration_s: float = 0.0
    notes: tuple[str, ...] = ()
    copy_bytes_counted: str = "read+write"
    version: int = PROFILE_VERSION

    def __post_init__(self) -> None:
        for label in ("gemm", "copy", "collectives", "notes"):
            value = getattr(self, label)
            if not isinstance(value, tuple):
                object.__setattr__(self, label, tuple(value))

    # -- identity ----------------------------------------------------------
    @property
    def origin(self) -> str:
        return f"measured {self.date[:10]} on {self.machine.hostname}"

    @property
    def gpu_spec(self) -> GPUSpec | None:
        if self.machine.catalog_name is None:
            return None
        try:
            return get_gpu(self.machine.catalog_name)
        except UnknownGPUError:
            return None

    # -- queries -----------------------------------------------------------
    def gemm_points(self, dtype: str) -> tuple[GemmPoint, ...]:
        key = normalize_dtype(dtype)
        return tuple(p for p in self.gemm if p.dtype == key)

    def gemm_tflops(self, m: int, n: int, k: int, dtype: str) -> float:
        """The measured rate for an exact shape (raises if that shape was not measured)."""
        for p in self.gemm_points(dtype):
            if (p.m, p.n, p.k) == (m, n, k):
                return p.tflops
        raise ProfileError(f"no GEMM ({m}, {n}, {k}, {normalize_dtype(dtype)}) in this profile; "
                           "use gemm_efficiency(dtype) for other shapes")

    def max_gemm_tflops(self, dtype: str) -> float | None:
        pts = self.gemm_points(dtype)
        return max(p.tflops for p in pts) if pts else None

    def gemm_efficiency(self, dtype: str, *, peak_tflops: float | None = None) -> EfficiencyFit:
        """Fit achieved/peak = eff_max / (1 + half_flops / flops) to this dtype's GEMM points.

        `peak_tflops` defaults to the catalog's dense peak for the machine's GPU;
        where there is none (CPU, unknown GPU) the best measured rate is the peak.
        """
        key = normalize_dtype(dtype)
        pts = self.gemm_points(key)
        if len(pts) < 2:
            have = sorted({p.dtype for p in self.gemm})
            raise ProfileError(f"the profile has {len(pts)} {key} GEMM point(s); a fit needs 2 or more "
                               f"(measured dtypes: {', '.join(have) or 'none'})")
        origin = "datasheet"
        if peak_tflops is None:
            spec = self.gpu_spec
            try:
                peak_tflops = spec.peak_tflops(key) if spec is not None else None
            except UnsupportedPrecisionError:
                peak_tflops = None
            if peak_tflops is None:
                peak_tflops, origin = max(p.tflops for p in pts), "max measured"
        else:
            origin = "given"
        if not peak_tflops or peak_tflops <= 0:
            raise ProfileError(f"peak_tflops must be positive, got {peak_tflops!r}")
        flops = [p.flops for p in pts]
        eff = [p.tflops / peak_tflops for p in pts]
        e, h, e_se, h_se = fit_efficiency_curve(flops, eff)
        return EfficiencyFit(key, float(peak_tflops), origin, e, h, e_se, h_se, len(pts))

    def collective_points(self, op: str, group_size: int) -> tuple[CollectivePoint, ...]:
        op = normalize_op(op)
        return tuple(sorted((p for p in self.collectives if p.op == op and p.group_size == group_size),
                            key=lambda p: p.size_bytes))

    def collective_fit(self, op: str, group_size: int) -> BandwidthFit:
        """Fit time = latency + bus_factor x bytes / bandwidth; bandwidth is a bus bandwidth."""
        op = normalize_op(op)
        pts = self.collective_points(op, group_size)
        if len(pts) < 2:
            have = sorted({(p.op, p.group_size) for p in self.collectives})
            raise ProfileError(f"the profile has {len(pts)} {op} point(s) at group size {group_size}; a fit "
                               f"needs 2 or more (measured: {have or 'no collectives'})")
        factor = bus_factor(op, group_size)
        bw, lat, bw_se, lat_se = fit_linear_time([factor * p.size_bytes for p in pts], [p.time_s for p in pts])
        return BandwidthFit(bw, lat, bw_se, lat_se, len(pts), factor)

    def memory_bandwidth_fit(self) -> BandwidthFit:
        if len(self.copy) < 2:
            raise ProfileError(f"the profile has {len(self.copy)} copy point(s); a fit needs 2 or more")
        bw, lat, bw_se, lat_se = fit_linear_time([p.bytes_moved for p in self.copy], [p.time_s for p in self.copy])
        return BandwidthFit(bw, lat, bw_se, lat_se, len(self.copy), 2.0)

    @property
    def memory_bandwidth_gbps(self) -> float | None:
        """Best measured copy bandwidth (read + write bytes), None without copy points."""
        return max((p.bandwidth_gbps for p in self.copy), default=None)

    def max_busbw_gbps(self, op: str, group_size: int) -> float | None:
        pts = self.collective_points(op, group_size)
        return max((p.busbw_gbps for p in pts), default=None)

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "version": self.version,
            "date": self.date,
            "machine": asdict(self.machine),
            "backend": self.backend,
            "device": self.device,
            "collective_dtype": self.collective_dtype,
            "duration_s": self.duration_s,
            "copy_bytes_counted": self.copy_bytes_counted,
            "notes": list(self.notes),
            "conventions": {
                "gemm_tflops": "2*m*n*k / time_s / 1e12, median of timed runs",
                "copy_bandwidth_gbps": "(bytes read + bytes written) / time_s / 1e9",
                "collectives": "NCCL-tests: algbw = size_bytes / time_s; busbw = algbw x 2(n-1)/n (all_reduce), "
                               "(n-1)/n (all_gather, reduce_scatter, all_to_all), 1 (send_recv)",
            },
            "gemm": [asdict(p) for p in self.gemm],
            "copy": [asdict(p) for p in self.copy],
            "collectives": [asdict(p) for p in self.collectives],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "profile") -> "MeasuredProfile":
        if not isinstance(data, Mapping):
            raise ProfileError(f"{source}: a measured profile is a JSON object, got {type(data).__name__}")
        if data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{source}: not a parplan measured profile (format={data.get('format')!r}, "
                               f"expected {PROFILE_FORMAT!r})")
        version = data.get("version")
        if version != PROFILE_VERSION:
            raise ProfileError(f"{source}: profile format version {version!r} is not supported "
                               f"(this code reads version {PROFILE_VERSION}); re-run the profiler")
        try:
            machine = MachineInfo(**_fields(data["machine"], MachineInfo, source, "machine"))
            gemm = tuple(GemmPoint(**_fields(p, GemmPoint, source, "gemm")) for p in data.get("gemm", []))
            copy = tuple(CopyPoint(**_fields(p, CopyPoint, source, "copy")) for p in data.get("copy", []))
            coll = tuple(CollectivePoint(**_fields(p, CollectivePoint, source, "collectives"))
                         for p in data.get("collectives", []))
            date = str(data["date"])
        except KeyError as exc:
            raise ProfileError(f"{source}: missing field {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ProfileError(f"{source}: malformed entry: {exc}") from None
        _check_points(gemm, copy, coll, source)
        return cls(machine=machine, date=date, gemm=gemm, copy=copy, collectives=coll,
                   backend=data.get("backend"), device=str(data.get("device", "cpu")),
                   collective_dtype=data.get("collective_dtype"), duration_s=float(data.get("duration_s", 0.0)),
                   notes=tuple(str(n) for n in data.get("notes", [])),
                   copy_bytes_counted=str(data.get("copy_bytes_counted", "read+write")), version=int(version))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON atomically (a temporary file renamed into place)."""
        from .fileio import write_text_atomic

        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "MeasuredProfile":
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise ProfileError(f"measured profile {str(p)!r} does not exist") from None
        except OSError as exc:
            raise ProfileError(f"cannot read measured profile {str(p)!r}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{p}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=str(p))

    # -- display -------------------------------------------------------------
    def summary(self) -> str:
        m = self.machine
        lines = [f"{m.gpu_count} x {m.gpu_name} ({m.catalog_name or 'not in catalog'}) on {m.hostname}, "
                 f"{self.date}; torch {m.torch_version}, CUDA {m.cuda_version}, driver {m.driver_version}"]
        for dtype in sorted({p.dtype for p in self.gemm}):
            best = max(self.gemm_points(dtype), key=lambda p: p.tflops)
            lines.append(f"  GEMM {dtype}: best {best.tflops:.1f} TFLOP/s at {best.m}x{best.n}x{best.k}")
        if self.copy:
            lines.append(f"  copy: best {self.memory_bandwidth_gbps:.0f} GB/s ({self.copy_bytes_counted})")
        for op, n in sorted({(p.op, p.group_size) for p in self.collectives}):
            lines.append(f"  {op} x{n}: best busbw {self.max_busbw_gbps(op, n):.1f} GB/s ({self.backend})")
        return "\n".join(lines)


def _fields(raw: Any, cls: type, source: str, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{source}: {where} entries must be objects, got {type(raw).__name__}")
    names = set(cls.__dataclass_fields__)
    unknown = set(raw) - names
    if unknown:
        raise ProfileError(f"{source}: {where} entry has unknown keys {sorted(unknown)}")
    return dict(raw)


def _check_points(gemm: Iterable[GemmPoint], copy: Iterable[CopyPoint], coll: Iterable[CollectivePoint],
                  source: str) -> None:
    for p in gemm:
        if min(p.m, p.n, p.k) < 1 or not _positive(p.time_s) or not _positive(p.tflops):
            raise ProfileError(f"{source}: bad GEMM point {p}")
        if p.dtype not in PRECISIONS:
            raise ProfileError(f"{source}: GEMM dtype {p.dtype!r} is not one of {', '.join(PRECISIONS)}")
    for c in copy:
        if c.size_bytes < 1 or not _positive(c.time_s) or not _positive(c.bandwidth_gbps):
            raise ProfileError(f"{source}: bad copy point {c}")
    for q in coll:
        if q.op not in COLLECTIVE_OPS or q.group_size < 2 or q.size_bytes < 1 or not _positive(q.time_s):
            raise ProfileError(f"{source}: bad collective point {q}")


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# -- finding profiles --------------------------------------------------------------
def profile_dirs(search_dirs: Iterable[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Where measured profiles are looked for: `search_dirs`, then $PARPLAN_PROFILE_DIR
    (os.pathsep-separated), then the profiles committed with the package."""
    dirs: list[Path] = [Path(d) for d in (search_dirs or ())]
    env = os.environ.get(PROFILE_DIR_ENV, "")
    dirs += [Path(d) for d in env.split(os.pathsep) if d.strip()]
    dirs.append(PACKAGE_PROFILE_DIR)
    return dirs


def iter_profiles(search_dirs: Iterable[str | os.PathLike[str]] | None = None) -> Iterator[tuple[Path, MeasuredProfile]]:
    """Every readable profile in the search directories; unreadable files are skipped with a warning."""
    seen: set[Path] = set()
    for d in profile_dirs(search_dirs):
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.json")):
            real = f.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                yield f, MeasuredProfile.load(f)
            except ProfileError as exc:
                warnings.warn(f"skipping measured profile: {exc}", stacklevel=2)


def load_profile(gpu: str | GPUSpec, search_dirs: Iterable[str | os.PathLike[str]] | None = None,
                 *, min_gpus: int = 1) -> MeasuredProfile | None:
    """The newest measured profile of this GPU type (matched by catalog name), or None.

    Looks in `search_dirs`, $PARPLAN_PROFILE_DIR and the package's committed
    profiles; `min_gpus` asks for a profile taken on at least that many GPUs (to
    get collectives).
    """
    spec = get_gpu(gpu)
    best: MeasuredProfile | None = None
    for _, prof in iter_profiles(search_dirs):
        if prof.machine.catalog_name != spec.name or prof.machine.gpu_count < min_gpus:
            continue
        if best is None or _date_key(prof.date) > _date_key(best.date):
            best = prof
    return best


def _date_key(date: str) -> str:
    return date.replace(" ", "T")


# -- merging with the datasheet ------------------------------------------------------
@dataclass(frozen=True)
class Figure:
    value: float
    origin: str  # "datasheet" or "measured 2026-11-22 on host"
    stderr: float | None = None


@dataclass(frozen=True)
class EffectiveFigures:
    """Datasheet figures with measured ones winning, each tagged with its origin.

    - `matmul_tflops[dtype]`: achievable dense GEMM rate (measured: the best rate
      seen over the GEMM grid; datasheet: the peak).
    - `memory_bandwidth_gbps`: achievable HBM bandwidth (read + write bytes).
    - `intra_node_busbw_gbps`: what a collective inside the node sustains per GPU
      per direction (measured: best all-reduce bus bandwidth at the largest group;
      datasheet: the NVLink or PCIe per-direction figure).
    - `collective_busbw_gbps[(op, group_size)]`: measured bus bandwidths only.
    """

    gpu: GPUSpec
    matmul_tflops: Mapping[str, Figure]
    memory_bandwidth_gbps: Figure
    intra_node_busbw_gbps: Figure
    collective_busbw_gbps: Mapping[tuple[str, int], Figure] = field(default_factory=dict)
    gemm_fits: Mapping[str, EfficiencyFit] = field(default_factory=dict)
    collective_fits: Mapping[tuple[str, int], BandwidthFit] = field(default_factory=dict)
    profile: MeasuredProfile | None = None

    def describe(self) -> str:
        lines = [f"{self.gpu.name}:"]
        for dtype, f in self.matmul_tflops.items():
            lines.append(f"  matmul {dtype:<5} {f.value:9.1f} TFLOP/s  ({f.origin})")
        lines.append(f"  memory      {self.memory_bandwidth_gbps.value:9.0f} GB/s     ({self.memory_bandwidth_gbps.origin})")
        lines.append(f"  intra-node  {self.intra_node_busbw_gbps.value:9.1f} GB/s     ({self.intra_node_busbw_gbps.origin})")
        for (op, n), f in sorted(self.collective_busbw_gbps.items()):
            lines.append(f"  {op} x{n:<3} {f.value:9.1f} GB/s bus ({f.origin})")
        return "\n".join(lines)


def effective_figures(gpu: str | GPUSpec, profile: MeasuredProfile | None = None) -> EffectiveFigures:
    """Merge the datasheet with a measured profile of the same GPU type; the measurement wins."""
    spec = get_gpu(gpu)
    if profile is not None and profile.machine.catalog_name != spec.name:
        raise ProfileError(f"the profile was measured on {profile.machine.catalog_name or profile.machine.gpu_name!r}, "
                           f"not {spec.name!r}; load one with load_profile({spec.name!r})")
    sheet = "datasheet"
    matmul: dict[str, Figure] = {}
    fits: dict[str, EfficiencyFit] = {}
    for dtype in PRECISIONS:
        try:
            peak = spec.peak_tflops(dtype)
        except UnsupportedPrecisionError:
            continue
        matmul[dtype] = Figure(peak, sheet)
    mem = Figure(float(spec.memory_bandwidth_gbps), sheet)
    intra = Figure(float(spec.intra_node_per_direction_gbps), sheet)
    coll: dict[tuple[str, int], Figure] = {}
    coll_fits: dict[tuple[str, int], BandwidthFit] = {}
    if profile is not None:
        origin = profile.origin
        for dtype in sorted({p.dtype for p in profile.gemm}):
            matmul[dtype] = Figure(float(profile.max_gemm_tflops(dtype)), origin)
            try:
                fits[dtype] = profile.gemm_efficiency(dtype)
            except ProfileError:
                pass
        if profile.copy:
            stderr = None
            try:
                stderr = profile.memory_bandwidth_fit().bandwidth_stderr_gbps
            except ProfileError:
                pass
            mem = Figure(float(profile.memory_bandwidth_gbps), origin, stderr)
        for op, n in sorted({(p.op, p.group_size) for p in profile.collectives}):
            coll[(op, n)] = Figure(float(profile.max_busbw_gbps(op, n)), origin)
            try:
                coll_fits[(op, n)] = profile.collective_fit(op, n)
            except ProfileError:
                pass
        ar = [(n, f) for (op, n), f in coll.items() if op == "all_reduce"]
        if ar:
            intra = max(ar, key=lambda item: item[0])[1]
    return EffectiveFigures(spec, matmul, mem, intra, coll, fits, coll_fits, profile)
