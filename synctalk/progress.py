"""Progress of long loops, wherever they run.

On a terminal: a tqdm bar. Anywhere else (a DVC stage's log, a Prefect run,
CI): a log line every LOG_EVERY_S seconds with the count, the rate and the
time left, so a long training or render is never silent for minutes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


class Progress(Generic[T]):
    def __init__(self, items: Iterable[T] | None, desc: str, unit: str, total: int | None):
        # disable=None: drawn when stderr is a terminal, silent in logs and pipes
        self.bar = tqdm(items, desc=desc, unit=unit, total=total, mininterval=1, disable=None)
        self.items, self.desc, self.unit = items, desc, unit
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        self.total = total
        self.n = 0
        self.started = self.logged = time.monotonic()

    def __iter__(self) -> Iterator[T]:
        source = self.bar if not self.bar.disable else self.items
        assert source is not None
        for item in source:
            yield item
            self._advance(1)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self._advance(n)

    def _advance(self, n: int) -> None:
        self.n += n
        now = time.monotonic()
        if self.bar.disable and now - self.logged >= LOG_EVERY_S:
            self.logged = now
            log.info("%s", self._line(now))

    def _line(self, now: float) -> str:
        rate = self.n / max(now - self.started, 1e-9)
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {self.unit}s ({100 * self.n / self.total:.0f}%)"
            if rate > 0:
                text += f", about {(self.total - self.n) / rate:.0f} s left"
        else:
            text += f" {self.unit}s"
        return f"{text}, {rate:.1f} {self.unit}s/s"

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def progress(
    items: Iterable[T] | None, desc: str, unit: str = "frame", total: int | None = None
) -> Progress[T]:
    return Progress(items, desc, unit, total)
