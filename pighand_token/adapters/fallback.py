"""Locks that use Redis while it answers and the SQL store while it does not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from ..errors import Unavailable
from ..ports import Locks


class FallbackLocks:
    def __init__(self, primary: Locks, secondary: Locks) -> None:
        self._primary = primary
        self._secondary = secondary

    @contextmanager
    def hold(self, name: str, *, lease_s: float, wait_s: float) -> Iterator[bool]:
        with ExitStack() as stack:
            try:
                acquired = stack.enter_context(self._primary.hold(name, lease_s=lease_s, wait_s=wait_s))
            except Unavailable:
                acquired = stack.enter_context(self._secondary.hold(name, lease_s=lease_s, wait_s=wait_s))
            yield acquired

    def claim(self, name: str, *, lease_s: float) -> bool:
        try:
            return self._primary.claim(name, lease_s=lease_s)
        except Unavailable:
            return self._secondary.claim(name, lease_s=lease_s)
