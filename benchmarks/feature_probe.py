"""How far can a frozen backbone's features carry retrieval? A probe of SmolLM2's hidden states on the demo's data.

The code engine of the demo (`configs/default.py`) trains the code rows on SmolLM2's frozen final states. Its test
figure is bounded by what those states say about a query's tool. This probe measures that bound directly, with no
code tokens in between: for the demo's BFCL split it embeds every tool's `name_description` view and every query
in the retrieval prompt, takes (a) the final-normed state at the last prompt position (what predicts the first
code) and (b) mean-pooled RMS-normed states of the user text at a few layers, and scores

  nearest view:  the test query's nearest tool view (cosine, centred) -> hit@1
  linear:        a softmax classifier over all tools, trained on the views + the training queries -> test hit@1
                 (an upper bound for any code head on these frozen features: one output row per tool)

MiniLM's and BM25's NDCG@1 on the same queries are the demo's (63.8 / 66.3).

  python benchmarks/feature_probe.py [--max_test=502] [--epochs=30]     # final JSON line
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolgen_jax import data, prompts  # noqa: E402
from toolgen_jax.data import views as views_lib  # noqa: E402
from toolgen_jax.models import llama, weights  # noqa: E402
from toolgen_jax.models import tokenizer as tok_lib  # noqa: E402

LAYERS = (8, 16, 24)
T = 64


def _config():
  spec = importlib.util.spec_from_file_location("default_cfg", ROOT / "configs" / "default.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def make_features(mcfg):
  @jax.jit
  def feats(params, tokens, mask, user):
    am = mask.astype(bool)
    pos = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
    att = jnp.tril(jnp.ones((T, T), bool))[None] & am[:, None, :]
    att = att | ~jnp.any(att, -1, keepdims=True)
    x = llama.embed(params, mcfg, tokens)
    rope = llama.rope_tables(pos, llama.rope_inv_freq(mcfg), x.dtype)
    out = []
    for i in range(mcfg.num_layers):
      x, _ = llama._layer(mcfg, rope, x, jax.tree.map(lambda a: a[i], params["layers"]), att, None, None)  # pylint: disable=protected-access
      if i + 1 in LAYERS:
        h = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)
        w = user[..., None].astype(h.dtype)
        out.append(jnp.sum(h * w, 1) / jnp.maximum(w.sum(1), 1))
    last = llama.rms_norm(x, params["final_norm"]["scale"], mcfg.rms_norm_eps)
    out.append(jnp.take_along_axis(last, (jnp.sum(mask, 1) - 1)[:, None, None], 1)[:, 0])
    return jnp.stack(out, 1)
  return feats


def embed(texts, tok, params, feats, system_prompt, batch=32):
  head = len(prompts.retrieval_prompt_ids(tok, "", system_prompt=system_prompt)) - prompts.prompt_suffix_tokens(
      tok, system_prompt)
  keep = prompts.prompt_suffix_tokens(tok, system_prompt)
  out = []
  for s in range(0, len(texts), batch):
    toks, mask, user = (np.zeros((batch, T), np.int32) for _ in range(3))
    for i, t in enumerate(texts[s:s + batch]):
      ids = prompts.retrieval_prompt_ids(tok, t, T, system_prompt)
      toks[i, :len(ids)], mask[i, :len(ids)] = ids, 1
      user[i, head:max(head + 1, len(ids) - keep)] = 1
    out.append(np.asarray(feats(params, toks, mask, user))[:len(texts[s:s + batch])])
  return np.concatenate(out)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--max_test", type=int, default=502)
  ap.add_argument("--epochs", type=int, default=30)
  ap.add_argument("--lr", type=float, default=3e-3)
  args = ap.parse_args()
  t0 = time.perf_counter()
  config = _config()
  ds = data.from_config(config.data, seed=int(config.seed))
  tok = tok_lib.tokenizer_from_config(config.model)
  mcfg, params = weights.load_backbone(config.model, tok, 0)
  feats = make_features(mcfg)
  sp = config.train.system_prompt
  test = [q for q in ds.queries if q.split == "test"][:args.max_test]
  train = [q for q in ds.queries if q.split == "train"]
  views = [v for v in views_lib.corpus_views(ds.corpus)[0] if v.kind == "name_description"]
  fv = embed([v.text for v in views], tok, params, feats, sp)
  ft = embed([q.text for q in test], tok, params, feats, sp)
  fr = embed([q.text for q in train], tok, params, feats, sp)
  vt = np.array([v.tool_id for v in views])
  seen = {t for q in train for t in q.relevant}
  unseen = np.array([not set(q.relevant) & seen for q in test])

  def hit1(scores, qs):
    top = scores.argmax(1)
    return np.array([top[i] in q.relevant for i, q in enumerate(qs)])

  names = [f"layer{l}_mean" for l in LAYERS] + ["last_position_final"]
  result = {}
  for j, name in enumerate(names):
    mu = fv[:, j].mean(0)
    unit = lambda x: (x - mu) / np.linalg.norm(x - mu, axis=-1, keepdims=True)
    V, Q, R = unit(fv[:, j]), unit(ft[:, j]), unit(fr[:, j])
    P = np.zeros((len(ds.corpus), V.shape[1]), np.float32)
    np.add.at(P, vt, V)
    nn = hit1(Q @ P.T, test)
    X = np.concatenate([V, np.repeat(R, [len(q.relevant) for q in train], 0)]).astype(np.float32)
    y = np.concatenate([vt, [t for q in train for t in q.relevant]])
    W, tx = jnp.asarray(P * 10.0), optax.adam(args.lr)
    st, Xj, yj = tx.init(W), jnp.asarray(X), jnp.asarray(y)

    @jax.jit
    def step(W, st, idx):
      loss = lambda W: optax.softmax_cross_entropy_with_integer_labels(Xj[idx] @ W.T, yj[idx]).mean()
      l, g = jax.value_and_grad(loss)(W)
      u, st = tx.update(g, st)
      return optax.apply_updates(W, u), st, l

    rng = np.random.default_rng(0)
    for _ in range(args.epochs):
      for idx in np.array_split(rng.permutation(len(X)), max(1, len(X) // 256)):
        W, st, _ = step(W, st, idx)
    lin = hit1(Q @ np.asarray(W).T, test)
    result[name] = {"nearest_view_test_hit@1": round(100 * nn.mean(), 1),
                    "linear_test_hit@1": round(100 * lin.mean(), 1),
                    "linear_test_hit@1_tools_without_training_query": round(100 * lin[unseen].mean(), 1),
                    "linear_train_hit@1": round(100 * hit1(R @ np.asarray(W).T, train).mean(), 1)}
    print(name, result[name], flush=True)
  print(json.dumps({"probe": result, "test_queries": len(test), "test_without_training_query": int(unseen.sum()),
                    "views": len(views), "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
  main()
