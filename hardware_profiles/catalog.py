"""The datasheet catalog of accelerators and forgiving look-ups by name.

Every figure carries its source (`GPUSpec.sources`). Dense rates only: where a
datasheet quotes sparse figures, the dense figure stored here is half of it, and
`notes` says so. Prices are reference on-demand list prices per GPU-hour, with
provider and date in `price_source`; they move, so treat them as a default that
users override.
"""
from __future__ import annotations

import difflib
import re

from .errors import UnknownGPUError
from .gpu import GPUSpec

_A100_DS = "NVIDIA A100 Tensor Core GPU datasheet (2021), dense figures"
_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet (2023); marketing table quotes sparse tensor rates, halved here"
_H200_DS = "NVIDIA H200 Tensor Core GPU datasheet (2024); tensor rates quoted with sparsity, halved here"
_B_DS = "NVIDIA HGX B200/B100 platform specifications (2024-2025), per-GPU = platform / 8; sparse rates halved"
_V100_DS = "NVIDIA Tesla V100 GPU datasheet (2018), SXM2 figures"
_T4_DS = "NVIDIA T4 Tensor Core GPU datasheet (2019)"
_L4_DS = "NVIDIA L4 Tensor Core GPU datasheet (2023); tensor rates quoted with sparsity, halved here"
_L40S_DS = "NVIDIA L40S GPU datasheet (2023); tensor rates quoted with sparsity, halved here"
_L40_DS = "NVIDIA L40 GPU datasheet (2022); tensor rates quoted with sparsity, halved here"
_A10_DS = "NVIDIA A10 Tensor Core GPU datasheet (2021); A10G per AWS EC2 G5 documentation"
_MI300_DS = "AMD Instinct MI300X data sheet (2023); sparse rates halved"

_AWS = "AWS EC2 on-demand, us-east-1, instance price / GPUs per instance (list as of 2025-06)"
_LAMBDA = "Lambda Cloud on-demand list price per GPU-hour (as of 2025-06)"


def _src(ds: str, price: str) -> tuple[tuple[str, str], ...]:
    return (("*", ds), ("price_usd_per_hour", price))


_CATALOG: tuple[GPUSpec, ...] = (
    GPUSpec(
        name="A100-SXM-40GB", architecture="Ampere", form_factor="SXM",
        memory_gb=40, memory_bandwidth_gbps=1555,
        fp32_tflops=19.5, tf32_tflops=156, bf16_tflops=312, fp16_tflops=312, fp8_tflops=None, int8_tops=624,
        nvlink_gbps=600, pcie_gen=4, pcie_gbps=64, tdp_w=400,
        price_usd_per_hour=1.29, price_source=_LAMBDA + ": 8x A100 SXM 40GB",
        sources=_src(_A100_DS, _LAMBDA),
        aliases=("A100-SXM4-40GB", "A100 40GB", "A100-40GB", "A100 SXM4 40GB"),
    ),
    GPUSpec(
        name="A100-SXM-80GB", architecture="Ampere", form_factor="SXM",
        memory_gb=80, memory_bandwidth_gbps=2039,
        fp32_tflops=19.5, tf32_tflops=156, bf16_tflops=312, fp16_tflops=312, fp8_tflops=None, int8_tops=624,
        nvlink_gbps=600, pcie_gen=4, pcie_gbps=64, tdp_w=400,
        price_usd_per_hour=1.79, price_source=_LAMBDA + ": 8x A100 SXM 80GB",
        sources=_src(_A100_DS, _LAMBDA),
        aliases=("A100", "A100-80GB", "A100-SXM4-80GB", "A100 80GB SXM", "A100 SXM"),
        default_for_model=True,
    ),
    GPUSpec(
        name="A100-PCIe-80GB", architecture="Ampere", form_factor="PCIe",
        memory_gb=80, memory_bandwidth_gbps=1935,
        fp32_tflops=19.5, tf32_tflops=156, bf16_tflops=312, fp16_tflops=312, fp8_tflops=None, int8_tops=624,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=300,
        price_usd_per_hour=1.29, price_source=_LAMBDA + ": A100 PCIe",
        sources=_src(_A100_DS, _LAMBDA),
        aliases=("A100 80GB PCIe", "A100-PCIE-80GB", "A100 PCIe"),
        notes="An optional NVLink bridge joins pairs of cards (600 GB/s); the catalog models the plain PCIe card.",
    ),
    GPUSpec(
        name="H100-SXM-80GB", architecture="Hopper", form_factor="SXM",
        memory_gb=80, memory_bandwidth_gbps=3350,
        fp32_tflops=67, tf32_tflops=494.5, bf16_tflops=989.5, fp16_tflops=989.5, fp8_tflops=1979, int8_tops=1979,
        nvlink_gbps=900, pcie_gen=5, pcie_gbps=128, tdp_w=700,
        price_usd_per_hour=2.99, price_source=_LAMBDA + ": 8x H100 SXM",
        sources=_src(_H100_DS, _LAMBDA),
        aliases=("H100", "H100-SXM5-80GB", "H100 SXM", "H100 80GB HBM3", "H100-SXM", "H100 SXM5"),
        notes="Datasheet tensor figures (1,979 bf16, 3,958 fp8, 989 tf32) are with sparsity; dense is half.",
        default_for_model=True,
    ),
    GPUSpec(
        name="H100-PCIe-80GB", architecture="Hopper", form_factor="PCIe",
        memory_gb=80, memory_bandwidth_gbps=2000,
        fp32_tflops=51, tf32_tflops=378, bf16_tflops=756, fp16_tflops=756, fp8_tflops=1513, int8_tops=1513,
        nvlink_gbps=None, pcie_gen=5, pcie_gbps=128, tdp_w=350,
        price_usd_per_hour=2.49, price_source=_LAMBDA + ": 1x H100 PCIe",
        sources=_src(_H100_DS, _LAMBDA),
        aliases=("H100 PCIe", "H100-PCIE", "H100 PCIe 80GB"),
        notes="Datasheet tensor figures (1,513 bf16, 3,026 fp8, 756 tf32) are with sparsity; dense is half. "
        "An optional NVLink bridge joins pairs of cards (600 GB/s); the catalog models the plain PCIe card.",
    ),
    GPUSpec(
        name="H200-SXM-141GB", architecture="Hopper", form_factor="SXM",
        memory_gb=141, memory_bandwidth_gbps=4800,
        fp32_tflops=67, tf32_tflops=494.5, bf16_tflops=989.5, fp16_tflops=989.5, fp8_tflops=1979, int8_tops=1979,
        nvlink_gbps=900, pcie_gen=5, pcie_gbps=128, tdp_w=700,
        price_usd_per_hour=3.50, price_source="Reference on-demand price per GPU-hour for 8x H200 SXM nodes, "
        "midpoint of neocloud list prices (as of 2025-06)",
        sources=(("*", _H200_DS), ("price_usd_per_hour", "neocloud list prices, 2025-06")),
        aliases=("H200", "H200 SXM", "H200-SXM", "H200 141GB HBM3e", "H200-141GB"),
        notes="Same Hopper die and clocks as H100 SXM; more and faster HBM3e.",
        default_for_model=True,
    ),
    GPUSpec(
        name="B200-SXM-180GB", architecture="Blackwell", form_factor="SXM",
        memory_gb=180, memory_bandwidth_gbps=7700,
        fp32_tflops=75, tf32_tflops=1100, bf16_tflops=2250, fp16_tflops=2250, fp8_tflops=4500, int8_tops=4500,
        nvlink_gbps=1800, pcie_gen=5, pcie_gbps=128, tdp_w=1000,
        price_usd_per_hour=4.99, price_source=_LAMBDA + ": 8x B200 SXM",
        sources=_src(_B_DS, _LAMBDA),
        aliases=("B200", "B200 SXM", "HGX B200", "B200-180GB", "B200 192GB"),
        notes="HGX B200 quotes 36 PFLOP/s bf16 and 72 PFLOP/s fp8 with sparsity for 8 GPUs; dense per GPU is "
        "2.25 and 4.5 PFLOP/s.",
        default_for_model=True,
    ),
    GPUSpec(
        name="B100-SXM-192GB", architecture="Blackwell", form_factor="SXM",
        memory_gb=192, memory_bandwidth_gbps=8000,
        fp32_tflops=60, tf32_tflops=875, bf16_tflops=1750, fp16_tflops=1750, fp8_tflops=3500, int8_tops=3500,
        nvlink_gbps=1800, pcie_gen=5, pcie_gbps=128, tdp_w=700,
        price_usd_per_hour=None, price_source="no public on-demand offer found (2025-06)",
        sources=_src(_B_DS, "none"),
        aliases=("B100", "HGX B100", "B100 SXM"),
        notes="HGX B100 quotes 28 PFLOP/s bf16 with sparsity for 8 GPUs; dense per GPU is 1.75 PFLOP/s.",
        default_for_model=True,
    ),
    GPUSpec(
        name="L4", architecture="Ada Lovelace", form_factor="PCIe",
        memory_gb=24, memory_bandwidth_gbps=300,
        fp32_tflops=30.3, tf32_tflops=60, bf16_tflops=121, fp16_tflops=121, fp8_tflops=242.5, int8_tops=242.5,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=72,
        price_usd_per_hour=0.80, price_source=_AWS + ": g6.xlarge (1x L4)",
        sources=_src(_L4_DS, _AWS),
        aliases=("L4 24GB", "NVIDIA L4"),
        notes="Datasheet quotes 242 bf16, 485 fp8, 120 tf32 TFLOP/s with sparsity; dense is half.",
        default_for_model=True,
    ),
    GPUSpec(
        name="L40S", architecture="Ada Lovelace", form_factor="PCIe",
        memory_gb=48, memory_bandwidth_gbps=864,
        fp32_tflops=91.6, tf32_tflops=183, bf16_tflops=366, fp16_tflops=366, fp8_tflops=733, int8_tops=733,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=350,
        price_usd_per_hour=1.86, price_source=_AWS + ": g6e.xlarge (1x L40S)",
        sources=_src(_L40S_DS, _AWS),
        aliases=("L40S 48GB",),
        notes="Datasheet quotes 733 bf16, 1,466 fp8, 366 tf32 TFLOP/s with sparsity; dense is half.",
        default_for_model=True,
    ),
    GPUSpec(
        name="L40", architecture="Ada Lovelace", form_factor="PCIe",
        memory_gb=48, memory_bandwidth_gbps=864,
        fp32_tflops=90.5, tf32_tflops=90.5, bf16_tflops=181, fp16_tflops=181, fp8_tflops=362, int8_tops=362,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=300,
        price_usd_per_hour=1.00, price_source="Reference on-demand price for single L40 instances at GPU clouds (2025-06)",
        sources=(("*", _L40_DS), ("price_usd_per_hour", "GPU cloud list prices, 2025-06")),
        aliases=("L40 48GB",),
        notes="Datasheet quotes 362 bf16, 724 fp8, 181 tf32 TFLOP/s with sparsity; dense is half.",
        default_for_model=True,
    ),
    GPUSpec(
        name="V100-SXM2-16GB", architecture="Volta", form_factor="SXM",
        memory_gb=16, memory_bandwidth_gbps=900,
        fp32_tflops=15.7, tf32_tflops=None, bf16_tflops=None, fp16_tflops=125, fp8_tflops=None, int8_tops=None,
        nvlink_gbps=300, pcie_gen=3, pcie_gbps=32, tdp_w=300,
        price_usd_per_hour=3.06, price_source=_AWS + ": p3.2xlarge (1x V100 16GB)",
        sources=_src(_V100_DS, _AWS),
        aliases=("V100", "V100-16GB", "V100 SXM2 16GB", "Tesla V100-SXM2-16GB", "V100-SXM2"),
        notes="fp16 tensor-core rate with fp32 accumulate; no bf16, tf32 or fp8.",
        default_for_model=True,
    ),
    GPUSpec(
        name="V100-SXM2-32GB", architecture="Volta", form_factor="SXM",
        memory_gb=32, memory_bandwidth_gbps=900,
        fp32_tflops=15.7, tf32_tflops=None, bf16_tflops=None, fp16_tflops=125, fp8_tflops=None, int8_tops=None,
        nvlink_gbps=300, pcie_gen=3, pcie_gbps=32, tdp_w=300,
        price_usd_per_hour=3.90, price_source=_AWS + ": p3dn.24xlarge (8x V100 32GB) / 8",
        sources=_src(_V100_DS, _AWS),
        aliases=("V100-32GB", "V100 SXM2 32GB", "Tesla V100-SXM2-32GB"),
        notes="fp16 tensor-core rate with fp32 accumulate; no bf16, tf32 or fp8.",
    ),
    GPUSpec(
        name="T4", architecture="Turing", form_factor="PCIe",
        memory_gb=16, memory_bandwidth_gbps=320,
        fp32_tflops=8.1, tf32_tflops=None, bf16_tflops=None, fp16_tflops=65, fp8_tflops=None, int8_tops=130,
        nvlink_gbps=None, pcie_gen=3, pcie_gbps=32, tdp_w=70,
        price_usd_per_hour=0.526, price_source=_AWS + ": g4dn.xlarge (1x T4)",
        sources=_src(_T4_DS, _AWS),
        aliases=("Tesla T4", "T4 16GB"),
        notes="fp16 tensor-core rate (mixed precision); the 70 W limit keeps sustained clocks well below boost.",
        default_for_model=True,
    ),
    GPUSpec(
        name="A10G", architecture="Ampere", form_factor="PCIe",
        memory_gb=24, memory_bandwidth_gbps=600,
        fp32_tflops=31.2, tf32_tflops=62.5, bf16_tflops=125, fp16_tflops=125, fp8_tflops=None, int8_tops=250,
        nvlink_gbps=None, pcie_gen=4, pcie_gbps=64, tdp_w=300,
        price_usd_per_hour=1.006, price_source=_AWS + ": g5.xlarge (1x A10G)",
        sources=_src(_A10_DS, _AWS),
        aliases=("NVIDIA A10G", "A10G 24GB"),
        notes="AWS-specific A10 variant; rates taken as the A10 datasheet's dense figures.",
        default_for_model=True,
    ),
    GPUSpec(
        name="MI300X", architecture="CDNA3", form_factor="OAM", vendor="AMD",
        memory_gb=192, memory_bandwidth_gbps=5300,
        fp32_tflops=163.4, tf32_tflops=653.7, bf16_tflops=1307.4, fp16_tflops=1307.4, fp8_tflops=2614.9,
        int8_tops=2614.9,
        nvlink_gbps=None, pcie_gen=5, pcie_gbps=128, tdp_w=750,
        price_usd_per_hour=2.49, price_source="Reference on-demand price per GPU-hour for 8x MI300X nodes at GPU "
        "clouds (2025-06)",
        sources=(("*", _MI300_DS), ("price_usd_per_hour", "GPU cloud list prices, 2025-06")),
        aliases=("AMD MI300X", "Instinct MI300X"),
        notes="Infinity Fabric links give 128 GB/s per direction to each of 7 peers; modelled as the node fabric.",
        default_for_model=True,
    ),
)

_BY_NAME = {g.name: g for g in _CATALOG}


def list_gpus() -> list[str]:
    """Canonical names of every catalog entry."""
    return [g.name for g in _CATALOG]


def all_gpus() -> tuple[GPUSpec, ...]:
    return _CATALOG


_NOISE = {"nvidia", "tesla", "amd", "instinct", "gpu", "tensor", "core", "geforce"}
_FORM_TOKENS = {"sxm": "SXM", "sxm2": "SXM", "sxm4": "SXM", "sxm5": "SXM", "hgx": "SXM", "pcie": "PCIe", "oam": "OAM"}


def _compact(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t and t not in _NOISE]


_EXACT: dict[str, GPUSpec] = {}
for _g in _CATALOG:
    for _n in (_g.name, *_g.aliases):
        _EXACT.setdefault(_compact(_n), _g)
        _EXACT.setdefault(_compact(re.sub(r"(?i)^(nvidia|tesla)\s*", "", _n)), _g)


def _model_token(tokens: list[str]) -> str | None:
    for t in tokens:
        if re.fullmatch(r"(mi)?[a-z]\d+[a-z]*", t) and not re.fullmatch(r"\d+gb", t):
            return t
    return None


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """Look a GPU up by name, forgiving spelling.

    Accepts canonical names ("H100-SXM-80GB"), short names ("h100"), vendor part
    names ("H100-SXM5-80GB") and what nvidia-smi prints ("NVIDIA H100 80GB HBM3",
    "Tesla V100-SXM2-16GB"). Raises `UnknownGPUError` listing close names.
    """
    if isinstance(name, GPUSpec):
        return name
    if not isinstance(name, str) or not name.strip():
        raise UnknownGPUError(str(name), list_gpus()[:5])
    hit = _EXACT.get(_compact(name))
    if hit is not None:
        return hit
    tokens = _tokens(name)
    model = _model_token(tokens)
    if model is not None:
        same_model = [g for g in _CATALOG if _model_token(_tokens(g.name)) == model]
        form = next((_FORM_TOKENS[t] for t in tokens if t in _FORM_TOKENS), None)
        if form is None and any(t.startswith("hbm") for t in tokens):
            form = "SXM"  # nvidia-smi names SXM parts by their memory ("H100 80GB HBM3")
        mem = next((float(t[:-2]) for t in tokens if re.fullmatch(r"\d+gb", t)), None)
        pool = [g for g in same_model if form is None or g.form_factor == form]
        if mem is not None:
            pool = [g for g in pool if abs(g.memory_gb - mem) <= 0.1 * mem] or pool
        if len(pool) == 1:
            return pool[0]
        defaults = [g for g in pool if g.default_for_model]
        if len(defaults) == 1:
            return defaults[0]
    keys = {_compact(n): g.name for g in _CATALOG for n in (g.name, *g.aliases)}
    close = difflib.get_close_matches(_compact(name), list(keys), n=8, cutoff=0.45)
    suggestions: list[str] = []
    for k in close:
        if keys[k] not in suggestions:
            suggestions.append(keys[k])
    raise UnknownGPUError(name, suggestions[:4])
