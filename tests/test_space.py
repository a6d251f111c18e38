"""The planner's layout enumeration: only layouts the cost model accepts."""
from __future__ import annotations

import costmodel as cm
import planner
from conftest import PARAMS
from costmodel.model import ModelSpec
from costmodel.validate import check_strategy
from hardware_profiles import Cluster
from planner.space import SearchSpace, layouts


def _moe(expert_width: int) -> ModelSpec:
    return ModelSpec.decoder("moe-odd", num_layers=2, hidden=64, num_heads=4, num_kv_heads=4, ffn_hidden=64,
                             vocab=32, seq_len=16, num_experts=3, top_k=2, expert_ffn_hidden=expert_width)


def test_tp_that_does_not_split_the_expert_width_is_not_enumerated():
    model, cluster = _moe(18), Cluster.parse("1x4xA100")
    w = cm.Inference(prompt_tokens=32, output_tokens=8, batch=1)
    found = layouts(model, cluster, w, SearchSpace())
    assert found and all(18 % (lay.tp // lay.ep if lay.ep_mode == "tp" else lay.tp) == 0 for lay in found)
    for lay in found:  # every enumerated layout passes the cost model's own check
        check_strategy(model, cluster, cm.Strategy(tp=lay.tp, pp=lay.pp, dp=lay.dp, ep=lay.ep, ep_mode=lay.ep_mode),
                       w)
    # tp=4 splits the heads but not an 18-wide expert (and 3 experts leave expert parallelism no way to help);
    # a 20-wide expert it splits
    assert {lay.tp for lay in found} == {1, 2}
    assert 4 in {lay.tp for lay in layouts(_moe(20), cluster, w, SearchSpace())}
    r = planner.plan(model, cluster, w, params=PARAMS, profiles=None)
    assert set(r.candidates["tp"]) == {1, 2}
