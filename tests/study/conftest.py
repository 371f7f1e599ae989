"""Study-level fixtures: one local Ray shared by a module's tests."""

from __future__ import annotations

import pytest
import ray


@pytest.fixture(scope="module")
def local_ray():
    from study.run.tuner import init_ray

    init_ray(None)
    yield
    ray.shutdown()
