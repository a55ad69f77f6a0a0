"""Fast scoring's half that is not the sandbox: a tokenizer and batched greedy decoding.

* :func:`train_tokenizer` — a small byte-level BPE tokenizer trained on the run's own text
  (``tokenizers``), wrapped as a ``PreTrainedTokenizerFast`` so that it saves beside the model
  and loads with ``AutoTokenizer``.
* :func:`greedy_decode` — greedy decoding of every prompt of a split at once: left padding, one
  forward pass over all prompts, then one token per step for the whole batch through the KV
  cache; a sequence stops at the stop string or the end-of-sequence token, the batch when all
  have stopped.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = ["greedy_decode", "train_tokenizer"]

SPECIAL = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>"}


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``texts``.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with ``<pad>``, ``<eos>`` and ``<bos>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    # digits one by one: a number never seen whole is still made of known tokens to copy
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side="left", **SPECIAL)


def _tokens_containing(tokenizer: Any, char: str, device: Any) -> torch.Tensor:
    """Ids of the tokens whose text contains ``char`` (cached on the tokenizer).

    A one-character stop string appears in a completion exactly when one of its tokens contains
    it, so checking each new token replaces decoding every completion at every step.
    """
    cache = tokenizer.__dict__.setdefault("_cycleqd_tokens_containing", {})
    if char not in cache:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        cache[char] = torch.tensor([i for i, t in enumerate(texts) if char in t], dtype=torch.long)
    return cache[char].to(device)


def _encode(tokenizer: Any, prompts: list[str]) -> tuple[Any, ...]:
    """The prompts' ids and attention mask, left-padded, and their shared prefixes.

    The prefixes: :func:`~cycleqd.generation.lean.prefix_nodes`. The last few batches are
    cached on the tokenizer: a run decodes the same splits' prompts for every candidate.
    """
    from cycleqd.generation.lean import prefix_nodes

    cache = tokenizer.__dict__.setdefault("_cycleqd_encoded", OrderedDict())
    key = tuple(prompts)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    cache[key] = ids, mask, prefix_nodes(ids, mask)
    while len(cache) > 32:  # a run's splits and racing's prefixes fit
        cache.popitem(last=False)
    return cache[key]


@torch.no_grad()
def greedy_decode(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int | Sequence[int] = 64,
    stop: str | None = "\n",
    batch_size: int = 256,
    engine: Any = "auto",
) -> list[str]:
    """Greedy completions of ``prompts``, batched, through the KV cache.

    Args:
        model: a causal LM (``transformers``), in eval mode.
        tokenizer: its tokenizer (left padding is used whatever its setting).
        prompts: the prompts.
        max_new_tokens: longest completion, or one limit per prompt.
        stop: a completion ends before this string (``None``: only at end-of-sequence).
        batch_size: prompts decoded together.
        engine: ``lean`` (:class:`cycleqd.generation.lean.LeanLlama`: a plain Llama's forward
            without the framework, static cache, finished rows dropped; same tokens),
            ``transformers`` (the model's own forward), or ``auto``: lean where it applies
            (:func:`cycleqd.generation.lean.supports` and a one-character or no stop string).
            A :class:`~cycleqd.generation.lean.LeanLlama` of ``model`` is used as given (its
            work counters then say what the decoding did: ``bench/decode.py``).

    Returns:
        One completion per prompt, without the prompt and the stop string.
    """
    from cycleqd.generation.lean import LeanLlama, supports

    given = engine if isinstance(engine, LeanLlama) else None
    if given is None and engine not in ("auto", "lean", "transformers"):
        raise ValueError(f"engine must be auto, lean or transformers, not {engine!r}")
    device = next(model.parameters()).device
    stop_ids = _tokens_containing(tokenizer, stop, device) if stop and len(stop) == 1 else None
    lean_fits = supports(model) and (stop is None or stop_ids is not None)
    if (given is not None or engine == "lean") and not lean_fits:
        raise ValueError("the lean engine decodes plain float32 Llamas with a 1-character stop")
    lean = given or (LeanLlama(model) if engine != "transformers" and lean_fits else None)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        limits = torch.tensor(
            [max_new_tokens] * len(chunk)
            if isinstance(max_new_tokens, int)
            else list(max_new_tokens[start : start + batch_size]),
            device=device,
        )
        ids, mask, prefixes = _encode(tokenizer, chunk)
        ids, mask = ids.to(device), mask.to(device)
        if lean is not None and bool(mask.sum(-1).all()):  # (an empty prompt: its own forward)
            eos = tokenizer.eos_token_id
            rows = _lean_rows(lean, ids, mask, prefixes, limits, eos, stop_ids)
        else:
            rows = _framework_rows(model, tokenizer, ids, mask, limits, stop, stop_ids)
        texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
        out.extend(t.split(stop)[0] if stop else t for t in texts)
    return out


def _lean_rows(
    lean: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    prefixes: tuple[torch.Tensor, torch.Tensor],
    limits: torch.Tensor,
    eos: int | None,
    stop_ids: torch.Tensor | None,
) -> list[list[int]]:
    """Each row's tokens, through :class:`~cycleqd.generation.lean.LeanLlama`.

    A row ends with its end-of-sequence or stop token or at its limit (that token kept, as in
    :func:`_framework_rows`), and leaves the batch at once (:meth:`LeanLlama.compact`).
    """
    batch = ids.shape[0]
    steps = int(limits.max())
    generated = torch.zeros(batch, steps, dtype=torch.long, device=ids.device)
    counts = torch.zeros(batch, dtype=torch.long, device=ids.device)
    alive = torch.arange(batch, device=ids.device)  # original row of each running row
    logits = lean.start(ids, mask, ids.shape[1] + steps, prefixes)
    for step in range(steps):
        token = logits.argmax(dim=-1)
        generated[alive, counts[alive]] = token
        counts[alive] += 1
        ended = counts[alive] >= limits[alive]
        if eos is not None:
            ended |= token == eos
        if stop_ids is not None:
            ended |= torch.isin(token, stop_ids)
        if step == steps - 1 or bool(ended.all()):
            break
        if bool(ended.any()):
            order = lean.compact(ended)
            alive, token = alive[order], token[order]
        logits = lean.step(token)
    return [row[:n] for row, n in zip(generated.tolist(), counts.tolist(), strict=True)]


def _framework_rows(
    model: Any,
    tokenizer: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    limits: torch.Tensor,
    stop: str | None,
    stop_ids: torch.Tensor | None,
) -> list[list[int]]:
    """Each row's tokens, through the model's own forward and a ``DynamicCache``."""
    from transformers import DynamicCache

    device = ids.device
    eos = tokenizer.eos_token_id
    accepted = inspect.signature(model.forward).parameters
    # transformers 5 renamed past_key_values to cache; older versions and other models differ
    cache_arg = "cache" if "cache" in accepted else "past_key_values"
    keep = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cache = DynamicCache()
    batch = ids.shape[0]
    generated = torch.empty(batch, 0, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    step_ids = ids
    for _ in range(int(limits.max())):
        logits = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_arg: cache},
            **keep,
        ).logits[:, -1]
        token = logits.argmax(dim=-1)
        if eos is not None:
            token = torch.where(done, torch.full_like(token, eos), token)
        generated = torch.cat([generated, token[:, None]], dim=1)
        lengths += (~done).long()  # a finished row's filler tokens do not count
        if eos is not None:
            done |= token == eos
        done |= lengths >= limits
        if stop_ids is not None:
            done |= torch.isin(token, stop_ids)
        elif stop is not None:
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
            done |= torch.tensor([stop in t for t in texts], device=device)
        if bool(done.all()):
            break
        step_ids = token[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
    return [row[:n] for row, n in zip(generated.tolist(), lengths.tolist(), strict=True)]
