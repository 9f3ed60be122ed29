"""Entry point: `python -m toolgen_jax.main --config=configs/NAME.py --workdir=DIR [--config.a.b=value ...]`.

Kept thin so that a notebook can call `toolgen_jax.pipeline.run(config, workdir)` directly. Progress lines go to
stdout; library INFO logs (orbax, the pipeline's own lines again) are off unless asked for with `--verbosity=0`.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where artifacts, checkpoints and the report go (resumed if present).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # progress lines are printed; INFO logs would repeat them
    logging.set_verbosity(logging.WARNING)
  from toolgen_jax import pipeline  # imported late: flag errors are reported before JAX starts
  pipeline.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
