"""The one place where defaults live. Experiment configs in `configs/` start from `base_config()` and override.

Every section belongs to one part of the method; fields are typed by their default (ConfigDict refuses an
override of another type), and the dict is locked so an unknown field is an error before any work starts.
"""

from __future__ import annotations

import difflib
import math

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
  c.data.split_by_group = True    # split_queries stratifies by Query.group (I1/I2/I3, BFCL category)
  c.data.cooccurrence_normalization = "sym"  # A_uv: sym = D^-1/2 C D^-1/2 | row = D^-1 C | none = counts
  c.data.trajectory_holdout_groups = ()  # trajectory groups (id prefix: I1/I2/I3) kept out of agent tuning
  c.data.trajectory_examples = "whole"  # agent tuning examples: whole (one per trajectory, ToolGen) | steps (one per
                                        # assistant step: its gold history, loss on that step only; fits short seq_len)

  # --- LLM backbone (toolgen_jax/models) -----------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.checkpoint = "smollm2"  # "smollm2" (embedded GGUF) | path to a GGUF file | an HF directory (safetensors)
  c.model.dtype = "float32"       # compute dtype
  c.model.param_dtype = "float32"
  c.model.remat = False           # recompute each layer in the backward pass (saves activation memory)
  c.model.remat_policy = ""       # "" = save nothing; else a jax.checkpoint_policies name, e.g. dots_with_no_batch_dims_saveable
  c.model.scan_layers = True      # lax.scan over stacked layers (flat compile time); False unrolls the same params
  c.model.max_seq_len = 256
  c.model.tokenizer = ""          # "" = the checkpoint's own; needed with checkpoint="random"
  # checkpoint="random": a randomly initialised Llama of this shape (tests, smoke runs); vocab from the tokenizer.
  c.model.random = ml_collections.ConfigDict(dict(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4,
                                                  num_kv_heads=2, head_dim=16, tie_embeddings=True))

  # --- sentence encoder for tool documents (toolgen_jax/codebook/bert.py, embed.py) --------------------------
  c.encoder = ml_collections.ConfigDict()
  c.encoder.kind = "minilm"       # minilm (embedded all-MiniLM-L6-v2) | mpnet (all-mpnet-base-v2 from its offline
                                  # packages, assets.mpnet_dir) | bert_dir (any local BERT/MPNet dir) | gist
  c.encoder.path = ""             # bert_dir: the HF directory (config.json, *.safetensors, tokenizer.json)
  c.encoder.batch_size = 64
  c.encoder.max_len = 128
  c.encoder.dtype = "float32"     # compute dtype of the Flax encoder
  # kind="gist" (Toolscaler section 4.1): V gist tokens + LoRA on the backbone (model.checkpoint) trained to
  # reconstruct each document field; the V gist hidden states are the tool's embedding positions [N, V, D].
  c.encoder.gist_tokens = 2
  c.encoder.gist_steps = 200
  c.encoder.gist_batch_size = 8
  c.encoder.gist_learning_rate = 1e-3
  c.encoder.gist_lora_rank = 8
  c.encoder.gist_lora_alpha = 16.0
  c.encoder.gist_lora_dropout = 0.0
  c.encoder.gist_weight_decay = 0.0  # AdamW on the LoRA factors and gist rows
  # cascade = section 4.1's [Content; Token; Placeholder; Task] blocks, the Placeholder fed from the Token outputs
  # (the clustered vector is the task's only view of the document) | kv_cache = the task reads the gist KV cache
  c.encoder.gist_form = "cascade"
  c.encoder.gist_tasks = ("name", "description", "parameters")  # the m reconstruction tasks (codebook/gist.py)
  c.encoder.gist_patience = 0     # early stopping: held-out evaluations without improvement (0 = off)
  c.encoder.gist_eval_every = 0   # steps between held-out evaluations (0 = gist_steps // 10)

  # --- tool tokenization (toolgen_jax/codebook) --------------------------------------------------------------
  c.codebook = ml_collections.ConfigDict()
  c.codebook.method = "rqvae"     # rqvae | residual_kmeans | atomic | numerical | hierarchical | semantic
  c.codebook.levels = 2           # L (rqvae: codebooks; residual_kmeans: levels per position)
  c.codebook.size = 1024          # K codes per level (ToolWeaver 1024; Toolscaler uses 512)
  # Tools whose codes are equal (codebook/collisions.py): sinkhorn = ToolWeaver's Sinkhorn-Knopp re-assignment, what
  # it cannot separate stays shared | report = Toolscaler, codes as quantised, collisions only counted (tools sharing
  # a code tuple share a trie leaf) | unique = our guarantee (Sinkhorn, then a suffix level). Method configs set
  # their paper's; the count is in the codebook's collision_report either way.
  c.codebook.collisions = "unique"
  c.codebook.seed = 0
  c.codebook.rqvae_hidden = (1024, 512, 256, 128, 64)  # ToolWeaver released MLP widths
  c.codebook.code_dim = 64
  c.codebook.beta = 2.25          # commitment weight (ToolWeaver code)
  c.codebook.sinkhorn_epsilon = 0.01
  c.codebook.sinkhorn_iters = 50
  c.codebook.collab_lambda = 1.0  # ToolWeaver paper; its released code uses 0.001; 0 = no collaborative loss
  c.codebook.collab_form = "latent_contrast"  # paper = ToolWeaver Eq. 6 on quantised vectors (A normalised as
                                             # data.cooccurrence_normalization) | latent_contrast = our latent variant
  c.codebook.learning_rate = 1e-3
  c.codebook.batch_size = 1024
  c.codebook.steps = 1000         # RQ-VAE optimizer steps
  c.codebook.epochs = 0           # > 0 overrides steps: epochs * ceil(N / batch_size) (ToolWeaver released: 5000)
  c.codebook.pca_dim = 32         # residual_kmeans: PCA dimension per gist position (Toolscaler)
  c.codebook.branching = 10       # hierarchical baseline: children per tree node (ToolGen)

  # --- vocabulary extension (toolgen_jax/models/vocab) -------------------------------------------------------
  c.vocab = ml_collections.ConfigDict()
  c.vocab.init = "codebook"       # codebook | subword_mean | random | rqvae_codebook | reframe (models/vocab.py)
  c.vocab.pad_to_multiple = 128   # round the vocabulary up (zero rows; decoders mask ids >= len(tokenizer))

  # --- training (toolgen_jax/training) -------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.stages = ("memorization", "retrieval")
  c.train.steps = 100             # per stage (unless stage_steps names the stage)
  # Steps per named stage (0 = train.steps); "refine" = each post-guided round's retraining (0 = its stage's steps).
  c.train.stage_steps = ml_collections.ConfigDict({"memorization": 0, "retrieval": 0, "trajectory": 0, "refine": 0,
                                                   "mixed": 0})
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
  c.train.min_lr_ratio = 0.0      # cosine decays from the peak to peak * min_lr_ratio
  c.train.adam_b1 = 0.9
  c.train.adam_b2 = 0.999
  c.train.adam_eps = 1e-8
  # System turn of the memorisation/retrieval prompts (training and inference alike). None = the chat template's own
  # default (SmolLM2 inserts a 30-token one); "" = an empty system turn, so a short query is a short sequence.
  c.train.system_prompt = ml_collections.config_dict.placeholder(str)
  c.train.memorization_max_chars = 0  # >0: memorisation documents cut here (data.doc_max_chars otherwise); the
                                      # tool embeddings and the BM25 documents keep data.doc_max_chars
  c.train.frozen_layers = 0       # bottom layers (and input embedding) get no gradient: backward stops there
  c.train.target_positions = 0    # >0: LM head + CE only on each row's first m target tokens (0 = all positions)
  c.train.loss_chunk = 0          # >0: cross-entropy over sequence chunks of this many tokens (no full [B,T,V] logits)
  c.train.packing = "pad"         # pad (every row to seq_len) | bucket (length-sorted windows, 3 padded lengths)
  c.train.multi_target = "separate"  # retrieval, several relevant tools: separate (one example per tool) | joint
  c.train.best_metric = ""        # "" = no best-by-metric copy; else an eval metric name, e.g. "ndcg@5"
  c.train.best_mode = "max"       # max | min
  c.train.async_checkpoint = True
  c.train.refine_rounds = 0       # Toolscaler post-guided refinement rounds T (0 = off)
  # paper = section 4.2 / App. D iv: re-embed on the frozen previous model, refit the codebook, reframed rows, every
  # stage again | last_stage = re-embed, re-quantise, keep trained rows, retrain the last stage (training/refinement)
  c.train.refine_form = "last_stage"
  c.train.refine_token_epochs = 0  # paper form, gist codebooks: epochs of the Token update on the frozen model per
                                   # round, a codebook fitted after each (0 = none: compression on theta_{t-1} only)
  c.train.tensorboard = True
  c.train.progress_bar = True
  # Epochs per named stage (> 0 overrides stage_steps: steps = ceil(epochs * examples / batch_size)), so a config
  # means the same training on any device.
  c.train.stage_epochs = ml_collections.ConfigDict({"memorization": 0.0, "retrieval": 0.0, "trajectory": 0.0,
                                                    "mixed": 0.0})
  # The training engine (training/stages.py). recipe: `train.fit` on whole sequences, full-vocabulary loss on the
  # target tokens (the papers' objective). code: the frozen bottom `frozen_layers` computed once into a feature
  # cache (WORKDIR/feature_cache), only the top layers and the code tokens' own output rows trained, loss on the
  # code positions over `code_loss`'s candidates (training/code_engine.py; memorisation/retrieval stages).
  c.train.engine = "recipe"
  c.train.code_loss = "level"     # code engine: level (the level's K codes) | trie (the prefix's children) | full
  c.train.lr_rows = 2e-3          # code engine: peak learning rate of the code output rows
  c.train.lr_layers = 1e-4        # code engine: peak learning rate of the top layers (and the final norm)
  c.train.prototype_init = True   # code engine: code rows start at the mean cached hidden state of their tools
  # code engine: weight of the text term (next-token NLL at `text_positions` ordinary prompt positions per example,
  # only the added rows move): code rows learn to stay below words on English (0 = off; needs frozen_layers = all)
  c.train.text_weight = 0.0
  c.train.text_positions = 4
  # code engine, whole backbone frozen: after the output rows' epochs, this many epochs that also train the code
  # tokens' input rows (0 = off). Level 2 is decided from the state at the level-1 code token, which sees its prefix
  # only through that token's input row: a trained row per prefix can move the state toward the prefix's own
  # children. Exact from the cache: it also keeps the prompt's keys and values (float16, 23 KiB per prompt token on
  # SmolLM2: 8.1 GB for the demo's 351k prompt tokens) and each step reruns the code tokens through every layer. The
  # model stays a plain Llama; ordinary text never reads a code token, so perplexity cannot move through it. Off in
  # the demo: on its data the shared level-2 output rows alone can fit the training examples up to their own
  # ceiling (identical texts of different BFCL tools; benchmarks/probe_ceiling.py); measured after its 80 row
  # epochs, 2 epochs at lr 3e-4 gave probes 75.0 / 85.0 and test 18.8, 4 at 2e-3 72.5 / 75.0 / 18.8 (the demo:
  # 75.0 / 87.5 / 21.9), at ~6 min per epoch on the shared 2-core VM against ~2.5 s for a rows-only epoch.
  c.train.code_inputs_epochs = 0.0
  c.train.lr_inputs = 2e-3        # code engine: peak learning rate of the code input rows (code_inputs_epochs)
  c.train.lr_inputs_rows = 0.0    # ... and of the output rows during those epochs (0 = train.lr_rows)
  # Documents as queries (DSI-QG / NCI DocAsQuery; data/views.py): memorisation trains on these views of each tool
  # (name_description, description, sentence, parameters) instead of the one cut document. () = the papers' document.
  c.train.memorization_views = ()
  # sequential: the stages in order (the papers). mixed (code engine): memorisation and retrieval examples in one
  # run (DSI's indexing + retrieval), `stage_epochs.mixed` epochs, so the second does not overwrite the first.
  c.train.schedule = "sequential"

  # --- device mesh and logical axis rules (toolgen_jax/training/sharding) -------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                # -1 = all remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.distributed = "auto"     # auto (initialize when launched on several hosts) | always | never
  # Logical axis -> mesh axes (MaxText style). Parameters: FSDP over 'embed', tensor parallel over heads/mlp/vocab.
  # Activations: batch over (data, fsdp); heads/mlp/vocab over tensor. Model code names axes, never devices.
  c.mesh.logical_axis_rules = (
      ("vocab", "tensor"), ("embed", "fsdp"), ("heads", "tensor"), ("kv_heads", "tensor"), ("head_dim", None),
      ("mlp", "tensor"), ("layers", None), ("lora_rank", None),
      ("activation_batch", ("data", "fsdp")), ("activation_length", None), ("activation_embed", None),
      ("activation_heads", "tensor"), ("activation_kv_heads", "tensor"), ("activation_mlp", "tensor"),
      ("activation_vocab", "tensor"), ("activation_head_dim", None),
  )

  # --- constrained decoding (toolgen_jax/decoding) ---------------------------------------------------------------
  c.decode = ml_collections.ConfigDict()
  c.decode.beam_size = 5
  c.decode.length_normalization = 0.0
  c.decode.dense_budget_bytes = 64 * 2**20
  c.decode.normalize = "full"     # softmax a code is scored by: full (vocabulary) | level | trie (as train.code_loss)

  # --- evaluation (toolgen_jax/evaluation) -----------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (1, 3, 5)
  c.eval.settings = ("multi-domain", "in-domain")  # + "candidates"; in-domain = the papers' group (I1/I2/I3) pool,
                                                   # candidates = the query's own api_list (evaluation/harness.py)
  c.eval.baselines = ("bm25", "embedding")  # + "dense": MiniLM fine-tuned on the training queries (ToolRetriever)
  c.eval.dense_steps = 300          # dense baseline: in-batch-negative steps (evaluation/dense_retriever.py; cached
  c.eval.dense_batch_size = 32      # in WORKDIR/dense), pairs per step, AdamW peak rate, InfoNCE temperature, and
  c.eval.dense_learning_rate = 3e-5  # tokens per text in training and encoding
  c.eval.dense_temperature = 0.05
  c.eval.dense_max_len = 128
  c.eval.batch_size = 8
  c.eval.perplexity = True
  c.eval.perplexity_tokens = 2048
  c.eval.max_queries = -1         # cut the test queries (smoke runs); -1 = all
  c.eval.train_queries = 0        # also score this many training queries (seen tools): tells memorisation apart
                                  # from generalisation when the model trails the baselines on test
  c.eval.memorization_tools = 0  # also score this many tools' own memorisation documents as queries (split
                                  # "memorisation"): did doc -> code stick? (a seeded sample of the test queries' tools)
  c.eval.recall_ks = (5,)         # Recall@k cut-offs reported besides recall@k for k in ks
  c.eval.depth = 100              # tools a baseline retrieves per query; toolgen_ndcg@k counts these (ToolGen: 100)
  c.eval.split = "auto"           # query split `evaluate` scores: auto (test, else eval, else all) | "" (all) | a name
  c.eval.bm25_method = "lucene"   # bm25s scorer: lucene | robertson | atire | bm25l | bm25+
  c.eval.bm25_k1 = 1.5
  c.eval.bm25_b = 0.75
  c.eval.bm25_analyzer = "words"  # words (\w\w+, English stop words) | nltk (words + punctuation, ToolGen-like)
  c.eval.perplexity_window = 256
  c.eval.perplexity_stride = 128

  # --- tool-calling agent, chat and server (toolgen_jax/agent, chat.py, serve.py) ----------------------------------
  c.agent = ml_collections.ConfigDict()
  c.agent.max_steps = 8                   # assistant steps per episode before it stops unfinished (ToolBench: 12)
  c.agent.time_limit_s = 120.0            # wall-clock limit per episode
  c.agent.tool_timeout_s = 10.0           # per executor call (callables and REST)
  c.agent.max_observation_chars = 2048    # observation text shown to the model is cut here
  c.agent.max_response_bytes = 2**20      # REST executor: a larger body is an error observation
  c.agent.allowed_hosts = ("127.0.0.1", "localhost")  # REST executor allow-list
  c.agent.constrained_arguments = True    # build Action Input from the tool's JSON schema (model fills values)
  c.agent.coerce_strings = True           # accept "5" for a NUMBER argument (RapidAPI passes strings)
  c.agent.allow_extra_arguments = False   # undeclared argument keys are an error observation
  c.agent.think_max_tokens = 96           # Thought: free text until a stop string or this many tokens
  c.agent.arguments_max_tokens = 128      # free-text Action Input budget (and per string value when constrained)
  c.agent.draft_tokens = 1                # prompt-lookup tokens verified per decode call (0: one token per call)
  c.agent.draft_memory = 1024             # tokens of earlier outputs the drafts are also looked up in (0: none)

  c.serve = ml_collections.ConfigDict()
  c.serve.host = "127.0.0.1"              # loopback by default; binding elsewhere is the user's explicit choice
  c.serve.port = 8000
  c.serve.max_body_bytes = 2**20          # larger requests get 413
  c.serve.max_tools = 128                 # more request tools get 400
  c.serve.max_messages = 256              # more request messages get 400
  c.serve.max_header_bytes = 16 * 1024    # a larger request head is refused (400)
  c.serve.max_connections = 128           # open connections past this get 503 for their requests
  c.serve.read_timeout_s = 10.0           # request head and body must arrive within this (closed / 408)
  c.serve.tool_cache_size = 256           # unknown request tools kept coded at once (least recently used evicted)
  c.serve.batch_window_s = 0.005          # requests arriving within this window are decoded as one batch
  c.serve.batch_wait_fraction = 0.02      # ... or within this fraction of the last batch's time, if longer (<= 0.25 s)
  c.serve.max_batch = 8                   # requests per batch
  c.serve.max_queue = 256                 # requests waiting for the model past this get 503

  return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.lock()
  return config


SCALES = ("small", "real", "gorilla", "paper")


def cpu_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """What makes SmolLM2 trainable on a 2-core CPU (benchmarks/cpu_recipe.py: ~3x per step, and ~2x fewer tokens):
  short prompts (no default system turn, memorised documents cut to fit), backward through the top 6 of 30 layers only, and
  the LM head on the target tokens only. The papers fine-tune everything; the `paper` variant does."""
  c.train.memorization_max_chars = 180
  c.train.system_prompt = ""
  c.train.frozen_layers = 24
  c.train.target_positions = 8
  c.train.seq_len = 64
  c.train.packing = "bucket"
  c.train.batch_size = 8
  c.train.learning_rate = 5e-4
  c.train.warmup_fraction = 0.1
  return c


def data_root() -> str:
  """$TOOLGEN_DATA, else the shared/data folder beside the repository (found from the package, so the command
  works from any directory), else the conventional "../shared/data" (the reader then names the missing path)."""
  import os
  from toolgen_jax import assets
  env = os.environ.get("TOOLGEN_DATA")
  if env:
    return env
  found = assets.shared_data_dir()
  return str(found) if found else "../shared/data"


def apply_scale(c: ml_collections.ConfigDict, scale: str | None) -> ml_collections.ConfigDict:
  """The variants every method config has (`--config=configs/NAME.py:small|real|paper`).

  small: the embedded BFCL corpus, SmolLM2-135M, the CPU recipe and a budget of minutes on 2 cores.
  real: the documented real-data protocol (`data/protocol.py`: ToolLens + StableToolBench + Gorilla) from
    $TOOLGEN_DATA (default ../shared/data), SmolLM2-135M, the CPU recipe, about half an hour on 2 cores.
  gorilla: Gorilla APIBench TorchHub from $TOOLGEN_DATA (94 APIs, 837 train / 186 eval instructions, every eval
    target seen in training): small enough that SmolLM2 with the CPU recipe sees each document ~8 times and each
    training instruction ~4 times in about 15 minutes, i.e. a generative retriever trained past the under-fitted
    regime of `small`/`real`.
  paper: the papers' scale: Llama-3-8B from a local checkpoint on a TPU/GPU mesh (FSDP over every device), bf16
    compute with fp32 master weights, rematerialisation, the ToolBench data you downloaded. Set the two paths:
      --config.model.checkpoint=/path/to/Meta-Llama-3-8B --config.data.path=/path/to/ToolBench/data
  """
  scale = scale or "small"
  if scale not in SCALES:
    raise ValueError(f"unknown config variant {scale!r}; expected one of {SCALES}")
  if scale in ("small", "real", "gorilla"):
    c.model.checkpoint = "smollm2"
    cpu_recipe(c)
    c.train.stages = ("memorization", "retrieval")
    c.train.stage_steps.memorization = 200
    c.train.stage_steps.retrieval = 200
    c.data.source = "bfcl"
    if scale == "real":
      c.data.source = "real_protocol"
      c.data.path = data_root()
      c.train.stage_steps.retrieval = 400
      c.eval.train_queries = 100
      c.eval.settings = ("multi-domain", "in-domain", "candidates")  # the papers' group pool and each api_list
    if scale == "gorilla":
      c.data.source = "gorilla"
      c.data.path = f"{data_root()}/gorilla/data"
      c.train.stage_steps.memorization = 100   # 94 documents: ~8.5 epochs of 8
      c.train.stage_steps.retrieval = 400      # 837 instructions: ~3.8 epochs
      c.eval.train_queries = 50
      c.eval.memorization_tools = 40
      c.eval.settings = ("multi-domain",)      # Gorilla queries carry no candidate list: in-domain = multi-domain
    return c
  c.data.source = "toolbench"
  c.data.path = ""                # required: a ToolBench download (toolenv/tools, instruction, answer)
  c.model.checkpoint = ""         # required: a local Llama-3-8B directory (config.json + *.safetensors)
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = True
  c.model.max_seq_len = 2048
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.train.batch_size = 64
  c.train.seq_len = 1024
  c.train.steps = 2000
  c.train.checkpoint_every = 500
  c.train.eval_every = 500
  c.data.dev_fraction = 0.01      # the dev queries train.eval_every scores (evaluation.evaluators)
  c.train.keep_checkpoints = 3
  c.train.stages = ("memorization", "retrieval", "trajectory")
  c.eval.batch_size = 64
  c.encoder.batch_size = 256
  return c


# ----------------------------------------------------------------------------------------------------------------
# Validation: every enumerated and ranged field checked in one place, before any work starts.

class ConfigError(ValueError):
  """Config values the code would refuse (or misread) later; the one-line message names every bad field."""


# Accepted values of enumerated fields. The modules that act on them own these lists; config sits below them and
# cannot import them, so tests/test_bad_inputs_config.py checks that the two agree.
CHOICES = {
    "data.source": ("bfcl", "stabletoolbench", "toolbench", "beir", "gorilla", "toolgen_names", "real_protocol"),
    "data.cooccurrence_normalization": ("sym", "row", "none"),
    "data.trajectory_examples": ("whole", "steps"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16", "float16"),
    "encoder.kind": ("minilm", "mpnet", "bert_dir", "gist"),
    "encoder.dtype": ("float32", "bfloat16", "float16"),
    "encoder.gist_form": ("cascade", "kv_cache"),
    "codebook.method": ("rqvae", "residual_kmeans", "atomic", "numerical", "hierarchical", "semantic"),
    "codebook.collab_form": ("paper", "latent_contrast"),
    "codebook.collisions": ("sinkhorn", "report", "unique"),
    "vocab.init": ("random", "subword_mean", "codebook", "rqvae_codebook", "reframe"),
    "train.trainable": ("all", "lora", "lora_and_new_tokens", "new_tokens"),
    "train.packing": ("pad", "bucket"),
    "train.multi_target": ("separate", "joint"),
    "train.refine_form": ("paper", "last_stage"),
    "train.best_mode": ("max", "min"),
    "train.engine": ("recipe", "code"), "train.code_loss": ("level", "trie", "full"),
    "train.schedule": ("sequential", "mixed"),
    "decode.normalize": ("full", "level", "trie"),
    "mesh.distributed": ("auto", "always", "never"),
    "eval.bm25_method": ("lucene", "robertson", "atire", "bm25l", "bm25+"),
    "eval.bm25_analyzer": ("words", "nltk"),
}
# Tuple fields whose every member is enumerated.
MEMBER_CHOICES = {
    "train.stages": ("memorization", "retrieval", "trajectory"),
    "train.memorization_views": ("name_description", "description", "sentence", "parameters"),  # data/views.KINDS
    "eval.settings": ("multi-domain", "in-domain", "candidates"),
    "eval.baselines": ("bm25", "embedding", "dense"),
    "pipeline.redo": ("corpus", "embeddings", "codebook", "model", "train", "evaluate", "report"),
    "encoder.gist_tasks": ("name", "category", "description", "parameters"),  # codebook/gist.py:tool_fields
}
# Numeric ranges: (low, high), inclusive, None = unbounded; a tuple field is checked member by member.
_POS, _NONNEG, _UNIT = (1, None), (0, None), (0.0, 1.0)
RANGES = {
    "data.test_fraction": _UNIT, "data.dev_fraction": _UNIT,
    "model.max_seq_len": _POS,
    "encoder.batch_size": _POS, "encoder.max_len": _POS, "encoder.gist_tokens": _POS, "encoder.gist_steps": _NONNEG,
    "encoder.gist_batch_size": _POS, "encoder.gist_lora_rank": _POS, "encoder.gist_lora_dropout": (0.0, 0.99),
    "encoder.gist_weight_decay": _NONNEG, "encoder.gist_patience": _NONNEG, "encoder.gist_eval_every": _NONNEG,
    "codebook.levels": _POS, "codebook.size": (2, None), "codebook.code_dim": _POS, "codebook.beta": _NONNEG,
    "codebook.sinkhorn_iters": _POS, "codebook.collab_lambda": _NONNEG, "codebook.batch_size": _POS,
    "codebook.steps": _NONNEG, "codebook.epochs": _NONNEG, "codebook.pca_dim": _POS, "codebook.branching": (2, None),
    "codebook.rqvae_hidden": _POS,
    "vocab.pad_to_multiple": _POS,
    "train.steps": _POS, "train.batch_size": _POS, "train.seq_len": _POS, "train.warmup_fraction": _UNIT,
    "train.weight_decay": _NONNEG, "train.grad_clip": _NONNEG, "train.grad_accum": _POS,
    "train.checkpoint_every": _NONNEG, "train.keep_checkpoints": _POS, "train.eval_every": _NONNEG,
    "train.log_every": _POS, "train.min_lr_ratio": _UNIT, "train.adam_b1": (0.0, 0.999999),
    "train.adam_b2": (0.0, 0.999999), "train.memorization_max_chars": _NONNEG, "train.frozen_layers": _NONNEG,
    "train.target_positions": _NONNEG, "train.loss_chunk": _NONNEG, "train.refine_rounds": _NONNEG,
    "train.refine_token_epochs": _NONNEG,
    "train.stage_steps.memorization": _NONNEG, "train.stage_steps.retrieval": _NONNEG,
    "train.stage_steps.trajectory": _NONNEG, "train.stage_steps.refine": _NONNEG,
    "train.stage_epochs.memorization": _NONNEG, "train.stage_epochs.retrieval": _NONNEG,
    "train.stage_epochs.trajectory": _NONNEG, "train.stage_epochs.mixed": _NONNEG,
    "train.text_weight": _NONNEG, "train.text_positions": _NONNEG, "train.code_inputs_epochs": _NONNEG,
    "train.lr_inputs_rows": _NONNEG,
    "decode.beam_size": _POS, "decode.length_normalization": _NONNEG, "decode.dense_budget_bytes": _NONNEG,
    "eval.ks": _POS, "eval.recall_ks": _POS, "eval.batch_size": _POS, "eval.perplexity_tokens": _NONNEG,
    "eval.train_queries": _NONNEG, "eval.memorization_tools": _NONNEG, "eval.depth": _POS,
    "eval.bm25_k1": _NONNEG, "eval.bm25_b": _UNIT, "eval.perplexity_window": _POS, "eval.perplexity_stride": _POS,
    "eval.dense_steps": _POS, "eval.dense_batch_size": (2, None), "eval.dense_max_len": _POS,
    "agent.max_steps": _POS, "agent.max_observation_chars": _POS, "agent.max_response_bytes": _POS,
    "agent.think_max_tokens": _POS, "agent.arguments_max_tokens": _POS, "agent.draft_tokens": _NONNEG,
    "agent.draft_memory": _NONNEG,
    "serve.port": (0, 65535), "serve.max_body_bytes": _POS, "serve.max_tools": _POS, "serve.max_messages": _POS,
    "serve.batch_wait_fraction": _UNIT,
}
# Strictly positive reals (a zero rate or limit is never meant).
POSITIVE = ("codebook.sinkhorn_epsilon", "codebook.learning_rate", "encoder.gist_learning_rate",
            "train.learning_rate", "train.adam_eps", "train.lr_rows", "train.lr_layers",
            "train.lr_inputs", "eval.dense_learning_rate", "eval.dense_temperature", "agent.time_limit_s",
            "agent.tool_timeout_s")
# -1 = all / every remaining device; otherwise at least 1.
ALL_OR_POSITIVE = ("data.max_queries", "data.max_tools", "eval.max_queries", "mesh.data", "mesh.fsdp", "mesh.tensor")
_MISSING = object()


def _get(config, path: str):
  node = config
  for part in path.split("."):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      return _MISSING
  return node


def _did_you_mean(value, choices) -> str:
  close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
  return f" (did you mean {close[0]!r}?)" if close else ""


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every enumerated field against its accepted values (with a did-you-mean) and every ranged field
  against its range, before any work starts; raises ConfigError naming all bad fields at once. Fields this
  config does not have are skipped (a config of another version). Returns `config`."""
  errors = []
  for path, choices in CHOICES.items():
    v = _get(config, path)
    if v is not _MISSING and v not in choices:
      errors.append(f"{path}={v!r} is not one of {', '.join(choices)}{_did_you_mean(v, choices)}")
  for path, choices in MEMBER_CHOICES.items():
    v = _get(config, path)
    if v is _MISSING:
      continue
    members = v if isinstance(v, (tuple, list)) else (v,)
    for m in members:
      if m not in choices:
        errors.append(f"{path} member {m!r} is not one of {', '.join(choices)}{_did_you_mean(m, choices)}")
  for path, (lo, hi) in RANGES.items():
    v = _get(config, path)
    if v is _MISSING:
      continue
    members = v if isinstance(v, (tuple, list)) else (v,)
    if isinstance(v, (tuple, list)) and not v and path in ("eval.ks",):
      errors.append(f"{path} is empty")
    for m in members:
      if not _number(m) or (lo is not None and m < lo) or (hi is not None and m > hi):
        want = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        errors.append(f"{path}={m!r} must be a number {want}")
  for path in POSITIVE:
    v = _get(config, path)
    if v is not _MISSING and not (_number(v) and v > 0):
      errors.append(f"{path}={v!r} must be a number > 0")
  for path in ALL_OR_POSITIVE:
    v = _get(config, path)
    if v is not _MISSING and not (isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= 1)):
      errors.append(f"{path}={v!r} must be -1 (all) or >= 1")
  test, dev = _get(config, "data.test_fraction"), _get(config, "data.dev_fraction")
  if _number(test) and _number(dev) and test + dev >= 1.0:
    errors.append(f"data.test_fraction + data.dev_fraction = {test + dev:g} leaves no training queries")
  if errors:
    raise ConfigError("invalid config: " + "; ".join(errors))
  return config
