"""Write-behind of extracted blocks: a worker writes one block while it embeds the next.

Writing a block is mostly waiting for the disk (an 11 MB block of MiniLM: ~14 ms, of which ~9 ms
of CPU, with the store's direct writes), so a worker hands each block to one background thread and
goes on. Over the demo corpus in one process, MiniLM's blocks took 0.22-0.25 s beyond their
forward with writes behind, 0.32-0.37 s writing each block in turn.

A block's completion mark is written after its data, as before: a run interrupted with writes in
flight leaves those blocks unmarked, and a rerun does them. At most one write waits at a time,
so a worker holds one extra block in memory. Errors are kept, not raised in whichever task comes
next, and `finish_writes` (which the client runs on every worker at the end) reports them.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from wordspace.storage import store


class _BlockWriter:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="wordspace-block-writer")
        self._lock = threading.Lock()
        self._pending: list[tuple[str, Future]] = []
        self._errors: list[str] = []

    def submit(self, url: str, group: str, block: int, values: np.ndarray) -> None:
        with self._lock:
            self._settle()
            future = self._executor.submit(store.write_embedding_block, url, group, block, values)
            self._pending.append((f"models/{group} block {block}", future))

    def finish(self) -> list[str]:
        with self._lock:
            self._settle()
            errors, self._errors = self._errors, []
        return errors

    def _settle(self) -> None:
        """Wait for the pending writes, keeping their errors."""
        for name, future in self._pending:
            error = future.exception()
            if error is not None:
                self._errors.append(f"{name}: {type(error).__name__}: {error}")
        self._pending.clear()


_WRITER = _BlockWriter()


def write_behind(url: str, group: str, block: int, values: np.ndarray) -> None:
    """Write `values` as block `block` of `models/<group>` in the background, once this
    process's previous block write is done."""
    _WRITER.submit(url, group, block, values)


def finish_writes() -> list[str]:
    """Wait for this process's block writes; the errors of any that failed since last asked."""
    return _WRITER.finish()
