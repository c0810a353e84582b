"""Which GPUs this machine has: NVML when ``nvidia-ml-py`` is installed, else ``nvidia-smi -L``.

Asked once per process (the answer is cached): detection may start a driver, which
takes a moment. The ids are the driver's indexes, as ``CUDA_VISIBLE_DEVICES`` takes them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
import shutil
import subprocess

_SMI_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


def _from_nvml() -> list[str] | None:
    """GPU indexes through NVML; None when ``nvidia-ml-py`` is missing or NVML fails."""
    try:
        nvml = importlib.import_module("pynvml")  # the ``gpu`` extra: nvidia-ml-py
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError: no driver here
        return None
    try:
        return [str(index) for index in range(int(nvml.nvmlDeviceGetCount()))]
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _from_nvidia_smi() -> list[str]:
    """GPU indexes from ``nvidia-smi -L`` ("GPU 0: NVIDIA A100 (UUID: …)"); none without it."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []
    return _SMI_LINE.findall(proc.stdout)


@functools.cache
def detect_gpus() -> tuple[str, ...]:
    """This machine's GPU ids (NVML, else nvidia-smi, else none); cached per process."""
    found = _from_nvml()
    return tuple(found if found is not None else _from_nvidia_smi())
