"""Where estimate() finds measured hardware profiles and calibrated cost constants.

Measured profiles come from `hardware_profiles.measured.load_profile` (committed
profiles and PARPLAN_PROFILE_DIR). Calibrated constants are JSON files written
by `costmodel.calibrate` into `costmodel/calibrations/` (committed) or the
directory named by PARPLAN_CALIBRATION_DIR; a file applies to a cluster when it
names every GPU type of the cluster.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from hardware_profiles.topology import Cluster

from .params import DEFAULT_PARAMS, CostParams

CALIBRATION_DIR = Path(__file__).with_name("calibrations")


def _dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("PARPLAN_CALIBRATION_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(CALIBRATION_DIR)
    return dirs


@lru_cache(maxsize=32)
def _calibrations(dirs: tuple[Path, ...]) -> tuple[tuple[frozenset[str], str, CostParams], ...]:
    found = []
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.json")):
            try:
                data = json.loads(f.read_text())
                hw = frozenset(data.get("hardware", []))
                if not hw:
                    continue
                found.append((hw, str(data.get("date", "")), CostParams.from_dict(data["cost_params"])))
            except Exception:
                continue  # a broken calibration file must not break pricing; `calibrate` validates on write
    return tuple(found)


def params_for_cluster(cluster: Cluster) -> CostParams:
    names = frozenset(g.name for g in cluster.gpu_types)
    matches = [(date, p) for hw, date, p in _calibrations(tuple(_dirs())) if names <= hw]
    if not matches:
        return DEFAULT_PARAMS
    return max(matches, key=lambda m: m[0])[1]


def profiles_for_cluster(cluster: Cluster) -> dict[str, Any]:
    try:
        from hardware_profiles.measured import load_profile
    except ImportError:
        return {}
    out = {}
    for gpu in cluster.gpu_types:
        try:
            prof = load_profile(gpu)
        except Exception:
            prof = None
        if prof is not None:
            out[gpu.name] = prof
    return out
