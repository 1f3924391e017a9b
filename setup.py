"""Build shim: pyproject.toml holds the metadata; this only adds the optional C walker.

``cffi_modules`` has no pyproject.toml equivalent.  The extension is optional: when it
cannot be built (no compiler, no Python headers) the install goes on without it and
``devices.pagetable.fast`` falls back to the pure-Python walker.
"""

from __future__ import annotations

from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext where a failing extension is a warning, not an error."""

    def finalize_options(self) -> None:
        super().finalize_options()
        for ext in self.extensions:
            ext.optional = True


def _cffi_modules() -> dict[str, Any]:
    try:
        import cffi  # noqa: F401
    except ImportError:
        return {}  # no cffi in the build environment: the Python walker only
    return {"cffi_modules": ["devices/pagetable/_cwalk_build.py:ffibuilder"]}


setup(cmdclass={"build_ext": OptionalBuildExt}, **_cffi_modules())
