"""The trained model as a `Policy`: Llama (toolgen_jax.models.llama) + tool-code trie (toolgen_jax.decoding).

Each of the three generations of a step is a prompt in the agent chat format (`toolgen_jax.prompts`) followed by
  think:       greedy free text (`decoding.constrained.generate`; with reuse_cache `generate_drafted`, the same text
               in fewer model calls) until EOS or `think_max_tokens`;
  choose_tool: trie-constrained beam search (`decoding.constrained.retrieve`); candidate tools (and Finish, which is
               one more code sequence in the trie, `finish_id`) restrict the trie through a tool mask, so a tool
               outside the set cannot be decoded at all;
  arguments:   with `constrained_arguments`, the JSON skeleton comes from the tool's schema and the model fills in
               the values (enum / boolean / optional-key choices scored by the model's log-probabilities, strings
               and numbers by greedy text cut at the closing quote); else greedy free text.
`think_batch`, `choose_tool_batch` and `arguments_batch` run the prompts of many steps (concurrent requests, or
every step of an evaluation) through one batched prefill and one decode; `think`, `choose_tool` and `arguments` are
batches of one. Argument filling is batched too: every step's schema skeleton (`schema.constrained_argument_steps`)
advances in lockstep, and each round's choices and free-text values are one batched scoring call and one batched
greedy decode over all steps.

KV-cache reuse (`reuse_cache=True`, `decoding.prefix_cache`): each prompt of a step extends the one before it (the
action prompt is the thought prompt plus the thought; the arguments prompt is the action prompt plus the code and
the tool's documentation; each value is the arguments prompt plus the JSON so far), so the policy keeps the KV
cache of the last stage's prompts and continues the next stage's from the cached row sharing the longest token
prefix: the prompt is prefilled once per step and only what it grew by is run. The thought's cache is kept with
the thought in it (the decode loop ran those tokens already), and with reuse the free text is decoded with
`draft_tokens` prompt-lookup drafts per call (`decoding.speculative`: the same greedy text in fewer calls). The
drafts are looked up in the prompt, the text so far and the last `draft_memory` tokens this policy generated
(earlier thoughts and argument values: an agent's outputs repeat phrases across steps and requests, as
SuffixDecoding, Oliaro et al. 2024, drafts from previous outputs). A draft never changes the text, only how many
calls it takes; what the memory does reveal is timing (a text like an earlier one decodes faster), as prefix
caching does.
`reuse_cache=False` re-prefills every prompt and decodes one token per call (the reference the reuse is tested
against). The cache is policy state: call `release_cache()` when a batch of steps is done (the serving engine
does), and it is dropped when the weights change.
The tokenizer is used through a small `TextCodec` (encode / decode / chat_text / eos_id / pad_id) so any tokenizer
with a chat template fits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from toolgen_jax import prompts as fmt
from toolgen_jax.agent import schema as schema_lib
from toolgen_jax.agent.policy import Policy, ToolChoice
from toolgen_jax.data.records import Message, Tool, ToolCorpus
from toolgen_jax.decoding import constrained
from toolgen_jax.decoding import prefix_cache as pc
from toolgen_jax.decoding import speculative
from toolgen_jax.decoding import trie as trie_lib
from toolgen_jax.models import llama


class TextCodec(Protocol):
  eos_id: int
  pad_id: int

  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...

  def chat_text(self, turns: Sequence[dict]) -> str:
    """The chat template applied to `turns`, ending with the assistant generation prompt."""


class HFCodec:
  """`TextCodec` over a Hugging Face (fast) tokenizer with a chat template."""

  def __init__(self, tokenizer: Any, eos_id: int | None = None):
    self.tok = tokenizer
    eos = eos_id if eos_id is not None else getattr(tokenizer, "eos_id", None)
    self.eos_id = int(eos if eos is not None else tokenizer.eos_token_id)  # pass the end-of-turn id for chat models
    pad = getattr(tokenizer, "pad_id", None)
    self.pad_id = int(pad if pad is not None else (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                                    else self.eos_id))

  def encode(self, text):
    return list(self.tok.encode(text, add_special_tokens=False))

  def decode(self, ids):
    return self.tok.decode(list(ids), skip_special_tokens=False)

  def chat_text(self, turns):
    return self.tok.apply_chat_template(list(turns), tokenize=False, add_generation_prompt=True)


@functools.partial(jax.jit, static_argnames=("config",))
def _token_logprobs(params, config: llama.LlamaConfig, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, T] right-padded sequences -> [B, T-1] log p(tokens[:, 1:] | prefix)."""
  logits, _ = llama.forward(params, config, tokens, attention_mask=mask)
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), -1)
  return jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]


def _relabel(trie: trie_lib.Trie, old: int, new: int) -> trie_lib.Trie:
  """The same trie with tool `old` renamed `new`: the tables do not change, only the id stored at its row and
  terminal node (`Trie.remove` + `add` would retire the id `old` for good)."""
  return dataclasses.replace(trie, tool_ids=np.where(trie.tool_ids == old, new, trie.tool_ids).astype(np.int32),
                             node_tool=np.where(trie.node_tool == old, new, trie.node_tool).astype(np.int32))


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


class ModelPolicy(Policy):

  def __init__(self, params, config: llama.LlamaConfig, codec: TextCodec, trie: trie_lib.Trie, corpus: ToolCorpus,
               *, finish_id: int | None, beam_size: int = 5, think_max_tokens: int = 96,
               arguments_max_tokens: int = 128,
               constrained_arguments: bool = True, system_prompt: str | None = fmt.SYSTEM_PROMPT,
               pad_multiple: int = 32, normalize: str = "full", reuse_cache: bool = True,
               beam_cache_bytes: int = 2 << 30, draft_tokens: int = 1, draft_memory: int = 1024):
    if finish_id is not None and finish_id not in set(trie.live_tool_ids.tolist()):
      raise ValueError(f"finish_id={finish_id} is not a live tool id of the trie (Finish needs its own codes)")
    self.params, self.config, self.codec, self.trie, self.corpus = params, config, codec, trie, corpus
    self.finish_id, self.beam_size = finish_id, beam_size
    self.normalize = normalize  # config.decode.normalize: score action codes as the model was trained
    self.think_max_tokens, self.arguments_max_tokens = think_max_tokens, arguments_max_tokens
    self.constrained, self.system_prompt, self.pad_multiple = constrained_arguments, system_prompt, pad_multiple
    self.num_tools = int(max(trie.tool_ids.max(), -1 if finish_id is None else finish_id)) + 1
    self._dtrie = trie.device()
    self.reuse_cache = reuse_cache
    if draft_tokens < 0:
      raise ValueError(f"draft_tokens must be >= 0, got {draft_tokens}")
    self.draft_tokens = draft_tokens  # with reuse_cache: prompt-lookup tokens verified per decode call
    if draft_memory < 0:
      raise ValueError(f"draft_memory must be >= 0, got {draft_memory}")
    self.draft_memory = draft_memory  # tokens of earlier generations the drafts are also looked up in
    self._memory: list[int] = []  # those tokens, -1 between texts (at most draft_memory)
    self.beam_cache_bytes = beam_cache_bytes  # the action beam's copies of the KV cache, at most (row chunks)
    self._prefix: pc.PrefixCache | None = None  # the last stage's prompts (reuse_cache)
    self._prefix_of = None  # the params that cache was computed with
    self.decode_calls = 0  # model calls of the free-text decoding so far (reuse_cache), for benchmarks

  def release_cache(self, keep_shared: bool = True) -> None:
    """Drops the kept KV cache (its memory: rows x prompt length x layers) after a batch of steps, keeping only
    (`keep_shared`) one row of the tokens all its prompts start with (`prefix_cache.shared`: the chat header and
    system prompt), which the next batch's prompts continue from instead of prefilling it again."""
    keep = keep_shared and self.reuse_cache and self._prefix_of is self.params
    self._prefix = pc.shared(self._prefix, multiple=self.pad_multiple) if keep else None
    self._prefix_of = self.params if self._prefix is not None else None

  def _extend(self, ids: Sequence[Sequence[int]], *, extra: int, limits=None, logprobs: bool = False,
              remember: bool = False) -> pc.Continued:
    """The prompts `ids` continued from the kept cache (a fresh prefill when there is none, or when the weights
    changed since); `remember` keeps the result as the cache the next stage continues from."""
    prefix = self._prefix if self._prefix_of is self.params else None
    out = pc.extend(self.params, self.config, prefix, ids, pad_id=self.codec.pad_id, multiple=self.pad_multiple,
                    chunk_multiple=16, extra=extra, limits=limits, logprobs=logprobs)
    if remember:
      self._prefix, self._prefix_of = out.prefix, self.params
    return out

  def add_tools(self, tools: Sequence[Tool], codes) -> list[int]:
    """Adds tools the model has not seen, coded from their documentation (`codes` [n, D], e.g. from the codebook's
    `add_tools`), to the corpus and the trie; returns their corpus ids. Tools already in the corpus (same key) keep
    their id and codes. The trie's ids are corpus ids, so when a new corpus id would take Finish's id, Finish moves
    to a fresh id first (same codes). Mutates the policy: call under the backend's lock."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or len(codes) != len(tools):
      raise ValueError(f"codes must be [{len(tools)}, D], got {codes.shape}")
    out, new_ids, new_rows, pending = [], [], [], {}
    nxt = len(self.corpus)
    for i, t in enumerate(tools):
      tid = self.corpus.get_id(*t.key)
      if tid is None:
        tid = pending.setdefault(t.key, nxt)
        if tid == nxt:
          new_ids.append(tid)
          new_rows.append(i)
          nxt += 1
      out.append(tid)
    trie = self.trie
    finish_id = self.finish_id
    if finish_id is not None and finish_id in new_ids:
      finish_id = max(max(new_ids), int(trie.tool_ids.max())) + 1
      trie = _relabel(trie, self.finish_id, finish_id)
    if new_ids:
      trie = trie.add(codes[new_rows], new_ids)  # raises (corpus untouched) if the codes clash
      for i in new_rows:
        self.corpus.add(tools[i])
    self.set_trie(trie, finish_id)
    return out

  def set_trie(self, trie: trie_lib.Trie, finish_id: int | None) -> None:
    self.trie, self.finish_id, self._dtrie = trie, finish_id, trie.device()
    self.num_tools = int(max(trie.tool_ids.max(), -1 if finish_id is None else finish_id)) + 1

  # --- rendering -------------------------------------------------------------------------------------------------

  def code_text(self, tool_id: int | None) -> str:
    if tool_id is None:  # a model without a Finish code (not agent-tuned): Finish is written as the word
      return "Finish"
    toks = self.trie.tokens_of([tool_id])[0]
    toks = [int(t) for t in toks if t >= 0 and t != self.trie.end_token]
    return self.codec.decode(toks)

  def action_text(self, m: Message) -> str:
    return self.code_text(self.finish_id if m.action is None else m.action)

  def tool_of(self, m: Message) -> Tool:
    return fmt.FINISH_TOOL if m.action is None else self.corpus[m.action]

  def _turns(self, history, stage, **kw) -> list[dict]:
    return fmt.prompt_turns(history, stage, action_text=self.action_text, tool_of=self.tool_of,
                            system_prompt=self.system_prompt, **kw)

  def _ids(self, text: str) -> list[int]:
    ids = self.codec.encode(text)
    if not ids:
      raise ValueError("empty prompt")
    return ids

  def _batch(self, prompts: Sequence[str]) -> tuple[jax.Array, jax.Array]:
    """Left-padded [Q', T] tokens and mask; Q' rounds the batch up to a power of two (repeating the first prompt)
    and T to `pad_multiple`, so that batches of similar sizes share one compiled program."""
    ids = [self._ids(p) for p in prompts]
    ids += [ids[0]] * (_pow2(len(ids)) - len(ids))
    tokens, mask = constrained.left_pad(ids, self.codec.pad_id, self.pad_multiple)
    return jnp.asarray(tokens), jnp.asarray(mask)

  def count_tokens(self, text: str) -> int:
    return len(self.codec.encode(text))

  # --- the three generations -------------------------------------------------------------------------------------

  def generate_texts(self, prompts: Sequence[str], max_tokens: int | Sequence[int], stop: Sequence[str] = (), *,
                     remember: bool = False) -> list[str]:
    """Greedy continuations of `prompts` (one batched prefill and decode) until EOS / `max_tokens` (one for all,
    or one per prompt), each cut before its first stop string (`stop`: strings for all, or a list per prompt)."""
    limits = [int(max_tokens)] * len(prompts) if np.ndim(max_tokens) == 0 else [int(m) for m in max_tokens]
    stops = [list(x) for x in stop] if stop and not isinstance(stop[0], str) else [list(stop)] * len(prompts)
    longest = pc.bucket(max(limits), 8)  # a few decode lengths, so batches share compiled programs; rows cut below
    if self.reuse_cache:
      rows = self._generate_cached([self._ids(p) for p in prompts], longest, remember)
    else:
      tokens, mask = self._batch(prompts)
      rows = np.asarray(constrained.generate(self.params, self.config, tokens, mask, beam_size=1, max_len=longest,
                                             eos_id=self.codec.eos_id).tokens)[:, 0]
    texts = []
    for row, n, st in zip(rows[:len(prompts)].tolist(), limits, stops):
      out = []
      for t in row[:n]:  # greedy rows are independent: a shorter limit is the longer one's first n tokens
        if t < 0 or t == self.codec.eos_id:
          break
        out.append(t)
      text = self.codec.decode(out)
      for s in st:
        if s in text:
          text = text[:text.index(s)]
      texts.append(text)
    return texts

  def _generate_cached(self, ids: list[list[int]], max_len: int, remember: bool) -> np.ndarray:
    """Greedy tokens [R', max_len] after the prompts `ids`, continued from the kept cache and decoded with
    `draft_tokens` prompt-lookup drafts per call; `remember` keeps the cache after the prompts *and* the generated
    tokens run so far, so that the next prompt, which contains the text, continues after it."""
    cont = self._extend(ids, extra=speculative.capacity(max_len, self.draft_tokens))
    held = cont.prefix.tokens
    # The lookup's source: the memory of earlier generations (a fixed width, so its growth compiles nothing new),
    # then each prompt, left padded with -1 to one bucketed width. The latest match of the longest n-gram wins, so
    # a match in the row's own prompt or text is taken over an equally long one in the memory.
    context, _ = constrained.left_pad(held, -1, pc.bucket(max(map(len, held)), 64))
    if self.draft_tokens and self.draft_memory:
      memory = np.full((len(held), self.draft_memory), -1, np.int32)
      if self._memory:
        memory[:, -len(self._memory):] = self._memory
      context = np.concatenate([memory, context], axis=1)
    res = constrained.generate_drafted(self.params, self.config, cont.last_logits, cont.prefix.cache,
                                       jnp.asarray(context), max_len=max_len, eos_id=self.codec.eos_id,
                                       draft=self.draft_tokens)
    tokens, fed = np.asarray(res.tokens), np.asarray(res.fed)
    self.decode_calls += int(res.calls)
    if self.draft_tokens and self.draft_memory:
      for row in tokens[:len(ids)].tolist():
        self._memory += [-1] + [t for t in row if t >= 0]
      self._memory = self._memory[-self.draft_memory:]
    if remember:
      text = tuple(tuple(p) + tuple(int(t) for t in tokens[r, :fed[r]]) for r, p in enumerate(held))
      self._prefix, self._prefix_of = pc.PrefixCache(res.cache, text), self.params
    return tokens

  def generate_text(self, prompt: str, max_tokens: int, stop: Sequence[str] = ()) -> str:
    return self.generate_texts([prompt], max_tokens, stop)[0]

  def think(self, history):
    return self.think_batch([history])[0]

  def think_batch(self, histories):
    prompts = [self.codec.chat_text(self._turns(h, "think")) for h in histories]
    return [t.strip() for t in self.generate_texts(prompts, self.think_max_tokens, remember=True)]

  def _allowed_ids(self, candidates, allow_finish) -> list[int] | None:
    """The trie ids a step may decode (None: all of them)."""
    if candidates is None and allow_finish:
      return None
    ids = list(range(self.num_tools)) if candidates is None else [int(c) for c in candidates]
    ids = [i for i in ids if 0 <= i < self.num_tools and i != self.finish_id]
    return ids + ([self.finish_id] if allow_finish and self.finish_id is not None else [])

  def choose_tool(self, history, thought, candidates, *, k=1, allow_finish=True):
    return self.choose_tool_batch([(history, thought, candidates, allow_finish)], k=k)[0]

  def choose_tool_batch(self, steps, *, k=1):
    """`choose_tool` for many (history, thought, candidates, allow_finish) steps: one batched prefill and one
    trie-constrained beam search, each row restricted to its own candidates by a [Q, num_tools] tool mask."""
    out: list[list[ToolChoice]] = [[] for _ in steps]
    rows, masks = [], []
    for i, (history, thought, candidates, allow_finish) in enumerate(steps):
      ids = self._allowed_ids(candidates, allow_finish)
      if ids == []:  # nothing to decode: Finish (without a Finish code, the only legal action left) or nothing
        out[i] = [ToolChoice(None, 0.0)] if allow_finish else []
        continue
      rows.append(i)
      masks.append(list(range(self.num_tools)) if ids is None else ids)
    if not rows:
      return out
    prompts = [self.codec.chat_text(self._turns(steps[i][0], "act", thought=steps[i][1])) for i in rows]
    if self.reuse_cache:
      cont = self._extend([self._ids(p) for p in prompts], extra=self.trie.depth, remember=True)
      first, cache = cont.last_logits, cont.prefix.cache
      batch = first.shape[0]
    else:
      tokens, mask = self._batch(prompts)
      batch = tokens.shape[0]
    tool_mask = None
    if any(len(m) < self.num_tools for m in masks):
      masks += [masks[0]] * (batch - len(masks))
      tool_mask = jnp.asarray(trie_lib.tool_mask_from_ids(masks, self.num_tools))
    if self.reuse_cache:
      res = self._retrieve_in_chunks(first, cache, tool_mask, max(k, self.beam_size))
    else:
      res = constrained.retrieve(self.params, self.config, tokens, mask, self._dtrie,
                                 beam_size=max(k, self.beam_size), tool_mask=tool_mask, normalize=self.normalize)
    tool_ids, scores = np.asarray(res.tool_ids).tolist(), np.asarray(res.scores).tolist()
    for j, i in enumerate(rows):
      if self.trie.shared_codes:  # a shared leaf: its members within this step's candidates, at the leaf's score
        pool = None if len(masks[j]) >= self.num_tools else set(masks[j])
        tool_ids[j], scores[j] = self.trie.expand(tool_ids[j], scores[j], allowed=pool)
      out[i] = [ToolChoice(None if tid == self.finish_id else tid, float(sc))
                for tid, sc in zip(tool_ids[j], scores[j]) if tid >= 0][:k]
    return out

  def _retrieve_in_chunks(self, first, cache, tool_mask, beam: int):
    """`retrieve_from` over row chunks small enough that the beam's copies of the cache (rows x beam x slots x
    layers) stay within `beam_cache_bytes`: long histories (ToolBench observations) times a batch of 8 times 5
    beams would otherwise need tens of GB."""
    rows = first.shape[0]
    per_row = beam * 2 * cache.k.nbytes // cache.k.shape[1]  # one row's keys and values, copied per beam
    chunk = max(1, min(rows, self.beam_cache_bytes // max(per_row, 1)))
    chunk = 1 << (chunk.bit_length() - 1)  # a power of two, so the chunks share one compiled program
    parts = []
    for lo in range(0, rows, chunk):
      sl = slice(lo, lo + chunk)
      part = cache.replace(k=cache.k[:, sl], v=cache.v[:, sl], mask=cache.mask[sl], next_pos=cache.next_pos[sl])
      parts.append(constrained.retrieve_from(self.params, self.config, first[sl], part, self._dtrie, beam_size=beam,
                                             tool_mask=None if tool_mask is None else tool_mask[sl],
                                             normalize=self.normalize))
    if len(parts) == 1:
      return parts[0]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)

  def arguments(self, history, thought, tool):
    return self.arguments_batch([(history, thought, tool)])[0]

  def _input_prompt(self, history, thought, tool) -> str:
    tid = self.finish_id if tool.id == fmt.FINISH_TOOL.id else tool.id
    return self.codec.chat_text(self._turns(history, "input", thought=thought, tool=tool,
                                            action=self.code_text(tid)))

  def arguments_batch(self, steps):
    """Action Input for each (history, thought, tool): the arguments prompts prefilled together (continuing the
    action prompts' cache), then every schema skeleton advanced in lockstep, one batched call per round."""
    prompts = [self._input_prompt(*s) for s in steps]
    if not self.constrained:
      return [t.strip() for t in self.generate_texts(prompts, self.arguments_max_tokens)]
    if self.reuse_cache:
      self._extend([self._ids(p) for p in prompts], extra=0, remember=True)
    gens = [schema_lib.constrained_argument_steps(tool.parameters, max_string_chars=4 * self.arguments_max_tokens)
            for _, _, tool in steps]
    out: list[str | None] = [None] * len(steps)
    calls: dict[int, tuple] = {}
    for i, g in enumerate(gens):
      try:
        calls[i] = next(g)
      except StopIteration as done:
        out[i] = done.value
    while calls:
      answers = self._answer_calls({i: (prompts[i], c) for i, c in calls.items()})
      for i in list(calls):
        try:
          calls[i] = gens[i].send(answers[i])
        except StopIteration as done:
          out[i] = done.value
          del calls[i]
    return out

  def _answer_calls(self, calls: dict[int, tuple[str, tuple]]) -> dict[int, Any]:
    """One round of argument filling: every ("choose", ...) call scored in one batch, every ("text", ...) call
    generated in one batch."""
    answers: dict[int, Any] = {}
    choose = [(i, p, c) for i, (p, c) in calls.items() if c[0] == "choose"]
    text = [(i, p, c) for i, (p, c) in calls.items() if c[0] == "text"]
    if choose:  # a round of choices only: keep their cache, every next prompt extends its step's chosen option
      scores = self.score_continuations_batch([(p + c[1], c[2]) for _, p, c in choose], remember=not text)
      answers |= {i: int(np.argmax(sc)) for (i, _, _), sc in zip(choose, scores)}
    if text:
      limits = [min(self.arguments_max_tokens, max(8, c[3])) for _, _, c in text]
      got = self.generate_texts([p + c[1] for _, p, c in text], limits, [c[2] for _, _, c in text])
      answers |= {i: g[:c[3]] for (i, _, c), g in zip(text, got)}
    return answers

  def score_continuations(self, prompt: str, options: Sequence[str]) -> np.ndarray:
    """Sum of log-probabilities of each option's tokens after `prompt` (one batched forward pass)."""
    return self.score_continuations_batch([(prompt, options)])[0]

  def score_continuations_batch(self, items: Sequence[tuple[str, Sequence[str]]], *,
                                remember: bool = False) -> list[np.ndarray]:
    """`score_continuations` for many (prompt, options) at once: every option of every prompt is one row.
    `remember` (with reuse_cache): keep these rows' cache as the one the next prompts continue from."""
    seqs, starts, owner = [], [], []
    for j, (prompt, options) in enumerate(items):
      base = self._ids(prompt)
      for o in options:
        ids = self._ids(prompt + o)
        common = pc.common_prefix(base, ids)  # tokens may merge across the boundary: score from the first that differs
        seqs.append(ids)
        starts.append(max(common, 1))
        owner.append(j)
    if self.reuse_cache:
      cont = self._extend(seqs, extra=0, limits=[s - 1 for s in starts], logprobs=True, remember=remember)
      lp, t = np.asarray(cont.logprobs), cont.width
      flat = [float(lp[i, t - len(s) + starts[i] - 1:t - 1].sum()) for i, s in enumerate(seqs)]
    else:
      t = _round_up(max(map(len, seqs)), self.pad_multiple)
      tokens = np.full((len(seqs), t), self.codec.pad_id, np.int32)
      mask = np.zeros((len(seqs), t), np.int32)
      for i, s in enumerate(seqs):
        tokens[i, :len(s)], mask[i, :len(s)] = s, 1
      lp = np.asarray(_token_logprobs(self.params, self.config, jnp.asarray(tokens), jnp.asarray(mask)))
      flat = [float(lp[i, starts[i] - 1:len(s) - 1].sum()) for i, s in enumerate(seqs)]
    out = [[] for _ in items]
    for j, v in zip(owner, flat):
      out[j].append(v)
    return [np.array(v) for v in out]
