"""The inspect CLI prints the statistics for a source (fixture file here; bfcl with no --path)."""

import json
import subprocess
import sys

import pytest

from toolgen_jax import assets
from toolgen_jax.data import inspect as data_inspect


def test_inspect_fixture(tmp_path, capsys):
  recs = [{"query_id": i, "query": f"q{i}", "relevant APIs": [["A", "x"], ["A", "y"]],
           "api_list": [{"tool_name": "A", "api_name": n, "category_name": "C", "api_description": "d"}
                        for n in ("x", "y")]} for i in range(3)]
  f = tmp_path / "G2_instruction.json"
  f.write_text(json.dumps(recs))
  assert data_inspect.main(["--source=stabletoolbench", f"--path={f}", "--json"]) == 0
  stats = json.loads(capsys.readouterr().out)
  assert stats["tools"] == 2 and stats["queries"] == 3 and stats["queries_per_group"] == {"I2": 3}
  # StableToolBench files are test queries: the co-use graph (a training signal) counts none of them
  assert stats["relevant_per_query"] == {"2": 3} and stats["cooccurrence_edges"] == 0
  assert data_inspect.main(["--source=stabletoolbench", f"--path={f}"]) == 0
  out = capsys.readouterr().out
  assert "relevant_per_query" in out and "cooccurrence_edges" in out and "[stabletoolbench]" in out


def test_inspect_bfcl_default_cli():
  try:
    assets.bfcl_data_dir()
  except assets.MissingAssetError as e:
    pytest.skip(str(e))
  r = subprocess.run([sys.executable, "-m", "toolgen_jax.data.inspect", "--source=bfcl", "--json"],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  stats = json.loads(r.stdout.strip().splitlines()[-1])
  assert (stats["tools"], stats["queries"]) == (2555, 2501)
