"""A local Zarr store that writes large chunks around the page cache.

Embeddings are written once and read much later, by which time the page cache has long dropped
them; a buffered write still pays for every page of it first. With ``O_DIRECT`` the disk reads
the chunk straight from memory: an 11 MB block of MiniLM's layers took 9-11 ms to write and ~1 ms
of CPU, against 31-50 ms, all of it CPU, through the page cache (this machine, a VM). Values that
are a whole number of disk blocks and at least ``DIRECT_MIN_BYTES`` long go this way, through a
temporary file moved into place as Zarr's own writes are; everything else, and every file system
that refuses ``O_DIRECT`` (tmpfs, some network mounts), is written the ordinary way.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import threading
import uuid
from pathlib import Path

from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

# O_DIRECT needs the file offset, the length and the memory to be multiples of the device's
# logical block size; 4,096 covers every common one (512 and 4,096).
DIRECT_ALIGNMENT = 4096
DIRECT_MIN_BYTES = 1 << 20


class _AlignedBuffer:
    """One page-aligned buffer that direct writes take turns to use: grown as needed and then
    reused, so its pages are faulted in once. One write at a time is also the fastest way here
    (seven 1.5 MB chunks: 9-12 ms and 3-4 ms of CPU in turn, 14-18 ms and 14-15 ms from six
    threads at once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._memory = mmap.mmap(-1, DIRECT_ALIGNMENT)

    def holding(self, data: memoryview) -> memoryview:
        """``data`` copied into the buffer; call with ``lock`` held."""
        if len(self._memory) < data.nbytes:
            self._memory = mmap.mmap(-1, data.nbytes)
        view = memoryview(self._memory)[: data.nbytes]
        view[:] = data.cast("B")
        return view


_BUFFER = _AlignedBuffer()


def _write_direct(path: Path, data: memoryview) -> bool:
    """Write ``data`` to ``path`` with O_DIRECT, atomically; False if the file system refuses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    try:
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
    except OSError:  # EINVAL: no O_DIRECT on this file system (some create the file first)
        partial.unlink(missing_ok=True)
        return False
    try:
        try:
            with _BUFFER.lock:
                written = os.write(descriptor, _BUFFER.holding(data))
        finally:
            os.close(descriptor)
        if written != data.nbytes:
            raise OSError(f"{path}: short write ({written} of {data.nbytes} bytes)")
        partial.replace(path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        if error.errno == errno.EINVAL:  # the file system opened O_DIRECT but refuses the write
            return False
        raise
    return True


class DirectWriteLocalStore(LocalStore):
    """`LocalStore` whose large, block-aligned values are written with ``O_DIRECT``."""

    _direct = hasattr(os, "O_DIRECT")

    async def set(self, key: str, value: Buffer) -> None:
        data = memoryview(value.as_buffer_like())
        if not (
            self._direct
            and not self.read_only
            and data.nbytes >= DIRECT_MIN_BYTES
            and data.nbytes % DIRECT_ALIGNMENT == 0
        ):
            return await super().set(key, value)
        if not await asyncio.to_thread(_write_direct, self.root / key, data):
            self._direct = False
            await super().set(key, value)
