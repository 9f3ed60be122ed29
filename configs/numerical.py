"""Tokenization ablation (ToolGen's table): numerical indexing.

  python -m toolgen_jax.main --config=configs/numerical.py:small --workdir=workdirs/numerical
"""

from toolgen_jax import config as base


def get_config(arg: str | None = None):
  c = base.apply_scale(base.base_config(), arg)
  c.codebook.method = "numerical"
  c.vocab.init = "subword_mean"
  return base.lock(c)
