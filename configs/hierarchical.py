"""Tokenization ablation (ToolGen's table): hierarchical indexing.

  python -m toolgen_jax.main --config=configs/hierarchical.py:small --workdir=workdirs/hierarchical
"""

from toolgen_jax import config as base


def get_config(arg: str | None = None):
  c = base.apply_scale(base.base_config(), arg)
  c.codebook.method = "hierarchical"
  c.vocab.init = "subword_mean"
  return base.lock(c)
