"""Throughput metrics (tokens/s, estimated MFU) and the writers: TensorBoard event files, readable stdout, jsonl.

MFU = achieved model FLOP/s / peak FLOP/s of the devices, with the PaLM (Chowdhery et al. 2022, App. B) count
per trained token: 6 N + 12 L H Dh T, N = matmul parameters (all but the input embedding; the LM head counts).
Rematerialisation is not counted (it is overhead, not model FLOPs). Peak: dense bf16 per device from the vendor
sheets; unknown devices (CPU) report MFU as None rather than a made-up number.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Mapping

import jax

# Dense bf16 peak FLOP/s per jax device, matched on `device.device_kind` (lower-cased substring, first match wins).
PEAK_FLOPS = (
    ("v6 lite", 918e12), ("v6e", 918e12), ("v5p", 459e12), ("v5 lite", 197e12), ("v5e", 197e12),
    ("v4", 275e12), ("v3", 61.5e12), ("v2", 23e12),
    ("h200", 989e12), ("h100", 989e12), ("a100", 312e12), ("l4", 121e12), ("a10", 125e12),
)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  kind = (device or jax.devices()[0]).device_kind.lower()
  for key, flops in PEAK_FLOPS:
    if key in kind:
      return flops
  return None


def train_flops_per_token(config: Any, seq_len: int) -> float:
  """6 N + 12 L H Dh T for a LlamaConfig (N counts q/k/v/o, MLP and the LM head)."""
  c = config
  attn = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
  mlp = 3 * c.hidden_size * c.intermediate_size
  n = c.num_layers * (attn + mlp) + c.hidden_size * c.vocab_size
  return 6.0 * n + 12.0 * c.num_layers * c.num_heads * c.head_dim * seq_len


def mfu(config: Any, tokens_per_s: float, seq_len: int, num_devices: int | None = None) -> float | None:
  peak = peak_flops_per_device()
  if peak is None:
    return None
  n = num_devices or jax.device_count()
  return train_flops_per_token(config, seq_len) * tokens_per_s / (peak * n)


class MetricWriter:
  """One call per log event: stdout line (via tqdm.write when a bar is active), TensorBoard scalars, jsonl.

  Only process 0 writes (every host computes the same replicated metrics).
  """

  def __init__(self, workdir: str | pathlib.Path, stage: str, *, tensorboard: bool = True):
    self.stage = stage
    self.active = jax.process_index() == 0
    self.dir = pathlib.Path(workdir)
    self.tb = None
    if self.active:
      self.dir.mkdir(parents=True, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(str(self.dir / "tensorboard" / stage))
    self.jsonl = self.dir / f"metrics_{stage}.jsonl"

  def scalars(self, step: int, values: Mapping[str, Any], prefix: str = "train") -> None:
    if not self.active:
      return
    for k, v in values.items():
      if v is not None and self.tb is not None:
        self.tb.add_scalar(f"{self.stage}/{prefix}/{k}", float(v), step)

  def record(self, rows: list[Mapping[str, Any]]) -> None:
    """Per-step rows appended to metrics_<stage>.jsonl (the loss curve; a resumed run appends again)."""
    if not self.active or not rows:
      return
    with open(self.jsonl, "a") as f:
      for r in rows:
        f.write(json.dumps({k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, bool)) else v)
                            for k, v in r.items()}) + "\n")

  def line(self, text: str, bar: Any = None) -> None:
    if not self.active:
      return
    if bar is not None:
      bar.write(text)
    else:
      print(text, file=sys.stdout, flush=True)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.flush()
      self.tb.close()


def format_line(stage: str, step: int, total: int, m: Mapping[str, Any]) -> str:
  parts = [f"[{stage}] step {step}/{total}", f"loss {m['loss']:.4f}", f"acc {m['accuracy']:.3f}",
           f"lr {m['lr']:.3g}", f"|g| {m['grad_norm']:.3g}"]
  if m.get("tokens_per_s") is not None:
    parts.append(f"tok/s {m['tokens_per_s']:.0f}")
  if m.get("mfu") is not None:
    parts.append(f"MFU {100 * m['mfu']:.1f}%")
  return "  ".join(parts)
