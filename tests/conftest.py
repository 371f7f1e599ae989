"""Shared pytest set-up: markers that skip without their hardware, a private cache per session."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Tests never write into the user's ~/.cache; a session-wide folder keeps the glyph cache warm
    # across tests.
    os.environ.setdefault("NCTUNE_CACHE", str(config.rootpath / ".pytest_cache" / "nctune-cache"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA; none found")
    for item in items:
        # the marker, not a keyword: keywords also hold folder names (a checkout in gpu/)
        if item.get_closest_marker("gpu") is not None and not has_cuda:
            item.add_marker(skip_gpu)
