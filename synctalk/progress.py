"""Progress bars for long loops: on a terminal only, so logs stay readable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, unit: str = "frame", total: int | None = None) -> tqdm:
    # disable=None: drawn when stderr is a terminal, silent in CI logs and pipes
    return tqdm(items, desc=desc, unit=unit, total=total, mininterval=1, disable=None)
