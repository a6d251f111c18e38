"""Typed errors of the cost model (all derive from hardware_profiles.ParplanError)."""
from __future__ import annotations

from hardware_profiles.errors import ParplanError


class UnknownModelError(ParplanError, LookupError):
    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = list(suggestions)
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"unknown model {name!r}{hint} (costmodel.list_models() lists all)")

    def __str__(self) -> str:
        return self.args[0]


class ModelConfigError(ParplanError, ValueError):
    """A model description (HF config, layer list, module) that cannot be understood."""


class InvalidStrategyError(ParplanError, ValueError):
    """A strategy that breaks a rule of the model or the cluster; the message names the rule."""

    def __init__(self, message: str, rule: str = ""):
        self.rule = rule
        super().__init__(message)


class WorkloadError(ParplanError, ValueError):
    """A training or inference workload with impossible numbers."""
