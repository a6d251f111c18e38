"""Microbenchmarks of what the cost model needs, written as a `MeasuredProfile`.

- GEMM throughput over a grid of shapes (decode-like m = 1..64, training-like
  m = 2048..16384, square), per dtype.
- Device-to-device copy bandwidth (bytes read + written).
- With torch.distributed (initialised by the caller, by torchrun, or spawned here
  with `world_size`): all-reduce, all-gather, reduce-scatter, all-to-all and
  send/recv by message size and group size (NCCL on GPUs, gloo on CPU).

GPU work is timed with CUDA events after warm-up; each figure is the median of
several timed batches. Inputs are random (never zeros), and small operands are
rotated through a pool larger than the L2 cache so repeated calls do not run from
cache.

    python -m hardware_profiles.profiler --out profile.json [--quick] [--world-size N]
    torchrun --nproc-per-node 8 -m hardware_profiles.profiler --out profile.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .catalog import get_gpu
from .errors import ProfileError, UnknownGPUError, UnsupportedPrecisionError
from .gpu import normalize_dtype
from .measured import (COLLECTIVE_OPS, CollectivePoint, CopyPoint, GemmPoint, MachineInfo, MeasuredProfile,
                       bus_factor, normalize_op)

KB, MB, GB = 1 << 10, 1 << 20, 1 << 30
_ROTATE_BYTES_GPU = 256 * MB  # more than any GPU's L2 (B200: 126 MB)
_MAX_ROTATE = 64
_MAX_COLLECTIVE_REPS = 20  # all-reduce sums in place: bounded repeats keep fp32 values finite

Shape = tuple[int, int, int]


# -- grids ---------------------------------------------------------------------
def default_gemm_shapes(device_type: str, quick: bool = False) -> list[Shape]:
    """(m, n, k) grid: decode-like (small m), training-like (large m) and square shapes."""
    if device_type != "cuda":
        ms, nks, squares = ((1, 8, 64), ((128, 128), (256, 256)), (32, 64, 128, 256))
        if quick:
            ms, nks, squares = (1, 16), ((64, 64), (128, 128)), (32, 96)
        shapes = [(m, n, k) for m in ms for n, k in nks] + [(s, s, s) for s in squares]
    else:
        nks = ((4096, 4096), (8192, 8192), (28672, 8192), (8192, 28672))  # attention/MLP-like projections
        decode, train, squares = (1, 4, 16, 64), (2048, 4096, 8192, 16384), (256, 512, 1024, 2048, 4096, 8192)
        if quick:
            nks, decode, train, squares = ((4096, 4096), (8192, 8192)), (1, 64), (2048, 8192), (512, 2048)
        shapes = [(m, n, k) for m in decode + train for n, k in nks] + [(s, s, s) for s in squares]
    return list(dict.fromkeys(shapes))


def default_copy_sizes(device_type: str, quick: bool = False) -> list[int]:
    if device_type != "cuda":
        return [64 * KB, 1 * MB] if quick else [64 * KB, 256 * KB, 1 * MB, 4 * MB]
    return [16 * MB, 256 * MB] if quick else [4 * MB, 16 * MB, 64 * MB, 256 * MB, 1 * GB]


def default_collective_sizes(device_type: str, quick: bool = False) -> list[int]:
    if device_type != "cuda":
        return [1 * KB, 16 * KB] if quick else [1 * KB, 4 * KB, 16 * KB, 64 * KB]
    if quick:
        return [1 * KB, 64 * KB, 4 * MB, 256 * MB]
    return [KB * 4 ** i for i in range(11)]  # 1 KB .. 1 GB


def default_group_sizes(world_size: int) -> list[int]:
    sizes = [g for g in (2 ** i for i in range(1, 16)) if g <= world_size]
    if world_size >= 2 and world_size not in sizes:
        sizes.append(world_size)
    return sizes


# -- timing --------------------------------------------------------------------
class _Timer:
    """Median seconds per call of `fn`, timed in batches (CUDA events on GPUs)."""

    def __init__(self, torch: Any, device: Any, *, warmup: int, samples: int, min_time_s: float,
                 max_reps: int = 1000):
        self.torch, self.device = torch, device
        self.cuda = device.type == "cuda"
        self.warmup, self.samples, self.min_time_s, self.max_reps = warmup, samples, min_time_s, max_reps

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def batch(self, fn: Callable[[], Any], reps: int) -> float:
        """Seconds for `reps` back-to-back calls."""
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return time.perf_counter() - t0

    def reps_for(self, one_call_s: float) -> int:
        per_sample = self.min_time_s / self.samples
        return int(min(self.max_reps, max(1, math.ceil(per_sample / max(one_call_s, 1e-7)))))

    def median(self, fn: Callable[[], Any], *, warmup: int | None = None) -> float:
        """`warmup` defaults to the timer's; pass at least the rotation length so every buffer
        has been touched (first-touch page faults) before timing."""
        for _ in range(max(self.warmup, warmup or 0)):
            fn()
        self.sync()
        reps = self.reps_for(self.batch(fn, 1))
        return statistics.median(self.batch(fn, reps) / reps for _ in range(self.samples))


def _rotation(bytes_per_set: int, device_type: str) -> int:
    """How many operand sets to cycle through so repeated calls do not run from L2.

    CPUs get one set: their figures only feed tests, and fresh host buffers cost
    first-touch page faults that would swamp the copy being timed.
    """
    if device_type != "cuda":
        return 1
    return int(min(_MAX_ROTATE, max(1, _ROTATE_BYTES_GPU // max(bytes_per_set, 1))))


# -- GEMM and copy -------------------------------------------------------------------
_TORCH_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@contextmanager
def _matmul_precision(torch: Any, key: str) -> Iterator[None]:
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = key == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def measure_gemm(torch: Any, device: Any, shape: Shape, dtype: str, timer: _Timer) -> GemmPoint:
    key = normalize_dtype(dtype)
    m, n, k = shape
    tdtype = getattr(torch, _TORCH_DTYPES[key])
    elt = torch.tensor([], dtype=tdtype).element_size()
    sets = _rotation((m * k + k * n) * elt, device.type)
    gen = torch.Generator(device=device).manual_seed(1234 + m + n + k)
    a = [torch.randn(m, k, device=device, dtype=tdtype, generator=gen) for _ in range(sets)]
    b = [torch.randn(k, n, device=device, dtype=tdtype, generator=gen) for _ in range(sets)]
    c = torch.empty(m, n, device=device, dtype=tdtype)
    state = {"i": 0}

    def step() -> None:
        i = state["i"] = (state["i"] + 1) % sets
        torch.mm(a[i], b[i], out=c)

    with _matmul_precision(torch, key) if device.type == "cuda" else nullcontext():
        t = timer.median(step, warmup=2 * sets)
    return GemmPoint(m=m, n=n, k=k, dtype=key, time_s=t, tflops=2.0 * m * n * k / t / 1e12)


def measure_copy(torch: Any, device: Any, size_bytes: int, timer: _Timer) -> CopyPoint:
    numel = max(1, size_bytes // 4)
    sets = _rotation(2 * numel * 4, device.type)
    src = [torch.randn(numel, device=device) for _ in range(sets)]
    dst = [torch.empty(numel, device=device) for _ in range(sets)]
    state = {"i": 0}

    def step() -> None:
        i = state["i"] = (state["i"] + 1) % sets
        dst[i].copy_(src[i])

    t = timer.median(step, warmup=2 * sets)
    size = numel * 4
    return CopyPoint(size_bytes=size, time_s=t, bandwidth_gbps=2.0 * size / t / 1e9)


# -- collectives -------------------------------------------------------------------
def _gather_fn(dist: Any) -> Callable:
    return getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _scatter_fn(dist: Any) -> Callable:
    return getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _collective_op(torch: Any, dist: Any, op: str, size_bytes: int, group: Any, group_size: int, rank: int,
                   device: Any) -> tuple[Callable[[], Any], Callable[[], Any], int]:
    """(step, prepare, actual size_bytes) for one collective; `prepare` runs untimed before each batch."""
    elt = 4  # float32, as NCCL-tests
    numel = max(group_size, (size_bytes // elt) // group_size * group_size)
    gen = torch.Generator(device=device).manual_seed(97 + rank)
    nothing = lambda: None  # noqa: E731
    if op == "all_reduce":
        pristine = torch.randn(numel, device=device, generator=gen)
        buf = pristine.clone()
        return (lambda: dist.all_reduce(buf, group=group)), (lambda: buf.copy_(pristine)), numel * elt
    if op == "all_gather":
        inp = torch.randn(numel // group_size, device=device, generator=gen)
        out = torch.empty(numel, device=device)
        fn = _gather_fn(dist)
        return (lambda: fn(out, inp, group=group)), nothing, numel * elt
    if op == "reduce_scatter":
        inp = torch.randn(numel, device=device, generator=gen)
        out = torch.empty(numel // group_size, device=device)
        fn = _scatter_fn(dist)
        return (lambda: fn(out, inp, group=group)), nothing, numel * elt
    if op == "all_to_all":
        inp = torch.randn(numel, device=device, generator=gen)
        out = torch.empty(numel, device=device)
        return (lambda: dist.all_to_all_single(out, inp, group=group)), nothing, numel * elt
    if op == "send_recv":
        # NCCL-tests sendrecv: every member sends to the next and receives from the previous.
        numel = max(1, size_bytes // elt)
        send = torch.randn(numel, device=device, generator=gen)
        recv = torch.empty(numel, device=device)
        nxt, prv = (rank + 1) % group_size, (rank - 1) % group_size

        def step() -> None:
            ops = [dist.P2POp(dist.isend, send, nxt, group), dist.P2POp(dist.irecv, recv, prv, group)]
            for req in dist.batch_isend_irecv(ops):
                req.wait()

        return step, nothing, numel * elt
    raise ProfileError(f"unknown collective {op!r}")


def _group_max(torch: Any, dist: Any, value: float, group: Any, device: Any) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return float(t.item())


def _group_barrier(torch: Any, dist: Any, group: Any, device: Any, timer: _Timer) -> None:
    t = torch.zeros(1, device=device)
    dist.all_reduce(t, group=group)
    timer.sync()


def measure_collective(torch: Any, dist: Any, op: str, size_bytes: int, group: Any, group_size: int,
                       device: Any, timer: _Timer) -> CollectivePoint:
    """Time one collective on the members of `group` (ranks 0..group_size-1); all members get the same point."""
    rank = dist.get_rank()
    step, prepare, size = _collective_op(torch, dist, op, size_bytes, group, group_size, rank, device)
    for _ in range(timer.warmup):
        prepare()
        step()
    timer.sync()
    prepare()
    _group_barrier(torch, dist, group, device, timer)
    # Every member must run the same number of repeats, so they agree on it first.
    one = _group_max(torch, dist, timer.batch(step, 1), group, device)
    reps = min(_MAX_COLLECTIVE_REPS, timer.reps_for(one))
    samples = []
    for _ in range(timer.samples):
        prepare()
        _group_barrier(torch, dist, group, device, timer)
        samples.append(timer.batch(step, reps) / reps)
    t = _group_max(torch, dist, statistics.median(samples), group, device)
    algbw = size / t / 1e9
    return CollectivePoint(op=op, group_size=group_size, size_bytes=size, time_s=t, algbw_gbps=algbw,
                           busbw_gbps=algbw * bus_factor(op, group_size))


# -- the profile ---------------------------------------------------------------------
def _resolve_device(torch: Any, dist: Any, device: Any) -> Any:
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return dev
    if torch.cuda.is_available():
        if dist.is_available() and dist.is_initialized():
            local = int(os.environ.get("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count()))
        else:
            local = torch.cuda.current_device()
        return torch.device("cuda", local)
    return torch.device("cpu")


def _machine_info(torch: Any, device: Any, gpu_count: int) -> MachineInfo:
    from .detect import detect

    det = detect()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        match = next((g for g in det.gpus if g.index == device.index), None)
        if match is not None:
            name = match.name
        try:
            catalog = get_gpu(name).name
        except UnknownGPUError:
            catalog = None
    else:
        name, catalog, gpu_count = "cpu", None, 0
    return MachineInfo(hostname=socket.gethostname(), gpu_name=name, catalog_name=catalog, gpu_count=gpu_count,
                       driver_version=det.driver_version, cuda_version=torch.version.cuda,
                       torch_version=str(torch.__version__))


def _progress(total: int, enabled: bool, desc: str) -> Any:
    class _Null:
        def update(self, n: int = 1) -> None: ...
        def set_postfix_str(self, s: str) -> None: ...
        def close(self) -> None: ...

    if not enabled:
        return _Null()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Null()
    return tqdm(total=total, desc=desc, unit="bench", leave=False, file=sys.stderr)


def profile(*, dtypes: Sequence[str] = ("bf16",), gemm_shapes: Iterable[Shape] | None = None,
            collectives: bool = True, sizes_bytes: Iterable[int] | None = None,
            group_sizes: Iterable[int] | None = None, device: Any = None, backend: str | None = None,
            quick: bool = False, progress: bool = True, world_size: int | None = None,
            copy_sizes_bytes: Iterable[int] | None = None, ops: Sequence[str] = COLLECTIVE_OPS,
            timeout_s: float = 600.0) -> MeasuredProfile:
    """Run the microbenchmarks and return a `MeasuredProfile`.

    Collectives run when torch.distributed is initialised (every rank must call
    `profile` with the same arguments) or when `world_size` > 1 asks for that
    many local processes (`backend`: "nccl" on GPUs, "gloo" on CPU by default).
    Pass `gemm_shapes=[]` or `copy_sizes_bytes=[]` to skip those parts.
    """
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:  # pragma: no cover - torch is an extra
        raise ProfileError(f"profile() needs torch (pip install 'parplan[gpu]'): {exc}") from None
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is not None and world_size > 1 and not initialised:
        return profile_spawn(world_size, backend=backend, timeout_s=timeout_s, dtypes=dtypes,
                             gemm_shapes=None if gemm_shapes is None else list(gemm_shapes),
                             collectives=collectives, sizes_bytes=None if sizes_bytes is None else list(sizes_bytes),
                             group_sizes=None if group_sizes is None else list(group_sizes), device=device,
                             quick=quick, progress=progress,
                             copy_sizes_bytes=None if copy_sizes_bytes is None else list(copy_sizes_bytes), ops=ops)

    started = time.perf_counter()
    if device is None and initialised and dist.get_backend() == "gloo":
        device = "cpu"  # gloo collectives work on host tensors
    dev = _resolve_device(torch, dist, device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    rank = dist.get_rank() if initialised else 0
    world = dist.get_world_size() if initialised else 1
    keys = [normalize_dtype(d) for d in dtypes]
    notes: list[str] = []
    for k in list(keys):
        if k not in _TORCH_DTYPES:
            raise UnsupportedPrecisionError(f"profile() times {', '.join(_TORCH_DTYPES)} matmuls, not {k}")
        if k == "tf32" and dev.type != "cuda":
            notes.append("tf32 skipped: it is a CUDA tensor-core mode")
            keys.remove(k)
    shapes = list(gemm_shapes) if gemm_shapes is not None else default_gemm_shapes(dev.type, quick)
    copies = list(copy_sizes_bytes) if copy_sizes_bytes is not None else default_copy_sizes(dev.type, quick)
    op_list = [normalize_op(o) for o in ops]
    groups: list[int] = []
    coll_sizes: list[int] = []
    if collectives and initialised and world > 1:
        groups = sorted(set(group_sizes)) if group_sizes is not None else default_group_sizes(world)
        bad = [g for g in groups if g < 2 or g > world]
        if bad:
            raise ProfileError(f"group sizes {bad} do not fit a world of {world} processes (use 2..{world})")
        coll_sizes = list(sizes_bytes) if sizes_bytes is not None else default_collective_sizes(dev.type, quick)
    elif collectives and world == 1:
        notes.append("collectives skipped: a single process (initialise torch.distributed or pass world_size)")

    cuda = dev.type == "cuda"
    gemm_timer = _Timer(torch, dev, warmup=3 if cuda else 1, samples=5 if cuda else 3,
                        min_time_s=(0.05 if quick else 0.15) if cuda else 0.01)
    coll_timer = _Timer(torch, dev, warmup=3 if cuda else 1, samples=7 if cuda else 3,
                        min_time_s=(0.02 if quick else 0.05) if cuda else 0.005)
    total = (len(shapes) * len(keys) + len(copies)) * (rank == 0) + len(groups) * len(op_list) * len(coll_sizes)
    bar = _progress(total, progress and rank == 0, f"profiling {dev}")
    gemm_pts: list[GemmPoint] = []
    copy_pts: list[CopyPoint] = []
    coll_pts: list[CollectivePoint] = []
    threads = torch.get_num_threads()
    if not cuda:
        # Tiny CPU kernels timed on a shared machine: a second thread that is not scheduled
        # in time costs a scheduler tick per call, so CPU profiles run single-threaded.
        torch.set_num_threads(1)
        notes.append("CPU timings single-threaded")
    try:
        if rank == 0:  # other ranks wait: their GPUs would only repeat rank 0's numbers
            for key in keys:
                for shape in shapes:
                    bar.set_postfix_str(f"gemm {key} {shape}")
                    try:
                        gemm_pts.append(measure_gemm(torch, dev, shape, key, gemm_timer))
                    except RuntimeError as exc:  # e.g. out of memory, dtype unsupported on this device
                        notes.append(f"gemm {key} {shape} skipped: {str(exc).splitlines()[0][:120]}")
                        if cuda:
                            torch.cuda.empty_cache()
                    bar.update()
            for size in copies:
                bar.set_postfix_str(f"copy {size} B")
                copy_pts.append(measure_copy(torch, dev, size, gemm_timer))
                bar.update()
        if groups:
            dist.barrier()
            for g in groups:
                group = dist.new_group(list(range(g)))  # every rank takes part in creating it
                if rank < g:
                    for op in op_list:
                        for size in coll_sizes:
                            bar.set_postfix_str(f"{op} x{g} {size} B")
                            coll_pts.append(measure_collective(torch, dist, op, size, group, g, dev, coll_timer))
                            bar.update()
                dist.barrier()
    finally:
        bar.close()
        torch.set_num_threads(threads)
    if cuda:
        torch.cuda.empty_cache()
    if groups and dist.get_backend() == "nccl":
        try:
            nccl = ".".join(str(v) for v in torch.cuda.nccl.version())
        except Exception:
            nccl = "unknown"
        notes.append(f"NCCL {nccl}, NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE', 'unset')}")
    gpu_count = world if cuda else 0
    return MeasuredProfile(
        machine=_machine_info(torch, dev, gpu_count),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        gemm=tuple(gemm_pts), copy=tuple(copy_pts), collectives=tuple(coll_pts),
        backend=dist.get_backend() if groups else None, device=dev.type,
        collective_dtype="fp32" if coll_pts else None, duration_s=round(time.perf_counter() - started, 3),
        notes=tuple(notes + ([f"{world} processes; GEMM and copy timed on rank 0 ({dev})"] if world > 1 else [])),
    )


# -- local processes -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, backend: str, out_path: str, timeout_s: float,
            kwargs: dict) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=_dt.timedelta(seconds=timeout_s))
    try:
        prof = profile(**kwargs)
        if rank == 0:
            prof.save(out_path)
    finally:
        dist.destroy_process_group()


def profile_spawn(world_size: int, *, backend: str | None = None, timeout_s: float = 600.0,
                  **kwargs: Any) -> MeasuredProfile:
    """Run `profile(**kwargs)` in `world_size` local processes (one per GPU with NCCL)."""
    import torch
    import torch.multiprocessing as mp

    if world_size < 2:
        raise ProfileError(f"profile_spawn needs world_size >= 2, got {world_size}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ProfileError(f"NCCL needs one GPU per process: asked for {world_size}, this machine has "
                           f"{torch.cuda.device_count()}; use backend='gloo' or fewer processes")
    if backend == "gloo" and kwargs.get("device") is None:
        kwargs["device"] = "cpu"
    with tempfile.TemporaryDirectory(prefix="parplan-profile-") as tmp:
        out = Path(tmp) / "profile.json"
        try:
            mp.spawn(_worker, args=(world_size, _free_port(), backend, str(out), timeout_s, kwargs),
                     nprocs=world_size, join=True)
        except Exception as exc:
            raise ProfileError(f"profiling in {world_size} {backend} processes failed: "
                               f"{str(exc).strip().splitlines()[-1][:500]}") from None
        return MeasuredProfile.load(out)


# -- command line --------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hardware_profiles.profiler",
                                 description="Measure GEMM, copy and collective performance; write a profile JSON.")
    ap.add_argument("--out", required=True, help="where to write the profile (JSON)")
    ap.add_argument("--quick", action="store_true", help="a smaller grid (about a tenth of the time)")
    ap.add_argument("--world-size", type=int, default=None,
                    help="spawn this many local processes for the collectives (default: all GPUs; 1 on CPU)")
    ap.add_argument("--dtypes", default="bf16", help="comma-separated: fp32,tf32,bf16,fp16 (default bf16)")
    ap.add_argument("--backend", default=None, help="nccl or gloo (default: nccl on GPUs, gloo on CPU)")
    ap.add_argument("--no-collectives", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    import torch
    import torch.distributed as dist

    kwargs = dict(dtypes=[d for d in args.dtypes.split(",") if d], quick=args.quick,
                  collectives=not args.no_collectives, progress=not args.no_progress)
    try:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
            backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend)  # launched by torchrun
            prof = profile(**kwargs)
            if dist.get_rank() == 0:
                prof.save(args.out)
            dist.destroy_process_group()
        else:
            ws = args.world_size
            if ws is None:
                ws = torch.cuda.device_count() if torch.cuda.is_available() else 1
            prof = profile(world_size=ws if ws > 1 else None, backend=args.backend, **kwargs)
            prof.save(args.out)
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not ("RANK" in os.environ and int(os.environ["RANK"]) != 0):
        print(prof.summary())
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
