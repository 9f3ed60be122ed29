"""The embedded demo (the README's first command): BFCL functions and questions from `bfcl-eval` with a seeded
80/20 split of its queries, SmolLM2-135M-Instruct, MiniLM tool embeddings, the ToolWeaver tokenizer (RQ-VAE, 2 x 256
codes, Sinkhorn, collaborative loss), trained with the code engine, evaluated next to BM25 and embedding similarity.

  python -m toolgen_jax.main --config=configs/default.py --workdir=workdirs/default
  python -m toolgen_jax.main --config=configs/default.py:recipe --workdir=workdirs/default_recipe  # the CPU recipe

Budget: set-up plus run within 20 minutes on a 2-core CPU. The code engine (`train.engine='code'`) fits it with the
backbone frozen: SmolLM2 runs once over every training example (the feature cache), then only the code tokens' own
output rows train, for tens of epochs, on the code positions (trie softmax) plus a text term that keeps them below
words on ordinary text. Measured figures and run times: BENCHMARKS.md, "Default demo".
"""

from toolgen_jax import config as base


def get_config(variant: str = ""):
  """variant "" (alias "engine") = the demo as the README runs it; "recipe" = the same data and codebook trained
  with the CPU recipe (`config.cpu_recipe`: top 6 layers and the whole tied vocabulary on the full-vocabulary loss,
  memorisation then retrieval, 150 + 150 steps of 8; what the demo ran before the code engine)."""
  if variant not in ("", "engine", "recipe"):
    raise ValueError(f"configs/default.py variants: '' (= 'engine') or 'recipe', got {variant!r}")
  c = base.cpu_recipe(base.base_config())
  c.data.source = "bfcl"
  c.data.test_fraction = 0.2
  c.codebook.method = "rqvae"
  c.codebook.levels = 2
  c.codebook.size = 256
  c.codebook.steps = 400
  c.codebook.collab_form = "latent_contrast"  # our latent variant (kept for the demo's figures); paper = Eq. 6
  c.vocab.init = "codebook"
  c.train.stages = ("memorization", "retrieval")
  c.train.stage_steps.memorization = 150
  c.train.stage_steps.retrieval = 150
  c.train.log_every = 10
  c.train.tensorboard = True
  c.eval.settings = ("multi-domain", "candidates")  # each question's own functions: the pool the demo always used
  c.eval.max_queries = 160
  c.eval.train_queries = 40
  c.eval.memorization_tools = 40
  c.eval.batch_size = 8
  c.eval.perplexity_tokens = 1024
  if variant != "recipe":
    c.train.engine = "code"
    c.train.frozen_layers = 30           # every SmolLM2 layer frozen: the cache holds the states at the code positions
    c.train.code_loss = "trie"           # level 2 decided among the prefix's children, as the trie decodes it
    c.train.schedule = "mixed"           # documents and queries in one run (DSI), so retrieval does not undo memory
    c.train.memorization_views = ("name_description", "parameters")  # documents as queries: 2 views per tool
    c.train.text_weight = 10.0           # code rows kept below words on ordinary text (perplexity <= 1.1x)
    c.train.batch_size = 32
    c.train.stage_epochs.mixed = 80.0
    c.decode.normalize = "trie"
  return base.lock(c)
