"""Every minimized reproducer the fuzzer found, run again with every oracle.

Each ``*.json`` here is a ``vmm fuzz`` reproducer (``vmm/fuzz/reproducer.py``).  One whose
``expect.fails`` is true records a bug that is not fixed yet: it is an xfail(strict=True) with
the reason in the file, so the test starts failing — on purpose — the day the bug is fixed;
then drop ``expect`` from the file and it guards the fix.  ``vmm fuzz --reproduce FILE`` runs
one by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmm.fuzz import reproducer
from vmm.fuzz.targets import unavailable

HERE = Path(__file__).parent


def cases() -> list[object]:
    out: list[object] = []
    for path in sorted(HERE.glob("*.json")):
        expect = json.loads(path.read_text()).get("expect") or {}
        marks = [pytest.mark.xfail(strict=True, reason=f"{expect.get('owner', '?')}: "
                                                        f"{expect.get('reason', '')}")
                 ] if expect.get("fails") else []
        out.append(pytest.param(path, marks=marks, id=path.stem))
    return out


@pytest.mark.parametrize("path", cases())
def test_reproducer_runs_clean(path: Path) -> None:
    rep = reproducer.load(path)
    reason = unavailable(rep.target)
    if reason is not None:
        pytest.skip(reason)
    _, failure = reproducer.run(path)
    assert failure is None, f"{failure.kind}: {failure.detail}"
