"""Profile the GPUs of this machine and write a measured profile (JSON).

    PYTHONPATH=. python bench/gpu_profile.py $OUT/h100.json          # a file
    PYTHONPATH=. python bench/gpu_profile.py $OUT/                   # a directory: names the file itself
    PYTHONPATH=. python bench/gpu_profile.py $OUT/ --quick           # a smoke run (~1/5 of the time)

Runs detect(), then profile(): a bf16 and fp16 GEMM grid, device copy bandwidth
and, with two or more GPUs, all-reduce / all-gather / reduce-scatter / all-to-all
/ send-recv over all local GPUs with NCCL for 1 KB .. 1 GB. NVLink multicast
(NVLS) stays off: NCCL_NVLS_ENABLE=0 is forced for every process. Sized to finish
in about two minutes on one H100 and three on two H200s (including start-up).
A benchmark, not a test: it prints figures and ratios, it asserts nothing.
"""
from __future__ import annotations

import os

os.environ["NCCL_NVLS_ENABLE"] = "0"  # before torch/NCCL load; inherited by the spawned ranks

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from hardware_profiles.detect import detect  # noqa: E402
from hardware_profiles.errors import ParplanError, UnsupportedPrecisionError  # noqa: E402
from hardware_profiles.measured import MeasuredProfile  # noqa: E402
from hardware_profiles.profiler import profile  # noqa: E402

_SHOW_SHAPES = ((1, 8192, 8192), (64, 8192, 8192), (2048, 8192, 8192), (8192, 8192, 8192), (16384, 8192, 28672),
                (4096, 4096, 4096))
_SHOW_SIZES = (1 << 10, 1 << 20, 64 << 20, 1 << 30)


def _out_path(arg: str, prof: MeasuredProfile) -> Path:
    p = Path(arg)
    if arg.endswith(os.sep) or p.is_dir():
        name = (prof.machine.catalog_name or prof.machine.gpu_name).lower().replace(" ", "-")
        return p / f"{name}_{prof.machine.gpu_count}gpu_{prof.date[:10]}.json"
    return p


def _table(prof: MeasuredProfile) -> str:
    spec = prof.gpu_spec
    lines = [prof.summary(), "", "GEMM (TFLOP/s, % of datasheet dense peak):"]
    for dtype in sorted({p.dtype for p in prof.gemm}):
        peak = None
        if spec is not None:
            try:
                peak = spec.peak_tflops(dtype)
            except UnsupportedPrecisionError:
                pass
        for m, n, k in _SHOW_SHAPES:
            pt = next((p for p in prof.gemm_points(dtype) if (p.m, p.n, p.k) == (m, n, k)), None)
            if pt is not None:
                pct = f"{100 * pt.tflops / peak:5.1f}%" if peak else "   n/a"
                lines.append(f"  {dtype:<5} {m:>6} x {n:>6} x {k:>6}  {pt.tflops:8.1f}  {pct}")
        try:
            fit = prof.gemm_efficiency(dtype)
            lines.append(f"  {dtype:<5} fit: eff_max {fit.eff_max:.3f} +- {fit.eff_max_stderr:.3f}, half-efficiency "
                         f"at {fit.half_flops:.3g} FLOP ({fit.peak_origin} peak {fit.peak_tflops:g})")
        except ParplanError as exc:
            lines.append(f"  {dtype:<5} fit failed: {exc}")
    if prof.copy:
        sheet = f" (datasheet {spec.memory_bandwidth_gbps:g})" if spec else ""
        lines.append(f"copy: best {prof.memory_bandwidth_gbps:.0f} GB/s read+write{sheet}")
        for c in prof.copy:
            lines.append(f"  {c.size_bytes / 2**20:8.0f} MiB  {c.bandwidth_gbps:8.0f} GB/s")
    groups = sorted({(p.op, p.group_size) for p in prof.collectives})
    if groups:
        lines.append(f"collectives ({prof.backend}, busbw GB/s at " +
                     ", ".join(f"{s / 2**20:g} MiB" for s in _SHOW_SIZES) + "; fit):")
        for op, n in groups:
            pts = prof.collective_points(op, n)
            cells = []
            for s in _SHOW_SIZES:
                pt = min(pts, key=lambda p: abs(p.size_bytes - s))
                cells.append(f"{pt.busbw_gbps:7.1f}")
            try:
                fit = prof.collective_fit(op, n)
                fit_s = f"bw {fit.bandwidth_gbps:.0f} GB/s, latency {fit.latency_s * 1e6:.1f} us"
            except ParplanError as exc:
                fit_s = f"fit failed: {exc}"
            lines.append(f"  {op:<15} x{n}  " + " ".join(cells) + f"   {fit_s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="profile JSON to write, or a directory to write it into")
    ap.add_argument("--quick", action="store_true", help="smaller grid, for a smoke run")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    det = detect()
    print(det.summary(), flush=True)
    if det.is_cpu_only:
        print("no GPU: profiling the CPU at small sizes instead", flush=True)
    n = det.num_gpus
    prof = profile(dtypes=("bf16", "fp16"), quick=args.quick, progress=not args.no_progress,
                   world_size=n if n >= 2 else None, timeout_s=900.0)
    extra = [f"NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE')}", "detected topology:\n" + det.topology_matrix()]
    extra += [f"detect warning: {w}" for w in det.warnings]
    prof = dataclasses.replace(prof, notes=prof.notes + tuple(extra))
    path = _out_path(args.out, prof).resolve()
    prof.save(path)
    print()
    print(_table(prof))
    print(f"\nwrote {path}; total {time.perf_counter() - t0:.0f} s (profile itself {prof.duration_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
