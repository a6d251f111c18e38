"""Physics of AMP's real runs that the cost model must reproduce (bench/validation.py).

AMP's TransGAN port keeps every attention head on every tensor-parallel rank (head width / tp), so its
unfused score and softmax matrices are not divided by tp; GPT-2's Megatron attention divides the heads.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from costmodel.catalog import get_model  # noqa: E402
from costmodel.pricing import CostContext  # noqa: E402
from costmodel.training import price_training  # noqa: E402
from validation import AMP_BASE, AMP_GRAD_DTYPE, amp_cluster, amp_params, amp_trials, amp_workload  # noqa: E402


def _by_tp(setting: str, tp: int) -> list:
    return [t for t in amp_trials() if t.setting == setting and t.strategy is not None and t.strategy.tp == tp][:3]


def _price(trials: list, split_heads: bool, memory: bool = False) -> np.ndarray:
    """het_model step times (or peak memory) with the heads split or not, bypassing amp_params."""
    ctx = CostContext(params=replace(AMP_BASE, tp_splits_attention_heads=split_heads), profiles={})
    t, mem, _ = price_training(get_model("transgan-amp"), amp_cluster("het_model"),
                               amp_workload("het_model", AMP_GRAD_DTYPE), ctx, [x.strategy for x in trials])
    return np.asarray(mem if memory else t)


def test_unsplit_heads_cost_more_under_tensor_parallelism():
    trials = _by_tp("het_model", 2)
    split, whole = _price(trials, True), _price(trials, False)
    assert np.all(whole > split)


def test_unsplit_heads_change_nothing_without_tensor_parallelism():
    trials = _by_tp("het_model", 1)
    split, whole = _price(trials, True), _price(trials, False)
    np.testing.assert_allclose(whole, split)


def test_unsplit_heads_only_for_amps_transgan():
    assert not amp_params("het_model", AMP_BASE).tp_splits_attention_heads
    for setting in ("homogeneous", "het_cluster"):
        assert amp_params(setting, AMP_BASE).tp_splits_attention_heads


def test_default_params_split_heads():
    assert AMP_BASE.tp_splits_attention_heads


def test_unsplit_heads_keep_more_activations_under_tensor_parallelism():
    tp2 = _by_tp("het_model", 2)
    assert np.all(_price(tp2, False, memory=True) > _price(tp2, True, memory=True))
    tp1 = _by_tp("het_model", 1)
    np.testing.assert_allclose(_price(tp1, False, memory=True), _price(tp1, True, memory=True))
