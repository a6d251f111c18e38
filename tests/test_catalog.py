"""The GPU catalog: required entries, sourced figures, dense (not sparse) rates, forgiving look-ups."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hardware_profiles as hp
from hardware_profiles.catalog import all_gpus, get_gpu, list_gpus
from hardware_profiles.errors import ParplanError, UnknownGPUError, UnsupportedPrecisionError
from hardware_profiles.gpu import PRECISIONS

REQUIRED = {
    # look-up name -> canonical entry
    "A100 40GB": "A100-SXM-40GB",
    "A100 80GB SXM": "A100-SXM-80GB",
    "A100 80GB PCIe": "A100-PCIe-80GB",
    "H100 SXM": "H100-SXM-80GB",
    "H100 PCIe": "H100-PCIe-80GB",
    "H200": "H200-SXM-141GB",
    "B200": "B200-SXM-180GB",
    "B100": "B100-SXM-192GB",
    "L4": "L4",
    "L40S": "L40S",
    "L40": "L40",
    "V100 16GB": "V100-SXM2-16GB",
    "V100 32GB": "V100-SXM2-32GB",
    "T4": "T4",
    "A10G": "A10G",
    # commonly met extras
    "H100 NVL": "H100-NVL-94GB",
    "GH200": "GH200-96GB",
    "A10": "A10",
    "A30": "A30",
    "A100 PCIe 40GB": "A100-PCIe-40GB",
}

FIGURES = ("memory_gb", "memory_bandwidth_gbps", "fp32_tflops", "tf32_tflops", "bf16_tflops", "fp16_tflops",
           "fp8_tflops", "int8_tops", "nvlink_gbps", "pcie_gen", "pcie_gbps", "tdp_w", "price_usd_per_hour")

NVIDIA_SMI_NAMES = {
    "NVIDIA H100 80GB HBM3": "H100-SXM-80GB",
    "NVIDIA H100 PCIe": "H100-PCIe-80GB",
    "NVIDIA H100 NVL": "H100-NVL-94GB",
    "NVIDIA H200": "H200-SXM-141GB",
    "NVIDIA H200 NVL": "H200-NVL-141GB",
    "NVIDIA GH200 480GB": "GH200-96GB",
    "NVIDIA GH200 144G HBM3e": "GH200-144GB",
    "NVIDIA A100-SXM4-80GB": "A100-SXM-80GB",
    "NVIDIA A100-SXM4-40GB": "A100-SXM-40GB",
    "NVIDIA A100-PCIE-40GB": "A100-PCIe-40GB",
    "NVIDIA A100 80GB PCIe": "A100-PCIe-80GB",
    "NVIDIA B200": "B200-SXM-180GB",
    "Tesla T4": "T4",
    "Tesla V100-SXM2-16GB": "V100-SXM2-16GB",
    "Tesla V100-SXM2-32GB": "V100-SXM2-32GB",
    "Tesla V100-PCIE-16GB": "V100-PCIe-16GB",
    "NVIDIA A10G": "A10G",
    "NVIDIA A10": "A10",
    "NVIDIA A30": "A30",
    "NVIDIA L4": "L4",
    "NVIDIA L40S": "L40S",
    "NVIDIA L40": "L40",
    "NVIDIA GeForce RTX 4090": "RTX-4090",
    "NVIDIA RTX 6000 Ada Generation": "RTX-6000-Ada",
    "AMD Instinct MI300X": "MI300X",
}


@pytest.mark.parametrize("query,canonical", sorted(REQUIRED.items()))
def test_required_gpu_present_with_sources_for_every_figure(query, canonical):
    gpu = get_gpu(query)
    assert gpu.name == canonical
    assert canonical in list_gpus()
    for figure in FIGURES:
        assert gpu.source(figure), f"{canonical}.{figure} has no source"
    assert gpu.price_source
    if gpu.price_usd_per_hour is None:
        assert re.search(r"\bno\b|not", gpu.price_source), "a missing price must say why"
    else:
        assert gpu.price_usd_per_hour > 0
        # a price names its provider/date or admits it could not be re-checked
        assert re.search(r"20\d\d", gpu.price_source), gpu.price_source


def test_names_are_unique_and_every_alias_finds_its_own_entry():
    names = list_gpus()
    assert len(names) == len(set(names))
    for gpu in all_gpus():
        for alias in (gpu.name, *gpu.aliases):
            assert get_gpu(alias) is gpu, f"alias {alias!r} of {gpu.name} resolves to {get_gpu(alias).name}"


@pytest.mark.parametrize("name,bf16,fp8", [
    ("H100-SXM-80GB", 989.5, 1979), ("H100-PCIe-80GB", 756.5, 1513), ("H200-SXM-141GB", 989.5, 1979),
    ("H100-NVL-94GB", 835.5, 1670.5), ("L4", 121, 242.5), ("B200-SXM-180GB", 2250, 4500),
    ("B100-SXM-192GB", 1750, 3500), ("GH200-96GB", 989.5, 1979),
])
def test_dense_not_sparse_rates(name, bf16, fp8):
    gpu = get_gpu(name)
    assert gpu.bf16_tflops == pytest.approx(bf16)
    assert gpu.peak_tflops("bfloat16") == pytest.approx(bf16)
    assert gpu.fp8_tflops == pytest.approx(fp8)
    assert "sparsity" in gpu.notes or "sparse" in gpu.notes


def test_h100_bf16_is_the_dense_figure():
    assert get_gpu("H100").bf16_tflops == pytest.approx(989.5)
    assert get_gpu("H100").bf16_tflops != pytest.approx(1979)


@pytest.mark.parametrize("gpu", all_gpus(), ids=lambda g: g.name)
def test_rates_are_internally_consistent(gpu):
    # Tensor-core ratios hold for every generation: fp8 = 2 x bf16, tf32 = bf16 / 2 (datasheet rounding aside).
    if gpu.fp8_tflops and gpu.bf16_tflops:
        assert gpu.fp8_tflops / gpu.bf16_tflops == pytest.approx(2.0, rel=0.03)
    if gpu.tf32_tflops and gpu.bf16_tflops:
        assert gpu.tf32_tflops / gpu.bf16_tflops == pytest.approx(0.5, rel=0.03)
    if gpu.bf16_tflops and gpu.fp16_tflops:
        assert gpu.bf16_tflops == gpu.fp16_tflops
    # No sparse figure slipped in: no part reaches 3 PFLOP/s dense 16-bit, and tensor >= vector fp32.
    assert (gpu.fp16_tflops or 0) < 3000
    assert (gpu.fp16_tflops or gpu.fp32_tflops) >= gpu.fp32_tflops
    assert gpu.pcie_gbps == {3: 32, 4: 64, 5: 128}[gpu.pcie_gen]
    assert 0 < gpu.memory_gb <= 200 and 0 < gpu.tdp_w <= 1200


def test_form_factor_and_links():
    for gpu in all_gpus():
        if gpu.form_factor == "SXM" and gpu.vendor == "NVIDIA":
            assert gpu.nvlink_gbps, f"{gpu.name} is SXM without NVLink"
    assert get_gpu("H100 PCIe").nvlink_gbps is None
    assert get_gpu("H100 NVL").nvlink_gbps == 600 and get_gpu("H100 NVL").form_factor == "PCIe"
    assert get_gpu("H100").nvlink_per_direction_gbps == 450
    assert get_gpu("T4").intra_node_per_direction_gbps == 16


@pytest.mark.parametrize("query,canonical", [
    ("h100", "H100-SXM-80GB"), ("H100", "H100-SXM-80GB"), ("H100-SXM5-80GB", "H100-SXM-80GB"),
    ("h100 sxm5", "H100-SXM-80GB"), ("H100 80GB", "H100-SXM-80GB"), ("h100_pcie", "H100-PCIe-80GB"),
    ("a100", "A100-SXM-80GB"), ("A100-SXM4-40GB", "A100-SXM-40GB"), ("v100", "V100-SXM2-16GB"),
    ("mi300x", "MI300X"), ("b200 192gb", "B200-SXM-180GB"), ("rtx 4090", "RTX-4090"), ("h200-nvl", "H200-NVL-141GB"),
    *NVIDIA_SMI_NAMES.items(),
])
def test_forgiving_lookups(query, canonical):
    assert get_gpu(query).name == canonical
    assert hp.get_gpu(query) is get_gpu(canonical)


def test_nvl_is_not_the_sxm_part():
    # Regression: "NVIDIA H100 NVL" used to resolve to the SXM entry.
    assert get_gpu("NVIDIA H100 NVL") is not get_gpu("H100")
    assert get_gpu("NVIDIA H100 NVL").memory_gb == 94
    assert get_gpu("NVIDIA H200") is not get_gpu("H200 NVL")


def test_spec_passes_through():
    spec = get_gpu("L4")
    assert get_gpu(spec) is spec


@pytest.mark.parametrize("bad,expect", [
    ("H300", "H200"), ("A1000", "A100"), ("V100 PCIe 32GB", "V100"), ("H100 94GB", "H100"), ("L40X", "L40"),
])
def test_unknown_names_raise_with_close_matches(bad, expect):
    with pytest.raises(UnknownGPUError) as info:
        get_gpu(bad)
    err = info.value
    assert isinstance(err, ParplanError) and isinstance(err, LookupError)
    assert err.name == bad
    assert err.suggestions and any(expect in s for s in err.suggestions), err.suggestions
    assert repr(bad) in str(err) and err.suggestions[0] in str(err)


@pytest.mark.parametrize("bad", ["", "   ", None, 42, "gpu", "nvidia"])
def test_empty_or_non_string_names_raise(bad):
    with pytest.raises(UnknownGPUError):
        get_gpu(bad)


@pytest.mark.parametrize("gpu,dtype,hint", [
    ("V100", "bf16", "fp16"), ("T4", "tf32", "fp16"), ("A100", "fp8", "bf16"), ("V100-SXM2-32GB", "int8", "fp32"),
])
def test_unsupported_precision(gpu, dtype, hint):
    with pytest.raises(UnsupportedPrecisionError, match=hint) as info:
        get_gpu(gpu).peak_tflops(dtype)
    assert isinstance(info.value, ParplanError)


def test_unknown_precision_name():
    with pytest.raises(UnsupportedPrecisionError, match="fp32"):
        get_gpu("H100").peak_tflops("fp4")


def test_every_supported_precision_has_a_positive_rate():
    for gpu in all_gpus():
        rates = [gpu.peak_tflops(p) for p in PRECISIONS if getattr(gpu, "int8_tops" if p == "int8" else f"{p}_tflops")]
        assert rates and all(r > 0 for r in rates)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_random_names_resolve_or_raise_unknown(name):
    try:
        gpu = get_gpu(name)
    except UnknownGPUError as err:
        assert isinstance(err.suggestions, list)
    else:
        assert gpu.name in list_gpus()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Nd", "No", "Nl")), max_size=40))
def test_names_without_digits_never_match(name):
    # Every GPU model number has digits; nothing digit-free may be mistaken for one.
    with pytest.raises(UnknownGPUError):
        get_gpu(name)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(NVIDIA_SMI_NAMES)), st.randoms(use_true_random=False))
def test_lookups_ignore_case_and_separators(name, rnd):
    mangled = "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in name)
    mangled = mangled.replace(" ", rnd.choice([" ", "-", "_", "  "]))
    assert get_gpu(mangled).name == NVIDIA_SMI_NAMES[name]
