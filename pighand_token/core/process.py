"""What a forked worker (gunicorn forks its workers) must redo for itself:
state reset once, at the fork, instead of code on every request asking the
kernel for its pid."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def after_fork(owner: T, reset: Callable[[T], None]) -> None:
    """Call ``reset(owner)`` in each forked child, for as long as ``owner``
    lives (the hook holds it weakly)."""
    ref = weakref.ref(owner)

    def child() -> None:
        alive = ref()
        if alive is not None:
            reset(alive)

    os.register_at_fork(after_in_child=child)
