"""Shared fixtures. Data-dependent tests skip with a reason naming TOOLGEN_DATA when ../shared/data is absent."""

import os

# Tests run on CPU; tests that need several devices spawn a subprocess with XLA_FLAGS set (it must be set before
# jax is imported, and pytest imports jax once per worker).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from toolgen_jax import assets


@pytest.fixture(scope="session")
def shared_data():
  path = assets.shared_data_dir()
  if path is None:
    pytest.skip("real data not found: set TOOLGEN_DATA or place it at ../shared/data")
  return path
