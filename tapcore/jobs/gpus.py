"""Each NVIDIA GPU's memory and utilisation, from NVIDIA's management library (NVML, ``pynvml``).

``pynvml`` comes from the ``nvidia-ml-py`` package (NVIDIA's own bindings). On a machine without an
NVIDIA driver (a laptop, a CPU-only server, this project's CI) :func:`read_gpus` does not raise: it
returns a :class:`GpuReport` with no GPUs, a plain line (:data:`NO_GPU`) and the reason, which the
Jobs page and ``tapcore workers`` show instead of a table.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["GpuInfo", "GpuReport", "read_gpus", "NO_GPU"]

MIB = 1024 * 1024
NO_GPU = "no NVIDIA GPU on this box"


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML sees it (index = NVML's, which is CUDA's with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``)."""

    index: int
    name: str
    memory_used_mib: float
    memory_total_mib: float
    utilization_pct: float | None  # GPU busy share over the driver's last sample period; None if unsupported
    memory_utilization_pct: float | None = None

    @property
    def memory_used_pct(self) -> float:
        return 100.0 * self.memory_used_mib / self.memory_total_mib if self.memory_total_mib else 0.0

    def as_row(self) -> dict[str, Any]:
        """A flat dict for tables."""
        return {"gpu": f"cuda:{self.index}", "name": self.name,
                "memory used (GiB)": round(self.memory_used_mib / 1024, 2),
                "memory total (GiB)": round(self.memory_total_mib / 1024, 2),
                "memory used (%)": round(self.memory_used_pct, 1),
                "utilisation (%)": None if self.utilization_pct is None else round(self.utilization_pct, 1)}


@dataclass(frozen=True)
class GpuReport:
    """All GPUs, or none: ``message`` is the plain line to show (:data:`NO_GPU`), ``reason`` the detail."""

    gpus: list[GpuInfo] = field(default_factory=list)
    driver: str | None = None
    message: str = ""
    reason: str = ""

    @property
    def available(self) -> bool:
        return bool(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return {"gpus": [asdict(g) for g in self.gpus], "driver": self.driver, "message": self.message,
                "reason": self.reason}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _load_nvml():
    import pynvml  # nvidia-ml-py

    return pynvml


def read_gpus(nvml: Any = None) -> GpuReport:
    """Every GPU's name, memory (used / total, MiB) and utilisation (%), or an empty report saying why.

    Args:
        nvml: the NVML bindings module (default: ``pynvml``); tests pass a fake with the same functions.
    """
    if nvml is None:
        try:
            nvml = _load_nvml()
        except ImportError:
            return GpuReport(message=NO_GPU, reason="NVIDIA's bindings (package nvidia-ml-py) are not installed")
    error_type = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except error_type as exc:  # no driver / no libnvidia-ml.so: the ordinary case on a CPU box
        return GpuReport(message=NO_GPU, reason=f"no NVIDIA driver: {_text(exc)}")
    except OSError as exc:
        return GpuReport(message=NO_GPU, reason=f"NVIDIA's management library could not load: {exc}")
    try:
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
        except error_type:
            driver = None
        gpus = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                gpu_pct, mem_pct = float(util.gpu), float(util.memory)
            except error_type:  # e.g. MIG slices report no utilisation
                gpu_pct = mem_pct = None
            gpus.append(GpuInfo(index=i, name=_text(nvml.nvmlDeviceGetName(handle)),
                                memory_used_mib=float(mem.used) / MIB, memory_total_mib=float(mem.total) / MIB,
                                utilization_pct=gpu_pct, memory_utilization_pct=mem_pct))
    except error_type as exc:
        return GpuReport(message="the NVIDIA driver answered with an error; GPU readings are unavailable",
                         reason=_text(exc))
    finally:
        try:
            nvml.nvmlShutdown()
        except error_type:
            pass
    if not gpus:
        return GpuReport(driver=driver, message=NO_GPU, reason=f"the NVIDIA driver {driver} sees none")
    return GpuReport(gpus=gpus, driver=driver)
