"""Language preservation (ToolWeaver section 5, its WikiText-2 check; Toolscaler's general-ability argument): does
teaching the model tool tokens change how it reads ordinary English? Held-out perplexity of the tuned model over the
base model's, for atomic tokens (one new token per tool, ToolGen) against code tokens (K per level, shared by tools).

  python experiments/perplexity.py [--methods atomic,numerical,hierarchical,semantic,toolweaver,toolscaler]

The papers' claim: codes disturb the language model less than atomic tokens (fewer new rows, each trained on many
tools). `evaluation/perplexity.py:language_preservation` scores base and tuned on the same held-out text (Python's
`pydoc_data` prose: no download); "tool tokens masked" is the tuned model with the new tokens' logits removed (what
free text sees when codes are only decoded under the trie). Caveat that matters here: the code engine freezes every
SmolLM2 layer and trains only the new tokens' output rows with a text term (`train.text_weight = 10`, which keeps
them below words on English), so the English rows cannot move at all; what is measured is how much probability
mass the new rows take from words, not a drift of the backbone as in the papers' full fine-tuning.

Scale: the points of `tokenizations.py` (first 200 BFCL tools, K = 32, L = 2, 40 epochs), read back, not retrained.
"""

import time

import common
import tokenizations

NAME = "perplexity"
COLUMNS = [("method", "tokenizer"), ("new_tokens", "new tokens"), ("ppl_base", "base ppl", ".2f"),
           ("ppl_tuned", "tuned ppl", ".2f"), ("ppl_ratio", "tuned / base", ".3f"),
           ("ppl_ratio_masked", "tuned / base (tool tokens masked)", ".3f"), ("test_ndcg@1", "test NDCG@1")]


def main(argv=None):
  ap = common.parser(NAME, __doc__)
  ap.add_argument("--methods", default=",".join(common.METHOD_CONFIGS))
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  methods = args.methods.split(",")
  rows = tokenizations.method_rows(methods, args)
  plot = common.bar_plot(methods, {"tuned / base": [r.get("ppl_ratio") for r in rows],
                                   "tool tokens masked": [r.get("ppl_ratio_masked") for r in rows]},
                         ylabel="held-out perplexity, tuned / base")
  return common.write(NAME, args, title="Language preservation: held-out perplexity, tuned / base",
                      columns=COLUMNS, rows=rows, plot=plot, t0=t0,
                      notes="1.0 = English read exactly as the base model reads it. The backbone is frozen in every "
                            "point (code engine): only the new rows can take probability from words.")


if __name__ == "__main__":
  main()
