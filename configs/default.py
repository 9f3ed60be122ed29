"""The embedded demo: BFCL functions and questions (from `bfcl-eval`), SmolLM2-135M, MiniLM, ToolWeaver codes.

Run (fresh machine, 2-core CPU; see README for the budget):
  python -m toolgen_jax.main --config=configs/default.py --workdir=workdirs/default
"""

from toolgen_jax import config as base


def get_config():
  c = base.base_config()
  c.data.source = "bfcl"
  c.codebook.method = "rqvae"
  c.codebook.levels = 2
  c.codebook.size = 256
  return base.lock(c)
