"""The embedded demo (the README's first command): BFCL functions and questions from `bfcl-eval` with a seeded
80/20 split of its queries, SmolLM2-135M-Instruct, MiniLM tool embeddings, the ToolWeaver tokenizer (RQ-VAE, 2 x 256
codes, Sinkhorn, collaborative loss), memorisation then retrieval, evaluation next to BM25 and embedding similarity.

  python -m toolgen_jax.main --config=configs/default.py --workdir=workdirs/default
  python -m toolgen_jax.main --config=configs/default.py:engine --workdir=workdirs/default_engine   # code engine

Budget: set-up plus run within 20 minutes on a 2-core CPU, hence the CPU recipe (`config.cpu_recipe`). Measured
figures and run times: BENCHMARKS.md, "Default demo".
"""

from toolgen_jax import config as base


def get_config(variant: str = ""):
  """variant "" = the demo as the README runs it; "engine" = the same data and codebook trained with the code engine
  (`train.engine='code'`: SmolLM2 frozen, features cached once, the code tokens' own output rows trained on the
  level softmax for 20 epochs of each stage; decoding normalises the same way)."""
  if variant not in ("", "engine"):
    raise ValueError(f"configs/default.py variants: '' or 'engine', got {variant!r}")
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
  if variant == "engine":
    c.train.engine = "code"
    c.train.frozen_layers = 30           # every SmolLM2 layer frozen: the cache holds the states at the code positions
    c.train.code_loss = "trie"           # level 2 decided among the prefix's children, as the trie decodes it
    c.train.schedule = "mixed"           # documents and queries in one run (DSI), so retrieval does not undo memory
    c.train.memorization_views = ("name_description", "parameters")  # documents as queries: 2 views per tool
    c.train.text_weight = 1.0            # code rows kept below words on the prompts' ordinary text (perplexity)
    c.train.batch_size = 32
    c.train.stage_epochs.mixed = 30.0
    c.decode.normalize = "trie"
  return base.lock(c)
