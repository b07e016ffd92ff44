"""Write-behind for a registration's output images: each image is compressed and written on a
background thread while the caller computes the next one (the inverse field, the label warp).

One write at a time is in flight: `WriteBehind.image` first waits for the previous write, so at
most two outputs are in memory at once (the one being written and the one being computed), and
the files are written in the order they are given. An error of any write is raised by the next
call or on leaving the ``with`` block, which always waits for every write it started.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from . import io

__all__ = ["WriteBehind"]


class WriteBehind:
    """``with WriteBehind(threads) as writes: writes.image(img, path) ...`` (`io.save_image_atomic`
    on a background thread; `threads` compress each ``.nii.gz``)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="smgic-write")
        self._pending: concurrent.futures.Future | None = None

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def image(self, image, path) -> None:
        """Write `image` to `path` once the previous write is done; returns without waiting for it."""
        self._wait()
        self._pending = self._pool.submit(io.save_image_atomic, image, Path(path), threads=self.threads)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            self._wait()
        except BaseException:
            if exc_type is None:
                raise  # the caller's own error, if any, is the one to see
        finally:
            self._pool.shutdown(wait=True)
