"""Shared fixtures. Data-dependent tests skip with a reason naming TOOLGEN_DATA when ../shared/data is absent."""

import os

# Tests run on CPU; tests that need several devices spawn a subprocess with XLA_FLAGS set (it must be set before
# jax is imported, and pytest imports jax once per worker).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from toolgen_jax import assets


def pytest_configure(config):
  # The fast tier: `python -m pytest -q -m "not slow" tests` (<= 3 minutes on 2 cores) leaves these out; CI runs all.
  config.addinivalue_line("markers", "slow: real-model parity, notebooks, end-to-end runs, real data, 8B AOT and "
                          "multi-device subprocesses; left out of the fast tier")


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:  # real data (../shared/data) is slow by definition: mark every test that asks for it
    if "shared_data" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_data():
  path = assets.shared_data_dir()
  if path is None:
    pytest.skip("real data not found: set TOOLGEN_DATA or place it at ../shared/data")
  return path
