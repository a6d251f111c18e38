"""Run a plan under torchrun and report what was measured beside what was predicted.

    torchrun --nproc-per-node N -m executor plan.json --steps 5 --report run.json \
        [--warmup 1] [--seed 0] [--device cpu|cuda] [--backend gloo|nccl] \
        [--checkpoint-dir DIR [--checkpoint-every K]] [--resume DIR] [--step-log steps.jsonl]

Training: AdamW on synthetic tokens (seeded; every data-parallel replica takes
the same rows of the global batch that a single process would), fp32 on CPU,
bf16/fp16 compute with fp32 master weights on GPU. Inference: prefill the
prompt, then greedy decode with a KV cache. Rank 0 writes a `RunReport` JSON
atomically (temp file + os.replace), so a failed run never leaves half a report
and never touches one written before.

Checkpoints (training, `executor.checkpoint`): with --checkpoint-dir the run saves
a distributed checkpoint every --checkpoint-every steps (default: the plan's
checkpoint_interval_steps; 0 = only after the last step). --resume DIR continues
the newest complete checkpoint under DIR (or one step_* directory) in this plan's
layout, whatever layout saved it: the run covers steps [saved step, warmup + steps).
--step-log appends one JSON line per step (and per checkpoint) as the run goes.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from costmodel.layers import attention_flops_per_token, matmul_flops_per_token, model_flops_per_token
from hardware_profiles.errors import ParplanError
from hardware_profiles.fileio import write_text_atomic

from .check import RunShape, validate
from .errors import UnsupportedPlanError
from .parallelize import (COMPILE_SCOPES, Meshes, Part, build_meshes, build_parts, build_schedule, cast_weights,
                          compile_kwargs, compiles_whole, compiles_with_loss, drop_weight_casts, finalize_grads,
                          full_state, maybe_autocast, set_grad_sync, track_weight_updates)

REPORT_SCHEMA = "parplan.run"
REPORT_SCHEMA_VERSION = 1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1


# -- synthetic data ---------------------------------------------------------------
def synthetic_tokens(seed: int, step: int, batch: int, length: int, vocab: int) -> torch.Tensor:
    """The global batch of step `step`: identical in every process and layout."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, vocab, (batch, length), generator=gen)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


_compiled_cross_entropy: Any = None


def loss_fn(compiled: bool):
    """The training loss; compiled, the fp32 upcast, log-softmax and its backward fuse into a few kernels
    instead of materialising the fp32 logits several times."""
    global _compiled_cross_entropy
    if not compiled:
        return cross_entropy
    if _compiled_cross_entropy is None:
        _compiled_cross_entropy = torch.compile(cross_entropy)
    return _compiled_cross_entropy


def _cuda_graphs() -> bool:
    return "reduce-overhead" in os.environ.get("PARPLAN_COMPILE_MODE", "")


def _uses_compiled_autograd(session: "Session", whole_graph: bool) -> bool:
    """Whether backward runs through compiled autograd: the gradient accumulation into .grad (and the cast of
    each weight's gradient back to fp32) then fuses with the backward's last kernels, instead of a separate
    add per parameter and micro-batch. Measured on an H200 (llama-1.5b, bench/results/gpu/runs_2026-11-22_f):
    one GPU 0.690 -> 0.664 s a step; TP2 0.475 -> 0.513 s, so not with tensor parallelism (its collectives'
    autograd functions then run inside the traced backward), nor with CUDA graphs (not measured together).
    PARPLAN_COMPILED_AUTOGRAD=1 / 0 forces it."""
    forced = os.environ.get("PARPLAN_COMPILED_AUTOGRAD")
    if forced in ("0", "1"):
        return forced == "1" and session.compiled
    return whole_graph and session.shape.tp == 1 and not _cuda_graphs()


def _compiled_autograd(enabled: bool, session: "Session"):
    if not enabled:
        return contextlib.nullcontext()
    from torch._dynamo import compiled_autograd
    return compiled_autograd._enable(torch.compile(**compile_kwargs(session.compile_backend)))


def _zero_grads_in_place(session: "Session") -> None:
    """Zero gradients, allocated before the first backward (CUDA graphs): autograd then adds each graph's
    gradient outputs into them instead of adopting the outputs, which the next replay overwrites. Plain
    tensors only (a parameter with a leaf gets its gradient from the leaf again at the step's end)."""
    plain = []
    for part in session.parts:
        for p, leaf in part.leaves:
            p.grad = None
            if leaf.grad is None:
                leaf.grad = torch.zeros_like(leaf)
            plain.append(leaf.grad)
        in_leaves = {id(p) for p, _ in part.leaves}
        for p in part.module.parameters():
            if id(p) in in_leaves or not p.requires_grad:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            plain.append(p.grad)
    torch._foreach_zero_(plain)


# -- a plan set up on the current process group ------------------------------------
@dataclass
class Session:
    plan: Any
    shape: RunShape
    meshes: Meshes
    parts: list[Part]
    device: torch.device
    compute_dtype: torch.dtype
    autocast: bool
    seed: int
    notes: list[str] = field(default_factory=list)
    compiled: bool = False
    compile_backend: bool | str = False  # as build_parts' compile_blocks
    compile_scope: str = "blocks"

    @property
    def has_first(self) -> bool:
        return any(p.stage == 0 for p in self.parts)

    @property
    def has_last(self) -> bool:
        return any(p.stage == self.shape.num_stages - 1 for p in self.parts)

    def parameters(self):
        for p in self.parts:
            yield from p.module.parameters()


def compute_dtype_for(plan: Any, device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return DTYPES.get(plan.workload.dtype, torch.bfloat16)


def setup(plan: Any, *, seed: int = 0, device: torch.device | str = "cpu", shape: RunShape | None = None,
          reuse_meshes: bool = False, compile_blocks: bool | str = False, compile_scope: str = "blocks") -> Session:
    """Collective: build the meshes and this rank's parallelized chunks (`reuse_meshes`: share meshes with
    earlier setups of the same shape in this process)."""
    device = torch.device(device)
    shape = shape or validate(plan, dist.get_world_size())
    dtype = compute_dtype_for(plan, device)
    tied = plan.model.layers[-1].tied
    meshes = build_meshes(shape, device.type, tied=tied, reuse=reuse_meshes)
    parts = build_parts(plan.model, shape, meshes, seed=seed, device=device, compute_dtype=dtype,
                        compile_blocks=compile_blocks, compile_scope=compile_scope)
    notes = []
    if not shape.training:
        if plan.strategy.sequence_parallel:
            notes.append("sequence_parallel is a training-memory technique; inference ran without it")
        if plan.strategy.zero:
            notes.append("zero applies to training state; inference kept full weights per data-parallel replica")
        if dtype != torch.float32:
            for part in parts:
                part.module.to(dtype)
    autocast = shape.training and dtype != torch.float32 and shape.dp == 1
    if device.type == "cpu" and plan.workload.dtype != "fp32":
        notes.append(f"workload dtype {plan.workload.dtype} ran in fp32 on CPU")
    return Session(plan=plan, shape=shape, meshes=meshes, parts=parts, device=device, compute_dtype=dtype,
                   autocast=autocast, seed=seed, notes=notes, compiled=bool(compile_blocks) and shape.training,
                   compile_backend=compile_blocks, compile_scope=compile_scope)


def make_optimizer(session: Session, cfg: OptimConfig) -> torch.optim.Optimizer:
    # one parameter group per device mesh: foreach kernels then never mix DTensors of different meshes
    groups: dict[Any, list] = {}
    for p in session.parameters():
        groups.setdefault(id(getattr(p, "device_mesh", None)), []).append(p)
    # fused: one kernel per parameter chunk on GPU (the foreach path runs ~10 passes over the fp32 state)
    fused = session.device.type == "cuda"
    opt = torch.optim.AdamW([{"params": ps} for ps in groups.values()], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            eps=cfg.eps, weight_decay=cfg.weight_decay, fused=fused or None)
    return track_weight_updates(opt, [p.module for p in session.parts])


@dataclass
class TrainResult:
    losses: list[float]
    step_times_s: list[float]
    grads_first_step: dict[str, torch.Tensor] | None = None
    first_step: int = 0  # > 0 when resumed from a checkpoint


class StepLog:
    """Progress as JSON lines, written by rank 0 and flushed line by line, so a driver learns how far a run
    got even when it dies (executor.heal)."""

    def __init__(self, path: str | os.PathLike[str] | None):
        self._fh = open(path, "a") if path is not None and dist.get_rank() == 0 else None

    def write(self, **record: Any) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps({"unix_s": time.time(), **record}) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class Trainer:
    def __init__(self, session: Session, cfg: OptimConfig = OptimConfig()):
        self.s = session
        self.opt = make_optimizer(session, cfg)
        self.schedule = None
        self.pp_scales_grads = True
        self.graphs = session.compiled and _cuda_graphs()
        self.forward_loss = None  # (inputs, targets) -> loss / n_micro: model and loss compiled as one graph
        # weights cast once per step rather than per micro-batch (`cast_weights`); FSDP gathers them per forward,
        # and CUDA graphs would copy fresh copies into their static inputs at every replay
        self.casts_weights = (session.autocast and session.compute_dtype != torch.float32 and session.shape.dp == 1
                              and not self.graphs and os.environ.get("PARPLAN_STEP_CASTS", "1") == "1")
        if session.compiled and compiles_with_loss(session.shape, session.compile_scope):
            model = session.parts[0].module
            if self.graphs:
                for part in session.parts:
                    for _, leaf in part.leaves:
                        torch._dynamo.mark_static_address(leaf)
            n_micro = session.shape.n_micro
            self.forward_loss = torch.compile(lambda inputs, targets: cross_entropy(model(inputs), targets) / n_micro,
                                              **compile_kwargs(session.compile_backend))
        self.compiled_backward = _uses_compiled_autograd(session, self.forward_loss is not None)
        if session.shape.pp > 1:
            self.schedule, self.pp_scales_grads = build_schedule(session.parts, session.shape, session.meshes,
                                                                 session.device, self._pp_loss)

    def _pp_loss(self, logits, targets):
        loss = loss_fn(self.s.compiled)(logits, targets)
        return loss if self.pp_scales_grads else loss / self.s.shape.n_micro

    def step(self, step: int, fault: "Fault | None" = None, capture_grads: bool = False):
        s, shape = self.s, self.s.shape
        tokens = synthetic_tokens(s.seed, step, shape.batch, shape.seq_len + 1, s.plan.model.vocab)
        rows = slice(s.meshes.dp_rank * shape.batch_per_replica, (s.meshes.dp_rank + 1) * shape.batch_per_replica)
        inputs = tokens[rows, :-1].to(s.device)
        targets = tokens[rows, 1:].to(s.device)
        if fault is not None:
            fault.maybe_fire(step)
        if self.graphs:
            _zero_grads_in_place(s)
        else:
            self.opt.zero_grad(set_to_none=True)
        local_loss = torch.zeros((), device=s.device)
        modules = [part.module for part in s.parts]
        if self.casts_weights:
            cast_weights(modules, s.compute_dtype)
        with maybe_autocast(s.device, s.compute_dtype, s.autocast):
            if self.schedule is not None:
                losses: list[torch.Tensor] = []
                args = (inputs,) if s.has_first else ()
                kwargs: dict[str, Any] = {"target": targets, "losses": losses} if s.has_last else {}
                self.schedule.step(*args, **kwargs)
                if s.has_last:
                    local_loss = torch.stack([l.detach().float() for l in losses]).mean()
                    if not self.pp_scales_grads:
                        local_loss = local_loss * shape.n_micro
            else:
                model = s.parts[0].module
                mb = shape.micro_batch
                ce = loss_fn(s.compiled)
                # a micro-batch's share of the step's loss
                forward_loss = self.forward_loss or (lambda x, y: ce(model(x), y) / shape.n_micro)
                for i in range(shape.n_micro):
                    set_grad_sync(s.parts, i == shape.n_micro - 1)
                    if self.graphs:
                        torch.compiler.cudagraph_mark_step_begin()
                    loss = forward_loss(inputs[i * mb:(i + 1) * mb], targets[i * mb:(i + 1) * mb])
                    with _compiled_autograd(self.compiled_backward, s):
                        loss.backward()
                    local_loss = local_loss + loss.detach().float()
        if self.casts_weights:
            drop_weight_casts(modules)
        finalize_grads(s.parts, shape, s.meshes, keep_leaf_grads=self.graphs)
        grads = full_state(s.parts, shape, s.meshes, grads=True) if capture_grads else None
        self.opt.step()
        # the loss lives on the last stage; every TP rank has it, count tp rank 0 of each replica
        if not (s.has_last and s.meshes.tp_rank == 0):
            local_loss = torch.zeros((), device=s.device)
        total = local_loss.detach().reshape(1).to(torch.float32)
        dist.all_reduce(total)
        return float(total.item()) / shape.dp, grads


def train(session: Session, steps: int, *, cfg: OptimConfig = OptimConfig(), fault: "Fault | None" = None,
          capture_grads: bool = False, after_step=None, checkpointing: Any = None,
          step_log: StepLog | None = None) -> TrainResult:
    """Steps [first, steps): first is 0, or the step of the checkpoint `checkpointing` resumes
    (an `executor.checkpoint.Checkpointing`, which also saves on its interval)."""
    trainer = Trainer(session, cfg)
    first = checkpointing.restore(session, trainer.opt) if checkpointing is not None else 0
    if step_log is not None:
        step_log.write(event="start", first_step=first, load_s=getattr(checkpointing, "load_s", None),
                       world_size=session.shape.world_size, layout=session.plan.strategy.describe())
    losses, times, grads0 = [], [], None
    for step in range(first, steps):
        _sync(session.device)
        start_unix = time.time()
        t0 = time.perf_counter()
        loss, grads = trainer.step(step, fault, capture_grads=capture_grads and step == 0)
        _sync(session.device)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        if step_log is not None:
            step_log.write(event="step", step=step, loss=loss, time_s=times[-1], start_unix_s=start_unix)
        if grads is not None:
            grads0 = grads
        if checkpointing is not None:
            saved = checkpointing.after_step(step, steps, session, trainer.opt)
            if saved is not None and step_log is not None:
                step_log.write(event="checkpoint", step=saved.step, path=saved.path, save_s=saved.save_s)
        if after_step is not None:
            after_step(step)
    return TrainResult(losses=losses, step_times_s=_max_over_ranks(times, session.device), grads_first_step=grads0,
                       first_step=first)


# -- inference ------------------------------------------------------------------------
@dataclass
class GenerateResult:
    tokens: torch.Tensor  # (batch, output_tokens), every rank
    ttft_s: float
    total_s: float


@torch.no_grad()
def generate(session: Session, prompt: torch.Tensor, output_tokens: int, fault: "Fault | None" = None,
             step: int = 0) -> GenerateResult:
    """Prefill `prompt` (the global request batch), then greedy decode; pipeline stages hand
    activations over with point-to-point sends."""
    s, shape, m = session, session.shape, session.meshes
    bl = shape.batch_per_replica
    rows = slice(m.dp_rank * bl, (m.dp_rank + 1) * bl)
    local_prompt = prompt[rows].to(s.device)
    p_len = local_prompt.shape[1]
    caches = {p.stage: p.module.new_caches(bl, p_len + output_tokens, s.compute_dtype, s.device) for p in s.parts}
    modules = {p.stage: p.module for p in s.parts}
    last = shape.num_stages - 1
    hidden = s.plan.model.hidden
    out = torch.zeros(bl, output_tokens, dtype=torch.int64, device=s.device)
    pp_group = m.pp.get_group() if m.pp is not None else None
    src_last = shape.process_rank(shape.stage_owner(last), m.dp_rank, m.tp_rank)
    cur = local_prompt
    if fault is not None:
        fault.maybe_fire(step)
    _sync(s.device)
    t0 = time.perf_counter()
    ttft = 0.0
    for t in range(output_tokens):
        start = 0 if t == 0 else p_len + t - 1
        seq = cur.shape[1]
        x = None
        for stage in range(shape.num_stages):
            owner = shape.stage_owner(stage)
            if owner != m.pp_rank:
                continue
            if stage == 0:
                x = cur
            elif shape.stage_owner(stage - 1) != m.pp_rank:
                x = torch.empty(bl, seq, hidden, dtype=s.compute_dtype, device=s.device)
                dist.recv(x, src=shape.process_rank(shape.stage_owner(stage - 1), m.dp_rank, m.tp_rank))
            x = modules[stage](x, start_pos=start, caches=caches[stage])
            if stage < last and shape.stage_owner(stage + 1) != m.pp_rank:
                dist.send(x.contiguous(), dst=shape.process_rank(shape.stage_owner(stage + 1), m.dp_rank, m.tp_rank))
        nxt = x[:, -1].float().argmax(-1) if s.has_last else torch.zeros(bl, dtype=torch.int64, device=s.device)
        if shape.pp > 1:
            dist.broadcast(nxt, src=src_last, group=pp_group)
        out[:, t] = nxt
        cur = nxt[:, None]
        if t == 0:
            _sync(s.device)
            ttft = time.perf_counter() - t0
    _sync(s.device)
    total = time.perf_counter() - t0
    full = torch.zeros(shape.batch, output_tokens, dtype=torch.int64, device=s.device)
    if s.has_last and m.tp_rank == 0:
        full[rows] = out
    dist.all_reduce(full)
    return GenerateResult(tokens=full.cpu(), ttft_s=ttft, total_s=total)


# -- measurement helpers ---------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    if not values:
        return []
    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().tolist()


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def model_flops(plan: Any, shape: RunShape) -> float:
    """Model FLOPs of one measured unit (the cost model's MFU convention: matmuls plus full-sequence
    attention, no recompute): a training step is 3 x forward; inference is prefill plus decode."""
    spec = plan.model
    if shape.training:
        per_token = sum(model_flops_per_token(lay, shape.seq_len) for lay in spec.layers)
        return 3.0 * per_token * shape.batch * shape.seq_len
    p = shape.seq_len
    flops = sum(model_flops_per_token(lay, p) for lay in spec.layers) * p
    for t in range(1, shape.output_tokens):
        ctx = p + t
        flops += sum(matmul_flops_per_token(lay) + attention_flops_per_token(lay, ctx) for lay in spec.layers
                     if lay.kind != "embedding")
    return flops * shape.batch


def peak_flops(plan: Any, shape: RunShape) -> float:
    """Sum over ranks of the plan's GPU dense peak for the workload dtype (FLOP/s)."""
    gpus = plan.cluster.gpus
    total = 0.0
    for r in range(shape.world_size):
        g = shape.placement[r]
        gpu = gpus[g] if g < len(gpus) else gpus[0]
        total += gpu.peak_tflops(plan.workload.dtype) * 1e12
    return total


def _ratio(measured: float | None, predicted: Any) -> float | None:
    try:
        predicted = float(predicted)
    except (TypeError, ValueError):
        return None
    if measured is None or not predicted or predicted != predicted:
        return None
    return measured / predicted


@dataclass(frozen=True)
class RunReport:
    """What a run measured, beside the plan's prediction (JSON: `to_dict`)."""

    mode: str
    plan: str
    model: str
    world_size: int
    steps: int
    warmup: int
    seed: int
    step_times_s: list[float]
    step_time_s: float
    predicted_step_time_s: float | None
    time_ratio: float | None  # measured / predicted
    tokens_per_s: float
    predicted_tokens_per_s: float | None
    model_flops_per_step: float
    mfu: float | None
    predicted_mfu: float | None
    peak_memory_bytes_per_rank: list[int]  # by process-group rank (= logical rank of the plan)
    process_of_rank: list[int]  # torchrun RANK that played each logical rank (the plan's placement)
    device_of_rank: list[str]
    predicted_memory_per_gpu_bytes: float | None
    memory_ratio: float | None  # max measured / predicted
    losses: list[float]
    ttft_s: float | None
    tpot_s: float | None
    predicted_ttft_s: float | None
    predicted_tpot_s: float | None
    generated_tokens: list[list[int]] | None
    shape: dict[str, Any]
    prediction: dict[str, Any]
    device: str
    device_name: str
    backend: str
    torch_version: str
    hostname: str
    created_utc: str
    notes: list[str]
    first_step: int = 0  # global index of the first step run (> 0 when resumed)
    resumed_from: str | None = None  # checkpoint directory
    checkpoint_load_s: float | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # saved: step, path, save_s

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION, **asdict(self)}


def write_report(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Atomic: a temp file in the same directory, then os.replace."""
    return write_text_atomic(path, json.dumps(data, indent=2))


def _pred(plan: Any, key: str) -> float | None:
    v = plan.prediction.get(key) if plan.prediction else None
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def measure(plan: Any, session: Session, *, steps: int, warmup: int, backend: str,
            fault: "Fault | None" = None, plan_path: str = "", checkpointing: Any = None,
            step_log: StepLog | None = None) -> RunReport:
    shape = session.shape
    losses: list[float] = []
    ttft = tpot = None
    generated = None
    first = 0
    if shape.training:
        result = train(session, warmup + steps, fault=fault, checkpointing=checkpointing, step_log=step_log)
        times = result.step_times_s
        losses = result.losses
        first = result.first_step
        tokens_per_unit = shape.batch * shape.seq_len
    else:
        prompt = synthetic_tokens(session.seed, 0, shape.batch, shape.seq_len, plan.model.vocab)
        times, ttfts = [], []
        for i in range(warmup + steps):
            res = generate(session, prompt, shape.output_tokens, fault=fault, step=i)
            times.append(res.total_s)
            ttfts.append(res.ttft_s)
            generated = res.tokens.tolist()
        times = _max_over_ranks(times, session.device)
        ttfts = _max_over_ranks(ttfts, session.device)
        ttft = statistics.median(ttfts[warmup:])
        tokens_per_unit = shape.batch * shape.output_tokens
    measured = times[max(warmup - first, 0):] or times  # warm-up counts global steps (a resumed run may skip it)
    step_time = statistics.median(measured)
    if not shape.training:
        tpot = (step_time - ttft) / max(shape.output_tokens - 1, 1)
    flops = model_flops(plan, shape)
    try:
        mfu = flops / step_time / peak_flops(plan, shape)
    except ParplanError:
        mfu = None
    gathered: list[Any] = [None] * shape.world_size
    process_rank = int(os.environ.get("RANK", dist.get_rank()))
    dist.all_gather_object(gathered, (peak_memory_bytes(session.device), process_rank, str(session.device)))
    mem = [int(v[0]) for v in gathered]
    pred_mem = _pred(plan, "memory_per_gpu_bytes")
    device_name = (torch.cuda.get_device_name(session.device) if session.device.type == "cuda"
                   else (platform.processor() or platform.machine()))
    return RunReport(
        mode="training" if shape.training else "inference", plan=plan_path, model=plan.model.name,
        world_size=shape.world_size, steps=steps, warmup=warmup, seed=session.seed, step_times_s=times,
        step_time_s=step_time, predicted_step_time_s=_pred(plan, "time_s"),
        time_ratio=_ratio(step_time, _pred(plan, "time_s")), tokens_per_s=tokens_per_unit / step_time,
        predicted_tokens_per_s=_pred(plan, "tokens_per_s"), model_flops_per_step=flops, mfu=mfu,
        predicted_mfu=_pred(plan, "mfu"), peak_memory_bytes_per_rank=mem,
        process_of_rank=[int(v[1]) for v in gathered], device_of_rank=[v[2] for v in gathered], predicted_memory_per_gpu_bytes=pred_mem,
        memory_ratio=_ratio(max(mem), pred_mem), losses=losses, ttft_s=ttft, tpot_s=tpot,
        predicted_ttft_s=_pred(plan, "ttft_s"), predicted_tpot_s=_pred(plan, "tpot_s"), generated_tokens=generated,
        shape=shape.to_dict(), prediction=dict(plan.prediction or {}), device=session.device.type,
        device_name=device_name, backend=backend, torch_version=torch.__version__, hostname=platform.node(),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), notes=session.notes,
        first_step=first, resumed_from=None if checkpointing is None or checkpointing.resume is None
        else checkpointing.resume.path, checkpoint_load_s=getattr(checkpointing, "load_s", None),
        checkpoints=list(getattr(checkpointing, "saved", [])))


# -- fault injection (tests and drills) ----------------------------------------------------
@dataclass(frozen=True)
class Fault:
    """`KIND:RANK:STEP`: at the start of step STEP, global rank RANK raises (raise), runs out of memory
    (oom: raises torch's OutOfMemoryError), exits (exit), kills itself with SIGKILL (kill) or hangs (hang)."""

    kind: str
    rank: int
    step: int

    @classmethod
    def parse(cls, text: str) -> "Fault":
        try:
            kind, rank, step = text.split(":")
            fault = cls(kind, int(rank), int(step))
        except ValueError:
            raise UnsupportedPlanError(f"--inject-fault takes KIND:RANK:STEP, got {text!r}") from None
        if fault.kind not in ("raise", "oom", "exit", "kill", "hang"):
            raise UnsupportedPlanError(f"fault kind must be raise, oom, exit, kill or hang, got {fault.kind!r}")
        return fault

    def maybe_fire(self, step: int) -> None:
        rank = int(os.environ["RANK"]) if "RANK" in os.environ else dist.get_rank()  # torchrun's rank
        if step != self.step or rank != self.rank:
            return
        if self.kind == "raise":
            raise RuntimeError(f"injected fault on rank {self.rank} at step {step}")
        if self.kind == "oom":
            raise getattr(torch, "OutOfMemoryError", MemoryError)(
                f"injected out-of-memory on rank {self.rank} at step {step}")
        if self.kind == "exit":
            os._exit(3)
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        while True:  # hang
            time.sleep(1)


# -- command line -----------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m executor", description="Run a plan (under torchrun) and report "
                                 "measured step time, throughput, MFU and memory beside the plan's prediction.")
    ap.add_argument("plan", help="plan JSON file (planner.Plan.save)")
    ap.add_argument("--steps", type=int, default=5, help="measured steps (training) or generations (inference)")
    ap.add_argument("--warmup", type=int, default=1, help="steps run before measuring")
    ap.add_argument("--report", default="run.json", help="RunReport JSON written by rank 0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    ap.add_argument("--backend", choices=("gloo", "nccl"), default=None, help="default: nccl on cuda, gloo on cpu")
    ap.add_argument("--pg-timeout-s", type=float, default=None,
                    help="process-group timeout (default 30 s on CPU, 300 s on GPU): a stuck collective fails then")
    ap.add_argument("--compile", nargs="?", const="blocks", default=None, choices=COMPILE_SCOPES,
                    help="torch.compile for training: each transformer block (default), or each pipeline chunk whole "
                         "(one graph per micro-batch; layouts with data parallelism compile per block)")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="with --compile: replay each compiled graph as a CUDA graph (torch.compile's "
                         "reduce-overhead mode); spares the host a kernel launch per kernel")
    ap.add_argument("--checkpoint-dir", default=None, help="save distributed checkpoints under this directory")
    ap.add_argument("--checkpoint-every", type=int, default=None,
                    help="steps between checkpoints (default: the plan's checkpoint_interval_steps; 0: last step only)")
    ap.add_argument("--checkpoint-keep", type=int, default=0, help="keep the newest K complete checkpoints (0: all)")
    ap.add_argument("--resume", default=None, help="continue from the newest complete checkpoint under this "
                    "directory (or this step_* directory), in this plan's layout")
    ap.add_argument("--step-log", default=None, help="append one JSON line per step (rank 0)")
    ap.add_argument("--inject-fault", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    if args.cuda_graphs:
        if args.compile is None:
            ap.error("--cuda-graphs replays compiled graphs: add --compile (best with --compile model)")
        os.environ["PARPLAN_COMPILE_MODE"] = "reduce-overhead"
    if (args.checkpoint_every is not None and args.checkpoint_every < 0) or args.checkpoint_keep < 0:
        ap.error("--checkpoint-every and --checkpoint-keep must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import record

    try:
        return record(_main)(argv)
    except BaseException:  # noqa: BLE001 - record() has written torchelastic's error file
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        sys.stdout.flush()
        # skip interpreter teardown: the process group's threads could keep a failed rank alive for the
        # whole timeout, and its peers learn of the failure from the closed connections
        os._exit(1)


def _main(argv: list[str] | None = None) -> int:
    from planner.plan import Plan

    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    try:
        plan = Plan.load(args.plan)
        shape = validate(plan, world_size)
        fault = Fault.parse(args.inject_fault) if args.inject_fault else None
    except ParplanError as exc:  # refused before any process group starts
        # every rank says it: the first to exit makes torchrun stop the others, rank 0 perhaps before it printed
        print(f"executor (rank {rank}): plan refused: {exc}", file=sys.stderr)
        return 2
    try:
        checkpointing, resume_notes = _checkpointing(args, plan, shape)
    except ParplanError as exc:
        print(f"executor (rank {rank}): checkpoint refused: {exc}", file=sys.stderr)
        return 2
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        print("executor: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    backend = args.backend or ("nccl" if device_type == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    timeout_s = args.pg_timeout_s or (30.0 if device_type == "cpu" else 300.0)
    if "MASTER_ADDR" not in os.environ:  # plain `python -m executor` on one process
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    # the process on GPU placement[r] joins as rank r (see RunShape.process_rank)
    dist.init_process_group(backend, timeout=_dt.timedelta(seconds=timeout_s), rank=shape.rank_for_process(rank),
                            world_size=world_size)
    # on an error the process exits without tearing the group down: peers fail fast on the closed
    # connections (or at the timeout) instead of waiting in a shutdown handshake
    session = setup(plan, seed=args.seed, device=device, shape=shape, compile_blocks=args.compile is not None,
                    compile_scope=args.compile or "blocks")
    if args.compile:
        session.notes.append("pipeline chunks compiled whole with torch.compile" if compiles_whole(shape, args.compile)
                             else "transformer blocks compiled with torch.compile")
    session.notes.extend(resume_notes)
    step_log = StepLog(args.step_log)
    report = measure(plan, session, steps=args.steps, warmup=args.warmup, backend=backend, fault=fault,
                     plan_path=str(args.plan), checkpointing=checkpointing, step_log=step_log)
    step_log.close()
    if dist.get_rank() == 0:
        write_report(args.report, report.to_dict())
        print(f"executor: {plan.describe()}: step {report.step_time_s:.4g} s measured vs "
              f"{report.predicted_step_time_s} s predicted; report in {args.report}")
    dist.barrier()
    dist.destroy_process_group()
    return 0


def _checkpointing(args: argparse.Namespace, plan: Any, shape: RunShape) -> tuple[Any, list[str]]:
    """The run's checkpoint policy, and the checkpoint to resume checked against the plan (before any
    process group starts)."""
    if not (args.checkpoint_dir or args.resume):
        return None, []
    from .checkpoint import Checkpointing, CheckpointError, check_compatible, resolve

    if not shape.training:
        raise CheckpointError("checkpoints hold training state; an inference plan takes no --checkpoint-dir or "
                              "--resume")
    resume = resolve(args.resume) if args.resume else None
    notes = check_compatible(resume, plan, args.seed, args.warmup + args.steps) if resume is not None else []
    every = args.checkpoint_every if args.checkpoint_every is not None else plan.checkpoint_interval_steps
    return Checkpointing(save_root=Path(args.checkpoint_dir) if args.checkpoint_dir else None, every_steps=every,
                         resume=resume, keep_last=args.checkpoint_keep), notes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
