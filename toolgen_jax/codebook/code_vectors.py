"""Each code's vector in the LLM's embedding space: what the `rqvae_codebook` and `reframe` code-token inits start from.

  rqvae_codebook  ToolWeaver (released README: the code tokens are initialised "from the VAE codebook"). The RQ-VAE
                  codebook vector e_{l,c} is mapped into the model's input-embedding space by the affine
                  least-squares map fitted from the tools' RQ-VAE latents z_t (the encoder output entering level 0)
                  to their mean document-token embeddings v_t (`models.vocab.tool_model_vectors`):
                      (W, b) = argmin_{W, b} sum_t ||z_t W + b - v_t||^2      (minimum-norm solution)
                      row(0, c) = e_{0,c} W + b,   row(l, c) = e_{l,c} W  for l > 0
                  Deeper levels are residual directions (no offset), so the rows of a tool's code sum to the mapped
                  reconstruction (sum_l e_{l,c_l}) W + b.
  reframe         Toolscaler section 4.2 (reframed embedding), residual k-means codes of P positions x L levels:
                      row(pL, c)     = mean of h_{t,p} over the member tools t (code c at that level), h_{t,p} the
                                       tool's gist output at position p;
                      row(pL + l, c) = mu^{p,l}_c C_p  for l > 0: the inverse PCA of the residual centroid
                                       (`residual_kmeans.centroid_embeddings`, without the PCA mean).
                  Gist outputs are the backbone's own hidden states, already in the model's space. With a sentence
                  encoder (another space and width) the same affine least-squares map, fitted from the tools'
                  embeddings to their mean document-token embeddings, carries the vectors over (offset at the first
                  level of each position only). Rows are not rescaled (the paper's form), although final-norm
                  hidden states can be longer than the embedding's rows.

Both return one [K_l, D] array per base level of the codebook (a collision suffix level has none). Which token
stands for code c at level l is `code_vocab`'s (the pipeline's `code_token_rows` joins the two).
"""

from __future__ import annotations

import numpy as np

from toolgen_jax.codebook import residual_kmeans as rkm


def fit_affine(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """x [N, d], y [N, D] -> (W [d, D], b [D]): the minimum-norm least-squares solution of [x 1] [W; b] = y."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  x1 = np.concatenate([x, np.ones((len(x), 1))], 1)
  wb, *_ = np.linalg.lstsq(x1, np.asarray(y, np.float64), rcond=None)
  return wb[:-1], wb[-1]


def rqvae_code_vectors(codebook, x: np.ndarray, tool_vectors: np.ndarray) -> list[np.ndarray]:
  """ToolWeaver's RQ-VAE codebook in model space (module docstring). `codebook`: an 'rqvae' `Codebook`; x [N, D_in]:
  the quantiser's input of the first N rows (the corpus tools); tool_vectors [N, D]: their mean document-token
  embeddings. -> L arrays [K, D] float32."""
  if codebook.method != "rqvae":
    raise ValueError(f"vocab.init='rqvae_codebook' needs an rqvae codebook, got {codebook.method!r}")
  x = np.asarray(x, np.float32)
  _, inputs, codebook_at, _ = codebook._quantizer_levels(x)  # inputs[0] = z, the latent entering level 0
  w, b = fit_affine(np.asarray(inputs[0]), tool_vectors)
  levels = int(codebook.quantizer_config["num_levels"])
  return [(np.asarray(codebook_at(l), np.float64) @ w + (b if l == 0 else 0)).astype(np.float32)
          for l in range(levels)]


def reframe_code_vectors(codebook, emb: np.ndarray, tool_vectors: np.ndarray | None = None) -> list[np.ndarray]:
  """Toolscaler's reframed embedding (module docstring). `codebook`: a 'residual_kmeans' `Codebook`; emb [N, P, D]
  (or [N, D]): the embeddings it was fitted on, rows 0..N-1; tool_vectors [N, D_model]: None when emb is already in
  the model's space (gist outputs), else the targets of the affine map (a sentence encoder: P = 1).
  -> P*L arrays [K, D_model] float32 (flat level p*L + l, as the codes). A first-level code no corpus tool holds
  (e.g. only Finish's) takes its centroid's inverse PCA, mean included."""
  if codebook.method != "residual_kmeans":
    raise ValueError(f"vocab.init='reframe' needs a residual_kmeans codebook, got {codebook.method!r}")
  st = codebook.rkm_state()
  cents = np.asarray(rkm.centroid_embeddings(st), np.float64)  # [P, L, K, D_in]
  p_, l_, k_ = cents.shape[:3]
  x = np.asarray(emb, np.float64).reshape(len(emb), p_, -1)
  n = len(x)
  codes, active = codebook.codes[:n], codebook.active[:n]
  w = b = None
  if tool_vectors is not None:  # a sentence encoder: one position
    if p_ != 1:
      raise ValueError(f"reframe: a map into the model's space is fitted for one embedding position, got {p_}")
    w, b = fit_affine(x[:, 0], tool_vectors)
  out = []
  for p in range(p_):
    for l in range(l_):
      v = cents[p, l].copy()
      if l == 0:
        col = codes[:, p * l_]
        for c in range(k_):
          m = (col == c) & active
          if m.any():
            v[c] = x[m, p].mean(0)
      if w is not None:
        v = v @ w + (b if l == 0 else 0)
      out.append(v.astype(np.float32))
  return out
