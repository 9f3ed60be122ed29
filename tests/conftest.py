"""Shared fixtures. Data-dependent tests skip with a reason naming TOOLGEN_DATA when ../shared/data is absent."""

import os

# Tests run on CPU; tests that need several devices spawn a subprocess with XLA_FLAGS set (it must be set before
# jax is imported, and pytest imports jax once per worker).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from toolgen_jax import assets


def pytest_configure(config):
  # Most of the fast tier's CPU time is XLA compiling tiny programs, not running them, and LLVM's optimisation passes
  # dominate that compile time (a tiny LoRA Llama forward: 19 s -> 8 s of CPU). The fast tier's arrays are too small
  # for the faster code to matter; the full suite (real models, end-to-end runs) keeps XLA's defaults. Set before
  # jax starts its backend (the first computation, after this hook); xdist workers and test subprocesses inherit it.
  # An XLA_FLAGS that already names the level wins.
  flags = os.environ.get("XLA_FLAGS", "")
  if "not slow" in (config.option.markexpr or "") and "xla_backend_optimization_level" not in flags:
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [flags, "--xla_backend_optimization_level=0",
                                                     "--xla_llvm_disable_expensive_passes=true"]))
  # The fast tier: `python -m pytest -q -m "not slow" tests` (<= 3 minutes on 2 cores) leaves these out; CI runs all.
  config.addinivalue_line("markers", "slow: real-model parity, notebooks, end-to-end runs, real data, 8B AOT and "
                          "multi-device subprocesses; left out of the fast tier")


def pytest_addoption(parser):
  parser.addoption("--cpu-durations", type=int, default=None, metavar="N",
                   help="list the N tests that used the most CPU seconds (this process and the subprocesses it "
                   "waited for) and the sum over all tests: unlike --durations, it does not grow with the load "
                   "that others put on a shared machine")


def _cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
  t0 = _cpu_seconds()
  yield
  item.user_properties.append(("cpu_setup", _cpu_seconds() - t0))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
  t0 = _cpu_seconds()
  yield
  item.user_properties.append(("cpu_call", _cpu_seconds() - t0))


def pytest_terminal_summary(terminalreporter, config):
  n = config.getoption("--cpu-durations")
  if n is None:
    return
  cpu = {}  # user_properties travel with the reports from xdist workers
  for reports in terminalreporter.stats.values():
    for r in reports:
      if getattr(r, "when", None) == "teardown":  # the teardown report carries every phase's properties
        cpu[r.nodeid] = sum(v for k, v in r.user_properties if k in ("cpu_setup", "cpu_call"))
  tr = terminalreporter
  tr.write_sep("=", f"CPU seconds per test (setup + call), {len(cpu)} tests, sum {sum(cpu.values()):.1f} s")
  for nodeid, s in sorted(cpu.items(), key=lambda kv: -kv[1])[:n or None]:
    tr.write_line(f"{s:8.2f}s  {nodeid}")


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
