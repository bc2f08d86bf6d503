"""Shared fixtures of the health tests."""

from tests.health.backend import backend

__all__ = ["backend"]
