"""Files a run writes and reads: atomic writes (a temp file renamed over the target), checkpoints
that load without running code (``torch.load(weights_only=True)``: tensors and plain data), and
the RNG states in plain data. A leaf module: it imports no other part of dst."""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_FORMAT = "dst-checkpoint-v2"  # v2: RNG states in plain data (no numpy pickles)
CHECKPOINT_FORMATS = ("dst-checkpoint-v1", CHECKPOINT_FORMAT)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (corrupt, or for another model or run)."""


def rng_state() -> dict:
    """Every generator's state in plain data (tensors, ints, floats, strings), so a checkpoint
    loads with ``torch.load(weights_only=True)``."""
    key, words, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"key": str(key), "state": torch.from_numpy(words.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        words = npy["state"].numpy().astype(np.uint32)
        npy = (npy["key"], words, npy["pos"], npy["has_gauss"], npy["cached"])
    np.random.set_state(npy)  # a v1 checkpoint holds numpy's own tuple
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via ``write(tmp)`` to a temp file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _numpy_array_globals() -> list:
    """What unpickling a plain numpy array needs (v1 checkpoints hold numpy's RNG state as
    one): array reconstruction and dtypes, nothing that runs code."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype,
            *{type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.uint8, np.bool_)}]


def safe_load(path: Path):
    """``torch.load`` that never runs code: tensors and plain data only
    (``weights_only=True``; numpy arrays too, for files written by earlier releases). A file
    that needs other Python objects is refused with :class:`CheckpointError`; a corrupt one
    raises it too."""
    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "numpy" not in str(e):
                raise
            with torch.serialization.safe_globals(_numpy_array_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0]
        what = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), None)
        if what is not None:  # a Python object to import and call: what runs code
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects that could run code when "
                f"unpickled ({what}). dst reads only tensors and plain data "
                "(torch.load(weights_only=True)); a file dst wrote never needs more. If you "
                "made this file yourself and trust it, load it with torch.load(..., "
                "weights_only=False) and save its tensors again") from None
        detail = next((ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), first)
        raise CheckpointError(f"{path} is corrupt or not a torch file (UnpicklingError: "
                              f"{detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or not a torch file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = safe_load(path)
    except CheckpointError as e:
        if str(e).startswith("refused"):
            raise
        raise CheckpointError(f"checkpoint {e}; it was left untouched: restore it or start "
                              "without trainer.resume") from None
    if not isinstance(state, dict) or state.get("format") not in CHECKPOINT_FORMATS:
        raise CheckpointError(f"{path} is not a dst checkpoint (format "
                              f"{state.get('format') if isinstance(state, dict) else None!r}; "
                              f"this release reads {', '.join(CHECKPOINT_FORMATS)})")
    return state
