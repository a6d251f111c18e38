"""Typed errors of the executor (all derive from hardware_profiles.ParplanError)."""
from __future__ import annotations

from hardware_profiles.errors import ParplanError


class PlanMismatchError(ParplanError, ValueError):
    """A plan that does not fit the model or the world size it is launched on; refused before any
    process group starts."""


class UnsupportedPlanError(ParplanError, ValueError):
    """A valid plan that the executor cannot run (a feature combination it does not implement)."""


class LaunchError(ParplanError, RuntimeError):
    """A launch that failed: a rank raised or died; the message names the rank and its error."""
