"""Tokenization ablation (ToolGen's table): semantic indexing.

  python -m toolgen_jax.main --config=configs/semantic.py:small --workdir=workdirs/semantic
"""

from toolgen_jax import config as base


def get_config(arg: str | None = None):
  c = base.apply_scale(base.base_config(), arg)
  c.codebook.method = "semantic"
  c.vocab.init = "random"
  if arg != "paper":
    c.train.target_positions = 48  # a tool name is many ordinary tokens, not 2 codes: keep every target in the loss
  return base.lock(c)
