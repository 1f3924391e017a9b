"""Process-wide shortcuts the fuzzer takes, because it builds a fresh guest session for every
program (thousands per second) and nothing else does.

``RegisterFile.__init__`` checks its declarations (``devices.regs.check_layout``) each time a
model is built; the answer depends only on the declarations, so the fuzzer's process keeps it
(keyed by the declarations themselves, which are frozen dataclasses: an edited declaration is
a different key and is checked again).  A declaration that fails the check still fails.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import devices.regs as regs
from devices.regs import Register

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    original = regs.check_layout

    @functools.lru_cache(maxsize=64)
    def cached(registers: tuple[Register, ...], window: int) -> tuple[str, ...]:
        return tuple(original(registers, window))

    def check_layout(registers: Iterable[Register], window: int) -> list[str]:
        return list(cached(tuple(registers), window))

    regs.check_layout = check_layout
