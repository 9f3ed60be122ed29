"""Lists the modules of `toolgen_jax` that the fast tier does not exercise (one of their functions must run).

  python tests/check_fast_tier.py            # runs `python -m pytest -q -m "not slow" -n 2 tests` under a profile hook
  python tests/check_fast_tier.py -- -x ...  # extra pytest arguments after `--`

Every process the run starts (the xdist workers and the command lines that tests start in a subprocess) loads a
`sitecustomize` from a temporary folder that records, through `sys.setprofile`, the source file of each function
called. Module-level code (the import itself) does not count. The script exits 1 and names the modules that no
process called into. The hook slows the run down; this is a check to run after moving tests to the slow tier, not
part of the suite.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "toolgen_jax"

_SITECUSTOMIZE = '''
import os, sys, threading
_out = os.environ.get("TOOLGEN_FAST_TIER_CALLS")
if _out:
  _root = os.environ["TOOLGEN_FAST_TIER_ROOT"]
  _seen = set()
  _file = open(os.path.join(_out, f"{os.getpid()}.txt"), "a")

  def _profile(frame, event, arg):
    if event == "call":
      code = frame.f_code
      name = code.co_filename
      if name not in _seen and code.co_name != "<module>" and name.startswith(_root):
        _seen.add(name)
        _file.write(name + "\\n")  # written as seen: a worker that exits through os._exit loses nothing
        _file.flush()

  sys.setprofile(_profile)
  threading.setprofile(_profile)
'''


def package_modules() -> list[pathlib.Path]:
  return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def main(argv: list[str]) -> int:
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  with tempfile.TemporaryDirectory() as tmp:
    site, calls = pathlib.Path(tmp, "site"), pathlib.Path(tmp, "calls")
    site.mkdir()
    calls.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = dict(os.environ, TOOLGEN_FAST_TIER_CALLS=str(calls), TOOLGEN_FAST_TIER_ROOT=str(PACKAGE) + os.sep,
               PYTHONPATH=os.pathsep.join(filter(None, [str(site), str(REPO), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-n", "2", "-p", "no:cacheprovider", "tests",
           *extra]
    rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
    called = {pathlib.Path(line) for f in calls.iterdir() for line in f.read_text().split()}
  modules = package_modules()
  # A package `__init__.py` or a module holding only definitions is exercised through what it defines or re-exports:
  # it counts when it has no function of its own.
  missing = [m for m in modules if m not in called and "def " in m.read_text()]
  print(f"\nfast tier: pytest exit {rc}; {len(modules) - len(missing)} of {len(modules)} modules of toolgen_jax "
        f"exercised ({len(called & set(modules))} with a function called)")
  for m in missing:
    print(f"  not exercised: {m.relative_to(REPO)}")
  return 1 if missing or rc else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
