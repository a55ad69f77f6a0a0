"""Generation backends: how the scorers of real tasks get a model's replies to conversations.

A backend answers a batch of conversations (lists of ``{"role", "content"}`` messages) with one
greedy reply each, chat template applied. Scorers never call a model directly; they ask
:func:`backend_for` for the process's backend of a name, so that every task scored on a worker
shares one engine.

* ``transformers`` (default): the evaluator's resident model itself, batched
  ``model.generate`` with left padding. Nothing is copied: the evaluator updates the model's
  weights in place between candidates.
* ``vllm``: a vLLM engine of the same architecture, built once per worker from the base model's
  directory. When the evaluator marks new weights (the scoring context's ``weights_version``), the
  resident model's tensors are handed to the engine through vLLM's supported extension points:
  a worker extension (``worker_extension_cls``) whose method vLLM runs on its worker through
  ``LLM.collective_rpc`` and which calls the model's own ``load_weights`` (the loader vLLM uses
  for checkpoints), followed by ``LLM.reset_prefix_cache`` so that no cached prefix computed
  with the old weights is reused. A child therefore costs a device-to-device copy of the
  weights, not a 16 GB reload. Nothing writes into vLLM's private state.

Backends are plain objects with one method, so a plug-in (an API server, a test's oracle) is a
dotted path ``package.module:Factory`` in a scorer's ``backend`` parameter. A backend whose
``takes_context`` is true is also given the evaluator's
:class:`~cycleqd.models.context.ScoringContext` (the tokenizer, the base's directory, the
weights' version) as ``context=``; the built-in ones need it, a plug-in may leave it out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import torch

from cycleqd.errors import CycleQDError
from cycleqd.models.context import ScoringContext
from cycleqd.registry import Registry

__all__ = [
    "BACKENDS",
    "Backend",
    "Message",
    "TransformersBackend",
    "VLLMBackend",
    "VLLMWeightSync",
    "backend_for",
    "render_chat",
]

Message = dict[str, str]


class Backend(Protocol):
    """Greedy replies to conversations (given ``context=`` too if ``takes_context`` is true)."""

    def chat(
        self,
        model: Any,
        conversations: Sequence[Sequence[Message]],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        chat_template: str | None = None,
    ) -> list[str]:
        """One reply per conversation, cut before the first ``stop`` string.

        ``chat_template`` (a Jinja template) replaces the tokenizer's own; scorers pass it only
        when the user set one, so a backend may leave the argument out.
        """


#: Generation backends by name; plug-ins through the ``cycleqd.backends`` entry-point group.
BACKENDS: Registry = Registry(kind="generation backend", entry_point_group="cycleqd.backends")


def cut(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (without) the first of the ``stop`` strings."""
    end = len(text)
    for s in stop:
        at = text.find(s)
        if s and at != -1:
            end = min(end, at)
    return text[:end]


def render_chat(
    tokenizer: Any, messages: Sequence[Message], chat_template: str | None = None
) -> str:
    """The prompt of ``messages``: a chat template with the assistant's turn opened.

    ``chat_template`` replaces the tokenizer's (an expert fine-tuned with its own format, as the
    paper's coding expert was). A tokenizer without a template (a base model, the embedded tiny
    models) gets the plain ``role: content`` transcript ending in ``assistant:``.
    """
    if chat_template or getattr(tokenizer, "chat_template", None):
        extra = {"chat_template": chat_template} if chat_template else {}
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True, **extra
        )
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


@BACKENDS.register("transformers")
class TransformersBackend:
    """Batched greedy ``generate`` on the resident Hugging Face model.

    Args:
        batch_size: conversations decoded together.
        max_prompt_tokens: longer prompts keep their last this many tokens (the latest turns);
            ``None``: the model's context less ``max_new_tokens``.
    """

    takes_context = True

    def __init__(self, *, batch_size: int = 16, max_prompt_tokens: int | None = None) -> None:
        if batch_size < 1:
            raise CycleQDError(f"transformers backend: batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.max_prompt_tokens = batch_size, max_prompt_tokens

    @torch.no_grad()
    def chat(
        self,
        model: Any,
        conversations: Sequence[Sequence[Message]],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        chat_template: str | None = None,
        context: ScoringContext | None = None,
    ) -> list[str]:
        """Greedy replies, ``batch_size`` conversations at a time."""
        tokenizer = context.tokenizer if context is not None else None
        if tokenizer is None:
            raise CycleQDError(
                "the transformers backend needs the model's tokenizer in the scoring context: "
                "put the tokenizer files in the base model's directory (by hand: pass "
                "ScoringContext(tokenizer=...))"
            )
        device = next(model.parameters()).device
        eos = _eos_ids(model, tokenizer)
        if tokenizer.pad_token_id is None:  # Llama-3's has none: pad with end-of-sequence
            if tokenizer.eos_token is None:
                raise CycleQDError(
                    "the tokenizer has neither a pad nor an end-of-sequence token: set "
                    "tokenizer.pad_token before scoring"
                )
            tokenizer.pad_token = tokenizer.eos_token
        pad = tokenizer.pad_token_id
        keep = self.max_prompt_tokens
        window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if keep is None and isinstance(window, int) and window > max_new_tokens:
            keep = window - max_new_tokens  # the prompt's end and the reply fit the context
        out: list[str] = []
        prompts = [render_chat(tokenizer, c, chat_template) for c in conversations]
        templated = bool(chat_template or getattr(tokenizer, "chat_template", None))
        bos = tokenizer.bos_token
        if templated and bos and _adds_bos(tokenizer):
            # a template that does not write the BOS its model was trained with (a custom one)
            prompts = [p if p.startswith(bos) else bos + p for p in prompts]
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            encoded = tokenizer(
                chunk,
                return_tensors="pt",
                padding=True,
                padding_side="left",
                add_special_tokens=not templated,  # a template writes its own BOS
            )
            ids, mask = encoded["input_ids"], encoded["attention_mask"]
            if keep and ids.shape[1] > keep:
                ids, mask = ids[:, -keep:], mask[:, -keep:]
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos or None,
            )
            texts = tokenizer.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)
            out.extend(cut(t, stop) for t in texts)
        return out


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer starts plain text with its BOS token (the model expects one)."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-turn tokens: the generation config's (an instruct model's ``<|eot_id|>``) first."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    wanted = getattr(config, "eos_token_id", None) if config is not None else None
    for value in [wanted, tokenizer.eos_token_id]:
        for i in value if isinstance(value, list) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


class VLLMWeightSync:
    """The worker extension vLLM mixes into its worker (``worker_extension_cls``).

    Its method runs inside vLLM's worker, called through ``LLM.collective_rpc``; it hands the
    tensors to the model's ``load_weights``, the same loader vLLM reads checkpoints with, so
    names are the Hugging Face checkpoint's and fused layers (``qkv_proj``) are filled as
    vLLM fills them from a checkpoint.
    """

    def cycleqd_load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load ``(name, tensor)`` pairs into the engine's model; how many were given."""
        pairs = list(weights)
        # the worker's get_model() (vLLM's public worker method); older workers: the runner's
        get_model = getattr(self, "get_model", None)
        model = get_model() if callable(get_model) else self.model_runner.model  # type: ignore[attr-defined]
        model.load_weights(weights=pairs)
        return len(pairs)


@BACKENDS.register("vllm")
class VLLMBackend:
    """Greedy chat on a vLLM engine that follows the resident model's weights.

    The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one device: a Ray
    worker owns one GPU), so ``collective_rpc`` hands the weights over by reference and the
    copy is device to device.

    Args:
        model: the directory vLLM builds the engine from; default: the base model's (the
            scoring context's ``model_path``).
        gpu_memory_utilization: the engine's share of the device (the resident model, the task
            vectors and the SVD cache need the rest; ``cycleqd plan`` says how much).
        max_model_len: the engine's context.
        engine: an engine object to use instead of building one (tests pass a fake).
        sampling: a factory of sampling parameters (default: ``vllm.SamplingParams``).
        **engine_kwargs: further ``vllm.LLM`` arguments.
    """

    def __init__(
        self,
        *,
        model: str | None = None,
        gpu_memory_utilization: float = 0.35,
        max_model_len: int = 8192,
        engine: Any = None,
        sampling: Callable[..., Any] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.path, self.engine, self.sampling = model, engine, sampling
        self.engine_kwargs = {
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            **engine_kwargs,
        }
        self.synced: Any = object()  # no version yet
        self.updates = 0

    takes_context = True

    def _engine(self, model: Any, context: ScoringContext | None) -> Any:
        if self.engine is not None:
            return self.engine
        try:
            import vllm
        except ImportError:
            raise CycleQDError(
                "backend 'vllm' needs vLLM: `pip install vllm` on a machine with a GPU, "
                "or use backend: transformers"
            ) from None
        path = self.path or (context.model_path if context is not None else None)
        if path is None:
            raise CycleQDError(
                "the vllm backend needs the base model's directory: set the scorer's "
                "backend_params.model"
            )
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        options = {
            "dtype": dtype,
            "tensor_parallel_size": 1,
            # the worker in this process: collective_rpc hands tensors over by reference
            "distributed_executor_backend": "uni",
            **self.engine_kwargs,
        }
        self.engine = vllm.LLM(
            model=str(path), worker_extension_cls=f"{__name__}.VLLMWeightSync", **options
        )
        if self.sampling is None:
            self.sampling = vllm.SamplingParams
        return self.engine

    def sync(self, model: Any, context: ScoringContext | None = None) -> bool:
        """Push the resident model's weights to the engine if they changed; whether it did.

        Weights whose version is unknown (no context, or ``weights_version`` unset) are pushed
        every time: stale weights would score the wrong model.
        """
        engine = self._engine(model, context)
        version = context.weights_version if context is not None else None
        if version is not None and version == self.synced:
            return False
        weights = [(name, tensor.detach()) for name, tensor in model.state_dict().items()]
        engine.collective_rpc("cycleqd_load_weights", args=(weights,))
        # prefixes cached under the old weights would be reused for the new ones
        engine.reset_prefix_cache()
        self.synced, self.updates = version, self.updates + 1
        return True

    def chat(
        self,
        model: Any,
        conversations: Sequence[Sequence[Message]],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        chat_template: str | None = None,
        context: ScoringContext | None = None,
    ) -> list[str]:
        """Greedy replies from the engine, after syncing the weights."""
        self.sync(model, context)
        make = self.sampling or (lambda **kw: kw)
        params = make(temperature=0.0, max_tokens=max_new_tokens, stop=list(stop) or None)
        tokenizer = context.tokenizer if context is not None else None
        if chat_template and tokenizer is not None and tokenizer.bos_token:
            # vLLM adds no special tokens to a rendered chat: a custom template that does not
            # write the BOS its model expects gets it here, as in the transformers backend
            if "bos_token" not in chat_template and _adds_bos(tokenizer):
                chat_template = "{{ bos_token }}" + chat_template
        extra = {"chat_template": chat_template} if chat_template else {}
        outputs = self.engine.chat(
            [list(c) for c in conversations], params, use_tqdm=False, **extra
        )
        return [cut(o.outputs[0].text, stop) for o in outputs]


def backend_for(context: ScoringContext, name: str = "transformers", **params: Any) -> Backend:
    """The backend ``name`` with ``params``, built once per scoring context (one evaluator).

    Scorers of several tasks on one worker therefore share one engine.
    """
    cache = context.shared.setdefault("backends", {})
    key = (name, repr(sorted(params.items())))
    if key not in cache:
        cache[key] = BACKENDS.build(name, **params)
    return cache[key]
