"""Weights fetched like every FID tool does: into torch hub's cache through a temporary name,
kept only when the file's SHA-256 matches (the Inception file for FID, ResNet-18 for CFD/RDD)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.errors import BenchError


def download_checked(url: str, dest: Path, sha256: str, progress: bool = True, timeout: float = 60.0,
                     where: str = "set eval.inception_weights (BENCH_INCEPTION_URL names a mirror)",
                     algorithm: str = "sha256") -> Path:
    """Download `url` to `dest` through a temporary name in the same folder, renamed only when its
    SHA-256 is `sha256` (or starts with it, for a prefix: torch hub's check of torchvision's files,
    whose names carry the first 8 hex digits); a mismatch or a failed download leaves nothing behind (BenchError).
    `algorithm = "md5"`: `sha256` holds the MD5 its publisher gives instead (CIFAR-10's archive)."""
    import hashlib
    import tempfile
    import urllib.request

    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.new(algorithm)
    label = {"sha256": "SHA-256", "md5": "MD5"}.get(algorithm, algorithm)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {dest.name}",
                              disable=not progress) as bar:
                        while chunk := resp.read(1 << 20):
                            out.write(chunk)
                            h.update(chunk)
                            bar.update(len(chunk))
            except OSError as e:  # URLError, HTTPError, timeouts, refused connections
                reason = getattr(e, "reason", None) or e
                raise BenchError(f"Downloading {dest.name} from {url} failed ({reason}); place the file at {dest} "
                                 f"or {where}.") from None
        if not (h.hexdigest() == sha256 or (len(sha256) < h.digest_size * 2 and h.hexdigest().startswith(sha256))):
            raise BenchError(f"The file downloaded from {url} has {label} {h.hexdigest()[:16]}..., not {dest.name}'s "
                             f"{sha256[:16]}...; it was deleted.")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
