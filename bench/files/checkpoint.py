"""Files written whole or not at all: temporary name, fsync, rename."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from bench.errors import BenchError


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write through `write(fileobj)` to a temporary file next to `path`, then rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save(obj: Any, path: Path) -> Path:
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def previous(path: Path) -> Path:
    """The checkpoint before `path` (last.pt -> last.prev.pt)."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_rotating(obj: Any, path: Path) -> Path:
    """Write `path` whole; the checkpoint it replaces stays as `previous(path)`. At every moment at
    least one complete checkpoint exists: the new one is complete on disk before the old one moves."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    save(obj, tmp)
    if path.exists():
        os.replace(path, previous(path))
    os.replace(tmp, path)
    return path


def load_latest(path: Path, map_location="cpu", warn=print) -> tuple[Any, Path] | tuple[None, None]:
    """The newest loadable checkpoint: `path`, else `previous(path)` (saying why in one sentence),
    else (None, None) when neither exists. Both present and corrupt: BenchError naming the files."""
    path = Path(path)
    prev = previous(path)
    # killed between the two renames of save_rotating: only prev exists, and it is complete
    candidates = [p for p in (path, prev) if p.exists()]
    if not candidates:
        return None, None
    errors = []
    for p in candidates:
        try:
            state = load(p, map_location)
        except CheckpointRefused:
            raise  # a planted file is reported, not worked around
        except BenchError as e:
            errors.append(str(e))
            continue
        if errors:
            warn(f"warning: {errors[0]} Using the previous checkpoint {p} instead.")
        return state, p
    raise BenchError(" ".join(errors))


def load(path: Path, map_location="cpu", mmap: bool = False) -> Any:
    """torch.load with weights_only=True: what the harness saves (tensors, numbers, strings and
    dicts, lists and tuples of them) loads; a file that would import or call anything (a pickle
    payload: a teacher from elsewhere, a checkpoint from a shared store) is refused unexecuted.
    One clear sentence for a missing, refused, truncated or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"Checkpoint {path} does not exist.")
    try:
        return torch.load(path, map_location=map_location, mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as e:
        # it names something to import, or a torch.save archive whose pickle the allow-list refused
        if "GLOBAL" in str(e) or (zipfile.is_zipfile(path) and "Weights only load failed" in str(e)):
            raise CheckpointRefused(f"Checkpoint {path} holds Python objects other than tensors and plain "
                                    f"containers (code that loading would run); it was refused and not loaded.") from None
        raise BenchError(f"Checkpoint {path} is truncated or corrupt ({type(e).__name__}); it was not used.") from None
    except Exception as e:
        raise BenchError(f"Checkpoint {path} is truncated or corrupt ({type(e).__name__}); it was not used.") from None


class CheckpointRefused(BenchError):
    """A file whose unpickling would run code: never loaded, never silently replaced by an older one."""


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """Hash of a model's weights, independent of how they were serialised."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        v = state_dict[k]
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes() if v.dtype != torch.bfloat16 else v.float().cpu().numpy().tobytes())
    return h.hexdigest()
