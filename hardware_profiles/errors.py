"""Typed errors shared by every package of the project.

`ParplanError` is the root: callers can catch it to handle any bad input the
project detects. Every message says what was wrong and what would work.
"""
from __future__ import annotations


class ParplanError(Exception):
    """Root of every error the project raises on purpose."""


class UnknownGPUError(ParplanError, LookupError):
    """A GPU name that matches no catalog entry."""

    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = list(suggestions)
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"unknown GPU {name!r}{hint} (hardware_profiles.list_gpus() lists all)")

    def __str__(self) -> str:  # LookupError would otherwise quote the message
        return self.args[0]


class UnsupportedPrecisionError(ParplanError, ValueError):
    """A dtype the GPU has no rate for (fp8 on an A100, bf16 on a V100...)."""


class ClusterSpecError(ParplanError, ValueError):
    """A cluster description (string, file or keywords) that cannot be understood."""


class ProfileError(ParplanError, ValueError):
    """A measured-profile file that is malformed or belongs to other hardware."""
