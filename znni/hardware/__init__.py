"""What znni knows of the machines it plans for: CPU rates (:class:`Device`), the GPU card
(:class:`GpuSpec`), the CPU's identity and the bundled example descriptions."""

from .cpu import Device, bundled_devices, cpu_model
from .gpu import GpuSpec

__all__ = ["Device", "GpuSpec", "bundled_devices", "cpu_model"]
