"""cffi build script of the C walker ``devices.pagetable._cwalk`` (API, out-of-line mode).

``setup.py`` hands ``ffibuilder`` to setuptools through ``cffi_modules``, so the extension is
compiled at install time; when it cannot be (no compiler, no Python headers) the install
still succeeds and ``devices.pagetable.fast`` uses the pure-Python walker.  By hand, from
the repository root (writes the extension next to this file):

    python devices/pagetable/_cwalk_build.py

The declarations live in ``_cwalk_core.h`` (read by cdef and by the compiler alike) and the
walker in ``_cwalk_core.c``; its source text is handed to cffi whole, so the build needs no
path to it.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _read(name: str) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


ffibuilder = FFI()
ffibuilder.cdef(_read("_cwalk_core.h"))
ffibuilder.set_source(
    "devices.pagetable._cwalk",
    _read("_cwalk_core.c"),
    include_dirs=[HERE],
    # Relative to setup.py's directory, so that an sdist carries them.
    depends=[os.path.relpath(os.path.join(HERE, name))
             for name in ("_cwalk_core.h", "_cwalk_core.c")],
    extra_compile_args=["-O3"],
)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        built = ffibuilder.compile(tmpdir=tmp, verbose=True)
        # Under the name an install gives it (cffi builds for the limited API), replacing
        # any build under another suffix, which would shadow it.
        for stale in glob.glob(os.path.join(HERE, "_cwalk.*.so")):
            os.remove(stale)
        shutil.copy(built, os.path.join(HERE, "_cwalk.abi3.so"))
