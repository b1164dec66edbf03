"""Missing or unreadable training images: skip them, count them, report them, abort past a limit.

How the count reaches the main process (DataLoader workers cannot share a counter with it): in train mode
a dataset's `__getitem__` that cannot read a sample's image takes the next sample instead (index + 1,
wrapping) and puts the skipped file(s) into the sample's `meta["skipped"]` ("" when none; several
paths are joined by newlines). The training loop hands each batch to a `BadImageMonitor`, which counts
the skipped samples of the epoch, logs each new file once, and raises a UserError as soon as the skipped
samples exceed `max_bad_fraction` of the epoch's samples. In eval mode nothing is skipped: the
UnreadableImageError names the file.

UnreadableImageError is defined here, beside the code that skips such images; nas.data.topdown (which
raises it when reading) imports it from here and re-exports it, so the two modules import one way only.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from nas.errors import UserError

log = logging.getLogger("posenas")
SEPARATOR = "\n"


class UnreadableImageError(OSError):
    """An image file that is missing or that OpenCV cannot decode."""


def read_or_next(index: int, count: int, path_of: Callable[[int], Any],
                 read: Callable[[Any], np.ndarray]) -> tuple[int, np.ndarray, str]:
    """(index used, its image, skipped paths) reading sample `index`, else the next readable one.

    Raises UserError when none of the `count` samples' images can be read.
    """
    skipped: list[str] = []
    for step in range(count):
        current = (index + step) % count
        path = path_of(current)
        try:
            return current, read(path), SEPARATOR.join(skipped)
        except UnreadableImageError:
            skipped.append(str(path))
    raise UserError(f"none of the {count} training images can be read (first tried: {skipped[0]}); "
                    "check data.root and the image folder")


class BadImageMonitor:
    """Counts the skipped training samples of an epoch from `meta["skipped"]` of each batch."""

    def __init__(self, samples_per_epoch: int, max_bad_fraction: float):
        self.samples_per_epoch, self.max_bad_fraction = int(samples_per_epoch), float(max_bad_fraction)
        self.paths: dict[str, int] = {}  # path -> samples skipped because of it, this epoch
        self.skipped = 0

    def start_epoch(self) -> None:
        self.paths, self.skipped = {}, 0

    def update(self, meta: dict[str, Any]) -> None:
        entries: Sequence[str] = meta.get("skipped", ()) if isinstance(meta, dict) else ()
        for entry in entries:
            for path in filter(None, str(entry).split(SEPARATOR)):
                if path not in self.paths:
                    log.warning("skipped unreadable training image %s", path)
                self.paths[path] = self.paths.get(path, 0) + 1
                self.skipped += 1
        if self.skipped > self.max_bad_fraction * self.samples_per_epoch:
            raise UserError(
                f"{self.skipped} training samples skipped for {len(self.paths)} missing or unreadable "
                f"image(s), more than data.max_bad_fraction={self.max_bad_fraction} of "
                f"{self.samples_per_epoch}; e.g. {next(iter(self.paths))}. Fix or remove them, or raise "
                "data.max_bad_fraction")

    def report(self) -> str:
        """One line on the epoch's skipped images ('' when none), also logged."""
        if not self.skipped:
            return ""
        shown = ", ".join(list(self.paths)[:5]) + (" ..." if len(self.paths) > 5 else "")
        line = f"skipped {self.skipped} training samples of {len(self.paths)} unreadable image(s): {shown}"
        log.warning(line)
        return line
