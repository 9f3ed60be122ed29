"""RQ-VAE tool tokenizer with a collaborative (graph) loss and Sinkhorn-balanced codes (ToolWeaver).

Model (ToolWeaver section 3.2, after LC-Rec/TIGER): an MLP encoder maps a tool embedding x to a latent z = E(x);
L residual codebooks quantise it,

    r_0 = z,   c_l = argmin_k ||r_{l-1} - e^l_k||^2  (or Sinkhorn-balanced, below),   r_l = r_{l-1} - e^l_{c_l}
    z_q = sum_l e^l_{c_l},   x_hat = D(z_q + sg(z - z_q)-trick)                                (straight-through)

and is trained on

    L = ||x - x_hat||^2 + (1/L) sum_l ( ||sg(r_{l-1}) - e^l||^2 + beta ||r_{l-1} - sg(e^l)||^2 )  (recon + RQ loss)
        + lambda * L_collab

with one of two collaborative terms (`RQVAEConfig.collab_form`):

  "paper"  ToolWeaver Eq. 6, L_collab = sum_uv A_uv ||z^_u - z^_v||^2 on the *quantised* representations, computed
           as the released code does (Fwibo/ToolWeaver `index/models/vq.py`): per level l, z^ = e^l_{c_l} (the
           level's code vector, so the gradient reaches the codebooks, not the encoder), summed over the ordered
           in-batch pairs (u, v) and divided by B^2, then averaged over levels (the released RQ loss is a mean over
           levels). A is the normalised co-occurrence adjacency (`collab_adjacency`, from
           `config.data.cooccurrence_normalization`: sym = D^-1/2 C D^-1/2, row = D^-1 C, none = C, as
           `data.cooccurrence.Cooccurrence.adjacency`). Batches are drawn without replacement (a shuffled loader).
  "latent_contrast"  our variant, not the paper's form: the pull acts on the encoder latent z, on a uniform
           minibatch of edges, as the mean of A_uv ||z_u - z_v||^2 with A = raw counts scaled to mean 1, and by
           default divided by the mean ||z_a - z_b||^2 of random pairs of the batch (`collab_normalization`,
           no stop-gradient, so it also pushes random pairs apart). The raw latent term has a trivial minimiser
           (all latents shrink to a point: with lambda = 0.1 on ToolBench-G3 95% of the tools got one code); the
           ratio does not. It is what the README demo and the default config use.

The co-occurrence graph comes from the training split only (`data.dataset.fit_cooccurrence`). Inputs are
standardised with frozen statistics of the tool embeddings (`normalize_input`): those are tool documents, which
every method sees, not query data. ToolWeaver's paper reports lambda = 1 (sweep 0.01..10); its released code uses
weight 0.001 (see `PAPER_LAMBDA`, `CODE_LAMBDA`).

Codes are balanced with log-domain Sinkhorn-Knopp (epsilon 0.01, 50 iterations, on centred distances, as the
released code) at every level during training and for the final assignment; codebooks are k-means initialised
level by level on the initial latents, and codes unused for `dead_code_every` steps are restarted on random
residuals of the current batch. Everything is a pure function of (config, data, graph, seed).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from toolgen_jax.codebook import kmeans as km
from toolgen_jax.codebook import sinkhorn as sk

PAPER_LAMBDA = 1.0    # ToolWeaver paper, best of its 0.01..10 sweep
CODE_LAMBDA = 0.001   # ToolWeaver released code


@dataclasses.dataclass(frozen=True)
class RQVAEConfig:
  hidden: tuple[int, ...] = (1024, 512, 256, 128, 64)  # ToolWeaver released defaults
  code_dim: int = 64
  num_levels: int = 2
  codebook_size: int = 1024
  beta: float = 2.25                  # commitment weight (released code)
  quant_loss_weight: float = 1.0
  sinkhorn_epsilon: float = 0.01      # <= 0: nearest code
  sinkhorn_iters: int = 50
  sinkhorn_absorb_every: int = 25     # stabilised-scaling block length (sinkhorn.py); 0 = pure log domain
  collab_lambda: float = 0.0          # PAPER_LAMBDA or CODE_LAMBDA; 0 disables the collaborative loss
  collab_form: str = "latent_contrast"  # "paper": Eq. 6 on quantised vectors | "latent_contrast": our latent variant
  collab_adjacency: str = "sym"       # paper form: A = sym D^-1/2 C D^-1/2 | row D^-1 C | none C (data config)
  collab_normalization: str = "random_pairs"  # latent_contrast: "random_pairs" divides by E||z_a - z_b||^2; "none"
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  batch_size: int = 1024
  edge_batch_size: int = 1024
  steps: int = 1000
  kmeans_init: bool = True
  kmeans_iters: int = 50
  kmeans_init_samples: int = 16384    # latents used for the k-means init (all if fewer)
  dead_code_every: int = 100          # restart codes unused in this many steps; also the scan block length
  seed: int = 0

  @classmethod
  def tiny(cls, **overrides) -> "RQVAEConfig":
    base = dict(hidden=(64, 32), code_dim=16, codebook_size=16, batch_size=128, edge_batch_size=128, steps=200,
                kmeans_init_samples=1024, dead_code_every=50)
    return cls(**(base | overrides))


class MLP(nn.Module):
  """Linear layers with ReLU between them (none after the last), as LC-Rec's MLPLayers without dropout/BN."""

  features: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    for i, f in enumerate(self.features):
      x = nn.Dense(f, name=f"dense_{i}")(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x


def _modules(config: RQVAEConfig, in_dim: int) -> tuple[MLP, MLP]:
  enc = MLP(tuple(config.hidden) + (config.code_dim,))
  dec = MLP(tuple(config.hidden[::-1]) + (in_dim,))
  return enc, dec


def normalize_input(params, x: jax.Array) -> jax.Array:
  """(x - mean) / scale with the corpus statistics frozen at init (params['norm'], never trained).

  Sentence embeddings are unit vectors with per-dimension variance ~1/D, which makes the reconstruction term
  ~1e-3 next to the RQ and collaborative terms and the autoencoder barely trains in a CPU-sized budget; on the
  standardised input the reconstruction error reads as the fraction of variance left unexplained.
  """
  norm = jax.lax.stop_gradient(params["norm"])
  return (x - norm["mean"]) / norm["scale"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RQVAEState:
  params: Any                 # {'encoder', 'decoder', 'codebooks' [L, K, code_dim], 'norm' {'mean', 'scale'}}
  opt_state: Any
  step: jax.Array
  usage: jax.Array            # [L, K] assignments since the last dead-code check


def _assign(config: RQVAEConfig, residual, codebook, use_sinkhorn: bool):
  d = km.sq_distances(residual, codebook)
  if use_sinkhorn and config.sinkhorn_epsilon > 0:
    return sk.sinkhorn_assign(d, config.sinkhorn_epsilon, config.sinkhorn_iters,
                              absorb_every=config.sinkhorn_absorb_every)
  return jnp.argmin(d, axis=1).astype(jnp.int32)


def quantize(config: RQVAEConfig, codebooks, z, use_sinkhorn: bool = True):
  """Residual quantisation of z [B, e]. -> (z_q straight-through [B, e], codes [B, L], rq_loss, residuals [L, B, e])."""
  residual = z
  zq = jnp.zeros_like(z)
  codes, losses, residuals = [], [], []
  for level in range(config.num_levels):
    cb = codebooks[level]
    residuals.append(residual)
    idx = _assign(config, jax.lax.stop_gradient(residual), jax.lax.stop_gradient(cb), use_sinkhorn)
    q = cb[idx]
    losses.append(jnp.mean((q - jax.lax.stop_gradient(residual)) ** 2)
                  + config.beta * jnp.mean((jax.lax.stop_gradient(q) - residual) ** 2))
    q_st = residual + jax.lax.stop_gradient(q - residual)
    zq = zq + q_st
    residual = residual - q_st
    codes.append(idx)
  return zq, jnp.stack(codes, 1), jnp.mean(jnp.stack(losses)), jnp.stack(residuals)


def _optimizer(config: RQVAEConfig):
  return optax.adamw(config.learning_rate, weight_decay=config.weight_decay)


def init(config: RQVAEConfig, x: jax.Array, key: jax.Array | None = None) -> RQVAEState:
  """Initialises the MLPs and k-means-initialises each codebook on the residuals of the initial latents."""
  key = jax.random.key(config.seed) if key is None else key
  x = jnp.asarray(x, jnp.float32)
  n, in_dim = x.shape
  if n < config.codebook_size and config.kmeans_init:
    raise ValueError(f"rqvae: {n} tools < codebook_size {config.codebook_size}; lower codebook.size")
  enc, dec = _modules(config, in_dim)
  norm = {"mean": x.mean(0), "scale": jnp.maximum(x.std(), 1e-12)}
  k_enc, k_dec, k_cb, k_km, k_sub = jax.random.split(key, 5)
  p_enc = enc.init(k_enc, x[:1])["params"]
  p_dec = dec.init(k_dec, jnp.zeros((1, config.code_dim)))["params"]
  k = config.codebook_size
  codebooks = jax.random.uniform(k_cb, (config.num_levels, k, config.code_dim), minval=-1.0 / k, maxval=1.0 / k)
  if config.kmeans_init:
    sub = x if n <= config.kmeans_init_samples else x[jax.random.permutation(k_sub, n)[:config.kmeans_init_samples]]
    residual = enc.apply({"params": p_enc}, (sub - norm["mean"]) / norm["scale"])
    cbs = []
    for level, kl in enumerate(jax.random.split(k_km, config.num_levels)):
      res = km.kmeans(kl, residual, k, max_iter=config.kmeans_iters)
      cbs.append(res.centroids)
      residual = residual - res.centroids[res.labels]
    codebooks = jnp.stack(cbs)
  params = {"encoder": p_enc, "decoder": p_dec, "codebooks": codebooks, "norm": norm}
  opt_state = _optimizer(config).init(params)
  return RQVAEState(params, opt_state, jnp.int32(0), jnp.zeros((config.num_levels, k), jnp.int32))


def directed_adjacency(edges: np.ndarray, counts: np.ndarray, num_tools: int, normalization: str = "sym"
                       ) -> tuple[np.ndarray, np.ndarray]:
  """A_uv for every ordered pair of an undirected edge list: ([2E, 2] int32 (u, v), [2E] float32 A_uv).

  edges [E, 2] with counts C_uv [E] (`Cooccurrence.edges()`, u < v); D_u = sum_v C_uv. 'sym': C / sqrt(D_u D_v),
  'row': C / D_u (asymmetric, hence both directions), 'none': C -- `Cooccurrence.adjacency` on the same graph.
  """
  e = np.asarray(edges, np.int64).reshape(-1, 2)
  c = np.asarray(counts, np.float64).reshape(-1)
  deg = np.zeros((num_tools,), np.float64)
  np.add.at(deg, e[:, 0], c)
  np.add.at(deg, e[:, 1], c)
  pairs = np.concatenate([e, e[:, ::-1]], 0)
  cc = np.concatenate([c, c])
  du, dv = deg[pairs[:, 0]], deg[pairs[:, 1]]
  if normalization == "sym":
    a = cc / np.sqrt(du * dv)
  elif normalization == "row":
    a = cc / du
  elif normalization == "none":
    a = cc
  else:
    raise ValueError(f"unknown adjacency normalization {normalization!r}: use 'sym', 'row' or 'none'")
  return pairs.astype(np.int32), a.astype(np.float32)


def collab_loss_quantized(codebooks: jax.Array, codes: jax.Array, batch_ids: jax.Array, pairs: jax.Array,
                          weights: jax.Array, num_tools: int) -> jax.Array:
  """ToolWeaver Eq. 6 as released: (1/L) sum_l (1/B^2) sum_{u, v in batch} A_uv ||e^l_{c_l(u)} - e^l_{c_l(v)}||^2.

  codebooks [L, K, e]; codes [B, L] of the batch tools batch_ids [B] (distinct tool ids); pairs [P, 2] ordered
  (u, v) tool-id pairs with A_uv = weights [P] (`directed_adjacency`). Only pairs with both ends in the batch count,
  so the sum equals the dense in-batch A[batch][:, batch] one without building a [B, B] matrix.
  """
  b = batch_ids.shape[0]
  pos = jnp.full((num_tools,), -1, jnp.int32).at[batch_ids].set(jnp.arange(b, dtype=jnp.int32))
  pu, pv = pos[pairs[:, 0]], pos[pairs[:, 1]]
  w = jnp.where((pu >= 0) & (pv >= 0), weights, 0.0)
  pu, pv = jnp.maximum(pu, 0), jnp.maximum(pv, 0)
  per_level = []
  for level in range(codebooks.shape[0]):
    q = codebooks[level][codes[:, level]]                                   # [B, e] quantised vectors z^
    per_level.append(jnp.sum(w * jnp.sum((q[pu] - q[pv]) ** 2, -1)) / (b * b))
  return jnp.mean(jnp.stack(per_level))


def loss_fn(config: RQVAEConfig, params, x, edges=None, edge_weights=None, in_dim=None, batch_ids=None,
            num_tools=None):
  """Total loss and metrics for a batch x [B, D] (raw embeddings).

  latent_contrast form: edges None or the pair (x_u [E, D], x_v [E, D]) of a minibatch of co-occurrence edges,
  edge_weights [E] (raw counts scaled to mean 1 by `train`). paper form: edges [P, 2] ordered tool-id pairs with
  A_uv = edge_weights [P], batch_ids [B] the distinct tool ids of x, num_tools N.
  """
  enc, dec = _modules(config, x.shape[-1] if in_dim is None else in_dim)
  x = normalize_input(params, x)
  z = enc.apply({"params": params["encoder"]}, x)
  zq, codes, rq_loss, _ = quantize(config, params["codebooks"], z, use_sinkhorn=True)
  x_hat = dec.apply({"params": params["decoder"]}, zq)
  recon = jnp.mean((x_hat - x) ** 2)
  total = recon + config.quant_loss_weight * rq_loss
  collab = jnp.float32(0.0)
  if edges is not None and config.collab_form == "paper":
    collab = collab_loss_quantized(params["codebooks"], codes, batch_ids, edges, edge_weights, num_tools)  # Eq. 6
    total = total + config.collab_lambda * collab
  elif edges is not None:
    if config.collab_form != "latent_contrast":
      raise ValueError(f"unknown collab_form {config.collab_form!r}: use 'paper' or 'latent_contrast'")
    zu = enc.apply({"params": params["encoder"]}, normalize_input(params, edges[0]))
    zv = enc.apply({"params": params["encoder"]}, normalize_input(params, edges[1]))
    collab = jnp.mean(edge_weights * jnp.sum((zu - zv) ** 2, -1))  # latent variant: per-edge mean
    if config.collab_normalization == "random_pairs":
      # Scale-free form: the raw term is minimised by shrinking every latent towards one point (all tools one code),
      # so it is measured relative to the spread of random pairs (z of the batch against its roll).
      spread = jnp.mean(jnp.sum((z - jnp.roll(z, 1, axis=0)) ** 2, -1))
      collab = collab / (spread + 1e-8)
    elif config.collab_normalization != "none":
      raise ValueError(f"unknown collab_normalization {config.collab_normalization!r}")
    total = total + config.collab_lambda * collab
  return total, {"loss": total, "recon": recon, "rq": rq_loss, "collab": collab, "codes": codes}


@functools.partial(jax.jit, static_argnames=("config", "num_steps"))
def train_block(config: RQVAEConfig, state: RQVAEState, x: jax.Array, edges: jax.Array, edge_weights: jax.Array,
                key: jax.Array, num_steps: int | None = None) -> tuple[RQVAEState, dict]:
  """`num_steps` (default `dead_code_every`) optimizer steps (lax.scan), then restart of codes unused in them.

  x [N, D] all tool embeddings; edges [E, 2] int32 (E may be 0), edge_weights [E] (paper form: ordered pairs and
  A_uv from `directed_adjacency`).
  """
  n = x.shape[0]
  opt = _optimizer(config)
  use_edges = config.collab_lambda > 0 and edges.shape[0] > 0
  b = min(config.batch_size, n)

  def step(state, key):
    kb, ke = jax.random.split(key)
    if use_edges and config.collab_form == "paper":
      ids = jax.random.permutation(kb, n)[:b]  # distinct tools, as a shuffled loader's batch
      loss = lambda p: loss_fn(config, p, x[ids], edges, edge_weights, batch_ids=ids, num_tools=n)
      grads, m = jax.grad(loss, has_aux=True)(state.params)
      return _apply(state, grads, m)
    xb = x[jax.random.randint(kb, (b,), 0, n)]
    if use_edges:
      ei = jax.random.randint(ke, (config.edge_batch_size,), 0, edges.shape[0])
      e = edges[ei]
      eb, ew = (x[e[:, 0]], x[e[:, 1]]), edge_weights[ei]
    else:
      eb, ew = None, None
    grads, m = jax.grad(lambda p: loss_fn(config, p, xb, eb, ew), has_aux=True)(state.params)
    return _apply(state, grads, m)

  def _apply(state, grads, m):
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    usage = state.usage + jax.vmap(lambda c: jnp.bincount(c, length=config.codebook_size), 1)(m.pop("codes"))
    return RQVAEState(params, opt_state, state.step + 1, usage), m

  k_steps, k_restart = jax.random.split(key)
  num_steps = num_steps or max(config.dead_code_every, 1)
  state, metrics = jax.lax.scan(step, state, jax.random.split(k_steps, num_steps))
  # Dead-code restart: unused codes jump to random residuals of a fresh batch (at their own level).
  enc, _ = _modules(config, x.shape[-1])
  kb, kr = jax.random.split(k_restart)
  xb = x[jax.random.randint(kb, (b,), 0, n)]
  z = enc.apply({"params": state.params["encoder"]}, normalize_input(state.params, xb))
  _, _, _, residuals = quantize(config, state.params["codebooks"], z, use_sinkhorn=False)  # [L, B, e]
  picks = jax.random.randint(kr, (config.num_levels, config.codebook_size), 0, b)
  fresh = jnp.take_along_axis(residuals, picks[..., None], axis=1)                      # [L, K, e]
  dead = (state.usage == 0) & (config.dead_code_every > 0)
  cbs = jnp.where(dead[..., None], fresh, state.params["codebooks"])
  params = dict(state.params, codebooks=cbs)
  metrics = jax.tree.map(jnp.mean, metrics) | {"dead_codes": dead.sum()}
  return RQVAEState(params, state.opt_state, state.step, jnp.zeros_like(state.usage)), metrics


def train(config: RQVAEConfig, x: np.ndarray, edges: np.ndarray | None = None,
          edge_weights: np.ndarray | None = None, *, log_every: int = 0, progress: bool = False,
          state: RQVAEState | None = None) -> tuple[RQVAEState, list[dict]]:
  """Trains an RQ-VAE on tool embeddings x [N, D] (and a co-occurrence edge list [E, 2] with counts C_uv [E], u < v,
  as `Cooccurrence.edges()` gives; the paper form normalises them into A with `collab_adjacency`).

  Deterministic given `config.seed`. Returns the final state and per-block metrics (host floats).
  """
  x = jnp.asarray(x, jnp.float32)
  key = jax.random.key(config.seed)
  k_init, k_train = jax.random.split(key)
  if edges is None or len(edges) == 0:
    edges_a = jnp.zeros((0, 2), jnp.int32)
    w = jnp.zeros((0,), jnp.float32)
  else:
    edges_a = jnp.asarray(np.asarray(edges, np.int32))
    if edges_a.ndim != 2 or edges_a.shape[1] != 2:
      raise ValueError(f"rqvae: edges must be [E, 2], got {edges_a.shape}")
    if int(edges_a.max()) >= x.shape[0] or int(edges_a.min()) < 0:
      raise ValueError(f"rqvae: edge endpoints must be tool ids in [0, {x.shape[0]})")
    w = np.ones((len(edges),), np.float32) if edge_weights is None else np.asarray(edge_weights, np.float32)
    if config.collab_form == "paper":  # Eq. 6's A over ordered pairs, normalised as the data config says
      pairs, a = directed_adjacency(np.asarray(edges_a), w, x.shape[0], config.collab_adjacency)
      edges_a, w = jnp.asarray(pairs), jnp.asarray(a)
    else:
      w = jnp.asarray(w / max(float(w.mean()), 1e-12))  # latent variant: counts scaled to mean 1
  if state is None:
    state = init(config, x, k_init)
  every = max(config.dead_code_every, 1) if config.dead_code_every > 0 else max(config.steps, 1)
  blocks = -(-config.steps // every)
  history = []
  it = range(blocks)
  if progress:
    from tqdm.auto import tqdm
    it = tqdm(it, desc="rqvae", unit="block")
  for i in it:
    n_i = min(every, config.steps - i * every)
    state, m = train_block(config, state, x, edges_a, w, jax.random.fold_in(k_train, i), num_steps=n_i)
    m = {k: float(v) for k, v in m.items()}
    history.append(m)
    if log_every and (i + 1) % log_every == 0:
      print(f"rqvae block {i + 1}/{blocks}: " + " ".join(f"{k}={v:.4g}" for k, v in m.items()), flush=True)
  return state, history


@functools.partial(jax.jit, static_argnames=("config",))
def encode_latent(config: RQVAEConfig, params, x: jax.Array) -> jax.Array:
  enc, _ = _modules(config, x.shape[-1])
  return enc.apply({"params": params["encoder"]}, normalize_input(params, x))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Assignment:
  """Codes of a set of tools plus what is needed to replay the same rule on new tools."""

  codes: jax.Array         # [N, L] int32
  level_inputs: jax.Array  # [L, N, e] residual entering each level (r_{l-1})
  duals: jax.Array         # [L, K] eps * Sinkhorn column potentials (zeros: nearest code)
  mids: jax.Array          # [L] cost centring (Sinkhorn only)
  amps: jax.Array          # [L]


@functools.partial(jax.jit, static_argnames=("config", "use_sinkhorn"))
def assign_codes(config: RQVAEConfig, params, x: jax.Array, use_sinkhorn: bool = True) -> Assignment:
  """Codes of all tools x [N, D], balanced over the whole corpus by one Sinkhorn problem [N, K] per level."""
  z = encode_latent(config, params, jnp.asarray(x, jnp.float32))
  residual = z
  codes, inputs, duals, mids, amps = [], [], [], [], []
  for level in range(config.num_levels):
    cb = params["codebooks"][level]
    inputs.append(residual)
    d = km.sq_distances(residual, cb)
    if use_sinkhorn and config.sinkhorn_epsilon > 0:
      idx, dual, mid, amp = sk.balanced_assign_with_duals(d, config.sinkhorn_epsilon, config.sinkhorn_iters,
                                                          config.sinkhorn_absorb_every)
    else:
      idx, dual, mid, amp = (jnp.argmin(d, 1).astype(jnp.int32), jnp.zeros((cb.shape[0],)), jnp.float32(0),
                             jnp.float32(1))
    codes.append(idx)
    duals.append(dual)
    mids.append(mid)
    amps.append(amp)
    residual = residual - cb[idx]
  return Assignment(jnp.stack(codes, 1), jnp.stack(inputs), jnp.stack(duals), jnp.stack(mids), jnp.stack(amps))


@functools.partial(jax.jit, static_argnames=("config",))
def replay_codes(config: RQVAEConfig, params, x: jax.Array, duals: jax.Array, mids: jax.Array,
                 amps: jax.Array) -> Assignment:
  """Codes of new tools with the frozen encoder, codebooks and the corpus' Sinkhorn duals (no retraining)."""
  z = encode_latent(config, params, jnp.asarray(x, jnp.float32))
  residual = z
  codes, inputs = [], []
  for level in range(config.num_levels):
    cb = params["codebooks"][level]
    inputs.append(residual)
    idx = sk.assign_with_duals(km.sq_distances(residual, cb), duals[level], mids[level], amps[level])
    codes.append(idx)
    residual = residual - cb[idx]
  return Assignment(jnp.stack(codes, 1), jnp.stack(inputs), duals, mids, amps)


def reconstruction_error(config: RQVAEConfig, params, x: jax.Array, levels: int | None = None) -> float:
  """Mean squared error of the standardised input, ||x~ - D(sum_{l<levels} e^l_{c_l})||^2, using the first `levels`
  codes (nearest codes); ~ the fraction of variance left unexplained."""
  x = jnp.asarray(x, jnp.float32)
  levels = config.num_levels if levels is None else levels
  z = encode_latent(config, params, x)
  cfg = dataclasses.replace(config, num_levels=levels)
  zq, _, _, _ = quantize(cfg, params["codebooks"][:levels], z, use_sinkhorn=False)
  _, dec = _modules(config, x.shape[-1])
  return float(jnp.mean((dec.apply({"params": params["decoder"]}, zq) - normalize_input(params, x)) ** 2))


def level_costs(config: RQVAEConfig, params, level: int, inputs: np.ndarray) -> np.ndarray:
  """Squared distances of level inputs [G, e] to codebook `level`: [G, K] (used by collision resolution)."""
  return np.asarray(km.sq_distances(jnp.asarray(inputs), params["codebooks"][level]))


def params_to_numpy(params) -> dict:
  return jax.tree.map(np.asarray, params)
