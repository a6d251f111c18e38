"""`Strategy`: how a model is spread over the GPUs, and the rules it must obey.

Rank layout. Global ranks form a mesh of shape (pp, dp, tp) with tp varying
fastest (Megatron's order): rank = (stage * dp + replica) * tp + tp_rank. Rank r
runs on GPU `placement[r]` (global GPU index in cluster order); by default
placement is the identity, which keeps tensor-parallel groups inside nodes
whenever tp divides the GPUs per node.

Expert parallelism, two conventions (`ep_mode`):
- "dp" (Megatron): the `ep` ranks holding different experts are carved out of
  the data-parallel group; ep divides dp. Tokens travel between data-parallel
  replicas in the all-to-all.
- "tp" (TensorRT-LLM): inside the tensor-parallel group, experts are split
  moe_ep = ep ways and each expert moe_tp = tp / ep ways; ep divides tp.

Stage boundaries: `stages` holds pp + 1 cut points into `model.layers`
(0 = first entry, len(layers) = end), uneven allowed; None = let the cost model
balance them.
"""
from __future__ import annotations

import numbers
import reprlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

from .errors import InvalidStrategyError

SCHEDULES = ("gpipe", "1f1b", "interleaved")
_VALID_PLACEMENTS: set[tuple[int, ...]] = set()  # placements already checked (the planner builds many strategies)
RECOMPUTE = ("none", "selective", "full")
EP_MODES = ("dp", "tp")


@dataclass(frozen=True)
class Strategy:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    micro_batch: int = 1
    schedule: str = "1f1b"
    virtual_stages: int = 1
    recompute: str = "none"
    sequence_parallel: bool = False
    zero: int = 0  # 0 = plain DDP, 1 = optimizer states sharded, 2 = + gradients, 3 = + weights (FSDP)
    stages: tuple[int, ...] | None = None
    ep_mode: str = "dp"
    placement: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for f in ("tp", "pp", "dp", "ep", "micro_batch", "virtual_stages"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidStrategyError(f"{f} must be a whole number >= 1, got {v!r}", rule=f">=1:{f}")
        if self.schedule not in SCHEDULES:
            raise InvalidStrategyError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
                                       rule="schedule")
        if self.recompute not in RECOMPUTE:
            raise InvalidStrategyError(f"recompute must be one of {', '.join(RECOMPUTE)}, got {self.recompute!r}",
                                       rule="recompute")
        if not isinstance(self.zero, numbers.Integral) or isinstance(self.zero, bool) or self.zero not in (0, 1, 2, 3):
            raise InvalidStrategyError(f"zero must be 0, 1, 2 or 3, got {self.zero!r}", rule="zero")
        object.__setattr__(self, "zero", int(self.zero))
        if not isinstance(self.sequence_parallel, bool):
            if type(self.sequence_parallel).__name__ != "bool_":  # numpy's bool, from a candidates table
                raise InvalidStrategyError(
                    f"sequence_parallel must be True or False, got {self.sequence_parallel!r}", rule="format")
            object.__setattr__(self, "sequence_parallel", bool(self.sequence_parallel))
        if self.ep_mode not in EP_MODES:
            raise InvalidStrategyError(f"ep_mode must be 'dp' or 'tp', got {self.ep_mode!r}", rule="ep_mode")
        if self.schedule == "interleaved":
            if self.virtual_stages < 2:
                raise InvalidStrategyError("the interleaved schedule needs virtual_stages >= 2", rule="interleaved")
            if self.pp < 2:
                raise InvalidStrategyError("the interleaved schedule needs pp >= 2", rule="interleaved")
        elif self.virtual_stages != 1:
            raise InvalidStrategyError(
                f"virtual_stages={self.virtual_stages} needs schedule='interleaved'", rule="interleaved")
        if self.sequence_parallel and self.tp == 1:
            raise InvalidStrategyError("sequence_parallel needs tp >= 2", rule="sequence_parallel")
        if self.ep_mode == "dp" and self.dp % self.ep:
            raise InvalidStrategyError(
                f"ep={self.ep} must divide dp={self.dp} when experts are carved out of data parallel "
                f"(ep_mode='dp'); use ep_mode='tp' to split experts inside the tensor-parallel group",
                rule="ep|dp")
        if self.ep_mode == "tp" and self.tp % self.ep:
            raise InvalidStrategyError(
                f"ep={self.ep} must divide tp={self.tp} when experts are split inside the tensor-parallel "
                f"group (ep_mode='tp', moe_tp = tp / ep)", rule="ep|tp")
        if self.stages is not None:
            st = _whole_numbers("stages", self.stages, "stage cut points such as [0, 40, 82]")
            object.__setattr__(self, "stages", st)
            if len(st) != self.pp + 1:
                raise InvalidStrategyError(
                    f"stages must hold pp + 1 = {self.pp + 1} cut points, got {len(st)}", rule="stages")
            if any(b <= a for a, b in zip(st, st[1:])) or st[0] != 0:
                raise InvalidStrategyError(
                    f"stage cut points must start at 0 and increase strictly, got {list(st)}", rule="stages")
        if self.placement is not None and not (isinstance(self.placement, tuple)
                                               and _checked_placement(self.placement)):
            placement = _whole_numbers("placement", self.placement, "a permutation of the GPU indices 0..N-1")
            if sorted(placement) != list(range(len(placement))):
                raise InvalidStrategyError("placement must be a permutation of the GPU indices 0..N-1",
                                           rule="placement")
            object.__setattr__(self, "placement", placement)
            if len(_VALID_PLACEMENTS) < 4096:
                _VALID_PLACEMENTS.add(placement)

    # -- derived ---------------------------------------------------------
    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def moe_tp(self) -> int:
        """Tensor-parallel ways each expert is split."""
        return self.tp // self.ep if self.ep_mode == "tp" else self.tp

    def rank(self, stage: int, replica: int, tp_rank: int) -> int:
        return (stage * self.dp + replica) * self.tp + tp_rank

    def gpu_of_rank(self, rank: int) -> int:
        return self.placement[rank] if self.placement is not None else rank

    def stage_ranks(self, stage: int) -> list[int]:
        return [self.rank(stage, r, t) for r in range(self.dp) for t in range(self.tp)]

    def tp_group(self, stage: int = 0, replica: int = 0) -> list[int]:
        return [self.gpu_of_rank(self.rank(stage, replica, t)) for t in range(self.tp)]

    def dp_group(self, stage: int = 0, tp_rank: int = 0) -> list[int]:
        return [self.gpu_of_rank(self.rank(stage, r, tp_rank)) for r in range(self.dp)]

    def ep_group(self, stage: int = 0, replica: int = 0, tp_rank: int = 0) -> list[int]:
        if self.ep_mode == "tp":
            base = (tp_rank // self.ep) * self.ep
            return [self.gpu_of_rank(self.rank(stage, replica, base + i)) for i in range(self.ep)]
        base = (replica // self.ep) * self.ep
        return [self.gpu_of_rank(self.rank(stage, base + i, tp_rank)) for i in range(self.ep)]

    def pp_group(self, replica: int = 0, tp_rank: int = 0) -> list[int]:
        return [self.gpu_of_rank(self.rank(s, replica, tp_rank)) for s in range(self.pp)]

    def describe(self) -> str:
        parts = [f"TP{self.tp}", f"PP{self.pp}", f"DP{self.dp}"]
        if self.ep > 1:
            parts.append(f"EP{self.ep}({self.ep_mode})")
        s = " x ".join(parts) + f", micro-batch {self.micro_batch}"
        if self.pp > 1:
            s += f", {self.schedule}" + (f" v={self.virtual_stages}" if self.schedule == "interleaved" else "")
        if self.recompute != "none":
            s += f", recompute {self.recompute}"
        if self.sequence_parallel:
            s += ", SP"
        if self.zero:
            s += f", ZeRO-{self.zero}"
        return s

    def with_(self, **changes: Any) -> "Strategy":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("stages", "placement"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Strategy":
        if not isinstance(data, Mapping):
            raise InvalidStrategyError("a strategy is a mapping of tp, pp, dp, ...", rule="format")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise InvalidStrategyError(f"malformed strategy: {exc}", rule="format") from None


def _whole_numbers(label: str, values: Any, example: str) -> tuple[int, ...]:
    """A tuple of ints from a list of whole numbers (numpy integers too); a typed error for anything else."""
    bad = InvalidStrategyError(f"{label} must be a list of whole numbers ({example}), got {reprlib.repr(values)}",
                               rule=label)
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise bad
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise bad
        out.append(int(v))
    return tuple(out)


def _checked_placement(placement: tuple) -> bool:
    try:
        return placement in _VALID_PLACEMENTS
    except TypeError:  # unhashable members: not a placement we built, the full check will say why
        return False


def stage_sizes(stages: Sequence[int]) -> list[int]:
    return [b - a for a, b in zip(stages, stages[1:])]
