"""Unit tests are pure: starting Ray here is a bug (Ray Serve's own unit conftest does the same)."""
import sys

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    if "ray" in sys.modules:
        def _refuse(*args, **kwargs):
            raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

        monkeypatch.setattr(sys.modules["ray"], "init", _refuse)
    yield
