"""Is a saved checkpoint whole? Cheap checks before anything loads it.

Why: a kill during a save, a full disk or a copy cut short leaves files that look like a
checkpoint. Loading one fails deep inside safetensors or torch's unpickler (whose message
even suggests `weights_only=False`, i.e. running code from the file). These checks read
only headers and archive directories: a truncated `model.safetensors` is found by its header
promising more bytes than the file has, a damaged `optimizer.pt` (a zip archive, as torch
saves it) by its archive directory or CRCs.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file, or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path} is truncated ({size} bytes)"
            n = struct.unpack("<Q", head)[0]
            if n > size - 8 or n > 100 << 20:
                return f"{path} is truncated or not safetensors (header claims {n} bytes, the file has {size})"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"{path} is not a readable safetensors file ({type(e).__name__})"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    need = 8 + n + (max(ends) if ends else 0)
    if size < need:
        return f"{path} is truncated ({size} of {need} bytes)"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why `path` is not an intact torch.save archive (a zip), or None. Nothing is unpickled."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        return f"{path} is not an intact torch archive ({type(e).__name__}: {str(e)[:80]})"
    return f"{path} is damaged (bad CRC in {bad})" if bad else None


def model_problem(folder: Path) -> str | None:
    """Why a model folder's weights are not whole, or None."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return f"{folder} holds no *.safetensors weights"
    for f in files:
        why = safetensors_problem(f)
        if why:
            return why
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why a trainer checkpoint cannot be resumed from, or None: its state, weights, and every
    optimizer / scheduler / RNG archive intact."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
        if "global_step" not in state:
            return f"{folder / 'trainer_state.json'} has no global_step"
    except (OSError, ValueError):
        return f"{folder / 'trainer_state.json'} is missing or unreadable (a save killed midway)"
    why = model_problem(folder)
    if why:
        return why
    for f in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")):
        why = torch_file_problem(f)
        if why:
            return why
    return None
