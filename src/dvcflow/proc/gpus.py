"""Which GPUs this machine shows: the default `gpu` capacity when no flag or setting gives one.

`CUDA_VISIBLE_DEVICES`, when set, is what CUDA programs here may use (its entries, in order; set but
empty: none). Otherwise `nvidia-smi -L`, when it is on `PATH`, lists the devices (`GPU 0: ...`). Neither:
no GPU is known, and a stage that needs one is refused before the run unless `--resource gpu=N` says
how many there are.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping

VISIBLE = "CUDA_VISIBLE_DEVICES"
NVIDIA_SMI_TIMEOUT_S = 10
_LISTED = re.compile(r"^GPU (\d+):", re.MULTILINE)


def visible_gpus(environ: Mapping[str, str] | None = None) -> tuple[tuple[str, ...], str] | None:
    """The device indices and where they were read (`CUDA_VISIBLE_DEVICES`, `nvidia-smi -L`), or None."""
    env = os.environ if environ is None else environ
    if VISIBLE in env:
        devices = tuple(part.strip() for part in env[VISIBLE].split(",") if part.strip())
        if devices and devices[0].startswith("-"):  # `-1`: CUDA's way of saying none
            devices = ()
        return devices, VISIBLE
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if smi is None:
        return None
    try:
        listed = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    return tuple(_LISTED.findall(listed.stdout)), "nvidia-smi -L"
