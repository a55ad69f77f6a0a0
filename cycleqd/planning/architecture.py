"""A model's shape, read from its config or safetensors headers without loading its weights.

Looked up in order: a local Hugging Face directory (``config.json``) or ``.safetensors`` file; a
Hugging Face id's ``config.json`` in the local hub cache; a built-in table for the paper's
Llama-3-8B family when neither is on the machine. Also the shapes of the matrices the SVD
mutations factor, and the rank they keep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.weights.space import svd_target_names

__all__ = ["KNOWN_ARCHITECTURES", "Architecture", "architecture"]

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}

#: The paper's models, for planning on a machine that does not hold them (values from their
#: published ``config.json``: Llama-3-8B and the experts fine-tuned from it share one shape).
_LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "meta-llama/Meta-Llama-3-8B-Instruct": _LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B": _LLAMA3_8B,
    "SakanaAI/Llama-3-8B-Instruct-Coding-Expert": _LLAMA3_8B,
    "SakanaAI/Llama-3-8B-Instruct-DB-Expert": _LLAMA3_8B,
    "SakanaAI/Llama-3-8B-Instruct-OS-Expert": _LLAMA3_8B,
}


@dataclass
class Architecture:
    """The shapes a plan needs.

    Attributes:
        source: where they were read from.
        parameters: floating parameters (what the weight space stores).
        matrices: ``name → (m, n)`` of the 2-D parameters.
        shapes: ``name → shape`` of every floating parameter (the weight space's banks).
        dtype_bytes: bytes per parameter as stored in the checkpoint.
        layers, hidden, intermediate, kv_heads, head_dim, vocab, context: the transformer's
            shape (0 where the model is not a transformer).
    """

    source: str
    parameters: int
    matrices: dict[str, tuple[int, int]]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtype_bytes: int = 4
    layers: int = 0
    hidden: int = 0
    intermediate: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    vocab: int = 0
    context: int = 0


def _from_config(config: Any, source: str) -> Architecture:
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    params = {n: tuple(p.shape) for n, p in model.named_parameters() if p.is_floating_point()}
    text = getattr(config, "get_text_config", lambda: config)()
    heads = getattr(text, "num_attention_heads", 0) or 0
    hidden = getattr(text, "hidden_size", 0) or 0
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if heads else 0)
    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", "float32"))
    return Architecture(
        source=source,
        parameters=sum(math.prod(s) for s in params.values()),
        matrices={n: (s[0], s[1]) for n, s in params.items() if len(s) == 2},
        shapes=dict(params),
        dtype_bytes=_DTYPE_BYTES.get(dtype.removeprefix("torch."), 4),
        layers=getattr(text, "num_hidden_layers", 0) or 0,
        hidden=hidden,
        intermediate=getattr(text, "intermediate_size", 0) or 0,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        vocab=getattr(text, "vocab_size", 0) or 0,
        context=getattr(text, "max_position_embeddings", 0) or 0,
    )


def _from_safetensors(path: Path) -> Architecture:
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    size = 4
    with safe_open(str(path), framework="pt") as fh:
        for name in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
            piece = fh.get_slice(name)
            dtype = piece.get_dtype()
            if dtype.startswith(("F", "BF")):
                shapes[name] = tuple(piece.get_shape())
                size = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}.get(dtype, size)
    return Architecture(
        source=f"safetensors header of {path}",
        parameters=sum(math.prod(s) for s in shapes.values()),
        matrices={n: (s[0], s[1]) for n, s in shapes.items() if len(s) == 2},
        shapes=shapes,
        dtype_bytes=size,
    )


def architecture(ref: str | Path) -> Architecture:
    """The shapes of the model at ``ref``, read without loading weights or downloading.

    Looked up in order: a local Hugging Face directory (``config.json``) or ``.safetensors``
    file; a Hugging Face id's ``config.json`` in the local hub cache; the built-in table of the
    paper's models.

    Raises:
        CycleQDError: none of them knows ``ref`` (the message says what to provide).
    """
    import transformers

    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        return _from_safetensors(path)
    if (path / "config.json").is_file():
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        return _from_config(config, f"{path / 'config.json'}")
    from cycleqd.models.sources import is_hub_id

    if is_hub_id(ref):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(ref), "config.json")
        if isinstance(cached, str):
            config = transformers.AutoConfig.from_pretrained(Path(cached).parent)
            return _from_config(config, f"the Hugging Face cache ({cached})")
        if str(ref) in KNOWN_ARCHITECTURES:
            values = dict(KNOWN_ARCHITECTURES[str(ref)])
            config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
            return _from_config(config, f"cycleqd's table of the paper's models ({ref})")
    raise CycleQDError(
        f"cannot read the shape of model {str(ref)!r}: it is not a local Hugging Face directory "
        "or .safetensors file, and its config.json is not in the Hugging Face cache "
        f"(fetch it with `hf download {ref} config.json`)"
    )


def _svd_targets(arch: Architecture, mutation: Any) -> list[tuple[int, int]]:
    """The shapes of the matrices ``mutation`` factors (the weight space's own rule)."""
    from cycleqd.weights.space import DEFAULT_SVD_EXCLUDE

    names = svd_target_names(
        arch.matrices,
        mutation.params.get("include"),
        mutation.params.get("exclude", DEFAULT_SVD_EXCLUDE),
    )
    return [arch.matrices[n] for n in names]


def _rank(m: int, n: int, rank: int | None) -> int:
    return min(m, n) if rank is None else min(rank, m, n)
