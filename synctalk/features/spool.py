"""Audio features kept on disk while a render reads them.

An hour of Whisper features is 280 MB, which would make a render's memory
grow with its audio. The features arrive as a stream of blocks, are written
to an unnamed temporary file as they come, and each frame's window is read
back from it (a few kilobytes, usually from the page cache, which is not
the process's memory).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable

import numpy as np


class FeatureSpool:
    """Rows of float32 features [N, D] in a temporary file, indexed like an array.

    Supports what `feature_window` needs: `len`, `shape` and indexing by an
    array of row indices.
    """

    def __init__(self, blocks: Iterable[np.ndarray], dim: int | None = None):
        self._file = tempfile.TemporaryFile()
        self._n, self._dim = 0, dim
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=np.float32)
            if self._dim is None:
                self._dim = block.shape[1]
            elif block.shape[1] != self._dim:
                raise ValueError(f"a block of {block.shape[1]}-d rows among {self._dim}-d ones")
            self._file.write(block.tobytes())
            self._n += len(block)
        self._file.flush()
        if self._dim is None:
            raise ValueError("no audio features")

    def __len__(self) -> int:
        return self._n

    @property
    def shape(self) -> tuple[int, int]:
        return self._n, self._dim

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if lo < 0 or hi > self._n:
            raise IndexError(f"rows {lo}..{hi - 1} outside 0..{self._n - 1}")
        row_bytes = 4 * self._dim
        data = os.pread(self._file.fileno(), (hi - lo) * row_bytes, lo * row_bytes)
        return np.frombuffer(data, dtype=np.float32).reshape(hi - lo, self._dim)[rows - lo]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
