"""The embedded demo (the README's first command): BFCL functions and questions from `bfcl-eval` with a seeded
80/20 split of its queries, SmolLM2-135M-Instruct, MiniLM tool embeddings, the ToolWeaver tokenizer (RQ-VAE, 2 x 256
codes, Sinkhorn, collaborative loss), two stages of 150 steps, evaluation next to BM25 and embedding similarity.

  python -m toolgen_jax.main --config=configs/default.py --workdir=workdirs/default

Budget (2-core CPU, no GPU; BENCHMARKS.md "Default demo"): set-up plus run within 20 minutes. A full-parameter AdamW
step of SmolLM2 at 8 x 96 tokens takes ~5.5 s here, so the demo trains with the CPU recipe (`config.cpu_recipe`:
backward through the top 6 layers only, LM head on target tokens only, short prompts; ~1.7 s per 8 x 64 step):
about half an epoch of each stage. Enough to show every stage working and the trained model's numbers honestly next
to the baselines, not enough to beat BM25: half an epoch does not teach 2,555 codes, and 261 of the 502 BFCL test
questions ask for a function no training question used, which only memorisation can bridge (README, "Results";
`configs/toolweaver.py:gorilla` is the CPU run long enough for the generative model to beat BM25).
"""

from toolgen_jax import config as base


def get_config():
  c = base.cpu_recipe(base.base_config())
  c.data.source = "bfcl"
  c.data.test_fraction = 0.2
  c.codebook.method = "rqvae"
  c.codebook.levels = 2
  c.codebook.size = 256
  c.codebook.steps = 400
  c.vocab.init = "codebook"
  c.train.stages = ("memorization", "retrieval")
  c.train.stage_steps.memorization = 150
  c.train.stage_steps.retrieval = 150
  c.train.log_every = 10
  c.train.tensorboard = True
  c.eval.max_queries = 160
  c.eval.train_queries = 40
  c.eval.memorization_tools = 40
  c.eval.batch_size = 8
  c.eval.perplexity_tokens = 1024
  return base.lock(c)
