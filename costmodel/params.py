"""`CostParams`: the constants of the cost model that are not datasheet figures.

They describe how close a software stack gets to the hardware (GEMM and
attention efficiency, achieved memory and network bandwidth, overheads,
overlap). Defaults describe a modern stack (PyTorch 2.x, flash attention,
NCCL). `costmodel.calibrate` fits them to measurements; a fitted set is saved
as a profile that `estimate()` picks up for that hardware.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from hardware_profiles.errors import ProfileError
from hardware_profiles.fileio import write_text_atomic


@dataclass(frozen=True)
class CostParams:
    # matrix units: achieved fraction of the dense datasheet rate on large GEMMs, and the GEMM size (FLOPs)
    # at which a GEMM reaches half of that (efficiency = gemm_efficiency / (1 + gemm_half_flops / flops))
    gemm_efficiency: float = 0.80
    gemm_half_flops: float = 2.0e9
    # per-GPU-type overrides of gemm_efficiency, as ((catalog name, efficiency), ...): parts differ in how close
    # they run to their datasheet rate (a 70 W T4 sustains far less of its boost-clock figure than a V100)
    gpu_gemm_efficiency: tuple[tuple[str, float], ...] = ()
    # attention kernels: achieved fraction of the dense rate (flash attention forward), and which fraction of
    # the causal score matrix is computed (0.5: masked blocks skipped; 1.0: computed and masked)
    attention_efficiency: float = 0.55
    causal_factor: float = 0.5
    flash_attention: bool = True
    # whether tensor parallelism splits the attention heads (Megatron's ParallelSelfAttention does). False: every
    # TP rank computes all heads at head_dim / tp (AMP's Megatron port of TransGAN), so the unfused score and
    # softmax matrices (heads x span per token) are not divided by tp, neither their traffic nor what is kept
    # for backward; their FLOPs still are
    tp_splits_attention_heads: bool = True
    # memory-bound work: achieved fraction of HBM bandwidth; bytes of elementwise traffic relative to a fused
    # modern block (norms, residuals, activation, rotary); 1.0 = fused kernels
    memory_efficiency: float = 0.85
    elementwise_factor: float = 1.0
    # the same multiplier for the head's norm and loss over the logits, where that differs from the blocks'
    # (the loss is one set of kernels over vocab-wide rows, not a block's many small ones); None: elementwise_factor
    head_elementwise_factor: float | None = None
    # fixed costs: GPU time per kernel (launch gap), and framework time per layer per pass (Python, hooks)
    kernel_overhead_s: float = 3.0e-6
    layer_overhead_s: float = 0.0
    decode_layer_overhead_s: float = 0.0
    # collectives: achieved fraction of link bandwidth; multiplier on per-hop latency
    collective_efficiency: float = 0.80
    collective_latency_factor: float = 1.0
    # share of data-parallel gradient traffic hidden behind backward compute (DDP buckets, FSDP prefetch)
    dp_overlap: float = 0.80
    # share of tensor-parallel collectives hidden behind compute (0 = Megatron default, none)
    tp_overlap: float = 0.0
    # fixed cost of each tensor-parallel collective beyond its alpha-beta time: the host waits for the device
    # around it (stacks that time or synchronise each model-parallel all-reduce, as Megatron-LM 1.x's timers do),
    # so the GPU idles while the host catches up. 0 = the host stays ahead
    tp_collective_overhead_s: float = 0.0
    # per-GPU-type overrides of tp_collective_overhead_s, ((catalog name, seconds), ...): the host round trip is
    # the node's CPU and driver, so it differs between node types (a g4dn's host is not a p3's)
    gpu_tp_collective_overhead_s: tuple[tuple[str, float], ...] = ()
    # achieved fraction of a node's network bandwidth (`Node.network_gbps`), per GPU type of the node,
    # ((catalog name, fraction), ...), on top of collective_efficiency: NICs and network stacks differ in how
    # much of their line rate NCCL gets (TCP sockets reach far less of 50 Gbit/s than of 10 Gbit/s).
    # Applied with `costmodel.comm.with_network_efficiency`; absent types keep 1.0
    network_efficiency: tuple[tuple[str, float], ...] = ()
    # the same for the fabric inside a node (`Fabric.bandwidth_gbps`): PCIe switches and NVLink meshes differ
    fabric_efficiency: tuple[tuple[str, float], ...] = ()
    # memory: usable share of device memory, fixed reserve (CUDA context, NCCL/cuBLAS workspaces), and the
    # multiplier on counted activations for allocator fragmentation and temporaries
    memory_usable_fraction: float = 0.95
    memory_reserved_bytes: float = 1.5e9
    activation_overhead: float = 1.10
    # optimizer: bytes of memory traffic per local parameter in the optimizer step (Adam, mixed precision)
    optimizer_bytes_per_param: float = 32.0
    # fixed cost per training step (data loading, logging, launch of the step)
    step_overhead_s: float = 0.0
    # fixed cost per micro-batch on each pipeline stage (the schedule's own bookkeeping, send/receive
    # handshakes): what makes many small micro-batches slower than fewer large ones beyond the kernels
    microbatch_overhead_s: float = 0.0
    # host (Python, dispatch, launch) time to issue one transformer block's forward and backward for one
    # micro-batch. A GPU that finishes the block sooner waits for the host: a block never takes less than
    # this. 0 (the idealized runtime) assumes the host keeps ahead; calibration fits it where runs show
    # otherwise (tensor parallelism divides the GPU work of a block, not the host's).
    host_layer_s: float = 0.0
    # per-GPU-type host floor per transformer block and micro-batch (forward + backward), ((catalog name, s), ...),
    # applied in costmodel.layercost: the host (CPU, driver, framework) is part of the node type
    gpu_host_layer_s: tuple[tuple[str, float], ...] = ()
    # inference host floor: host time to issue one transformer block's forward in a prefill, and in a decode
    # step, plus this much per tensor-parallel collective the block issues. Kernels launch asynchronously, so
    # the block's GPU work hides behind the host's (a block takes the larger of the two, not their sum); a
    # batch-1 decode in an eager stack (Megatron-LM's text generation) is host-bound. 0 = the host keeps ahead
    infer_host_layer_s: float = 0.0
    decode_host_layer_s: float = 0.0
    infer_host_collective_s: float = 0.0
    # row-tile height of the inference GEMM kernels: a prefill's GEMMs over M > tile rows run ceil(M / tile)
    # row tiles, so time steps with the prompt length (cuBLAS fp16 tensor-core kernels on Volta/Ampere tile
    # M by 128). GEMMs of at most one tile use a kernel sized to them. 0 = no quantization
    gemm_tile_rows: int = 0
    # inference GEMMs whose local N or K is not a whole number of 16-byte vectors (fp16: a multiple of 8, e.g.
    # YaLM's 27308-wide MLP split four ways) run at this fraction of gemm_efficiency; 1.0 = no penalty
    gemm_misaligned_efficiency: float = 1.0
    # inference GEMMs: achieved fraction of HBM bandwidth while streaming their operands (a batch-1 decode's
    # skinny GEMMs, bound by reading the weights once); 0 = memory_efficiency
    gemm_memory_efficiency: float = 0.0
    # a prefill computes the logits of the last prompt position only (what generating the first token needs;
    # serving stacks skip the head elsewhere) rather than of every prompt position
    prefill_last_logits_only: bool = False

    def replace(self, **changes: Any) -> "CostParams":
        return replace(self, **changes)

    def gemm_efficiency_for(self, gpu_name: str) -> float:
        return dict(self.gpu_gemm_efficiency).get(gpu_name, self.gemm_efficiency)

    @property
    def head_elementwise_factor_value(self) -> float:
        return self.elementwise_factor if self.head_elementwise_factor is None else self.head_elementwise_factor

    def tp_collective_overhead_for(self, gpu_name: str) -> float:
        return dict(self.gpu_tp_collective_overhead_s).get(gpu_name, self.tp_collective_overhead_s)

    def network_efficiency_for(self, gpu_name: str) -> float:
        return dict(self.network_efficiency).get(gpu_name, 1.0)

    def fabric_efficiency_for(self, gpu_name: str) -> float:
        return dict(self.fabric_efficiency).get(gpu_name, 1.0)

    def host_layer_for(self, gpu_name: str) -> float:
        return dict(self.gpu_host_layer_s).get(gpu_name, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CostParams":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ProfileError(f"unknown cost parameters {sorted(unknown)}; known: {sorted(names)}")
        d = dict(data)
        for name in PER_GPU_FIELDS:
            if name in d:
                d[name] = tuple((str(k), float(v)) for k, v in d[name])
        return cls(**d)

    def save(self, path: str | Path, **meta: Any) -> Path:
        return write_text_atomic(path, json.dumps({"cost_params": self.to_dict(), **meta}, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "CostParams":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ProfileError(f"cannot read cost parameters from {str(path)!r}: {exc}") from None
        return cls.from_dict(data.get("cost_params", data))


DEFAULT_PARAMS = CostParams()
# fields holding ((GPU catalog name, value), ...) overrides; fitting addresses one entry as "field:GPU name"
# per-GPU fields and the lookup that reads each (falling back to the shared value where there is one)
PER_GPU_FIELDS = {"gpu_gemm_efficiency": "gemm_efficiency_for",
                  "gpu_tp_collective_overhead_s": "tp_collective_overhead_for",
                  "network_efficiency": "network_efficiency_for", "fabric_efficiency": "fabric_efficiency_for",
                  "gpu_host_layer_s": "host_layer_for"}
