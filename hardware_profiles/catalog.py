"""The datasheet catalog of accelerators and forgiving look-ups by name.

Every figure carries its source (`GPUSpec.sources`, one entry per group of
fields). Dense rates only: where a datasheet quotes sparse figures, the dense
figure stored here is half of it, and `notes` says so. Prices are reference
on-demand prices per GPU-hour with provider and date in `price_source`; prices
move and several could not be re-checked against a live price list, which
`price_source` says plainly. Treat them as defaults that users override.
"""
from __future__ import annotations

import difflib
import re

from .errors import UnknownGPUError
from .gpu import GPUSpec

# -- datasheets -----------------------------------------------------------
_A100_DS = ("NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf, 2021); "
            "dense figures (the sparse column is 2x)")
_A100_PCIE40_DS = "NVIDIA A100 40GB PCIe product brief PB-10137-001_v03 (2020) and A100 datasheet (2021)"
_H100_DS = ("NVIDIA H100 Tensor Core GPU datasheet (2023): SXM and PCIe columns; tensor rates are quoted "
            "with sparsity ('specifications 1/2 lower without sparsity'), halved here")
_H100_NVL_DS = ("NVIDIA H100 NVL datasheet (2024 H100 datasheet, NVL column); tensor rates quoted with "
                "sparsity, halved here")
_H200_DS = ("NVIDIA H200 Tensor Core GPU datasheet (2024), SXM column; tensor rates quoted with sparsity, "
            "halved here")
_H200_NVL_DS = "NVIDIA H200 Tensor Core GPU datasheet (2024), NVL column; tensor rates quoted with sparsity, halved here"
_GH200_DS = ("NVIDIA GH200 Grace Hopper Superchip datasheet (2023-2024): GPU figures are H100 SXM's; "
             "96 GB HBM3 at 4 TB/s or 144 GB HBM3e at 4.9 TB/s; tensor rates quoted with sparsity, halved here")
_B200_DS = ("NVIDIA HGX B200 specifications (2025): platform figures / 8 GPUs (FP32 600 TFLOP/s, TF32 18, "
            "BF16 36, FP8 72 PFLOP/s with sparsity, 1.44 TB HBM3e); DGX B200 datasheet for 64 TB/s HBM3e "
            "(8 TB/s per GPU) and 1,000 W; sparse rates halved")
_B100_DS = ("NVIDIA Blackwell datasheet (GTC 2024), HGX B100 per-GPU column: FP32 60 TFLOP/s, TF32 1.8, "
            "BF16 3.5, FP8 7 PFLOP/s with sparsity, 192 GB HBM3e at 8 TB/s, 700 W; sparse rates halved")
_V100_DS = "NVIDIA Tesla V100 GPU datasheet (2018), SXM2 and PCIe columns"
_T4_DS = "NVIDIA T4 Tensor Core GPU datasheet (2019)"
_L4_DS = "NVIDIA L4 Tensor Core GPU datasheet (2023); tensor rates quoted with sparsity, halved here"
_L40S_DS = "NVIDIA L40S GPU datasheet (2023); dense column (sparse column is 2x)"
_L40_DS = "NVIDIA L40 GPU datasheet (2022); dense column (sparse column is 2x)"
_A10_DS = "NVIDIA A10 Tensor Core GPU datasheet (2021); dense column (sparse column is 2x)"
_A10G_DS = ("no NVIDIA datasheet exists for the AWS-only A10G; memory and bandwidth from the AWS EC2 G5 "
            "documentation, rates from Baseten, 'NVIDIA A10 vs A10G for ML model inference' (2023): "
            "more CUDA-core FP32 than the A10, about half its tensor rate")
_A30_DS = "NVIDIA A30 Tensor Core GPU datasheet (2021); dense column (sparse column is 2x)"
_ADA_WP = ("NVIDIA Ada Lovelace architecture whitepaper v2.1 (2023), GeForce RTX 4090 column: tensor rates with "
           "FP32 accumulate (half the FP16-accumulate rate on GeForce parts), dense")
_RTX6000_DS = ("NVIDIA RTX 6000 Ada Generation datasheet (2022): 1,457 FP8 TFLOP/s with sparsity; dense "
               "BF16/TF32 derived by halving (sparsity) and halving again (FP8 -> 16-bit)")
_MI300_DS = "AMD Instinct MI300X data sheet (2023); dense column (sparse column is 2x)"

# -- prices ---------------------------------------------------------------
# What could be re-checked in this session came from secondary write-ups that
# quote the providers' price lists; the rest is marked as not re-verified.
_UNVERIFIED = "not re-verified against a live price list"
_TECHBYTES = "techbytes.app 'Serverless GPU Pricing Matrix' (prices verified 2026-05-07 from vendor pages)"
_FACTUAL = "factualminds.com 'Amazon EC2 On-Demand Pricing' (us-east-1, 2026-06-17)"
_AWS = "AWS EC2 on-demand, us-east-1, Linux, instance price / GPUs per instance"
_LAMBDA = "Lambda Cloud on-demand list price per GPU-hour"


def _sources(ds: str, price: str, **override: str) -> tuple[tuple[str, str], ...]:
    """One source per group of fields; `override` replaces a group's source (keys are group labels)."""
    groups = {
        "memory": ("memory_gb,memory_bandwidth_gbps", ds),
        "rates": ("fp32_tflops,tf32_tflops,bf16_tflops,fp16_tflops,fp8_tflops,int8_tops", ds),
        "links": ("nvlink_gbps,pcie_gen,pcie_gbps", ds),
        "power": ("tdp_w", ds),
    }
    out = [(fields, override.get(label, src)) for label, (fields, src) in groups.items()]
    out.append(("price_usd_per_hour", price))
    return tuple(out)


_CATALOG: tuple[GPUSpec, ...] = (
    # ---------------------------------------------------------------- Ampere
    GPUSpec(
        name="A100-SXM-40GB", architecture="Ampere", form_factor="SXM",
        memory_gb=40, memory_bandwidth_gbps=1555,
        fp32_tflops=19.5, tf32_tflops=156, bf16_tflops=312, fp16_tflops=312, fp8_tflops=None, int8_tops=624,
        nvlink_gbps=600, pcie_gen=4, pcie_gbps=64, tdp_w=400,
        price_usd_per_hour=1.29,
        price_source=f"{_LAMBDA}: 8x A100 SXM 40GB, $1.29 (2025-06, {_UNVERIFIED}); {_TECHBYTES} lists "
        "Lambda 1x A100 40GB at $1.48",
        sources=_sources(_A100_DS, f"Lambda (2025-06, {_UNVERIFIED})"),
        aliases=("A100-SXM4-40GB", "A100 40GB", "A100-40GB", "A100 SXM4 40GB", "A100 SXM 40GB"),
        notes="Datasheet sparse column: 312 TF32, 624 BF16/FP16, 1,248 INT8; dense is half.",
    ),
    GPUSpec(
        name="A100-SXM-80GB", architecture="Ampere", form_factor="SXM",
        memory_gb=80, memory_bandwidth_gbps=2039,
        fp32_tflops=19.5, tf32_tflops=156, bf16_tflops=312, fp16_tflops=312, fp8_tflops=None, int8_tops=624,
        nvlink_gbps=600, pcie_gen=4, pcie_gbps=64, tdp_w=400,
        price_usd_per_hour=1.79,
        price_source=f"{_LAMBDA}: 8x A100 SXM 80GB, $1.79 (2025-06, {_UNVERIFIED}); {_TECHBYTES} lists "
        "Modal A100 80GB at $2.50",
        sources=_sources(_A100_DS, f"Lambda (2025-06, {_UNVERIFIED})"),
        aliases=("A100", "A100-80GB", "A100-SXM4-80GB", "A100 80GB SXM", "A100 SXM", "A100 SXM4 80GB"),
        notes="Datasheet sparse column: 312 TF32, 624 BF16/FP16, 1,248 INT8; dense is half.",
        default_for_model=True,
    ),
    GPUSpec(
        name="A100-PCIe-80GB", architecture="Ampere", form_factor="PCIe",
        memory_gb=80, memory_bandwidth_gbps=1935,
        fp32_tflops=19.5, tf32_tflops=156, bf16_tflops=312, fp16_tflops=312, fp8_tflops=None, int8_tops=624,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=300,
        price_usd_per_hour=None,
        price_source="no on-demand list price for the 80GB PCIe card could be verified (the $1.29 Lambda "
        "figure once used here was for the 40GB card)",
        sources=_sources(_A100_DS, "none"),
        aliases=("A100 80GB PCIe", "A100-PCIE-80GB", "A100 PCIe", "A100 PCIe 80GB"),
        notes="An optional NVLink bridge joins pairs of cards (600 GB/s); the catalog models the plain PCIe card.",
    ),
    GPUSpec(
        name="A100-PCIe-40GB", architecture="Ampere", form_factor="PCIe",
        memory_gb=40, memory_bandwidth_gbps=1555,
        fp32_tflops=19.5, tf32_tflops=156, bf16_tflops=312, fp16_tflops=312, fp8_tflops=None, int8_tops=624,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=250,
        price_usd_per_hour=None,
        price_source="no on-demand list price verified",
        sources=_sources(_A100_PCIE40_DS, "none"),
        aliases=("A100-PCIE-40GB", "A100 40GB PCIe", "A100 PCIe 40GB"),
        notes="Same GA100 rates as the SXM part at a 250 W limit, so sustained clocks run lower. "
        "Optional NVLink bridge for pairs (600 GB/s); the catalog models the plain PCIe card.",
    ),
    GPUSpec(
        name="A30", architecture="Ampere", form_factor="PCIe",
        memory_gb=24, memory_bandwidth_gbps=933,
        fp32_tflops=10.3, tf32_tflops=82, bf16_tflops=165, fp16_tflops=165, fp8_tflops=None, int8_tops=330,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=165,
        price_usd_per_hour=None, price_source="no on-demand list price verified",
        sources=_sources(_A30_DS, "none"),
        aliases=("A30 24GB", "NVIDIA A30"),
        notes="Datasheet sparse column: 165 TF32, 330 BF16/FP16, 661 INT8. Optional NVLink bridge for "
        "pairs (200 GB/s); the catalog models the plain PCIe card.",
        default_for_model=True,
    ),
    GPUSpec(
        name="A10", architecture="Ampere", form_factor="PCIe",
        memory_gb=24, memory_bandwidth_gbps=600,
        fp32_tflops=31.2, tf32_tflops=62.5, bf16_tflops=125, fp16_tflops=125, fp8_tflops=None, int8_tops=250,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=150,
        price_usd_per_hour=0.86, price_source=f"{_LAMBDA}: 1x A10, $0.86, per {_TECHBYTES}",
        sources=_sources(_A10_DS, _TECHBYTES),
        aliases=("A10 24GB", "NVIDIA A10", "A10 PCIe"),
        notes="Datasheet sparse column: 125 TF32, 250 BF16/FP16, 500 INT8; dense is half.",
        default_for_model=True,
    ),
    GPUSpec(
        name="A10G", architecture="Ampere", form_factor="PCIe",
        memory_gb=24, memory_bandwidth_gbps=600,
        fp32_tflops=35, tf32_tflops=35, bf16_tflops=70, fp16_tflops=70, fp8_tflops=None, int8_tops=140,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=300,
        price_usd_per_hour=1.006, price_source=f"{_AWS}: g5.xlarge (1x A10G), $1.006, per {_FACTUAL}",
        sources=_sources(_A10G_DS, _FACTUAL, power="nvidia-smi power limit reported on EC2 g5 instances "
                         "(300 W); no datasheet"),
        aliases=("NVIDIA A10G", "A10G 24GB"),
        notes="AWS-specific GA102 variant. Its tensor rates are NOT the A10's (125 TFLOP/s): third-party "
        "figures put dense BF16/FP16 near 70 TFLOP/s; measure it (python -m hardware_profiles.profiler) "
        "before trusting compute-bound estimates.",
        default_for_model=True,
    ),
    # ---------------------------------------------------------------- Hopper
    GPUSpec(
        name="H100-SXM-80GB", architecture="Hopper", form_factor="SXM",
        memory_gb=80, memory_bandwidth_gbps=3350,
        fp32_tflops=67, tf32_tflops=494.5, bf16_tflops=989.5, fp16_tflops=989.5, fp8_tflops=1979, int8_tops=1979,
        nvlink_gbps=900, pcie_gen=5, pcie_gbps=128, tdp_w=700,
        price_usd_per_hour=2.99,
        price_source=f"{_LAMBDA}: 8x H100 SXM, $2.99 (2025-06, {_UNVERIFIED}); {_TECHBYTES} lists Lambda "
        "1x H100 SXM at $3.78",
        sources=_sources(_H100_DS, f"Lambda (2025-06, {_UNVERIFIED})"),
        aliases=("H100", "H100-SXM5-80GB", "H100 SXM", "H100 80GB HBM3", "H100-SXM", "H100 SXM5", "H100 SXM 80GB"),
        notes="Datasheet tensor figures (989 TF32, 1,979 BF16/FP16, 3,958 FP8/INT8) are with sparsity; "
        "dense is half.",
        default_for_model=True,
    ),
    GPUSpec(
        name="H100-PCIe-80GB", architecture="Hopper", form_factor="PCIe",
        memory_gb=80, memory_bandwidth_gbps=2000,
        fp32_tflops=51, tf32_tflops=378, bf16_tflops=756.5, fp16_tflops=756.5, fp8_tflops=1513, int8_tops=1513,
        nvlink_gbps=None, pcie_gen=5, pcie_gbps=128, tdp_w=350,
        price_usd_per_hour=2.86, price_source=f"{_LAMBDA}: 1x H100 PCIe, $2.86, per {_TECHBYTES}",
        sources=_sources(_H100_DS, _TECHBYTES),
        aliases=("H100 PCIe", "H100-PCIE", "H100 PCIe 80GB", "H100-PCIE-80GB"),
        notes="Datasheet tensor figures (756 TF32, 1,513 BF16/FP16, 3,026 FP8/INT8) are with sparsity; "
        "dense is half. An optional NVLink bridge joins pairs of cards (600 GB/s); the catalog models the "
        "plain PCIe card.",
    ),
    GPUSpec(
        name="H100-NVL-94GB", architecture="Hopper", form_factor="PCIe",
        memory_gb=94, memory_bandwidth_gbps=3900,
        fp32_tflops=60, tf32_tflops=417.5, bf16_tflops=835.5, fp16_tflops=835.5, fp8_tflops=1670.5,
        int8_tops=1670.5,
        nvlink_gbps=600, pcie_gen=5, pcie_gbps=128, tdp_w=400,
        price_usd_per_hour=None, price_source="no on-demand list price verified",
        sources=_sources(_H100_NVL_DS, "none"),
        aliases=("H100 NVL", "H100-NVL", "H100 NVL 94GB", "NVIDIA H100 NVL"),
        notes="PCIe card sold in NVLink-bridged pairs (600 GB/s between the two); datasheet tensor figures "
        "(835 TF32, 1,671 BF16/FP16, 3,341 FP8/INT8) are with sparsity; dense is half. TDP is configurable "
        "350-400 W; 400 W stored.",
    ),
    GPUSpec(
        name="H200-SXM-141GB", architecture="Hopper", form_factor="SXM",
        memory_gb=141, memory_bandwidth_gbps=4800,
        fp32_tflops=67, tf32_tflops=494.5, bf16_tflops=989.5, fp16_tflops=989.5, fp8_tflops=1979, int8_tops=1979,
        nvlink_gbps=900, pcie_gen=5, pcie_gbps=128, tdp_w=700,
        price_usd_per_hour=3.50,
        price_source="midpoint of neocloud on-demand list prices for 8x H200 SXM nodes (2025-06, "
        f"{_UNVERIFIED})",
        sources=_sources(_H200_DS, f"neocloud list prices (2025-06, {_UNVERIFIED})"),
        aliases=("H200", "H200 SXM", "H200-SXM", "H200 141GB HBM3e", "H200-141GB", "H200 SXM 141GB"),
        notes="Same Hopper die and clocks as H100 SXM; more and faster HBM3e. Datasheet tensor figures are "
        "with sparsity; dense is half.",
        default_for_model=True,
    ),
    GPUSpec(
        name="H200-NVL-141GB", architecture="Hopper", form_factor="PCIe",
        memory_gb=141, memory_bandwidth_gbps=4800,
        fp32_tflops=60, tf32_tflops=417.5, bf16_tflops=835.5, fp16_tflops=835.5, fp8_tflops=1670.5,
        int8_tops=1670.5,
        nvlink_gbps=900, pcie_gen=5, pcie_gbps=128, tdp_w=600,
        price_usd_per_hour=None, price_source="no on-demand list price verified",
        sources=_sources(_H200_NVL_DS, "none"),
        aliases=("H200 NVL", "H200-NVL", "NVIDIA H200 NVL"),
        notes="PCIe card joined by 2- or 4-way NVLink bridges (900 GB/s per GPU); datasheet tensor figures "
        "(835 TF32, 1,671 BF16/FP16, 3,341 FP8/INT8) are with sparsity; dense is half. TDP up to 600 W.",
    ),
    GPUSpec(
        name="GH200-96GB", architecture="Hopper", form_factor="SXM",
        memory_gb=96, memory_bandwidth_gbps=4000,
        fp32_tflops=67, tf32_tflops=494.5, bf16_tflops=989.5, fp16_tflops=989.5, fp8_tflops=1979, int8_tops=1979,
        nvlink_gbps=900, pcie_gen=5, pcie_gbps=128, tdp_w=1000,
        price_usd_per_hour=1.49, price_source=f"{_LAMBDA}: 1x GH200, $1.49 (2025, {_UNVERIFIED})",
        sources=_sources(_GH200_DS, f"Lambda (2025, {_UNVERIFIED})"),
        aliases=("GH200", "GH200 96GB", "GH200 480GB", "NVIDIA GH200 480GB", "GH200 HBM3"),
        notes="Grace Hopper superchip with 96 GB HBM3 (nvidia-smi names it by its 480 GB of CPU LPDDR5X). "
        "Module power (CPU + GPU + memory) is configurable 450-1,000 W; 1,000 W stored. NVLink-C2C to the "
        "Grace CPU runs at 900 GB/s. Modelled as an SXM-class module. Datasheet tensor figures (989 TF32, 1,979 "
        "BF16/FP16, 3,958 FP8/INT8) are with sparsity; dense is half.",
        default_for_model=True,
    ),
    GPUSpec(
        name="GH200-144GB", architecture="Hopper", form_factor="SXM",
        memory_gb=144, memory_bandwidth_gbps=4900,
        fp32_tflops=67, tf32_tflops=494.5, bf16_tflops=989.5, fp16_tflops=989.5, fp8_tflops=1979, int8_tops=1979,
        nvlink_gbps=900, pcie_gen=5, pcie_gbps=128, tdp_w=1000,
        price_usd_per_hour=None, price_source="no on-demand list price verified",
        sources=_sources(_GH200_DS, "none"),
        aliases=("GH200 144GB", "GH200 144G HBM3e", "NVIDIA GH200 144G HBM3e", "GH200 HBM3e"),
        notes="Grace Hopper superchip with 144 GB HBM3e. Module power configurable 450-1,000 W; 1,000 W "
        "stored. Modelled as an SXM-class module. Datasheet tensor figures are with sparsity; dense is half.",
    ),
    # ------------------------------------------------------------- Blackwell
    GPUSpec(
        name="B200-SXM-180GB", architecture="Blackwell", form_factor="SXM",
        memory_gb=180, memory_bandwidth_gbps=8000,
        fp32_tflops=75, tf32_tflops=1125, bf16_tflops=2250, fp16_tflops=2250, fp8_tflops=4500, int8_tops=4500,
        nvlink_gbps=1800, pcie_gen=5, pcie_gbps=128, tdp_w=1000,
        price_usd_per_hour=4.99,
        price_source=f"{_LAMBDA}: 8x B200 SXM, $4.99 (2025-06, {_UNVERIFIED})",
        sources=_sources(_B200_DS, f"Lambda (2025-06, {_UNVERIFIED})"),
        aliases=("B200", "B200 SXM", "HGX B200", "B200-180GB", "B200 192GB", "B200 SXM6"),
        notes="HGX B200 quotes 36 PFLOP/s BF16 and 72 PFLOP/s FP8 with sparsity for 8 GPUs; dense per GPU is "
        "2.25 and 4.5 PFLOP/s. The launch datasheet (2024) gave 192 GB, FP32 80 and TF32 2.2 PFLOP/s sparse; "
        "the shipping HGX figures are stored.",
        default_for_model=True,
    ),
    GPUSpec(
        name="B100-SXM-192GB", architecture="Blackwell", form_factor="SXM",
        memory_gb=192, memory_bandwidth_gbps=8000,
        fp32_tflops=60, tf32_tflops=900, bf16_tflops=1750, fp16_tflops=1750, fp8_tflops=3500, int8_tops=3500,
        nvlink_gbps=1800, pcie_gen=5, pcie_gbps=128, tdp_w=700,
        price_usd_per_hour=None, price_source="no public on-demand offer found (2025-06)",
        sources=_sources(_B100_DS, "none"),
        aliases=("B100", "HGX B100", "B100 SXM"),
        notes="Per-GPU datasheet figures with sparsity: TF32 1.8, BF16 3.5, FP8 7 PFLOP/s; dense is half.",
        default_for_model=True,
    ),
    # ---------------------------------------------------------- Ada Lovelace
    GPUSpec(
        name="L4", architecture="Ada Lovelace", form_factor="PCIe",
        memory_gb=24, memory_bandwidth_gbps=300,
        fp32_tflops=30.3, tf32_tflops=60, bf16_tflops=121, fp16_tflops=121, fp8_tflops=242.5, int8_tops=242.5,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=72,
        price_usd_per_hour=0.80,
        price_source=f"{_AWS}: g6.xlarge (1x L4), $0.805 (2025-06 list, {_UNVERIFIED}); {_TECHBYTES} lists Modal L4 at "
        "$0.80",
        sources=_sources(_L4_DS, f"AWS g6.xlarge ({_UNVERIFIED}); Modal via {_TECHBYTES}"),
        aliases=("L4 24GB", "NVIDIA L4"),
        notes="Datasheet quotes 120 TF32, 242 BF16/FP16, 485 FP8/INT8 TFLOP/s with sparsity; dense is half.",
        default_for_model=True,
    ),
    GPUSpec(
        name="L40S", architecture="Ada Lovelace", form_factor="PCIe",
        memory_gb=48, memory_bandwidth_gbps=864,
        fp32_tflops=91.6, tf32_tflops=183, bf16_tflops=362.05, fp16_tflops=362.05, fp8_tflops=733, int8_tops=733,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=350,
        price_usd_per_hour=1.86,
        price_source=f"{_AWS}: g6e.xlarge (1x L40S), $1.861 (2025-06 list, {_UNVERIFIED}); {_TECHBYTES} lists Modal L40S "
        "at $1.95",
        sources=_sources(_L40S_DS, f"AWS g6e.xlarge ({_UNVERIFIED}); Modal via {_TECHBYTES}"),
        aliases=("L40S 48GB", "NVIDIA L40S"),
        notes="Datasheet gives dense | sparse: 183 | 366 TF32, 362.05 | 733 BF16/FP16, 733 | 1,466 FP8/INT8.",
        default_for_model=True,
    ),
    GPUSpec(
        name="L40", architecture="Ada Lovelace", form_factor="PCIe",
        memory_gb=48, memory_bandwidth_gbps=864,
        fp32_tflops=90.5, tf32_tflops=90.5, bf16_tflops=181.05, fp16_tflops=181.05, fp8_tflops=362, int8_tops=362,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=300,
        price_usd_per_hour=1.00,
        price_source=f"reference on-demand price for single L40 instances at GPU clouds (2025-06, {_UNVERIFIED})",
        sources=_sources(_L40_DS, f"GPU cloud list prices (2025-06, {_UNVERIFIED})"),
        aliases=("L40 48GB", "NVIDIA L40"),
        notes="Datasheet gives dense | sparse: 90.5 | 181 TF32, 181.05 | 362.1 BF16/FP16, 362 | 724 FP8/INT8.",
        default_for_model=True,
    ),
    GPUSpec(
        name="RTX-4090", architecture="Ada Lovelace", form_factor="PCIe",
        memory_gb=24, memory_bandwidth_gbps=1008,
        fp32_tflops=82.6, tf32_tflops=82.6, bf16_tflops=165.2, fp16_tflops=165.2, fp8_tflops=330.3,
        int8_tops=660.6,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=450,
        price_usd_per_hour=None, price_source="consumer card; marketplace prices vary, none verified",
        sources=_sources(_ADA_WP, "none"),
        aliases=("RTX 4090", "GeForce RTX 4090", "RTX4090", "4090"),
        notes="GeForce parts run 16-bit tensor math with FP32 accumulate (what PyTorch uses) at half the "
        "FP16-accumulate rate: 165.2 dense, not 330.3. No NVLink; P2P over PCIe is disabled by the driver.",
        vendor="NVIDIA",
    ),
    GPUSpec(
        name="RTX-6000-Ada", architecture="Ada Lovelace", form_factor="PCIe",
        memory_gb=48, memory_bandwidth_gbps=960,
        fp32_tflops=91.1, tf32_tflops=182.1, bf16_tflops=364.2, fp16_tflops=364.2, fp8_tflops=728.5,
        int8_tops=728.5,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=300,
        price_usd_per_hour=None, price_source="no on-demand list price verified",
        sources=_sources(_RTX6000_DS, "none"),
        aliases=("RTX 6000 Ada", "RTX 6000 Ada Generation", "NVIDIA RTX 6000 Ada Generation", "RTX6000 Ada"),
        notes="Workstation AD102 (142 SMs, as L40S) with full-rate FP32 accumulate; 1,457 FP8 TFLOP/s with "
        "sparsity -> 728.5 dense FP8, 364.2 dense BF16/FP16.",
    ),
    # ------------------------------------------------------- Volta / Turing
    GPUSpec(
        name="V100-SXM2-16GB", architecture="Volta", form_factor="SXM",
        memory_gb=16, memory_bandwidth_gbps=900,
        fp32_tflops=15.7, tf32_tflops=None, bf16_tflops=None, fp16_tflops=125, fp8_tflops=None, int8_tops=None,
        nvlink_gbps=300, pcie_gen=3, pcie_gbps=32, tdp_w=300,
        price_usd_per_hour=3.06, price_source=f"{_AWS}: p3.2xlarge (1x V100 16GB), $3.06 (2025-06 list, {_UNVERIFIED})",
        sources=_sources(_V100_DS, f"AWS p3.2xlarge ({_UNVERIFIED})"),
        aliases=("V100", "V100-16GB", "V100 SXM2 16GB", "Tesla V100-SXM2-16GB", "V100-SXM2"),
        notes="125 TFLOP/s is the fp16 tensor-core rate with fp32 accumulate (dense; Volta has no sparsity). "
        "No bf16, tf32 or fp8.",
        default_for_model=True,
    ),
    GPUSpec(
        name="V100-SXM2-32GB", architecture="Volta", form_factor="SXM",
        memory_gb=32, memory_bandwidth_gbps=900,
        fp32_tflops=15.7, tf32_tflops=None, bf16_tflops=None, fp16_tflops=125, fp8_tflops=None, int8_tops=None,
        nvlink_gbps=300, pcie_gen=3, pcie_gbps=32, tdp_w=300,
        price_usd_per_hour=3.90,
        price_source=f"{_AWS}: p3dn.24xlarge (8x V100 32GB) $31.212 / 8 (2025-06 list, {_UNVERIFIED})",
        sources=_sources(_V100_DS, f"AWS p3dn.24xlarge ({_UNVERIFIED})"),
        aliases=("V100-32GB", "V100 SXM2 32GB", "Tesla V100-SXM2-32GB"),
        notes="fp16 tensor-core rate with fp32 accumulate; no bf16, tf32 or fp8.",
    ),
    GPUSpec(
        name="V100-PCIe-16GB", architecture="Volta", form_factor="PCIe",
        memory_gb=16, memory_bandwidth_gbps=900,
        fp32_tflops=14, tf32_tflops=None, bf16_tflops=None, fp16_tflops=112, fp8_tflops=None, int8_tops=None,
        nvlink_gbps=None, pcie_gen=3, pcie_gbps=32, tdp_w=250,
        price_usd_per_hour=None, price_source="no on-demand list price verified",
        sources=_sources(_V100_DS, "none"),
        aliases=("V100 PCIe", "V100-PCIE-16GB", "Tesla V100-PCIE-16GB", "V100 PCIe 16GB"),
        notes="Lower clocks than the SXM2 part (250 W). No bf16, tf32 or fp8.",
    ),
    GPUSpec(
        name="T4", architecture="Turing", form_factor="PCIe",
        memory_gb=16, memory_bandwidth_gbps=320,
        fp32_tflops=8.1, tf32_tflops=None, bf16_tflops=None, fp16_tflops=65, fp8_tflops=None, int8_tops=130,
        nvlink_gbps=None, pcie_gen=3, pcie_gbps=32, tdp_w=70,
        price_usd_per_hour=0.526,
        price_source=f"{_AWS}: g4dn.xlarge (1x T4), $0.526 (2025-06 list, {_UNVERIFIED}); {_TECHBYTES} lists Modal T4 at "
        "$0.59",
        sources=_sources(_T4_DS, f"AWS g4dn.xlarge ({_UNVERIFIED})"),
        aliases=("Tesla T4", "T4 16GB", "NVIDIA T4"),
        notes="fp16 tensor-core rate (mixed precision, dense); the 70 W limit keeps sustained clocks well "
        "below boost. No bf16.",
        default_for_model=True,
    ),
    # ------------------------------------------------------------------- AMD
    GPUSpec(
        name="MI300X", architecture="CDNA3", form_factor="OAM", vendor="AMD",
        memory_gb=192, memory_bandwidth_gbps=5300,
        fp32_tflops=163.4, tf32_tflops=653.7, bf16_tflops=1307.4, fp16_tflops=1307.4, fp8_tflops=2614.9,
        int8_tops=2614.9,
        nvlink_gbps=None, pcie_gen=5, pcie_gbps=128, tdp_w=750,
        price_usd_per_hour=2.49,
        price_source=f"reference on-demand price per GPU-hour for 8x MI300X nodes at GPU clouds (2025-06, "
        f"{_UNVERIFIED})",
        sources=_sources(_MI300_DS, f"GPU cloud list prices (2025-06, {_UNVERIFIED})"),
        aliases=("AMD MI300X", "Instinct MI300X", "AMD Instinct MI300X"),
        notes="Dense figures (the data sheet's sparse column is 2x). Infinity Fabric links give 64 GB/s per "
        "direction to each of 7 peers; modelled as the node fabric.",
        default_for_model=True,
    ),
)

_BY_NAME = {g.name: g for g in _CATALOG}


def list_gpus() -> list[str]:
    """Canonical names of every catalog entry."""
    return [g.name for g in _CATALOG]


def all_gpus() -> tuple[GPUSpec, ...]:
    return _CATALOG


_NOISE = {"nvidia", "tesla", "amd", "instinct", "gpu", "tensor", "core", "geforce", "generation"}
_FORM_TOKENS = {"sxm": "SXM", "sxm2": "SXM", "sxm4": "SXM", "sxm5": "SXM", "sxm6": "SXM", "hgx": "SXM",
                "pcie": "PCIe", "oam": "OAM"}
# Tokens that name a distinct product of the same model: "H100 NVL" is not the SXM part. A query
# with one matches only entries named with it; a query without one never matches those entries.
_VARIANT_TOKENS = {"nvl"}


def _compact(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t and t not in _NOISE]


_EXACT: dict[str, GPUSpec] = {}
for _g in _CATALOG:
    for _n in (_g.name, *_g.aliases):
        _EXACT.setdefault(_compact(_n), _g)
        _EXACT.setdefault("".join(_tokens(_n)), _g)


def _model_token(tokens: list[str]) -> str | None:
    for t in tokens:
        if re.fullmatch(r"(mi)?[a-z]{1,2}\d+[a-z]*", t) and not re.fullmatch(r"\d+gb?", t) \
                and not t.startswith(("hbm", "sxm", "gen")):
            return t
    return None


def _variants(g: GPUSpec) -> set[str]:
    return {t for n in (g.name, *g.aliases) for t in _tokens(n) if t in _VARIANT_TOKENS}


def _memory_gb(tokens: list[str]) -> float | None:
    for t in tokens:
        m = re.fullmatch(r"(\d{1,4})gb?", t)  # "80gb", and nvidia-smi's "144g"
        if m:
            return float(m.group(1))
    return None


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """Look a GPU up by name, forgiving spelling.

    Accepts canonical names ("H100-SXM-80GB"), short names ("h100"), vendor part
    names ("H100-SXM5-80GB") and what nvidia-smi prints ("NVIDIA H100 80GB HBM3",
    "Tesla V100-SXM2-16GB", "NVIDIA H100 NVL", "NVIDIA GH200 480GB"). Raises
    `UnknownGPUError` listing close names.
    """
    if isinstance(name, GPUSpec):
        return name
    if not isinstance(name, str) or not name.strip():
        raise UnknownGPUError(str(name), list_gpus()[:5])
    tokens = _tokens(name)
    hit = _EXACT.get(_compact(name)) or _EXACT.get("".join(tokens))
    if hit is not None:
        return hit
    model = _model_token(tokens)
    if model is not None:
        wanted = {t for t in tokens if t in _VARIANT_TOKENS}
        same_model = [g for g in _CATALOG if _model_token(_tokens(g.name)) == model and _variants(g) == wanted]
        form = next((_FORM_TOKENS[t] for t in tokens if t in _FORM_TOKENS), None)
        if form is None and any(t.startswith("hbm") for t in tokens) and not wanted:
            form = "SXM"  # nvidia-smi names SXM parts by their memory ("H100 80GB HBM3")
        pool = [g for g in same_model if form is None or g.form_factor == form]
        mem = _memory_gb(tokens)
        if mem is not None:
            # A stated size that no entry has is a different product: say so rather than guess.
            pool = [g for g in pool if abs(g.memory_gb - mem) <= 0.1 * mem]
        if len(pool) == 1:
            return pool[0]
        defaults = [g for g in pool if g.default_for_model]
        if len(defaults) == 1:
            return defaults[0]
    keys = {_compact(n): g.name for g in _CATALOG for n in (g.name, *g.aliases)}
    close = difflib.get_close_matches(_compact(name), list(keys), n=8, cutoff=0.45)
    if model is not None:
        close = [k for k, g in keys.items() if _model_token(_tokens(g)) == model] + close
    suggestions: list[str] = []
    for k in close:
        if keys[k] not in suggestions:
            suggestions.append(keys[k])
    raise UnknownGPUError(name, suggestions[:4])
