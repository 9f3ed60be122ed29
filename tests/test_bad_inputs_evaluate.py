"""Issue #17, the evaluate CLI on bad inputs: a corrupt or mistyped config.json in the workdir, a deep-nested query
file and a ToolBench answer whose `answer_generation` is a list are one line naming the file, exit status 2."""

import json

from toolgen_jax import artifact, evaluate


def _queries(tmp_path):
  f = tmp_path / "G1_instruction.json"
  f.write_text(json.dumps([{"query": "find a", "query_id": 1, "relevant APIs": [["T", "a"]],
                            "api_list": [{"tool_name": "T", "api_name": "a", "api_description": "does a"}]}]))
  return f


def _one_line(capsys, *needles):
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and err.startswith("error: "), err
  for n in needles:
    assert n in err, err
  return err


def _wd(tmp_path, text):
  wd = tmp_path / "wd"
  wd.mkdir()
  (wd / "config.json").write_text(text)
  return wd


def test_corrupt_config_json_names_the_file(tmp_path, capsys):
  wd = _wd(tmp_path, '{"eval": {\n')
  assert evaluate.main([f"--workdir={wd}", f"--queries={_queries(tmp_path)}", "--methods=bm25"]) == 2
  _one_line(capsys, str(wd / "config.json"), "malformed JSON at line 2")


def test_config_json_eval_ks_scalar(tmp_path, capsys):
  wd = _wd(tmp_path, json.dumps({"eval": {"ks": 5}}))
  assert evaluate.main([f"--workdir={wd}", f"--queries={_queries(tmp_path)}", "--methods=bm25"]) == 2
  _one_line(capsys, str(wd / "config.json"), "field 'eval.ks'", "expected a list, got integer")


def test_config_json_values_are_validated(tmp_path):
  wd = _wd(tmp_path, json.dumps({"codebook": {"method": "rqvea"}, "eval": {"ks": [1, 3]}}))
  try:
    artifact.load_config(wd)
  except ValueError as e:
    assert str(wd / "config.json") in str(e) and "did you mean 'rqvae'?" in str(e)
  else:
    raise AssertionError("a bad codebook.method in config.json was accepted")
  wd2 = tmp_path / "ok"
  wd2.mkdir()
  (wd2 / "config.json").write_text(json.dumps({"eval": {"ks": [1, 3]}, "train": {"steps": 7}}))
  c = artifact.load_config(wd2)
  assert c.eval.ks == (1, 3) and c.train.steps == 7


def test_deep_nested_query_file(tmp_path, capsys):
  f = tmp_path / "G1_instruction.json"
  f.write_text("[" * 100_000 + "]" * 100_000)
  assert evaluate.main([f"--workdir={tmp_path / 'wd'}", f"--queries=stabletoolbench:{f}", "--methods=bm25"]) == 2
  _one_line(capsys, str(f), "nested deeper than")


def test_toolbench_answer_generation_a_list(tmp_path, capsys):
  root = tmp_path / "tb"
  (root / "answer" / "G1_answer").mkdir(parents=True)
  (root / "answer" / "G1_answer" / "1_dfs.json").write_text(json.dumps({"answer_generation": [1]}))
  assert evaluate.main([f"--workdir={tmp_path / 'wd'}", f"--queries=toolbench:{root}", "--methods=bm25"]) == 2
  _one_line(capsys, "1_dfs.json", "field 'answer_generation'", "expected object, got array")
