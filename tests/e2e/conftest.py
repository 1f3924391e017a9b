"""Fixtures of the end-to-end tests (each model's live in its helpers module)."""

from tests.e2e.vtd_helpers import vtd_guest

__all__ = ["vtd_guest"]
