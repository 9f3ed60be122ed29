"""Checkpoint loading: GGUF metadata, q/k un-permutation, sharded safetensors (peak memory), clear errors."""

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from toolgen_jax.models import export, llama, weights

import _model_refs


@pytest.mark.slow
def test_gguf_config_matches_preset():
  config, params = _model_refs.smollm2_ours()
  preset = llama.LlamaConfig.smollm2_135m()
  assert config.replace(rms_norm_eps=preset.rms_norm_eps) == preset
  assert config.rms_norm_eps == pytest.approx(1e-5)
  shapes = jax.tree.map(lambda x: x.shape, params)
  assert shapes == jax.tree.map(lambda s: s.shape, llama.param_shapes(preset))


def test_unpermute_inverts_llama_cpp_permute():
  def permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  w = np.random.default_rng(0).normal(size=(3 * 64, 20)).astype(np.float32)
  np.testing.assert_array_equal(weights._unpermute(permute(w, 3), 3), w)
  assert not np.array_equal(permute(w, 3), w)


def _tiny_checkpoint(tmp_path, **kw):
  config = llama.LlamaConfig.tiny(**kw)
  params = llama.init_params(config, jax.random.key(0))
  out = export.export_hf(tmp_path / "ckpt", params, config, max_shard_bytes=40_000)
  return config, params, out


def test_sharded_safetensors_roundtrip(tmp_path):
  config, params, out = _tiny_checkpoint(tmp_path, qkv_bias=True, architecture="qwen2")
  index = json.loads((out / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 3
  c2, p2 = weights.load_pretrained(out)
  assert c2.replace(bos_token_id=None, eos_token_id=None) == config
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    weights.load_pretrained(tmp_path / "missing")
  config, params, out = _tiny_checkpoint(tmp_path)
  # shape mismatch: claim a wider hidden size than the tensors have
  cfg = json.loads((out / "config.json").read_text())
  (out / "config.json").write_text(json.dumps(cfg | {"intermediate_size": 100}))
  with pytest.raises(weights.CheckpointError, match=r"'model\.layers\.\d+\.mlp\.\w+_proj\.weight' has shape .* expected"):
    weights.load_pretrained(out)
  (out / "config.json").write_text(json.dumps(cfg | {"model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
  with pytest.raises(ValueError, match="unknown architecture"):
    weights.load_pretrained(out)
  (out / "config.json").write_text(json.dumps(cfg | {"num_hidden_layers": 3}))
  with pytest.raises(weights.CheckpointError, match="tensors missing"):
    weights.load_pretrained(out)
  (out / "config.json").write_text(json.dumps(cfg | {"num_hidden_layers": 1}))
  with pytest.raises(weights.CheckpointError, match="unexpected tensor 'model.layers.1"):
    weights.load_pretrained(out)
  (out / "config.json").write_text(json.dumps(cfg))
  shard = sorted(out.glob("model-*.safetensors"))[1]
  shard.unlink()
  with pytest.raises(FileNotFoundError, match=shard.name):
    weights.load_pretrained(out)


PEAK_SCRIPT = textwrap.dedent("""
    import json, os, sys, threading, time
    import jax, numpy as np
    from toolgen_jax.models import weights
    jax.numpy.zeros(1).block_until_ready()
    # anonymous resident memory: the weights' copies; file pages of the memory-mapped shards are page cache
    rss = lambda: int([l for l in open("/proc/self/status") if l.startswith("RssAnon")][0].split()[1]) * 1024
    before, peak, done = rss(), [0], []
    def sample():  # ru_maxrss would hide the load under the import-time high-water mark
      while not done:
        peak[0] = max(peak[0], rss()); time.sleep(0.002)
    t = threading.Thread(target=sample); t.start()
    config, params = weights.load_pretrained(sys.argv[1])
    jax.block_until_ready(params)
    done.append(1); t.join()
    size = sum(x.nbytes for x in jax.tree.leaves(params))
    print(json.dumps({"weights_bytes": size, "peak_increase_bytes": peak[0] - before}))
""")


@pytest.mark.slow
def test_sharded_load_peak_memory(tmp_path):
  """~240 MB in 8 shards: host peak grows by about one copy of the weights, not two."""
  config = llama.LlamaConfig.tiny(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_layers=8,
                                  num_heads=8, num_kv_heads=4, head_dim=64)
  params = llama.init_params(config, jax.random.key(0))
  out = export.export_hf(tmp_path / "big", params, config, max_shard_bytes=32 * 2**20)
  del params
  assert len(list(out.glob("model-*.safetensors"))) >= 7
  res = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(out)], capture_output=True, text=True, check=True)
  r = json.loads(res.stdout.strip().splitlines()[-1])
  ratio = r["peak_increase_bytes"] / r["weights_bytes"]
  print(f"sharded load: weights {r['weights_bytes'] / 2**20:.0f} MiB, peak anonymous RSS increase "
        f"{r['peak_increase_bytes'] / 2**20:.0f} MiB ({ratio:.2f}x)")
  assert ratio < 1.5, r  # one copy + the largest stacked tensor in flight
