"""Entry point: `python -m toolgen_jax.main --config=configs/NAME.py --workdir=DIR [--config.a.b=value ...]`.

Kept thin so that a notebook can call `toolgen_jax.pipeline.run(config, workdir)` directly. Progress lines go to
stdout; library INFO logs (orbax, the pipeline's own lines again) are off unless asked for with `--verbosity=0`.
The config is validated (`config.validate`) and the workdir checked before any work; a bad config value, a bad
workdir or a bad input file is one line on stderr (`error: ...`) and exit status 2, with the traceback only when
`--verbosity` is given.
"""

import pathlib
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from toolgen_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where artifacts, checkpoints and the report go (resumed if present).")
flags.mark_flags_as_required(["config", "workdir"])


class WorkdirError(ValueError):
  pass


def check_workdir(workdir: str) -> pathlib.Path:
  """The workdir as a path, created if absent; WorkdirError when it is empty, a file, or below a file."""
  if not workdir or not workdir.strip():
    raise WorkdirError("--workdir is empty: give the folder for this run's artifacts")
  path = pathlib.Path(workdir)
  for p in (path, *path.parents):
    if p.exists() and not p.is_dir():
      where = "is a file" if p == path else f"is below {p}, which is a file"
      raise WorkdirError(f"--workdir={workdir} {where}: give a folder")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir} cannot be created: {e.strerror or e}") from None
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from toolgen_jax.data.records import DataError  # pylint: disable=g-import-not-at-top  (numpy, scipy: after flags)
  verbose = flags.FLAGS["verbosity"].present
  if not verbose:  # progress lines are printed; INFO logs would repeat them
    logging.set_verbosity(logging.WARNING)
  try:
    config_lib.validate(_CONFIG.value)
    check_workdir(_WORKDIR.value)
    from toolgen_jax import pipeline  # imported late: flag and config errors are reported before JAX starts
    pipeline.run(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, WorkdirError, DataError) as e:
    if verbose:
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
