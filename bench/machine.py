"""What the figures were measured on: cores, memory, GPU or not, library versions, load."""

from __future__ import annotations

import os
import platform

import psutil

from chatrec.manifest import library_versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_description() -> dict:
    """The CUDA devices torch sees, or why there are none."""
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "devices": [], "note": "no GPU: torch.cuda.is_available() is False"}
    devices = [
        {"name": torch.cuda.get_device_name(i),
         "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / (1 << 30), 1)}
        for i in range(torch.cuda.device_count())
    ]
    return {"available": True, "devices": devices, "cuda": torch.version.cuda}


def describe() -> dict:
    versions = library_versions(extra=("sentence-transformers",))
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1),
        "gpu": gpu_description(),
        "platform": platform.platform(),
        "versions": versions,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def one_line(machine: dict) -> str:
    """'2 cores (Intel ...), 23.5 GiB, no GPU' for table captions."""
    gpu = machine["gpu"]
    gpus = ", ".join(d["name"] for d in gpu["devices"]) if gpu["available"] else "no GPU"
    return f"{machine['logical_cores']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, {gpus}"
