"""Hostile programming of the VT-d model: random register writes over random guest memory,
interleaved with DMA translations, page requests and invalidation-queue traffic.  Whatever the
guest does, the model answers architecturally — no exception, no hang (DESIGN.md invariant 1).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest

from devices.model import DmaFault, DmaRequest, DmaTarget
from devices.testing import RecordingEnv
from devices.vtd.device import VTd
from vmm.memory import GuestMemory, anonymous_memory

BASE = 0x10_0000
SIZE = 1 << 20

# Registers worth hitting often, with the pointer values that land in guest RAM.
HOT = (0x18, 0x20, 0x28, 0x34, 0x38, 0x88, 0x90, 0x9C, 0xA0, 0xC0, 0xC8, 0xD0, 0xDC, 0xE0,
       0xF0, 0xF8, 0x228, 0xE00)
CONFIGS = [
    {},
    {"caching-mode": True, "aw-bits": 39, "device-iotlb": True, "intremap": True},
    {"scalable-mode": True, "pasid-bits": 20, "nesting": True, "device-iotlb": True,
     "pri": True, "vcmd": True},
    {"scalable-mode": True, "pasid-bits": 8, "first-stage": "shadow", "caching-mode": True,
     "aw-bits": 57},
]


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    memory = anonymous_memory([(BASE, SIZE)])
    yield memory
    memory.clear()


def _value(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.3:
        return BASE + rng.randrange(0, SIZE, 0x1000) | rng.choice((0, 1, 1 << 10, 1 << 11, 7))
    if pick < 0.5:
        return rng.choice((0, 0xFFFF_FFFF_FFFF_FFFF, 1 << 31, 1 << 30 | 1 << 26 | 1 << 31))
    return rng.getrandbits(64)


@pytest.mark.parametrize("config", range(len(CONFIGS)))
@pytest.mark.parametrize("seed", [1, 2])
def test_random_programming_never_raises(mem: GuestMemory, config: int, seed: int) -> None:
    rng = random.Random(seed * 100 + config)
    env = RecordingEnv(memory=mem)  # type: ignore[arg-type]
    dev = VTd(dict(CONFIGS[config]), env)
    # Guest memory full of plausible-looking garbage: present bits, pointers into RAM.
    for off in range(0, SIZE, 8):
        word = rng.getrandbits(64) if rng.random() < 0.5 else \
            (BASE + rng.randrange(0, SIZE, 0x1000)) | rng.getrandbits(12)
        mem.write_u64(BASE + off, word)
    deadline = time.monotonic() + 20
    for _ in range(1500):
        assert time.monotonic() < deadline, "work is not bounded"
        action = rng.random()
        if action < 0.6:
            offset = rng.choice(HOT) if rng.random() < 0.7 else rng.randrange(0, 0x1000, 4)
            size = rng.choice((4, 8)) if offset % 8 == 0 else 4
            value = _value(rng) & ((1 << (8 * size)) - 1)
            dev.mmio_write(offset, size, value)
            dev.mmio_read(offset, size)
        elif action < 0.9:
            pasid = None if rng.random() < 0.5 else rng.randrange(1 << 20)
            got = dev.translate(DmaRequest(
                rng.randrange(1 << 16), pasid, _value(rng), rng.random() < 0.5,
                rng.random() < 0.2, rng.random() < 0.1, rng.random() < 0.5))
            assert isinstance(got, (DmaTarget, DmaFault))
        else:
            assert dev.page_request(rng.randrange(1 << 16), None, rng.randrange(32),
                                    _value(rng) & ~0xFFF, rng.randrange(512)) == 0
    dev.reset()
