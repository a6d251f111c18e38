"""Distributed checkpoints that a run of another layout can resume (torch.distributed.checkpoint).

On disk: `ROOT/step_00000012/` holds DCP's files (`.metadata`, one `__R_0.distcp` per rank) and, once
the collective save has finished on every rank, `parplan_checkpoint.json` (the marker), written
atomically by rank 0. A step directory without a marker is partial (a save cut short by a failure)
and is never resumed from; resuming picks the newest complete one.

What is saved: the model and the AdamW state under the model's canonical parameter names
("layers.3.attn.wqkv.weight"), through torch.distributed.checkpoint.state_dict
(`get_model_state_dict`, and `get_optimizer_state_dict` flattened: optimizer state and
hyper-parameters keyed per parameter, not per parameter group), so every entry is one global tensor
whatever the layout. DTensor shards (tensor parallel, FSDP2) carry their global shape and offset;
each pipeline rank saves only the layers it holds; routed experts, which expert parallelism slices
into plain local tensors, are wrapped for the save as DTensors over the (ep, expert-tp) mesh, so
they too are saved as global tensors. Loading reads each rank's shards of the new layout out of
those global tensors (DCP reshards).

The marker holds the step count, seed and model digest. The synthetic data stream is a pure
function of (seed, step) and nothing else in a training step draws random numbers, so the step
count is the whole data/RNG position: a resumed run takes exactly the batches an uninterrupted
run would.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from hardware_profiles.errors import ParplanError
from hardware_profiles.fileio import write_text_atomic

from .check import canonical_name
from .parallelize import attach_local_leaves, drop_weight_casts

try:  # torch >= 2.5
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - torch 2.4
    from torch.distributed._tensor import DTensor, Replicate, Shard  # type: ignore

MARKER_NAME = "parplan_checkpoint.json"
MARKER_SCHEMA = "parplan.checkpoint"
MARKER_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class CheckpointError(ParplanError, ValueError):
    """A checkpoint that is missing, partial, corrupt or does not fit the run that tries to resume it."""


def step_dir(root: str | os.PathLike[str], step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def model_digest(spec: Any) -> str:
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CheckpointInfo:
    """The marker of a complete checkpoint."""

    path: str
    step: int  # training steps completed; the resumed run starts with this step index
    seed: int
    model_name: str
    model_sha256: str
    global_batch: int
    seq_len: int
    layout: dict[str, Any]  # the RunShape of the run that saved it
    world_size: int
    save_s: float
    created_utc: str
    torch_version: str

    def to_dict(self) -> dict[str, Any]:
        return {"schema": MARKER_SCHEMA, "schema_version": MARKER_VERSION, **asdict(self)}

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> "CheckpointInfo":
        """The marker of one step directory; a missing marker means a partial checkpoint."""
        d = Path(directory)
        marker = d / MARKER_NAME
        if not d.is_dir():
            raise CheckpointError(f"checkpoint {str(d)!r} does not exist or is not a directory; give --resume the "
                                  f"--checkpoint-dir of an earlier run (or one of its step_* directories)")
        if not marker.is_file():
            raise CheckpointError(
                f"checkpoint {str(d)!r} is partial: it has no {MARKER_NAME}, so its save never finished; resume "
                f"from its parent directory (the newest complete checkpoint there) or an older step_* directory")
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
            if data.get("schema") != MARKER_SCHEMA:
                raise ValueError(f"schema is {data.get('schema')!r}, expected {MARKER_SCHEMA!r}")
            if data.get("schema_version") != MARKER_VERSION:
                raise ValueError(f"schema_version {data.get('schema_version')!r}, this parplan reads {MARKER_VERSION}")
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k != "path"}
            info = cls(path=str(d), **fields)
            if not isinstance(info.step, int) or info.step < 0 or not isinstance(info.seed, int):
                raise ValueError(f"step {info.step!r} and seed {info.seed!r} must be whole numbers")
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise CheckpointError(
                f"checkpoint {str(d)!r} has a corrupt marker ({MARKER_NAME}: {exc}); delete that directory to resume "
                f"from the checkpoint before it, or give --resume an older step_* directory") from None
        if not (d / ".metadata").is_file():
            raise CheckpointError(
                f"checkpoint {str(d)!r} has a marker but no DCP .metadata file (files were removed or copied "
                f"partly); delete that directory to resume from the checkpoint before it")
        return info


@dataclass(frozen=True)
class Scan:
    complete: tuple[CheckpointInfo, ...]  # oldest first
    partial: tuple[Path, ...]


def scan(root: str | os.PathLike[str]) -> Scan:
    """Complete and partial checkpoints under a checkpoint directory (a corrupt marker is an error)."""
    r = Path(root)
    if not r.is_dir():
        raise CheckpointError(
            f"checkpoint directory {str(r)!r} does not exist" if not r.exists() else
            f"checkpoint directory {str(r)!r} is not a directory")
    complete, partial = [], []
    for child in sorted(r.iterdir(), key=lambda p: p.name):
        m = _STEP_DIR.match(child.name)
        if not m or not child.is_dir():
            continue
        if (child / MARKER_NAME).exists():
            complete.append(CheckpointInfo.read(child))
        else:
            partial.append(child)
    complete.sort(key=lambda i: i.step)
    return Scan(tuple(complete), tuple(partial))


def resolve(path: str | os.PathLike[str]) -> CheckpointInfo:
    """What `--resume PATH` resumes from: PATH itself when it is one step directory, else the newest
    complete checkpoint under PATH (partial ones ignored)."""
    p = Path(path)
    if _STEP_DIR.match(p.name) or (p / MARKER_NAME).exists():
        return CheckpointInfo.read(p)
    found = scan(p)
    if not found.complete:
        skipped = (f"; {len(found.partial)} partial one(s) ({', '.join(q.name for q in found.partial)}) were "
                   f"ignored: their saves never finished" if found.partial else "")
        raise CheckpointError(f"no complete checkpoint under {str(p)!r}{skipped}; run without --resume to start from "
                              f"step 0, or give --resume the --checkpoint-dir of a run that saved one")
    return found.complete[-1]


def check_compatible(info: CheckpointInfo, plan: Any, seed: int, total_steps: int) -> list[str]:
    """Refuse a checkpoint that would not continue this run; returns notes for harmless differences."""
    if info.model_sha256 != model_digest(plan.model):
        raise CheckpointError(
            f"checkpoint {info.path!r} holds model {info.model_name!r}, which differs from the plan's model "
            f"{plan.model.name!r}; resume with a plan for the model that saved it")
    if info.seed != seed:
        raise CheckpointError(f"checkpoint {info.path!r} was trained on the data stream of seed {info.seed}; resume "
                              f"with --seed {info.seed} (another seed would change the data mid-run)")
    if info.step >= total_steps:
        raise CheckpointError(f"checkpoint {info.path!r} already has {info.step} steps done and this run asks for "
                              f"{total_steps}; ask for more steps (--steps) to continue it")
    notes = []
    wl = plan.workload
    if (getattr(wl, "global_batch", None), getattr(wl, "seq_len", None) or plan.model.seq_len) != (
            info.global_batch, info.seq_len):
        notes.append(f"resumed a checkpoint trained with batch {info.global_batch} x {info.seq_len} tokens under "
                     f"batch {wl.global_batch} x {wl.seq_len or plan.model.seq_len}")
    return notes


# -- the state dicts of one rank ------------------------------------------------------------
class _Layers(nn.Module):
    """Every layer this rank holds, keyed like the full model ("layers.K....") whatever chunk it came from,
    so one optimizer over several pipeline chunks maps to canonical names."""

    def __init__(self, parts: list[Any]):
        super().__init__()
        self.layers = nn.ModuleDict({k: m for p in parts for k, m in p.module.layers.items()})


@dataclass(frozen=True)
class _ExpertSpec:
    mesh: Any  # DeviceMesh over the (ep, expert-tp) dims present
    placements: tuple[Any, ...]


def _expert_specs(session: Any) -> dict[str, _ExpertSpec]:
    """Routed-expert parameters (sliced into local tensors by expert parallelism) and how to see them as
    global DTensors: experts split on dim 0 over ep, each expert's width over expert tp."""
    shape = session.shape
    dims = []
    if shape.ep > 1:
        dims.append(("dpe" if shape.ep_mode == "dp" else "tpe", "ep"))
    if shape.moe_tp > 1:
        dims.append(("tpo", "etp"))
    if not dims:
        return {}
    root = session.meshes.root
    order = list(root.mesh_dim_names)
    dims.sort(key=lambda d: order.index(d[0]))
    names = tuple(d[0] for d in dims)
    mesh = root[names] if len(names) > 1 else root[names[0]]
    width_dim = {"w1": 1, "w3": 1, "b1": 1, "b3": 1, "w2": 2}
    out = {}
    for part in session.parts:
        expert_ids = {id(p) for ex in part.expert_modules for p in ex.parameters()}
        for name, p in part.module.named_parameters():
            if id(p) not in expert_ids:
                continue
            leaf = name.rsplit(".", 1)[-1]
            placements = tuple(Shard(0) if role == "ep" else (Shard(width_dim[leaf]) if leaf in width_dim
                                                               else Replicate()) for _, role in dims)
            out[canonical_name(name)] = _ExpertSpec(mesh, placements)
    return out


def _expert_key(key: str, experts: dict[str, _ExpertSpec]) -> _ExpertSpec | None:
    """The expert spec of a model key ("layers.2.ffn.experts.w1") or flattened optimizer-state key
    ("state.layers.2.ffn.experts.w1.exp_avg")."""
    if key in experts:
        return experts[key]
    if key.startswith("state."):
        return experts.get(key[len("state."):].rsplit(".", 1)[0])
    return None


def _globalize(value: torch.Tensor, spec: _ExpertSpec) -> torch.Tensor:
    full = value.full_tensor() if isinstance(value, DTensor) else value.detach()
    return DTensor.from_local(full, spec.mesh, list(spec.placements), run_check=False)


def _write_back(src: torch.Tensor, dst: torch.Tensor) -> None:
    """Copy this rank's expert slice (a global DTensor loaded from the checkpoint) into the live tensor,
    taking dst's own data-parallel shard when FSDP2 shards it."""
    full = src.to_local()
    with torch.no_grad():
        if isinstance(dst, DTensor):
            mesh = dst.device_mesh
            rep = DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False)
            dst.to_local().copy_(rep.redistribute(mesh, dst.placements).to_local())
        else:
            dst.copy_(full)


def _state_dicts(session: Any, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, dict, dict]:
    holder = _Layers(session.parts)
    model_sd = get_model_state_dict(holder, options=_OPTIONS)
    optim_sd = get_optimizer_state_dict(holder, optimizer, options=_OPTIONS)
    return holder, model_sd, optim_sd


def _globalized(sd: dict[str, Any], experts: dict[str, _ExpertSpec]) -> dict[str, Any]:
    if not experts:
        return dict(sd)
    out = {}
    for k, v in sd.items():
        spec = _expert_key(k, experts)
        out[k] = _globalize(v, spec) if spec is not None and isinstance(v, torch.Tensor) and v.ndim > 0 else v
    return out


# -- save and load (collective) ---------------------------------------------------------------
def save(root: str | os.PathLike[str], step: int, session: Any, optimizer: torch.optim.Optimizer, *,
         keep_last: int = 0) -> CheckpointInfo:
    """Collective: every rank writes its shards of model and optimizer; rank 0 then writes the marker
    (and, with `keep_last` > 0, removes complete checkpoints older than the newest `keep_last` and any
    partial one older than this)."""
    t0 = time.perf_counter()
    path = step_dir(root, step)
    if dist.get_rank() == 0:
        if path.exists():  # a partial save of this step by an earlier attempt, or one being redone
            shutil.rmtree(path)
        path.mkdir(parents=True)
    dist.barrier()
    _, model_sd, optim_sd = _state_dicts(session, optimizer)
    experts = _expert_specs(session)
    dcp.save({"model": _globalized(model_sd, experts), "optim": _globalized(optim_sd, experts)},
             checkpoint_id=str(path))
    shape, plan = session.shape, session.plan
    info = CheckpointInfo(
        path=str(path), step=step, seed=session.seed, model_name=plan.model.name,
        model_sha256=model_digest(plan.model), global_batch=shape.batch, seq_len=shape.seq_len,
        layout=shape.to_dict(), world_size=shape.world_size, save_s=time.perf_counter() - t0,
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        torch_version=torch.__version__)
    if dist.get_rank() == 0:
        # dcp.save returns on the coordinator only after every rank's files are written and the metadata is
        # gathered, so the marker certifies the whole checkpoint
        _write_json_atomic(path / MARKER_NAME, info.to_dict())
        if keep_last > 0:
            _prune(Path(root), info.step, keep_last)
    return info


def load(info: CheckpointInfo, session: Any, optimizer: torch.optim.Optimizer) -> int:
    """Collective: fill this rank's model and optimizer shards (of whatever layout) from a checkpoint;
    returns the step to continue from. A checkpoint missing some tensor this layout needs, or holding it
    with another shape, raises CheckpointError on every rank (before any rank reads)."""
    holder, model_sd, optim_sd = _state_dicts(session, optimizer)
    experts = _expert_specs(session)
    want_model, want_optim = _globalized(model_sd, experts), _globalized(optim_sd, experts)
    saved = dcp.FileSystemReader(info.path).read_metadata().state_dict_metadata
    problems: list[str] = []
    for prefix, want in (("model", want_model), ("optim", want_optim)):
        for k in list(want):
            v, meta = want[k], saved.get(f"{prefix}.{k}")
            if not isinstance(v, torch.Tensor):
                if meta is None:  # a hyper-parameter another torch version does not have: keep ours
                    del want[k]
                continue
            size = getattr(meta, "size", None)
            if meta is None:
                problems.append(f"{prefix} tensor {k!r} is missing")
            elif tuple(size) != tuple(v.shape):
                problems.append(f"{prefix} tensor {k!r} has shape {tuple(size)} there, {tuple(v.shape)} here")
    _agree_or_raise(problems, info, session.device)
    dcp.load({"model": want_model, "optim": want_optim}, checkpoint_id=info.path)
    for sd, want in ((model_sd, want_model), (optim_sd, want_optim)):
        for k, v in want.items():
            if v is not sd[k]:
                if isinstance(sd[k], torch.Tensor):
                    _write_back(v, sd[k])
                else:
                    sd[k] = v
    set_model_state_dict(holder, model_sd, options=_OPTIONS)
    set_optimizer_state_dict(holder, optimizer, optim_sd, options=_OPTIONS)
    return info.step


def _agree_or_raise(problems: list[str], info: CheckpointInfo, device: torch.device) -> None:
    """Every rank raises when any rank found a problem (a rank alone would leave the others waiting)."""
    flag = torch.tensor([1 if problems else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag)
    if int(flag.item()):
        mine = f": {'; '.join(problems[:3])}" if problems else " on another rank"
        raise CheckpointError(f"checkpoint {info.path!r} does not fit this model{mine}; was it saved from another "
                              f"model? Resume with the plan of the run that saved it")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))  # as readable as DCP's own files


def _prune(root: Path, newest: int, keep_last: int) -> None:
    found = scan(root)
    for info in found.complete[:-keep_last]:
        shutil.rmtree(info.path, ignore_errors=True)
    for p in found.partial:
        m = _STEP_DIR.match(p.name)
        if m and int(m.group(1)) < newest:
            shutil.rmtree(p, ignore_errors=True)


# -- what the training loop calls ------------------------------------------------------------------
@dataclass
class Checkpointing:
    """Checkpoint policy of one run: save under `save_root` after every `every_steps` steps (0: only after
    the last step) and resume from `resume` first."""

    save_root: Path | None = None
    every_steps: int = 0
    resume: CheckpointInfo | None = None
    keep_last: int = 0
    saved: list[dict[str, Any]] = field(default_factory=list)
    load_s: float | None = None

    def restore(self, session: Any, optimizer: torch.optim.Optimizer) -> int:
        if self.resume is None:
            return 0
        t0 = time.perf_counter()
        step = load(self.resume, session, optimizer)
        drop_weight_casts(p.module for p in session.parts)  # the loaded weights replace the ones any copy was made of
        for part in session.parts:  # leaves must alias the loaded shards
            if part.leaves:
                part.leaves[:] = attach_local_leaves([part.module])
        self.load_s = time.perf_counter() - t0
        return step

    def after_step(self, step: int, total_steps: int, session: Any, optimizer: torch.optim.Optimizer
                   ) -> CheckpointInfo | None:
        """Save when step index `step` (0-based) completes a checkpoint interval or the run."""
        done = step + 1
        if self.save_root is None or not ((self.every_steps and done % self.every_steps == 0) or done == total_steps):
            return None
        info = save(self.save_root, done, session, optimizer, keep_last=self.keep_last)
        self.saved.append({"step": done, "path": info.path, "save_s": info.save_s})
        return info
