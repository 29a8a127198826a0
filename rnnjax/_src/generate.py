"""Generation: a `sequence_model` with a vocabulary continues a prompt token by token.

`generate` runs the prompt through the model once (with the model's engine), then one
`lax.scan` feeds each sampled token back. The whole of it is one jitted program, cached by
the model, the shapes, `num_steps` and the static options (greedy or not, `top_k`, whether a
nucleus is cut), so a second call of the same shapes does not trace again; `temperature`,
`top_p`, the key, the params and the prompt's values are arguments of that program.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rnnjax._src import checks
from rnnjax._src import model as model_lib

_FN = "rnnjax.generate"


def generate(model: model_lib.SequenceModel, params: model_lib.SequenceModelParams,
             prompt: Any, num_steps: int, *, key: jax.Array | None,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             carry: Any = None) -> jax.Array:
  """Continues token prompts with `num_steps` tokens drawn from a sequence model.

  ```text
  generate :: (model, params, prompt[P, ...], num_steps) -> tokens[num_steps, ...]
  ```

  The loop it equals (for a `Cell` core; every core, stacks and `Layer`s included,
  runs the same way through `model.apply`):

  ```python
  logits, carry = model.apply(params, prompt, carry)          # [P, ..., V]
  logits, tokens = logits[-1], []
  for i in range(num_steps):
    token = pick(logits, jax.random.fold_in(key, i))            # [...]
    tokens.append(token)
    logits, carry = model.apply(params, token[None], carry)
    logits = logits[0]
  ```

  where `pick` is `argmax` at `temperature=0`, else `jax.random.categorical` of
  `logits / temperature` after the top-k and nucleus (top-p) filters. The filters
  follow Hugging Face's order: the temperature first, then top-k (the `top_k` largest
  logits are kept, ties at the k-th included), then top-p (the most probable tokens
  are kept, in decreasing probability under `softmax(logits / temperature)`, up to
  and including the first one whose cumulative probability reaches `top_p`; the most
  probable token is always kept). The loop's last call of `model.apply` is not made.

  It runs as one jitted `lax.scan`: the program is compiled once per model, prompt
  shape, `num_steps` and static option (greedy or not, `top_k`, `top_p` set or not);
  other temperatures, `top_p` values, keys, params and prompts reuse it.

  Args:
    model: a `rnnjax.sequence_model` built with `vocab_size=V` and `output_size=V`.
      A causal core is what makes sense (a bidirectional one runs, but its backward
      direction sees one token at a time).
    params: the model's params (`model.init`).
    prompt: integer token ids in `[0, V)`, `[P]` for one sequence or `[P, B]` for a
      batch, `P >= 1`. Concrete ids are checked; under `jit` an out-of-range id gives
      NaN logits.
    num_steps: how many tokens to generate, `>= 1`.
    key: a PRNG key; generated step `i` draws with `jax.random.fold_in(key, i)`. It
      may be None at `temperature=0` (greedy decoding draws nothing).
    temperature: `>= 0`; logits are divided by it. `0` is greedy decoding (argmax;
      `top_k` and `top_p` then change nothing).
    top_k: if set (`>= 1`), sample among the `top_k` most likely tokens only (all of
      them when `top_k >= V`).
    top_p: if set, in `(0, 1]`: nucleus sampling, among the most likely tokens whose
      probability adds up to `top_p`. `1` keeps every token.
    carry: the core's carry before the prompt (batch shape `[]` or `[B]`, as the
      prompt's); None for `model.initial_carry`.

  Returns:
    The generated tokens only, int32 `[num_steps]` or `[num_steps, B]`.

  Examples:
    >>> import jax, jax.numpy as jnp, rnnjax
    >>> model = rnnjax.sequence_model(rnnjax.gru(16), input_size=0, output_size=10,
    ...                               vocab_size=10, embed_size=8)
    >>> params = model.init(jax.random.key(0))
    >>> tokens = rnnjax.generate(model, params, jnp.array([1, 2, 3]), 5,
    ...                          key=jax.random.key(1), top_k=3)
    >>> tokens.shape, tokens.dtype
    ((5,), dtype('int32'))
  """
  vocab = _check_model(model, params)
  prompt = _check_prompt(prompt, vocab)
  num_steps = checks.positive_int(_FN, "num_steps", num_steps)
  temperature = checks.real_number(_FN, "temperature", temperature)
  if temperature < 0:
    raise ValueError(f"{_FN}: `temperature` must be >= 0 (0 for greedy decoding), got "
                     f"temperature={temperature!r}.")
  greedy = temperature == 0.0
  key = checks.key(_FN, "key", key, optional=greedy)
  if top_k is not None:
    top_k = min(checks.positive_int(_FN, "top_k", top_k), vocab)
  if top_p is not None:
    top_p = checks.real_number(_FN, "top_p", top_p)
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f"{_FN}: `top_p` must be in (0, 1] (the nucleus' probability mass), "
                       f"got top_p={top_p!r}. Pass None (or 1) to sample from every token.")
  return _generate(model, params, prompt, carry, key,
                   jnp.asarray(temperature, jnp.float32),
                   jnp.asarray(1.0 if top_p is None else top_p, jnp.float32),
                   num_steps=num_steps, greedy=greedy,
                   top_k=None if top_k is None or top_k >= vocab else top_k,
                   nucleus=top_p is not None and top_p < 1.0)


def _check_model(model: Any, params: Any) -> int:
  """The vocabulary size `V` of a generative `sequence_model` (embedding and read-out of size V)."""
  if not isinstance(model, model_lib.SequenceModel):
    raise TypeError(f"{_FN}: `model` must be a SequenceModel (made by rnnjax.sequence_model), "
                    f"got {type(model).__name__}.")
  checks.params(_FN, params, model_lib.SequenceModelParams, made_by="rnnjax.sequence_model")
  if params.embed is None:
    raise ValueError(
        f"{_FN}: `model` has no vocabulary (its params hold no embedding): generation feeds "
        "sampled token ids back into the model. Build it with rnnjax.sequence_model(core, "
        "input_size=0, output_size=V, vocab_size=V).")
  vocab, outputs = params.embed.shape[0], params.w_out.shape[-1]
  if outputs != vocab:
    raise ValueError(
        f"{_FN}: `model` reads out {outputs} logits but embeds a vocabulary of {vocab} tokens; "
        f"sampled ids must be tokens it can read back. Build it with output_size={vocab}.")
  return vocab


def _check_prompt(prompt: Any, vocab: int) -> Any:
  """`prompt` as an integer array `[P]` or `[P, B]` (ids in `[0, V)` where concrete)."""
  if not hasattr(prompt, "dtype"):
    prompt = np.asarray(prompt)
  if not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise TypeError(
        f"{_FN}: `prompt` must hold integer token ids, got dtype {prompt.dtype} "
        f"(prompt.shape={tuple(prompt.shape)}). Convert it with prompt.astype(jnp.int32).")
  if prompt.ndim not in (1, 2) or prompt.shape[0] == 0:
    raise ValueError(
        f"{_FN}: `prompt` must be token ids of shape [P] or [P, B] (time first) with P >= 1, "
        f"got prompt.shape={tuple(prompt.shape)}.")
  model_lib.check_token_ids(_FN, "prompt", prompt, vocab)
  return jnp.asarray(prompt, jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "greedy", "top_k", "nucleus"))
def _generate(model: model_lib.SequenceModel, params: Any, prompt: jax.Array, carry: Any,
              key: jax.Array | None, temperature: jax.Array, top_p: jax.Array, *,
              num_steps: int, greedy: bool, top_k: int | None, nucleus: bool) -> jax.Array:
  """The prompt through the model, then `num_steps - 1` scanned steps feeding tokens back."""

  def pick(logits: jax.Array, i: jax.Array | int) -> jax.Array:  # [..., V] -> [...]
    if greedy:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / temperature.astype(logits.dtype), top_k=top_k,
                           top_p=top_p if nucleus else None)
    return jax.random.categorical(jax.random.fold_in(key, i), logits, axis=-1).astype(jnp.int32)

  def step(state, i):
    carry, token = state
    logits, carry = model.apply(params, token[None], carry)
    token = pick(logits[0], i)
    return (carry, token), token

  logits, carry = model.apply(params, prompt, carry)
  if logits.ndim != prompt.ndim + 1:  # Known while tracing: the check costs no trace.
    raise ValueError(
        f"{_FN}: `model` must predict every step (readout=\"steps\"), but it reads out one "
        f"prediction per sequence (logits of shape {tuple(logits.shape)} for a prompt of shape "
        f"{tuple(prompt.shape)}); generation feeds each step's sample back. Build it with "
        "rnnjax.sequence_model(..., readout=\"steps\").")
  first = pick(logits[-1], 0)
  _, rest = lax.scan(step, (carry, first), jnp.arange(1, num_steps, dtype=jnp.int32))
  return jnp.concatenate([first[None], rest], axis=0)


def filter_logits(logits: jax.Array, *, top_k: int | None, top_p: jax.Array | None) -> jax.Array:
  """`logits: [..., V]` with the tokens outside the top-k, then outside the nucleus, at -inf."""
  if top_k is not None:
    kth = lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None:
    probs = jax.nn.softmax(logits, axis=-1)
    ranked = -jnp.sort(-probs, axis=-1)  # decreasing
    mass = jnp.cumsum(ranked, axis=-1)
    before = jnp.concatenate([jnp.zeros_like(mass[..., :1]), mass[..., :-1]], axis=-1)
    kept = before < top_p.astype(probs.dtype)
    smallest = jnp.min(jnp.where(kept, ranked, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(probs < smallest, -jnp.inf, logits)
  return logits
