"""Per-node-type cost constants: per-GPU TP collective overhead, host floor and network efficiency."""
import numpy as np
import pytest

from costmodel.comm import with_network_efficiency
from costmodel.catalog import get_model
from costmodel.device import device_perf
from costmodel.fitting import apply, current
from costmodel.layercost import Parallel, layer_train_cost
from costmodel.params import CostParams
from hardware_profiles import Cluster, Node
from hardware_profiles.catalog import get_gpu
from hardware_profiles.errors import ParplanError


def _block():
    return next(l for l in get_model("gpt2-small").layers if l.kind == "transformer")


def _cost(params, gpu="T4", tp=2, mb=1):
    dev = device_perf(get_gpu(gpu), "fp16", params)
    par = Parallel(tp=tp, tp_bw_gbps=10.0, tp_latency_s=5e-6)
    return layer_train_cost(_block(), dev, par, params, micro_batch=mb, seq_len=1024, recompute="none")


def test_per_gpu_tp_overhead_overrides_shared_value_for_that_gpu_only():
    base = CostParams(tp_collective_overhead_s=1e-3)
    per = base.replace(gpu_tp_collective_overhead_s=(("T4", 3e-3),))
    # four all-reduces per block: 4 x (3 ms - 1 ms) more on a T4, nothing changes on a V100
    assert _cost(per).tp_comm_s - _cost(base).tp_comm_s == pytest.approx(4 * 2e-3)
    assert _cost(per, "V100-SXM2-16GB").tp_comm_s == pytest.approx(_cost(base, "V100-SXM2-16GB").tp_comm_s)
    assert _cost(per, tp=1).tp_comm_s == 0.0


def test_host_floor_per_gpu_sets_a_minimum_block_time_and_never_shortens():
    base = CostParams()
    c0 = _cost(base, mb=1)
    busy = c0.fwd_s + c0.bwd_s + c0.tp_comm_s
    floor = base.replace(gpu_host_layer_s=(("T4", 10 * busy),))
    c1 = _cost(floor, mb=1)
    assert c1.fwd_s + c1.bwd_s + c1.tp_comm_s == pytest.approx(10 * busy)
    assert c1.fwd_s / c1.bwd_s == pytest.approx(c0.fwd_s / c0.bwd_s)  # the wait is spread in proportion
    low = base.replace(gpu_host_layer_s=(("T4", busy / 10),))
    assert _cost(low, mb=1).fwd_s == pytest.approx(c0.fwd_s)
    assert _cost(floor, "V100-SXM2-16GB").fwd_s == pytest.approx(_cost(base, "V100-SXM2-16GB").fwd_s)


def test_network_efficiency_scales_only_the_named_node_types():
    cl = Cluster(nodes=(Node.of("V100-SXM2-16GB", 4, network_gbps=1.25), Node.of("T4", 4, network_gbps=6.25)))
    assert with_network_efficiency(cl, CostParams()) is cl
    out = with_network_efficiency(cl, CostParams(network_efficiency=(("T4", 0.5),)))
    assert [n.network_gbps for n in out.nodes] == [1.25, pytest.approx(3.125)]
    assert [n.fabric for n in out.nodes] == [n.fabric for n in cl.nodes]
    assert with_network_efficiency(cl, CostParams(network_efficiency=(("T4", 0.5),))) is out  # one object per key
    fab = with_network_efficiency(cl, CostParams(fabric_efficiency=(("V100-SXM2-16GB", 0.5),)))
    assert fab.nodes[0].fabric.bandwidth_gbps == pytest.approx(cl.nodes[0].fabric.bandwidth_gbps / 2)
    assert fab.nodes[1] == cl.nodes[1] and fab.nodes[0].network_gbps == 1.25


def test_fitting_addresses_every_per_gpu_field_and_round_trips():
    p = apply(CostParams(tp_collective_overhead_s=2e-3), {"gpu_tp_collective_overhead_s:T4": 5e-4,
                                                         "network_efficiency:T4": 0.6, "gpu_host_layer_s:T4": 1e-3,
                                                         "gpu_gemm_efficiency:T4": 0.4})
    assert current(p, "gpu_tp_collective_overhead_s:T4") == 5e-4
    assert current(p, "gpu_tp_collective_overhead_s:V100-SXM2-16GB") == 2e-3  # falls back to the shared value
    assert current(p, "network_efficiency:V100-SXM2-16GB") == 1.0
    assert current(p, "gpu_gemm_efficiency:T4") == 0.4
    assert CostParams.from_dict(p.to_dict()) == p
    with pytest.raises(ParplanError):
        apply(p, {"no_such_field:T4": 1.0})


def test_head_elementwise_factor_defaults_to_the_blocks_and_scales_only_the_head():
    from costmodel.device import device_perf
    from costmodel.layercost import forward_work
    model = get_model("gpt2-small")
    head = model.layers[-1]
    block = _block()
    dev = device_perf(get_gpu("T4"), "fp16", CostParams())
    par = Parallel()

    def elem(lay, p):
        return float(forward_work(lay, dev, par, p, rows=1024.0, context=1024, causal=True).elementwise_s)

    base = CostParams(elementwise_factor=4.0)
    assert base.head_elementwise_factor_value == 4.0
    one = base.replace(head_elementwise_factor=1.0)
    kern = 4 * dev.kernel_overhead_s
    assert (elem(head, base) - kern) == pytest.approx(4.0 * (elem(head, one) - kern))
    assert elem(block, one) == pytest.approx(elem(block, base))
    assert current(one, "head_elementwise_factor") == 1.0 and current(base, "head_elementwise_factor") == 4.0
