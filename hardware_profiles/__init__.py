"""What the GPUs are: datasheet catalog, cluster topology, detection and measured profiles."""
from .catalog import all_gpus, get_gpu, list_gpus
from .errors import ClusterSpecError, ParplanError, ProfileError, UnknownGPUError, UnsupportedPrecisionError
from .gpu import DTYPE_BYTES, GPUSpec, dtype_bytes, normalize_dtype
from .topology import Cluster, Fabric, Network, Node

__all__ = [
    "Cluster", "ClusterSpecError", "DTYPE_BYTES", "Fabric", "GPUSpec", "Network", "Node", "ParplanError",
    "ProfileError", "UnknownGPUError", "UnsupportedPrecisionError", "all_gpus", "dtype_bytes", "get_gpu",
    "list_gpus", "normalize_dtype",
]
