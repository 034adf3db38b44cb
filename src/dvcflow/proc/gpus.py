"""Which GPUs this machine shows: the default `gpu` capacity when no flag or setting gives one.

`CUDA_VISIBLE_DEVICES`, when set, is what CUDA programs here may use (its entries, in order; set but
empty: none). Otherwise `nvidia-smi -L`, when it is on `PATH`, lists the devices (`GPU 0: ...`). Neither:
no GPU is known, and a stage that needs one is refused before the run unless `--resource gpu=N` says
how many there are.

`claimed` holds device indices machine-wide (an flock per device), so that two runs on one machine never
hand one device to two stages at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

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


CLAIM_POLL_S = 0.2  # the first pause between two passes of `claimed`...
CLAIM_POLL_MAX_S = 2.0  # ...growing to at most this (with jitter, so two waiting runs do not keep colliding)


def _lock_folder() -> Path:
    """One folder per machine (every user's runs share the GPUs), sticky and writable by all."""
    folder = Path(tempfile.gettempdir()) / "dvcflow-gpus"
    if not folder.is_dir():
        folder.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # another user's folder: theirs to set
            folder.chmod(0o1777)
    return folder


def _lock_file(folder: Path, device: str) -> int:
    path = folder / (re.sub(r"[^A-Za-z0-9._-]", "_", device) + ".lock")
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(OSError):
        os.fchmod(handle, 0o666)
    return handle


@contextlib.contextmanager
def claimed(count: int, devices: Sequence[str], preferred: Sequence[str] = ()) -> Iterator[tuple[str, ...]]:
    """Hold `count` of `devices` for the block, `preferred` first, by an flock per device that every
    process on this machine takes: two dvcflow runs (each handing out indices within its own capacity)
    never give one device to two stages at once. Waits while fewer are free; the kernel frees a dead
    process's locks.

    All or nothing: a pass that gets fewer than `count` gives back what it got before it sleeps (a
    growing, jittered pause of at most `CLAIM_POLL_MAX_S`) and tries again, so two stages that each need
    every device never hold one each and wait for the other's for ever."""
    folder = _lock_folder()
    order = [*dict.fromkeys([*preferred, *devices])]
    held: list[tuple[str, int]] = []
    pause = CLAIM_POLL_S
    try:
        while True:
            held = _one_pass(folder, order, count)
            if len(held) == count:
                break
            _give_back(held)
            held = []
            time.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(pause * 2, CLAIM_POLL_MAX_S)
        yield tuple(device for device, _ in held)
    finally:
        _give_back(held)


def _one_pass(folder: Path, order: Sequence[str], count: int) -> list[tuple[str, int]]:
    """The devices of `order` free now, locked, until there are `count`."""
    held: list[tuple[str, int]] = []
    try:
        for device in order:
            if len(held) == count:
                break
            handle = _lock_file(folder, device)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(handle)
                continue
            held.append((device, handle))
    except BaseException:
        _give_back(held)
        raise
    return held


def _give_back(held: Sequence[tuple[str, int]]) -> None:
    for _, handle in held:
        os.close(handle)  # closing the last descriptor releases the flock
