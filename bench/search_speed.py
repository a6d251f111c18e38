"""Planner search speed.

    python bench/search_speed.py          # prints times, candidates/s and ratios to the targets

Targets (issue 4, on this 2-core machine): Llama-3-70B on 64 H100 <= 50 ms; Llama-3-405B on 16,384 H100
over the full space <= 1 s; a mixed cluster of 3 GPU types and 64 GPUs <= 1 s. Each case runs
`repeats` times after a warm-up (imports, caches of unrelated cases); the median is reported. Also
prints how search time grows with GPU count and with layer count.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

import costmodel as cm  # noqa: E402
import planner  # noqa: E402
from costmodel.model import ModelSpec  # noqa: E402
from hardware_profiles import Cluster  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "search_speed.json"


def _time(model, cluster, workload, repeats: int = 3) -> tuple[float, int]:
    """Median CPU time of the search (single-threaded, so CPU time is the wall time of an unloaded machine;
    wall time on a shared machine is noisier and reported beside it in the JSON)."""
    times, walls = [], []
    n = 0
    for _ in range(repeats):
        _clear_caches()
        t0, w0 = time.process_time(), time.perf_counter()
        r = planner.plan(model, cluster, workload, profiles=None)
        times.append(time.process_time() - t0)
        walls.append(time.perf_counter() - w0)
        n = len(r.candidates)
    _WALL.append(statistics.median(walls))
    return statistics.median(times), n


_WALL: list[float] = []


def _clear_caches() -> None:
    """Each timed search starts cold: no layout or device cache carried over from the previous run."""
    from costmodel import calibrated, device, layout

    layout.clear_caches()
    device._device_perf.cache_clear()
    calibrated._calibrations.cache_clear()


CASES = [
    ("llama3-70b on 64 H100", "llama3-70b", "8x8xH100", cm.Training(global_batch=1024, seq_len=8192), 0.050),
    ("llama3-405b on 16384 H100", "llama3-405b", "2048x8xH100", cm.Training(global_batch=2048, seq_len=8192), 1.0),
    ("llama3-70b on mixed 3 types, 64 GPUs", "llama3-70b", "4x8xH100+2x8xA100-80GB+2x8xH200",
     cm.Training(global_batch=1024, seq_len=8192), 1.0),
]


def main() -> int:
    out = {"cases": [], "scaling_gpus": [], "scaling_layers": []}
    planner.plan("llama3-8b", "1x8xH100", cm.Training(global_batch=64), profiles=None)  # warm imports
    print(f"{'case (CPU time of the search)':<40} {'time':>9} {'target':>8} {'ratio':>6} {'candidates':>11} {'cand/s':>10}")
    for label, model, cluster, wl, target in CASES:
        t, n = _time(model, Cluster.parse(cluster), wl)
        out["cases"].append({"case": label, "time_s": t, "wall_s": _WALL[-1], "target_s": target, "candidates": n})
        print(f"{label:<40} {t * 1e3:>7.0f}ms {target * 1e3:>6.0f}ms {t / target:>6.2f} {n:>11,} {n / t:>10,.0f}")
    print("\nscaling with GPU count (llama3-70b, global batch 4096):")
    for nodes in (4, 16, 64, 256, 1024):
        t, n = _time("llama3-70b", Cluster.parse(f"{nodes}x8xH100"), cm.Training(global_batch=4096, seq_len=8192), 1)
        out["scaling_gpus"].append({"gpus": nodes * 8, "time_s": t, "candidates": n})
        print(f"  {nodes * 8:>6} GPUs: {t * 1e3:>7.0f} ms, {n:>6,} candidates")
    print("\nscaling with layer count (hidden 4096 decoder, 64 H100):")
    for layers in (16, 64, 256, 1000):
        m = ModelSpec.decoder(f"synthetic-{layers}", num_layers=layers, hidden=4096, num_heads=32, num_kv_heads=8,
                              ffn_hidden=14336, vocab=128256, seq_len=4096)
        t, n = _time(m, Cluster.parse("8x8xH100"), cm.Training(global_batch=1024), 1)
        out["scaling_layers"].append({"layers": layers, "time_s": t, "candidates": n})
        print(f"  {layers:>5} layers: {t * 1e3:>7.0f} ms, {n:>6,} candidates")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
