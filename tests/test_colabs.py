"""The notebooks run top to bottom (nbclient) on the tiny config; the analysis notebook reads the quickstart's run."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # notebooks

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _execute(name: str, env: dict) -> nbformat.NotebookNode:
  nb = nbformat.read(ROOT / "colabs" / name, as_version=4)
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp("nb")


def test_quickstart_then_codebook_analysis(workdir):
  env = {"TOOLGEN_NOTEBOOK_WORKDIR": str(workdir), "TOOLGEN_ROOT": str(ROOT), "JAX_PLATFORMS": "cpu"}
  nb = _execute("quickstart.ipynb", env)
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "ndcg@1" in text  # the report table was printed
  assert (workdir / "report.json").exists()
  nb2 = _execute("codebook_analysis.ipynb", env)
  outs = [o for c in nb2.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert any("image/png" in o.get("data", {}) for o in outs)
  assert (workdir / "code_usage.png").exists()
