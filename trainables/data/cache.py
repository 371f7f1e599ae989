"""A content-checked on-disk cache of numpy arrays, shared by concurrent trials.

Each entry is a folder `<NCTUNE_CACHE>/<kind>/<key>/` holding one `.npy` file per array and a
`meta.json` written last, which lists every file's SHA-256. Readers trust nothing else:

* a half-written entry has no `meta.json` yet (files are written to a temp name and `os.replace`d,
  `meta.json` last), so it is never read;
* a corrupt or truncated file fails its hash and the entry is rebuilt;
* builders hold a `filelock` per entry, so N trials starting at once build it once and the
  others wait, then read the same bytes.

Arrays come back memory-mapped copy-on-write (`mmap_mode="c"`): every process on a node reads the
same page-cache pages, and a tensor made from them is writable without touching the file (torch
warns on, and must not write to, read-only arrays).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import numpy as np
from filelock import FileLock

log = logging.getLogger(__name__)

# Bump when the layout of any cached entry changes; old entries are then simply not found.
CACHE_FORMAT = 1


def cache_root() -> Path:
    """`NCTUNE_CACHE` if set, else `~/.cache/nctune`."""
    env = os.environ.get("NCTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nctune"


def cache_key(parts: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able parts (order-independent)."""
    blob = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def source_hash(*modules: ModuleType | str) -> str:
    """Hash of the source files of modules (or module names): part of cache keys, so editing
    the code that makes a cached array invalidates it instead of silently serving stale bytes."""
    h = hashlib.sha256()
    for mod in modules:
        mod = sys.modules[mod] if isinstance(mod, str) else mod
        h.update(Path(inspect.getfile(mod)).read_bytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes: the cache's integrity check."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def content_hash(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the arrays, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def _write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write via a temp file in the same folder and `os.replace`, so readers never see a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_npy(fh: BinaryIO, arr: np.ndarray) -> None:
    np.save(fh, arr, allow_pickle=False)


def _save_text(fh: BinaryIO, text: str) -> None:
    fh.write(text.encode())


def _read_entry(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The arrays and meta of a complete, intact entry; None if absent or damaged."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arrays: dict[str, np.ndarray] = {}
        for name, digest in meta["files"].items():
            path = folder / f"{name}.npy"
            if file_sha256(path) != digest:
                log.warning("cache file %s fails its hash; rebuilding", path)
                return None
            arrays[name] = np.load(path, mmap_mode="c")
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cache entry %s unreadable (%s); rebuilding", folder, exc)
        return None
    return arrays, meta


def cached_arrays(
    kind: str,
    parts: Mapping[str, Any],
    build: Callable[[], tuple[Mapping[str, np.ndarray], Mapping[str, Any]]],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Return the arrays and extra metadata of the entry keyed by `parts`, building it if needed.

    Args:
        kind: sub-folder of the cache root (e.g. "splits", "glyph-block").
        parts: JSON-able description of everything that determines the content.
        build: makes `(arrays, extra)` on a miss; `extra` must be JSON-able.

    Returns:
        Memory-mapped arrays and the stored `extra` (plus `content_hash`, `key`).
    """
    folder = cache_root() / kind / cache_key(parts)
    hit = _read_entry(folder)
    if hit is not None:
        return hit[0], hit[1]["extra"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        hit = _read_entry(folder)  # another process may have built it while we waited
        if hit is not None:
            return hit[0], hit[1]["extra"]
        if folder.exists():  # a damaged entry: start again from an empty folder
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        arrays, extra = build()
        files = {}
        for name, arr in arrays.items():
            path = folder / f"{name}.npy"
            _write_atomic(path, partial(_save_npy, arr=np.ascontiguousarray(arr)))
            files[name] = file_sha256(path)
        extra = {**extra, "content_hash": content_hash(arrays), "key": folder.name}
        meta = {"parts": dict(parts), "files": files, "extra": extra}
        text = json.dumps(meta, indent=1, sort_keys=True, default=str)
        _write_atomic(folder / "meta.json", partial(_save_text, text=text))
    hit = _read_entry(folder)
    if hit is None:  # pragma: no cover - only if the disk lies to us
        raise OSError(f"cache entry {folder} could not be read back after writing")
    return hit[0], hit[1]["extra"]
