"""The on-disk cache of generated datasets, shared by the image and the video generator.

A dataset is generated into a hidden temporary sibling of its final directory under an exclusive file
lock, then renamed into place, so a killed run leaves no half dataset and a second process waits, then
reuses the first's.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from nas.errors import UserError


def default_cache_dir() -> Path:
    """$POSENAS_CACHE if set, else ~/.cache/posenas."""
    env = os.environ.get("POSENAS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "posenas"


def spec_digest(spec) -> str:
    """A short hash of every field of the dataclass `spec` (the cache key)."""
    return hashlib.sha1(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:10]


def _generate_in_place(root: Path, write: Callable[[Path], None], announce: str) -> None:
    """Run `write(tmp)` on a hidden temporary sibling of `root`, then rename it to `root` (atomic)."""
    for stale in root.parent.glob(f".{root.name}.tmp-*"):   # left by a killed run; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    print(f"posenas: generating {announce} in {root}", flush=True)
    try:
        write(tmp)
        os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_generated(root: Path, is_complete: Callable[[Path], bool], write: Callable[[Path], None],
                     announce: str) -> Path:
    """Return `root`, first running `write` into a temporary directory and renaming it there if `root`
    is not yet a complete dataset (`is_complete`). `announce` says what is generated, for the user."""
    if is_complete(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # released when the file closes
        if root.exists() and not is_complete(root):
            raise UserError(f"{root} exists but is not a complete synthetic dataset; delete it and "
                            "run again")
        if not root.exists():
            _generate_in_place(root, write, announce)
    return root
