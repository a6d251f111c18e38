"""What GPUs this machine has: nvidia-ml-py's `pynvml` for the hardware and the
links between GPUs, torch.cuda for the numbering a program actually sees.

NVML numbers every GPU in PCI order and ignores CUDA_VISIBLE_DEVICES; CUDA
numbers only the visible ones (by default fastest first). `detect()` reports the
GPUs this process can use, in CUDA's order, matched to NVML devices by PCI bus id
(or UUID). It never raises: without a driver, pynvml or a GPU it returns a
CPU-only result whose `reason` says why.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Sequence

from .catalog import get_gpu
from .errors import ClusterSpecError, UnknownGPUError
from .gpu import GPUSpec

# NVML topology levels, named as `nvidia-smi topo -m` prints them.
_TOPO_NAMES = {0: "X", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
# Per-link, per-direction NVLink bandwidth (GB/s) by GPU architecture (NVLink 2-4: 25, NVLink 5: 50).
# By architecture rather than nvmlDeviceGetNvLinkVersion, whose return value changed meaning
# (plain major version vs. the nvmlNvlinkVersion_t enum) across driver releases.
_NVLINK_LINK_GBPS = {"Volta": 25.0, "Ampere": 25.0, "Hopper": 25.0, "Blackwell": 50.0}


@dataclass(frozen=True)
class DetectedGPU:
    index: int  # what torch/CUDA call it in this process (honours CUDA_VISIBLE_DEVICES)
    nvml_index: int | None  # NVML's index (PCI order, all GPUs); None where NVML is unavailable
    name: str  # as the driver reports it
    spec: GPUSpec | None  # the matching catalog entry, None if the name is not in the catalog
    memory_bytes: int
    pci_bus_id: str | None  # "0000:1B:00.0"
    uuid: str | None  # "GPU-..."


@dataclass(frozen=True)
class GPULink:
    """How two GPUs (CUDA indices `a` < `b`) reach each other."""

    a: int
    b: int
    kind: str  # "nvlink" or "pcie" (or "unknown" without NVML)
    nvlink_count: int  # active NVLinks between them (via NVSwitch: the GPU's links into the switch)
    via_nvswitch: bool
    topology: str  # nvidia-smi vocabulary: "NV18", "PIX", "PXB", "PHB", "NODE", "SYS"
    pcie_level: str | None  # common PCIe ancestor (PIX, PXB, PHB, NODE, SYS)
    nvlink_gbps: float | None  # per direction, from link count x per-link rate, where known

    @property
    def same_pcie_switch(self) -> bool:
        return self.pcie_level in ("X", "PIX", "PXB")


@dataclass(frozen=True)
class DetectedMachine:
    hostname: str
    driver_version: str | None
    cuda_version: str | None  # the CUDA runtime torch was built with
    cuda_driver_version: str | None  # the newest CUDA the driver supports
    torch_version: str | None
    gpus: tuple[DetectedGPU, ...] = ()
    links: tuple[GPULink, ...] = ()
    reason: str = ""  # why there are no GPUs ("" when there are)
    warnings: tuple[str, ...] = ()
    num_hidden_gpus: int = 0  # GPUs NVML sees that CUDA_VISIBLE_DEVICES hides from this process

    @property
    def is_cpu_only(self) -> bool:
        return not self.gpus

    @property
    def num_gpus(self) -> int:
        return len(self.gpus)

    def link(self, a: int, b: int) -> GPULink:
        lo, hi = min(a, b), max(a, b)
        for ln in self.links:
            if (ln.a, ln.b) == (lo, hi):
                return ln
        raise KeyError(f"no link between GPU {a} and GPU {b}; this machine has GPUs 0..{self.num_gpus - 1}")

    def topology_matrix(self) -> str:
        """A `nvidia-smi topo -m` style table in CUDA numbering."""
        n = self.num_gpus
        if n == 0:
            return f"(no GPUs: {self.reason})"
        head = "      " + "".join(f"GPU{j:<5}" for j in range(n))
        rows = [head]
        for i in range(n):
            cells = ["X" if i == j else self.link(i, j).topology for j in range(n)]
            rows.append(f"GPU{i:<3}" + "".join(f"{c:<8}" for c in cells))
        return "\n".join(rows)

    def summary(self) -> str:
        lines = [f"{self.hostname}: driver {self.driver_version}, CUDA {self.cuda_version} "
                 f"(driver supports {self.cuda_driver_version}), torch {self.torch_version}"]
        if self.is_cpu_only:
            lines.append(f"  CPU only: {self.reason}")
        for g in self.gpus:
            cat = g.spec.name if g.spec else "not in catalog"
            lines.append(f"  cuda:{g.index} (nvml {g.nvml_index}) {g.name} -> {cat}, "
                         f"{g.memory_bytes / 2**30:.1f} GiB, {g.pci_bus_id}")
        if self.num_gpus > 1:
            lines.append(self.topology_matrix())
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_cluster(self, *, gpu: str | GPUSpec | None = None, network_gbps: float | None = None):
        """A one-node `Cluster` of the visible GPUs, its fabric taken from the detected links.

        `gpu` overrides the catalog entry (needed when the name is not in the catalog).
        """
        from .topology import Cluster, Network, Node

        if self.is_cpu_only:
            raise ClusterSpecError(f"no GPUs detected ({self.reason}); describe the cluster instead, "
                                   "e.g. Cluster.parse('8xH100')")
        if gpu is not None:
            spec = get_gpu(gpu)
        else:
            unknown = sorted({g.name for g in self.gpus if g.spec is None})
            if unknown:
                raise ClusterSpecError(f"GPU(s) {unknown} are not in the catalog; pass to_cluster(gpu='...') "
                                       "with the closest catalog entry")
            kinds = sorted({g.spec.name for g in self.gpus if g.spec is not None})
            if len(kinds) > 1:
                raise ClusterSpecError(f"this machine mixes GPU types {kinds}; a node holds one type: restrict "
                                       "CUDA_VISIBLE_DEVICES to one type or pass to_cluster(gpu='...')")
            spec = self.gpus[0].spec
        n = self.num_gpus
        kind, bw = None, None  # None: the datasheet default for this GPU
        nv = [ln for ln in self.links if ln.kind == "nvlink"]
        if n > 1 and self.links and len(nv) == len(self.links):
            switched = all(ln.via_nvswitch for ln in nv)
            kind = "nvswitch" if switched else "nvlink"
            known = [ln.nvlink_gbps for ln in nv if ln.nvlink_gbps]
            if len(known) == len(nv):
                # Through a switch a GPU drives all its links at once; with direct links a ring
                # uses two neighbours, each reached over the weakest pair's links.
                bw = min(known) if switched else min(known) * min(2, n - 1)
                if spec.nvlink_per_direction_gbps:
                    bw = min(bw, spec.nvlink_per_direction_gbps)
        elif n > 1 and self.links and not nv and all(ln.kind == "pcie" for ln in self.links):
            kind, bw = "pcie", spec.pcie_per_direction_gbps
        node = Node.of(spec, n, intra_node_kind=kind, intra_node_gbps=bw, network_gbps=network_gbps,
                       name=self.hostname or "localhost")
        return Cluster(nodes=(node,), network=Network("none", 0.0))


# -- detection ---------------------------------------------------------------------
def detect() -> DetectedMachine:
    """Describe this machine's GPUs; never raises (see `DetectedMachine.reason`)."""
    try:
        nvml = _import_nvml()
    except Exception as exc:  # pragma: no cover - depends on what is installed
        nvml = exc
    cuda = _torch_cuda_devices()
    try:
        return _detect(nvml=nvml, cuda=cuda)
    except Exception as exc:  # an NVML/driver oddity must not take the caller down
        return DetectedMachine(hostname=socket.gethostname(), driver_version=None, cuda_version=cuda.get("cuda_version"),
                               cuda_driver_version=None, torch_version=cuda.get("torch_version"),
                               reason=f"GPU detection failed ({_err(exc)})")


def _import_nvml() -> Any:
    import pynvml  # nvidia-ml-py

    return pynvml


def _torch_cuda_devices() -> dict[str, Any]:
    """torch's view: version, CUDA runtime, and the visible devices (never raises)."""
    out: dict[str, Any] = {"torch_version": None, "cuda_version": None, "devices": None, "error": None}
    try:
        import torch
    except Exception as exc:
        out["error"] = f"torch is not importable ({type(exc).__name__}: {exc})"
        return out
    out["torch_version"] = str(torch.__version__)
    out["cuda_version"] = torch.version.cuda
    try:
        if not torch.cuda.is_available():
            out["devices"] = []
            return out
        devs = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            bus = None
            if getattr(p, "pci_bus_id", None) is not None:
                bus = f"{getattr(p, 'pci_domain_id', 0):04X}:{p.pci_bus_id:02X}:{getattr(p, 'pci_device_id', 0):02X}.0"
            uuid = getattr(p, "uuid", None)
            devs.append({"index": i, "name": p.name, "memory_bytes": int(p.total_memory), "pci_bus_id": bus,
                         "uuid": _norm_uuid(str(uuid)) if uuid is not None else None})
        out["devices"] = devs
    except Exception as exc:
        out["error"] = f"torch.cuda failed ({type(exc).__name__}: {exc})"
    return out


def _detect(*, nvml: Any, cuda: dict[str, Any]) -> DetectedMachine:
    """Combine an NVML module (or the exception raised importing it) with torch's device list.

    Separate from `detect()` so tests can pass a fake NVML and fake CUDA devices.
    """
    warns: list[str] = []
    hostname = socket.gethostname()
    torch_version, cuda_version = cuda.get("torch_version"), cuda.get("cuda_version")
    base = dict(hostname=hostname, torch_version=torch_version, cuda_version=cuda_version)
    if cuda.get("error"):
        warns.append(cuda["error"])

    nvml_devs, nvml_reason, driver, cuda_driver = [], "", None, None
    if isinstance(nvml, BaseException) or nvml is None:
        nvml_reason = f"pynvml (nvidia-ml-py) is not importable ({nvml})" if nvml is not None else "pynvml is not installed"
        nvml = None
    else:
        try:
            nvml.nvmlInit()
        except Exception as exc:
            nvml_reason = f"no NVIDIA driver: NVML did not initialise ({_err(exc)})"
            nvml = None
    if nvml is not None:
        try:
            driver = _s(nvml.nvmlSystemGetDriverVersion())
            try:
                v = int(nvml.nvmlSystemGetCudaDriverVersion())
                cuda_driver = f"{v // 1000}.{(v % 1000) // 10}"
            except Exception:
                pass
            for i in range(int(nvml.nvmlDeviceGetCount())):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                nvml_devs.append({
                    "nvml_index": i, "handle": h, "name": _s(nvml.nvmlDeviceGetName(h)),
                    "memory_bytes": int(nvml.nvmlDeviceGetMemoryInfo(h).total),
                    "pci_bus_id": _norm_bus(_s(nvml.nvmlDeviceGetPciInfo(h).busId)),
                    "uuid": _norm_uuid(_s(nvml.nvmlDeviceGetUUID(h))),
                })
        except Exception as exc:
            warns.append(f"NVML query failed ({_err(exc)}); using torch.cuda only")
            nvml_devs = []
    base.update(driver_version=driver, cuda_driver_version=cuda_driver)

    try:
        visible, hidden = _visible_devices(cuda.get("devices"), nvml_devs, warns)
        if not visible:
            reasons = [r for r in (nvml_reason, cuda.get("error")) if r]
            if cuda.get("devices") == [] and not nvml_reason:
                reasons.append("torch.cuda.is_available() is False" + (
                    f"; NVML sees {len(nvml_devs)} GPU(s) but CUDA_VISIBLE_DEVICES="
                    f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r} hides them" if nvml_devs else ""))
            if not reasons:
                reasons.append("no NVIDIA GPU found")
            return DetectedMachine(**base, reason="; ".join(reasons), warnings=tuple(warns), num_hidden_gpus=hidden)
        gpus = []
        for idx, d in enumerate(visible):
            spec = None
            try:
                spec = get_gpu(d["name"])
            except UnknownGPUError as exc:
                warns.append(f"cuda:{idx} {d['name']!r} is not in the catalog ({exc}); its figures are unknown")
            gpus.append(DetectedGPU(index=idx, nvml_index=d.get("nvml_index"), name=d["name"], spec=spec,
                                    memory_bytes=int(d["memory_bytes"]), pci_bus_id=d.get("pci_bus_id"),
                                    uuid=d.get("uuid")))
        links = _links(nvml, visible, [g.spec for g in gpus], warns) if len(visible) > 1 else []
        return DetectedMachine(**base, gpus=tuple(gpus), links=tuple(links), warnings=tuple(warns),
                               num_hidden_gpus=hidden)
    finally:
        if nvml is not None:
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass


def _visible_devices(cuda_devs: list[dict] | None, nvml_devs: list[dict], warns: list[str]) -> tuple[list[dict], int]:
    """The GPUs this process can use, in CUDA order, merged with their NVML record."""
    if cuda_devs is not None:
        out = []
        for c in cuda_devs:
            match = _match(c, nvml_devs)
            if nvml_devs and match is None:
                warns.append(f"cuda:{c['index']} ({c['name']}, bus {c.get('pci_bus_id')}) matches no NVML device")
            merged = dict(match or {})
            merged.update({k: v for k, v in c.items() if v is not None and k != "index"})
            if match is not None:
                merged["name"] = match["name"]  # NVML's name is the one nvidia-smi prints
            if merged.get("pci_bus_id"):
                merged["pci_bus_id"] = _norm_bus(merged["pci_bus_id"])
            out.append(merged)
        return out, max(0, len(nvml_devs) - len(out))
    # No torch: apply CUDA_VISIBLE_DEVICES ourselves.
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return list(nvml_devs), 0
    picked = []
    for tok in (t.strip() for t in env.split(",")):
        if not tok:
            break
        if tok.lstrip("-").isdigit():
            i = int(tok)
            if i < 0 or i >= len(nvml_devs):
                break  # CUDA stops at the first invalid entry
            dev = nvml_devs[i]
        else:
            dev = next((d for d in nvml_devs if d.get("uuid") and d["uuid"].lower().startswith(_norm_uuid(tok).lower())),
                       None)
            if dev is None:
                break
        if dev not in picked:
            picked.append(dev)
    if os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") != "PCI_BUS_ID" and len(picked) > 1:
        warns.append("torch is not importable, so CUDA numbering is assumed to follow NVML's PCI order; "
                     "set CUDA_DEVICE_ORDER=PCI_BUS_ID to make that certain")
    return picked, len(nvml_devs) - len(picked)


def _match(c: dict, nvml_devs: list[dict]) -> dict | None:
    if c.get("pci_bus_id"):
        for d in nvml_devs:
            if _bus_key(d.get("pci_bus_id")) == _bus_key(c["pci_bus_id"]):
                return d
    if c.get("uuid"):
        for d in nvml_devs:
            if d.get("uuid") and d["uuid"].lower() == c["uuid"].lower():
                return d
    return None


def _links(nvml: Any, devs: Sequence[dict], specs: Sequence[GPUSpec | None], warns: list[str]) -> list[GPULink]:
    n = len(devs)
    if nvml is None or any("handle" not in d for d in devs):
        return [GPULink(i, j, "unknown", 0, False, "?", None, None) for i in range(n) for j in range(i + 1, n)]
    info = [_nvlink_info(nvml, d["handle"]) for d in devs]
    bus_of = {_bus_key(d["pci_bus_id"]): k for k, d in enumerate(devs) if d.get("pci_bus_id")}
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            level = None
            try:
                level = int(nvml.nvmlDeviceGetTopologyCommonAncestor(devs[i]["handle"], devs[j]["handle"]))
            except Exception as exc:
                warns.append(f"topology of cuda:{i}-cuda:{j} unknown ({_err(exc)})")
            pcie = _TOPO_NAMES.get(level) if level is not None else None
            direct = sum(1 for remote in info[i]["remote_buses"] if bus_of.get(remote) == j)
            switched = info[i]["to_switch"] > 0 and info[j]["to_switch"] > 0
            count = direct + (min(info[i]["to_switch"], info[j]["to_switch"]) if switched else 0)
            if count == 0 and _p2p_nvlink(nvml, devs[i]["handle"], devs[j]["handle"]):
                count = max(1, min(info[i]["active"], info[j]["active"]))
            rate = _NVLINK_LINK_GBPS.get(specs[i].architecture) if specs[i] is not None else None
            if count:
                out.append(GPULink(i, j, "nvlink", count, switched and direct == 0, f"NV{count}", pcie,
                                   count * rate if rate else None))
            else:
                out.append(GPULink(i, j, "pcie", 0, False, pcie or "?", pcie, None))
    return out


def _nvlink_info(nvml: Any, handle: Any) -> dict[str, Any]:
    """Active links of one GPU: remote PCI buses of GPU peers and the number of links into NVSwitches."""
    res: dict[str, Any] = {"remote_buses": [], "to_switch": 0, "active": 0}
    max_links = int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))
    active_state = getattr(nvml, "NVML_NVLINK_STATE_ACTIVE", 1)
    switch_type = getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2)
    for link in range(max_links):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link) != active_state:
                continue
        except Exception:
            continue  # not supported / no such link
        res["active"] += 1
        remote_type = None
        try:
            remote_type = nvml.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link)
        except Exception:
            pass
        if remote_type == switch_type:
            res["to_switch"] += 1
            continue
        try:
            res["remote_buses"].append(_bus_key(_s(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)))
        except Exception:
            pass
    return res


def _p2p_nvlink(nvml: Any, h1: Any, h2: Any) -> bool:
    try:
        idx = getattr(nvml, "NVML_P2P_CAPS_INDEX_NVLINK", 2)
        return nvml.nvmlDeviceGetP2PStatus(h1, h2, idx) == getattr(nvml, "NVML_P2P_STATUS_OK", 0)
    except Exception:
        return False


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _norm_uuid(u: str) -> str:
    u = u.strip()
    if re.fullmatch(r"[0-9a-fA-F-]{32,36}", u):
        u = "GPU-" + u
    return u


def _norm_bus(bus: str) -> str:
    key = _bus_key(bus)
    if key is None:
        return bus
    dom, b, dev, fn = key
    return f"{dom:04X}:{b:02X}:{dev:02X}.{fn}"


def _bus_key(bus: str | tuple | None) -> tuple[int, int, int, int] | None:
    """(domain, bus, device, function) from "00000000:1B:00.0", "0000:1b:00.0" or "1B:00.0"."""
    if bus is None:
        return None
    if isinstance(bus, tuple):
        return bus
    m = re.fullmatch(r"(?:([0-9a-fA-F]+):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})(?:\.([0-7]))?", bus.strip())
    if not m:
        return None
    dom, b, dev, fn = m.groups()
    return int(dom or "0", 16), int(b, 16), int(dev, 16), int(fn or "0")
