"""detect(), profile() and measured profiles: CPU-only detection, a fake NVML for the GPU paths,
tiny CPU benchmarks, gloo collectives in spawned processes, fits, JSON files and the merge."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hardware_profiles as hp
from hardware_profiles import detect as det_mod
from hardware_profiles.detect import detect
from hardware_profiles.errors import ClusterSpecError, ParplanError, ProfileError, UnsupportedPrecisionError
from hardware_profiles.measured import (PROFILE_DIR_ENV, CollectivePoint, CopyPoint, GemmPoint, MachineInfo,
                                        MeasuredProfile, bus_factor, effective_figures, fit_efficiency_curve,
                                        fit_linear_time, load_profile)

torch = pytest.importorskip("torch")
from hardware_profiles.profiler import default_group_sizes, profile  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
REPO = Path(__file__).resolve().parents[1]


# -- detect() on this machine -------------------------------------------------------------
@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU")
def test_detect_without_gpu_is_cpu_only_with_a_reason():
    m = detect()
    assert m.is_cpu_only and m.num_gpus == 0 and m.links == ()
    assert m.reason and ("driver" in m.reason or "pynvml" in m.reason or "GPU" in m.reason)
    assert m.torch_version == torch.__version__
    assert "CPU only" in m.summary()
    with pytest.raises(ClusterSpecError, match="no GPUs detected"):
        m.to_cluster()


# -- a fake NVML for the GPU paths -------------------------------------------------------------
class NVMLError(Exception):
    pass


class FakeNVML:
    """Just enough of pynvml: GPUs with PCI ids, UUIDs, NVLinks to peers or to NVSwitches."""

    NVML_NVLINK_MAX_LINKS = 18
    NVML_NVLINK_STATE_ACTIVE = 1
    NVML_NVLINK_DEVICE_TYPE_GPU = 0
    NVML_NVLINK_DEVICE_TYPE_SWITCH = 2
    NVML_P2P_CAPS_INDEX_NVLINK = 2
    NVML_P2P_STATUS_OK = 0

    def __init__(self, gpus, *, links=None, switch_links=0, topology=30, fail_init=False):
        self.gpus = gpus  # [(name, memory_bytes, bus, uuid)]
        self.links = links or {}  # {(i, j): count} direct NVLinks
        self.switch_links = switch_links
        self.topology = topology
        self.fail_init = fail_init
        self.shutdown_called = False

    def nvmlInit(self):
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shutdown_called = True

    def nvmlSystemGetDriverVersion(self):
        return b"580.95.05"

    def nvmlSystemGetCudaDriverVersion(self):
        return 13000

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.gpus[h][0]

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("Mem", (), {"total": self.gpus[h][1]})()

    def nvmlDeviceGetPciInfo(self, h):
        return type("Pci", (), {"busId": self.gpus[h][2].encode()})()

    def nvmlDeviceGetUUID(self, h):
        return self.gpus[h][3]

    def nvmlDeviceGetTopologyCommonAncestor(self, a, b):
        return self.topology

    def _peer_links(self, h):
        out = []
        for (i, j), n in self.links.items():
            if h in (i, j):
                out += [j if h == i else i] * n
        return out

    def nvmlDeviceGetNvLinkState(self, h, link):
        if not self.links and not self.switch_links:
            raise NVMLError("Not Supported")
        n = self.switch_links or len(self._peer_links(h))
        if link >= n:
            raise NVMLError("Invalid Argument")
        return 1

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, h, link):
        return self.NVML_NVLINK_DEVICE_TYPE_SWITCH if self.switch_links else self.NVML_NVLINK_DEVICE_TYPE_GPU

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h, link):
        peer = self._peer_links(h)[link]
        return type("Pci", (), {"busId": self.gpus[peer][2]})()

    def nvmlDeviceGetP2PStatus(self, a, b, idx):
        return 0 if (self.links or self.switch_links) else 5


def _gpu(name, gib, bus, n):
    return (name, gib * 2**30, f"00000000:{bus}:00.0", f"GPU-{n:08d}-aaaa-bbbb-cccc-dddddddddddd")


def _cuda(fake, order, *, by="bus"):
    """torch's view of the NVML devices `order` (CUDA numbering = position in `order`)."""
    devs = []
    for idx, i in enumerate(order):
        name, mem, bus, uuid = fake.gpus[i]
        devs.append({"index": idx, "name": name, "memory_bytes": mem - 2**20,
                     "pci_bus_id": "0000:" + bus.split(":", 1)[1].lower() if by == "bus" else None,
                     "uuid": uuid if by == "uuid" else None})
    return {"torch_version": "2.11.0", "cuda_version": "12.8", "devices": devs, "error": None}


H200X4 = [_gpu("NVIDIA H200", 141, b, n) for n, b in enumerate(("1B", "43", "5A", "6C"))]


@pytest.mark.parametrize("by", ["bus", "uuid"])
def test_cuda_devices_map_to_nvml_and_nvswitch_links(by):
    fake = FakeNVML(H200X4, switch_links=18)
    # CUDA_VISIBLE_DEVICES=3,2: CUDA numbers two GPUs, in that order; NVML still sees four.
    m = det_mod._detect(nvml=fake, cuda=_cuda(fake, [3, 2], by=by))
    assert [g.nvml_index for g in m.gpus] == [3, 2] and [g.index for g in m.gpus] == [0, 1]
    assert m.num_hidden_gpus == 2 and not m.reason
    assert all(g.spec is hp.get_gpu("H200") for g in m.gpus)
    assert m.gpus[0].pci_bus_id == "0000:6C:00.0" and m.gpus[0].uuid == H200X4[3][3]
    assert m.driver_version == "580.95.05" and m.cuda_driver_version == "13.0" and m.cuda_version == "12.8"
    link = m.link(1, 0)
    assert (link.kind, link.nvlink_count, link.via_nvswitch, link.topology) == ("nvlink", 18, True, "NV18")
    assert link.nvlink_gbps == 18 * 25
    c = m.to_cluster()
    assert c.num_gpus == 2 and c.nodes[0].fabric.kind == "nvswitch"
    assert c.nodes[0].fabric.bandwidth_gbps == hp.get_gpu("H200").nvlink_per_direction_gbps
    assert fake.shutdown_called
    assert "NV18" in m.topology_matrix()


def test_direct_nvlink_pair_and_nvl_name():
    fake = FakeNVML([_gpu("NVIDIA H100 NVL", 94, "17", 0), _gpu("NVIDIA H100 NVL", 94, "2A", 1)], links={(0, 1): 12})
    m = det_mod._detect(nvml=fake, cuda=_cuda(fake, [0, 1]))
    assert all(g.spec.name == "H100-NVL-94GB" for g in m.gpus)
    ln = m.link(0, 1)
    assert (ln.kind, ln.nvlink_count, ln.via_nvswitch, ln.nvlink_gbps) == ("nvlink", 12, False, 300)
    node = m.to_cluster().nodes[0]
    assert (node.fabric.kind, node.fabric.bandwidth_gbps) == ("nvlink", 300)


def test_pcie_only_pair():
    fake = FakeNVML([_gpu("Tesla T4", 16, "3B", 0), _gpu("Tesla T4", 16, "86", 1)], topology=50)
    m = det_mod._detect(nvml=fake, cuda=_cuda(fake, [0, 1]))
    ln = m.link(0, 1)
    assert (ln.kind, ln.topology, ln.same_pcie_switch) == ("pcie", "SYS", False)
    node = m.to_cluster().nodes[0]
    assert (node.fabric.kind, node.fabric.bandwidth_gbps) == ("pcie", hp.get_gpu("T4").pcie_per_direction_gbps)
    with pytest.raises(KeyError):
        m.link(0, 5)


def test_unknown_and_mixed_gpus():
    fake = FakeNVML([_gpu("NVIDIA Quantum Z9", 64, "17", 0), _gpu("NVIDIA L4", 24, "2A", 1)])
    m = det_mod._detect(nvml=fake, cuda=_cuda(fake, [0]))
    assert m.gpus[0].spec is None and any("Quantum Z9" in w for w in m.warnings)
    with pytest.raises(ClusterSpecError, match="not in the catalog"):
        m.to_cluster()
    assert m.to_cluster(gpu="L4").nodes[0].gpu is hp.get_gpu("L4")
    mixed = det_mod._detect(nvml=FakeNVML([_gpu("NVIDIA L4", 24, "17", 0), _gpu("Tesla T4", 16, "2A", 1)]),
                            cuda={"torch_version": None, "cuda_version": None, "devices": None, "error": None})
    with pytest.raises(ClusterSpecError, match="mixes GPU types"):
        mixed.to_cluster()


def test_no_driver_no_pynvml_no_gpu():
    no_torch = {"torch_version": None, "cuda_version": None, "devices": None, "error": "torch is not importable"}
    m = det_mod._detect(nvml=FakeNVML(H200X4, fail_init=True), cuda=no_torch)
    assert m.is_cpu_only and "no NVIDIA driver" in m.reason and "Driver Not Loaded" in m.reason
    m = det_mod._detect(nvml=ImportError("No module named 'pynvml'"), cuda=no_torch)
    assert m.is_cpu_only and "pynvml" in m.reason
    m = det_mod._detect(nvml=FakeNVML([]), cuda={**no_torch, "error": None, "devices": []})
    assert m.is_cpu_only and m.reason


def test_detect_never_raises(monkeypatch):
    def broken(**_):
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(det_mod, "_detect", broken)
    m = detect()
    assert m.is_cpu_only and "driver exploded" in m.reason


def test_cuda_visible_devices_without_torch(monkeypatch):
    fake = FakeNVML(H200X4, switch_links=18)
    no_torch = {"torch_version": None, "cuda_version": None, "devices": None, "error": None}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"2,{H200X4[0][3][:12]}")  # an index and a UUID prefix
    m = det_mod._detect(nvml=fake, cuda=no_torch)
    assert [g.nvml_index for g in m.gpus] == [2, 0] and m.num_hidden_gpus == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    m = det_mod._detect(nvml=fake, cuda=no_torch)
    assert m.is_cpu_only and m.num_hidden_gpus == 4


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_detect_on_a_gpu_machine():
    m = detect()
    assert m.num_gpus == torch.cuda.device_count() and not m.reason
    for g in m.gpus:
        assert g.name and g.memory_bytes > 0
        assert abs(g.memory_bytes - torch.cuda.get_device_properties(g.index).total_memory) < 2**30


# -- profile() on CPU -----------------------------------------------------------------------
SHAPES = [(1, 64, 64), (8, 64, 64), (64, 64, 64), (128, 128, 128)]


@pytest.fixture(scope="module")
def cpu_profile() -> MeasuredProfile:
    return profile(dtypes=("fp32", "bf16"), gemm_shapes=SHAPES, copy_sizes_bytes=[64 << 10, 1 << 20],
                   device="cpu", progress=False)


def test_cpu_profile_measures_gemm_and_copy(cpu_profile):
    p = cpu_profile
    assert {(g.m, g.n, g.k) for g in p.gemm} == set(SHAPES) and {g.dtype for g in p.gemm} == {"fp32", "bf16"}
    for g in p.gemm:
        assert g.time_s > 0 and g.tflops == pytest.approx(2 * g.m * g.n * g.k / g.time_s / 1e12)
    big = p.gemm_tflops(128, 128, 128, "fp32")
    assert big > p.gemm_tflops(1, 64, 64, "fp32")  # a matrix-vector product is far from the best rate
    assert [c.size_bytes for c in p.copy] == [64 << 10, 1 << 20]
    assert all(c.bandwidth_gbps == pytest.approx(2 * c.size_bytes / c.time_s / 1e9) for c in p.copy)
    assert p.machine.gpu_name == "cpu" and p.machine.catalog_name is None and p.device == "cpu"
    assert p.collectives == () and p.backend is None
    assert any("collectives skipped" in n for n in p.notes)
    fit = p.gemm_efficiency("float32")
    assert fit.peak_origin == "max measured" and fit.eff_max > 0 and fit.num_points == 4
    with pytest.raises(ProfileError, match="no GEMM"):
        p.gemm_tflops(3, 3, 3, "fp32")
    with pytest.raises(ProfileError, match="fp16"):
        p.gemm_efficiency("fp16")


def test_profile_rejects_unsupported_dtypes():
    with pytest.raises(UnsupportedPrecisionError, match="fp8"):
        profile(dtypes=("fp8",), gemm_shapes=[(8, 8, 8)], copy_sizes_bytes=[], device="cpu", progress=False)


def test_json_round_trip(cpu_profile, tmp_path):
    path = cpu_profile.save(tmp_path / "sub" / "p.json")
    assert MeasuredProfile.load(path) == cpu_profile
    assert [f.name for f in path.parent.iterdir()] == ["p.json"]  # the atomic write left no temporary file
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["copy_bytes_counted"] == "read+write"
    assert "busbw" in data["conventions"]["collectives"]


@pytest.mark.parametrize("mutate,match", [
    (lambda d: "not json at all {", "not valid JSON"),
    (lambda d: [1, 2], "JSON object"),
    (lambda d: {**d, "format": "something-else"}, "not a parplan measured profile"),
    (lambda d: {**d, "version": 99}, "version 99"),
    (lambda d: {k: v for k, v in d.items() if k != "machine"}, "missing field 'machine'"),
    (lambda d: {**d, "gemm": [{**d["gemm"][0], "time_s": -1.0}]}, "bad GEMM point"),
    (lambda d: {**d, "gemm": [{**d["gemm"][0], "flops": 3}]}, "unknown keys"),
    (lambda d: {**d, "copy": [{"size_bytes": 8}]}, "malformed entry"),
    (lambda d: {**d, "collectives": [{"op": "all_reduce", "group_size": 1, "size_bytes": 8, "time_s": 1.0,
                                      "algbw_gbps": 1.0, "busbw_gbps": 1.0}]}, "bad collective point"),
])
def test_malformed_profile_files_raise_profile_error(cpu_profile, tmp_path, mutate, match):
    bad = mutate(cpu_profile.to_dict())
    p = tmp_path / "bad.json"
    p.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    with pytest.raises(ProfileError, match=match):
        MeasuredProfile.load(p)
    with pytest.raises(ProfileError, match="does not exist"):
        MeasuredProfile.load(tmp_path / "missing.json")


def test_cli_writes_a_profile(tmp_path):
    out = tmp_path / "cli.json"
    r = subprocess.run([sys.executable, "-m", "hardware_profiles.profiler", "--out", str(out), "--quick",
                        "--no-collectives", "--no-progress", "--dtypes", "fp32"],
                       cwd=REPO, env={**_env(), "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    prof = MeasuredProfile.load(out)
    assert prof.gemm and prof.copy and {g.dtype for g in prof.gemm} == {"fp32"}
    assert "wrote" in r.stdout


def _env():
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# -- collectives with gloo in spawned processes ------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gloo_collectives_in_two_processes():
    sizes = [1 << 10, 4 << 10, 16 << 10]
    p = profile(world_size=2, backend="gloo", gemm_shapes=[(8, 32, 32)], dtypes=("fp32",),
                copy_sizes_bytes=[64 << 10], sizes_bytes=sizes, progress=False, timeout_s=90)
    assert p.backend == "gloo" and p.collective_dtype == "fp32"
    assert {pt.op for pt in p.collectives} == {"all_reduce", "all_gather", "reduce_scatter", "all_to_all",
                                                 "send_recv"}
    assert {pt.group_size for pt in p.collectives} == {2}
    for pt in p.collectives:
        assert pt.size_bytes in sizes and pt.time_s > 0
        assert pt.algbw_gbps == pytest.approx(pt.size_bytes / pt.time_s / 1e9)
        assert pt.busbw_gbps == pytest.approx(pt.algbw_gbps * bus_factor(pt.op, 2))
    assert len(p.gemm) == 1 and len(p.copy) == 1  # rank 0 only
    bw, lat = p.collective_fit("all-reduce", 2)
    assert bw > 0 and lat >= 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_gloo_three_processes_groups_of_two_and_three():
    p = profile(world_size=3, backend="gloo", gemm_shapes=[], copy_sizes_bytes=[], sizes_bytes=[1 << 10],
                ops=("all_reduce", "send_recv"), progress=False, timeout_s=90)
    got = {(pt.op, pt.group_size) for pt in p.collectives}
    assert got == {("all_reduce", 2), ("all_reduce", 3), ("send_recv", 2), ("send_recv", 3)}
    assert all(pt.time_s > 0 and pt.busbw_gbps > 0 for pt in p.collectives)
    ar3 = min((pt for pt in p.collectives if (pt.op, pt.group_size) == ("all_reduce", 3)), key=lambda pt: pt.size_bytes)
    assert ar3.size_bytes == 1020  # rounded down to whole fp32 elements, a multiple of the group size
    assert ar3.busbw_gbps == pytest.approx(ar3.algbw_gbps * 4 / 3)
    assert default_group_sizes(3) == [2, 3] and default_group_sizes(8) == [2, 4, 8]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_spawn_errors_surface_as_profile_error():
    with pytest.raises(ProfileError, match="group sizes"):
        profile(world_size=2, backend="gloo", gemm_shapes=[], copy_sizes_bytes=[], group_sizes=[4],
                progress=False, timeout_s=60)


# -- fits --------------------------------------------------------------------------------------
def test_efficiency_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    flops = np.logspace(6, 13, 30)
    eff = 0.82 / (1 + 3e9 / flops) * (1 + 0.01 * rng.standard_normal(flops.size))
    e, h, e_se, h_se = fit_efficiency_curve(flops, eff)
    assert e == pytest.approx(0.82, rel=0.02) and h == pytest.approx(3e9, rel=0.05)
    assert 0 < e_se < 0.02 and 0 < h_se < 0.2 * h
    assert abs(e - 0.82) < 4 * e_se and abs(h - 3e9) < 4 * h_se


def test_linear_time_fit_recovers_bandwidth_and_latency():
    rng = np.random.default_rng(1)
    size = np.array([2.0 ** i for i in range(10, 31, 2)])
    factor = bus_factor("all_reduce", 4)
    t = (25e-6 + factor * size / 350e9) * (1 + 0.02 * rng.standard_normal(size.size))
    bw, lat, bw_se, lat_se = fit_linear_time(factor * size, t)
    assert bw == pytest.approx(350, rel=0.03) and lat == pytest.approx(25e-6, rel=0.05)
    assert abs(bw - 350) < 4 * bw_se and abs(lat - 25e-6) < 4 * lat_se


def test_fits_need_two_points():
    with pytest.raises(ProfileError):
        fit_efficiency_curve([1e9], [0.5])
    with pytest.raises(ProfileError):
        fit_linear_time([1e6, 1e6], [1e-3, 1e-3])
    e, h, e_se, h_se = fit_efficiency_curve([1e8, 1e12], [0.2, 0.7])
    assert math.isinf(e_se) and math.isinf(h_se)  # two points: no covariance to report


def test_bus_factors():
    assert bus_factor("all_reduce", 8) == pytest.approx(1.75)
    assert bus_factor("allgather", 8) == pytest.approx(0.875)
    assert bus_factor("reduce-scatter", 2) == pytest.approx(0.5)
    assert bus_factor("AllToAll", 4) == pytest.approx(0.75)
    assert bus_factor("send_recv", 2) == 1.0
    with pytest.raises(ParplanError, match="unknown collective"):
        bus_factor("broadcast", 2)


# -- synthetic profiles: fits on profiles, load_profile, the merge -------------------------------
def synthetic_profile(gpu: str, date: str, *, host="testhost", eff_max=0.75, half=2e10, bw_gbps=400.0,
                      lat_s=20e-6, copy_gbps=2900.0) -> MeasuredProfile:
    spec = hp.get_gpu(gpu)
    peak = spec.peak_tflops("bf16")
    gemm = []
    for m in (1, 16, 256, 2048, 8192):
        for n, k in ((4096, 4096), (8192, 8192)):
            tflops = peak * eff_max / (1 + half / (2.0 * m * n * k))
            gemm.append(GemmPoint(m, n, k, "bf16", 2.0 * m * n * k / tflops / 1e12, tflops))
    copy = [CopyPoint(s, 2 * s / (copy_gbps * 1e9) + 5e-6, 2 * s / (2 * s / (copy_gbps * 1e9) + 5e-6) / 1e9)
            for s in (1 << 22, 1 << 26, 1 << 30)]
    coll = []
    for op in ("all_reduce", "all_gather"):
        for s in (1 << 10, 1 << 16, 1 << 20, 1 << 26, 1 << 30):
            t = lat_s + bus_factor(op, 2) * s / (bw_gbps * 1e9)
            alg = s / t / 1e9
            coll.append(CollectivePoint(op, 2, s, t, alg, alg * bus_factor(op, 2)))
    machine = MachineInfo(host, f"NVIDIA {gpu}", spec.name, 2, "580.95.05", "12.8", "2.11.0")
    return MeasuredProfile(machine=machine, date=date, gemm=tuple(gemm), copy=tuple(copy), collectives=tuple(coll),
                           backend="nccl", device="cuda", collective_dtype="fp32")


def test_fits_on_a_profile_use_the_datasheet_peak():
    p = synthetic_profile("H100", "2026-11-22T10:00:00+00:00")
    fit = p.gemm_efficiency("bf16")
    eff, half = fit
    assert (fit[0], fit[1], len(fit)) == (eff, half, 2)
    assert fit.peak_origin == "datasheet" and fit.peak_tflops == 989.5
    assert fit.eff_max == pytest.approx(0.75, rel=1e-3) and fit.half_flops == pytest.approx(2e10, rel=1e-3)
    assert fit.tflops(8192, 8192, 8192) == pytest.approx(p.gemm_tflops(8192, 8192, 8192, "bf16"), rel=1e-3)
    bw, lat = p.collective_fit("all_reduce", 2)
    assert bw == pytest.approx(400, rel=1e-3) and lat == pytest.approx(20e-6, rel=1e-3)
    assert p.collective_fit("all_gather", 2).time_s(1 << 24) == pytest.approx(
        20e-6 + 0.5 * (1 << 24) / 400e9, rel=1e-3)
    assert p.memory_bandwidth_fit().bandwidth_gbps == pytest.approx(2900, rel=1e-3)
    with pytest.raises(ProfileError, match="send_recv"):
        p.collective_fit("send_recv", 2)


def test_load_profile_via_env_newest_wins_and_measured_beats_datasheet(tmp_path, monkeypatch):
    old = synthetic_profile("H100", "2098-01-01T00:00:00+00:00", host="oldhost", eff_max=0.5)
    new = synthetic_profile("H100", "2099-06-01T00:00:00+00:00", host="newhost", eff_max=0.7)
    other = synthetic_profile("L4", "2099-12-31T00:00:00+00:00", host="l4host")
    old.save(tmp_path / "a.json")
    new.save(tmp_path / "b.json")
    other.save(tmp_path / "c.json")
    (tmp_path / "junk.json").write_text("{not json")
    monkeypatch.setenv(PROFILE_DIR_ENV, str(tmp_path))
    with pytest.warns(UserWarning, match="skipping measured profile"):
        found = load_profile("NVIDIA H100 80GB HBM3")
    (tmp_path / "junk.json").unlink()
    assert found == new
    assert load_profile("H100", min_gpus=2) == new
    assert load_profile("H100", min_gpus=99) is None
    assert load_profile("V100-PCIe-16GB") is None

    fig = effective_figures("H100", found)
    sheet = hp.get_gpu("H100")
    assert fig.matmul_tflops["bf16"].origin == "measured 2099-06-01 on newhost"
    assert fig.matmul_tflops["bf16"].value == pytest.approx(found.max_gemm_tflops("bf16"))
    assert fig.matmul_tflops["bf16"].value < sheet.bf16_tflops
    assert fig.matmul_tflops["fp8"].origin == "datasheet" and fig.matmul_tflops["fp8"].value == sheet.fp8_tflops
    assert fig.memory_bandwidth_gbps.origin.startswith("measured") and fig.memory_bandwidth_gbps.value < 2900
    assert fig.intra_node_busbw_gbps.origin.startswith("measured")
    assert fig.collective_busbw_gbps[("all_reduce", 2)].value == pytest.approx(found.max_busbw_gbps("all_reduce", 2))
    assert fig.gemm_fits["bf16"].eff_max == pytest.approx(0.7, rel=1e-3)
    assert "measured 2099-06-01 on newhost" in fig.describe()

    plain = effective_figures("H100")
    assert all(f.origin == "datasheet" for f in plain.matmul_tflops.values())
    assert plain.memory_bandwidth_gbps.value == sheet.memory_bandwidth_gbps
    assert plain.intra_node_busbw_gbps.value == sheet.nvlink_per_direction_gbps
    with pytest.raises(ProfileError, match="L4"):
        effective_figures("H100", other)


def test_search_dirs_argument(tmp_path, monkeypatch):
    monkeypatch.delenv(PROFILE_DIR_ENV, raising=False)
    p = synthetic_profile("L4", "2099-01-01T00:00:00+00:00")
    p.save(tmp_path / "l4.json")
    assert load_profile("L4", search_dirs=[tmp_path]) == p
    assert load_profile("L4", search_dirs=[tmp_path / "missing"]) != p


# -- GPU-only ------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_profile_small_grid():
    p = profile(dtypes=("bf16",), gemm_shapes=[(1, 4096, 4096), (4096, 4096, 4096)], copy_sizes_bytes=[64 << 20],
                quick=True, progress=False)
    assert p.device == "cuda" and p.machine.gpu_count >= 1
    assert p.gemm_tflops(4096, 4096, 4096, "bf16") > p.gemm_tflops(1, 4096, 4096, "bf16")
    spec = p.gpu_spec
    if spec is not None:
        assert p.gemm_tflops(4096, 4096, 4096, "bf16") < 1.1 * spec.bf16_tflops
        assert p.memory_bandwidth_gbps < 1.1 * spec.memory_bandwidth_gbps
