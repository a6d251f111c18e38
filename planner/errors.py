"""Typed errors of the planner."""
from __future__ import annotations

from hardware_profiles.errors import ParplanError


class NoFeasiblePlanError(ParplanError, ValueError):
    """No strategy fits the cluster (memory) or meets the constraints."""

    def __init__(self, message: str, min_memory_bytes: float | None = None, capacity_bytes: float | None = None):
        self.min_memory_bytes = min_memory_bytes
        self.capacity_bytes = capacity_bytes
        super().__init__(message)


class PlannerOptionError(ParplanError, ValueError):
    """An objective, constraint or search option the planner does not know."""
