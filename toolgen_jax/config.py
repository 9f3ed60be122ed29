"""The one place where defaults live. Experiment configs in `configs/` start from `base_config()` and override.

Every section belongs to one part of the method; fields are typed by their default (ConfigDict refuses an
override of another type), and the dict is locked so an unknown field is an error before any work starts.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.pipeline = ml_collections.ConfigDict()
  c.pipeline.dry_run = False      # resolve and write the config, then stop (used by tests and launch scripts)
  c.pipeline.redo = ()            # stage names to recompute even if the workdir has them

  # --- corpus (toolgen_jax/data) ---------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.source = "bfcl"          # bfcl | stabletoolbench | toolbench | beir | gorilla | toolgen_names | real_protocol
  c.data.path = ""                # file or folder; "" = the embedded default for the source
  c.data.test_fraction = 0.2      # seeded split of the source's queries when it has no test split of its own
  c.data.dev_fraction = 0.0
  c.data.max_queries = -1         # -1 = all; small configs cut the query set
  c.data.max_tools = -1
  c.data.doc_template = "{category} | {tool_name} | {api_name}: {description} | params: {parameters}"
  c.data.doc_max_chars = 1024

  # --- LLM backbone (toolgen_jax/models) -----------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.checkpoint = "smollm2"  # "smollm2" (embedded GGUF) | path to a GGUF file | an HF directory (safetensors)
  c.model.dtype = "float32"       # compute dtype
  c.model.param_dtype = "float32"
  c.model.remat = False
  c.model.max_seq_len = 256

  # --- sentence encoder for tool documents (toolgen_jax/codebook/encoders) -----------------------------------
  c.encoder = ml_collections.ConfigDict()
  c.encoder.kind = "minilm"       # minilm (embedded all-MiniLM-L6-v2) | bert_dir | gist
  c.encoder.path = ""
  c.encoder.batch_size = 64
  c.encoder.max_len = 128

  # --- tool tokenization (toolgen_jax/codebook) --------------------------------------------------------------
  c.codebook = ml_collections.ConfigDict()
  c.codebook.method = "rqvae"     # rqvae | residual_kmeans | atomic | numerical | hierarchical | semantic
  c.codebook.levels = 2
  c.codebook.size = 1024
  c.codebook.resolve_collisions = True

  # --- vocabulary extension (toolgen_jax/models/vocab) -------------------------------------------------------
  c.vocab = ml_collections.ConfigDict()
  c.vocab.init = "codebook"       # codebook | subword_mean | random

  # --- LoRA (toolgen_jax/models/lora) --------------------------------------------------------------------------
  c.lora = ml_collections.ConfigDict()
  c.lora.enabled = False
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.dropout = 0.0
  c.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj")

  # --- training (toolgen_jax/training) -------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.stages = ("memorization", "retrieval")
  c.train.steps = 100             # per stage
  c.train.batch_size = 8
  c.train.seq_len = 64
  c.train.learning_rate = 4e-5
  c.train.warmup_fraction = 0.03
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.grad_accum = 1
  c.train.trainable = "all"       # all | lora_and_new_tokens | new_tokens
  c.train.checkpoint_every = 0    # 0 = only at the end of a stage
  c.train.keep_checkpoints = 2
  c.train.eval_every = 0
  c.train.log_every = 10

  # --- device mesh and logical axis rules (toolgen_jax/training/sharding) -------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                # -1 = all remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # --- constrained decoding (toolgen_jax/decoding) ---------------------------------------------------------------
  c.decode = ml_collections.ConfigDict()
  c.decode.beam_size = 5
  c.decode.length_normalization = 0.0
  c.decode.dense_budget_bytes = 64 * 2**20

  # --- evaluation (toolgen_jax/evaluation) -----------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (1, 3, 5)
  c.eval.settings = ("multi-domain", "in-domain")
  c.eval.baselines = ("bm25", "embedding")
  c.eval.batch_size = 8
  c.eval.perplexity = True

  return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.lock()
  return config
