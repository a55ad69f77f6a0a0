"""``cycleqd plan``: what a worker of a run holds in memory and what a child costs, in advance.

Memory per worker, from the models' shapes (read from ``config.json`` or safetensors headers, or a
built-in table for the paper's Llama-3-8B family when neither is on the machine):

* base: ``P`` parameters in the storage dtype;
* task vectors: ``K × P``;
* resident model: ``P`` (the child the evaluator materialises and scores);
* SVD cache (``svd_expert`` mutation): per expert and target matrix ``m × n`` at rank ``r``,
  ``U [m, r]``, ``S [r]``, ``V [n, r]`` in float32;
* generation: the KV cache ``batch × sequence × layers × 2 × kv_heads × head_dim`` and the
  prefill's activations ``batch × sequence × (4 hidden + 2 intermediate)`` plus the last
  position's float32 logits, for the most demanding task; with the vLLM backend, the engine's
  share of the device (``gpu_memory_utilization``) instead;
* the materialiser's float32 workspace, the size of the largest bank of same-shape tensors
  (any mutation that adds terms);
* while a worker materialises an ``svd_expert`` child, transiently: at its first child the SVD of
  a chunk of same-shape target matrices (:data:`cycleqd.weights.space.SVD_CHUNK` of them,
  gathered, in float32, and their ``U`` and ``V``); at every child the stacked factors of a
  bank's spectral terms. The worker's peak is the larger of that moment and generation;
* overhead: 2 GiB (CUDA context, allocator) plus 5 % of the peak.

The driver holds the base and the task vectors too, and a resident model when it scores the
final report; the plan says how much, since on a GPU node it needs a device of its own.

Cost per child: materialisation streams ``K + 2`` copies of the weights; SVD mutation is one
GEMM per target matrix; decoding is bound by memory bandwidth (each step reads the weights and the
KV cache once per batch); prefill by compute at half the device's peak; SVD mutation's GEMMs
at the float32 peak. These are estimates for capacity planning, not measurements.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cycleqd.errors import CycleQDError
from cycleqd.scorers import SCORERS, TaskShape
from cycleqd.weights.space import SVD_CHUNK, svd_target_names

__all__ = ["DEVICES", "Architecture", "Device", "Plan", "Workload", "architecture", "make_plan"]

GiB = 1024**3


@dataclass(frozen=True)
class Device:
    """A device's capacity.

    Attributes:
        name: what it is.
        memory: bytes (as ``nvidia-smi`` reports the device's total).
        bandwidth: memory bandwidth, bytes per second.
        flops: dense bf16 FLOP/s (tensor cores; on the CPU, fp32).
        flops32: dense fp32 FLOP/s without tensor cores (the SVD factors' GEMMs).
    """

    name: str
    memory: float
    bandwidth: float
    flops: float
    flops32: float = 0.0


MiB = 1024**2
DEVICES = {
    "h200": Device("NVIDIA H200 (141 GB)", 143771 * MiB, 4.8e12, 989e12, 67e12),
    "h100": Device("NVIDIA H100 SXM (80 GB)", 81559 * MiB, 3.35e12, 989e12, 67e12),
    "a100-80gb": Device("NVIDIA A100 (80 GB)", 81920 * MiB, 2.0e12, 312e12, 19.5e12),
    "a100-40gb": Device("NVIDIA A100 (40 GB)", 40960 * MiB, 1.55e12, 312e12, 19.5e12),
    "l40s": Device("NVIDIA L40S (48 GB)", 46068 * MiB, 0.864e12, 362e12, 91.6e12),
    "cpu": Device("CPU (host memory)", 0.0, 20e9, 0.5e12, 0.5e12),
}

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


@dataclass
class Workload:
    """What scoring one child on one task generates.

    Attributes:
        task: the task's name.
        problems: val problems (each one conversation).
        turns: model replies per problem (multi-turn tasks), at most.
        prompt_tokens: tokens of a problem's first prompt.
        new_tokens: tokens of a reply, at most.
        batch: conversations decoded together.
        backend: the generation backend.
        gpu_memory_utilization: the vLLM engine's share of the device.
        engine: the backend's parameters (tasks with equal ones share an engine).
        assumed: which of these figures are defaults rather than read from the config or data.
    """

    task: str
    problems: int
    turns: int
    prompt_tokens: int
    new_tokens: int
    batch: int
    backend: str = "transformers"
    gpu_memory_utilization: float = 0.0
    engine: str = ""
    assumed: list[str] = field(default_factory=list)

    @property
    def sequence(self) -> int:
        """The longest context: the prompt and every turn's reply and observation (as long)."""
        return self.prompt_tokens + self.turns * 2 * self.new_tokens - self.new_tokens

    @property
    def sequences(self) -> int:
        """Replies generated per child."""
        return self.problems * self.turns


def _shape(task: Any) -> TaskShape:
    """The scorer's own account of a child's cost (its ``plan_shape`` hook), or a default."""
    try:
        factory = SCORERS.get(task.scorer)
    except CycleQDError:
        factory = None
    hook = getattr(factory, "plan_shape", None)  # optional: see cycleqd.scorers
    if hook is None:
        return TaskShape(
            problems=100,
            assumed=[
                f"scorer {task.scorer!r} has no plan_shape hook: 100 problems of 512 + 256 tokens"
            ],
        )
    return hook(dict(task.params))


def workload(task: Any) -> Workload:
    """The generation one child costs on ``task`` (a :class:`cycleqd.config.TaskConfig`).

    The scorer says its shape (:class:`cycleqd.scorers.TaskShape`); the task's generation
    parameters (``limit``, ``max_new_tokens``, ``backend``, ``backend_params``) bound it.
    """
    params: Mapping[str, Any] = task.params
    shape = _shape(task)
    problems, new = shape.problems, shape.new_tokens
    if params.get("limit"):
        problems = min(problems, int(params["limit"])) if problems else int(params["limit"])
    new = int(params.get("max_new_tokens", new) or new)
    backend = params.get("backend", "transformers")
    backend_params = params.get("backend_params", {}) or {}
    batch = int(backend_params.get("batch_size", params.get("batch_size", 16)))
    if shape.one_batch:
        batch = problems
    if backend == "vllm":  # continuous batching: every conversation at once, up to max_num_seqs
        batch = int(backend_params.get("max_num_seqs", 256))
    prompt = shape.prompt_tokens
    return Workload(
        task=task.name,
        problems=problems,
        turns=shape.turns,
        prompt_tokens=int(backend_params.get("max_prompt_tokens", prompt) or prompt),
        new_tokens=new,
        batch=max(1, min(batch, problems or 1)),
        backend=str(backend),
        gpu_memory_utilization=float(backend_params.get("gpu_memory_utilization", 0.35)),
        engine=repr(sorted(backend_params.items())),
        assumed=list(shape.assumed),
    )


@dataclass
class Plan:
    """A worker's memory and a child's cost.

    Attributes:
        device: the device planned for.
        budget: bytes one worker may use.
        memory: item → bytes.
        seconds: item → estimated seconds per child.
        architecture: the model's shapes.
        workloads: per task.
        notes: assumptions and advice.
        run_hours: the whole run's estimated duration on the configured workers.
        dtype_bytes: bytes per stored weight.
        blockers: reasons the run cannot work besides the total (a vLLM share too small).
        transient: peaks held only while a worker materialises a child (factoring the task
            vectors at the first, replaying spectral terms at every one), never while it
            generates.
        first_child: bytes at the larger of those peaks, before overhead.
        steady: bytes while generating, before overhead.
        driver: bytes the driver process holds on the models' device.
    """

    device: Device
    budget: float
    memory: dict[str, float]
    seconds: dict[str, float]
    architecture: Architecture
    workloads: list[Workload]
    notes: list[str]
    run_hours: float
    dtype_bytes: int = 4
    blockers: list[str] = field(default_factory=list)
    transient: dict[str, float] = field(default_factory=dict)
    first_child: float = 0.0
    steady: float = 0.0
    driver: float = 0.0

    @property
    def total(self) -> float:
        """Bytes one worker needs at its peak (generating, or factoring at the first child)."""
        return max(self.steady, self.first_child) + self.memory.get("overhead", 0.0)

    @property
    def fits(self) -> bool:
        """Whether a worker fits its budget (and nothing else blocks it)."""
        return self.total <= self.budget and not self.blockers

    @property
    def per_child(self) -> float:
        """Estimated seconds per child."""
        return sum(self.seconds.values())

    def advice(self) -> list[str]:
        """What to change when it does not fit, largest item first."""
        hints = {
            "svd cache": "lower evolution.mutation.params.rank (or use mutation svd_child)",
            "task vectors": "store weights in bfloat16 (models.dtype: bfloat16)",
            "base": "store weights in bfloat16 (models.dtype: bfloat16)",
            "resident model": "store weights in bfloat16 (models.dtype: bfloat16)",
            "kv cache": "lower the tasks' backend_params.batch_size or max_new_tokens",
            "activations": "lower the tasks' backend_params.batch_size",
            "vllm engine": "lower backend_params.gpu_memory_utilization",
            "materialiser workspace": "a device with more memory (it spans the largest bank)",
            "svd at the first child": "fill the SVD cache (cache_dir) on a larger device first",
            "spectral terms of a child": "lower evolution.mutation.params.rank",
        }
        if self.dtype_bytes <= 2:  # already 16-bit: the weights cannot shrink further here
            for name in ("base", "task vectors", "resident model"):
                hints[name] = "fewer tasks, or a device with more memory"
        ranked = sorted({**self.memory, **self.transient}.items(), key=lambda kv: -kv[1])
        return [
            f"{name} ({size / GiB:.1f} GiB): {hints[name]}"
            for name, size in ranked
            if name in hints
        ][:3]

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data (``cycleqd plan --json``)."""
        return {
            "device": asdict(self.device),
            "budget_bytes": self.budget,
            "memory_bytes": self.memory,
            "total_bytes": self.total,
            "transient_bytes": self.transient,
            "first_child_bytes": self.first_child,
            "generation_bytes": self.steady,
            "driver_bytes": self.driver,
            "fits": self.fits,
            "blockers": self.blockers,
            "seconds_per_child": self.seconds,
            "run_hours": self.run_hours,
            "architecture": {
                k: v
                for k, v in asdict(self.architecture).items()
                if k not in ("matrices", "shapes")
            },
            "workloads": [asdict(w) | {"sequence": w.sequence} for w in self.workloads],
            "notes": self.notes,
        }


def _svd_targets(arch: Architecture, mutation: Any) -> list[tuple[int, int]]:
    """The shapes of the matrices ``mutation`` factors (the weight space's own rule)."""
    from cycleqd.weights.space import DEFAULT_SVD_EXCLUDE

    names = svd_target_names(
        arch.matrices,
        mutation.params.get("include"),
        mutation.params.get("exclude", DEFAULT_SVD_EXCLUDE),
    )
    return [arch.matrices[n] for n in names]


def _budget(
    config: Any, device: str, memory_gb: float | None, workers: int, notes: list[str]
) -> tuple[Device, float, bool]:
    """The device a worker plans for, its memory budget in bytes, and whether it is the CPU."""
    on_cpu = not str(config.models.device).startswith("cuda")
    spec = DEVICES["cpu" if on_cpu else device]
    evaluation = config.evaluation
    if memory_gb is not None:
        return spec, memory_gb * 1e9, on_cpu
    if on_cpu:
        notes.append(f"models.device is {config.models.device}: planned for host memory")
        pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return spec, pages / workers, on_cpu
    share = evaluation.gpus_per_worker if evaluation.backend == "ray" else 1.0
    if share == 0:
        share = 1.0
        notes.append("evaluation.gpus_per_worker is 0: planned for one device per worker")
    if share > 1:
        notes.append(
            f"gpus_per_worker={share:g}: a worker keeps its weights on one device; the "
            "plan counts one device"
        )
    budget = spec.memory * min(share, 1.0)
    return Device(spec.name, budget, spec.bandwidth, spec.flops, spec.flops32), budget, on_cpu


def _rank(m: int, n: int, rank: int | None) -> int:
    return min(m, n) if rank is None else min(rank, m, n)


def _weights_memory(
    arch: Architecture, k: int, b: int, mutation: Any, targets: list[tuple[int, int]]
) -> tuple[dict[str, float], dict[str, float]]:
    """A worker's weights, and the transients of materialising a child.

    The weights: base, task vectors, resident model, SVD cache, materialiser workspace.
    """
    p = arch.parameters
    memory: dict[str, float] = {"base": p * b, "task vectors": k * p * b, "resident model": p * b}
    rank = mutation.params.get("rank")
    if mutation.name == "svd_expert":
        floats = sum((m + n) * _rank(m, n, rank) + _rank(m, n, rank) for m, n in targets)
        memory["svd cache"] = k * floats * 4
    # banks: every floating tensor of one shape, stacked (cycleqd.weights.space)
    banks: dict[tuple[int, ...], int] = {}
    for shape in arch.shapes.values():
        banks[shape] = banks.get(shape, 0) + 1
    if mutation.name in ("svd_expert", "svd_child", "gaussian") and banks:
        # a float32 accumulator the size of the largest bank (cycleqd.weights.materialize)
        memory["materialiser workspace"] = max(math.prod(s) * n for s, n in banks.items()) * 4
    transient: dict[str, float] = {}
    if mutation.name == "svd_expert" and targets:
        # each worker factors the task vectors at its first child, SVD_CHUNK matrices of a bank
        # at a time: the gathered rows (storage dtype and float32), the thin SVD's U and V
        counts: dict[tuple[int, int], int] = {}
        for shape in targets:
            counts[shape] = counts.get(shape, 0) + 1
        transient["svd at the first child"] = max(
            min(n, SVD_CHUNK) * (m * c * (b + 4) + (m + c + 1) * min(m, c) * 4)
            for (m, c), n in counts.items()
        )
        # replaying a child's spectral terms stacks a bank's U and V and scales a copy of U
        transient["spectral terms of a child"] = max(
            n * (2 * m + c) * _rank(m, c, rank) * 4 for (m, c), n in counts.items()
        )
    return memory, transient


def _generation_memory(
    arch: Architecture,
    generating: list[Workload],
    b: int,
    spec: Device,
    budget: float,
    on_cpu: bool,
    notes: list[str],
    blockers: list[str],
) -> dict[str, float]:
    """The KV cache, activations and vLLM engines of the tasks' generation.

    A vLLM task's batch becomes what its engine's share holds.
    """
    memory: dict[str, float] = {}
    per_token = arch.layers * 2 * arch.kv_heads * arch.head_dim * b  # KV bytes per token
    hf = [w for w in generating if w.backend != "vllm"]
    if hf and arch.layers:
        tokens = max(w.batch * min(w.sequence, arch.context or w.sequence) for w in hf)
        memory["kv cache"] = tokens * per_token
        # the prefill of the longest context, one layer at a time, and the last position's logits
        logits = max(w.batch for w in hf) * arch.vocab * 4
        memory["activations"] = tokens * (4 * arch.hidden + 2 * arch.intermediate) * b + logits
    for w in generating:
        if w.backend == "vllm" and per_token and not on_cpu:
            # the engine's KV cache is its share of the device less its copy of the weights:
            # sequences beyond it wait (vLLM preempts), so the batch is what fits
            room = w.gpu_memory_utilization * spec.memory - arch.parameters * b
            w.batch = max(0, min(w.batch, int(room // (w.sequence * per_token))))
            if w.batch == 0:
                blockers.append(
                    f"{w.task}: the vLLM engine's share ({w.gpu_memory_utilization:g} of the "
                    "device) cannot hold the weights and one sequence: raise "
                    "backend_params.gpu_memory_utilization"
                )
                w.batch = 1
    engines = {w.engine: w.gpu_memory_utilization for w in generating if w.backend == "vllm"}
    if engines:
        # tasks with the same backend_params share one engine per worker; others add their own
        memory["vllm engine"] = sum(engines.values()) * (spec.memory if not on_cpu else budget)
        if len(engines) > 1:
            notes.append(
                f"{len(engines)} vLLM engines per worker: give every task the same "
                "backend_params to share one"
            )
    return memory


def _child_seconds(
    arch: Architecture,
    k: int,
    b: int,
    spec: Device,
    mutation: Any,
    targets: list[tuple[int, int]],
    generating: list[Workload],
) -> dict[str, float]:
    """The estimated seconds of one child: materialise, mutation, each task's generation."""
    p = arch.parameters
    seconds = {"materialise": (k + 2) * p * b / spec.bandwidth}
    if mutation.name in ("svd_expert", "svd_child"):
        rank = mutation.params.get("rank") or (16 if mutation.name == "svd_child" else None)
        flops = sum(2 * m * n * _rank(m, n, rank) for m, n in targets)
        if mutation.name == "svd_child":
            flops *= 3  # sketch, power iteration and reconstruction
        seconds["mutation"] = flops / (spec.flops32 or spec.flops)  # float32 factors
    for w in generating:
        batches = math.ceil(w.problems / w.batch) * w.turns
        kv_read = w.batch * w.sequence * arch.layers * 2 * arch.kv_heads * arch.head_dim * b / 2
        decode = batches * w.new_tokens * (p * b + kv_read) / spec.bandwidth
        context = (w.prompt_tokens + w.sequence) / 2  # a turn's prompt, on average
        prefill = 2 * p * w.sequences * context / (0.5 * spec.flops)
        seconds[f"generate {w.task}"] = decode + prefill
    return seconds


def make_plan(config: Any, *, device: str = "h200", memory_gb: float | None = None) -> Plan:
    """The plan of a :class:`cycleqd.config.RunConfig` on ``device``.

    Args:
        config: the run config.
        device: a key of :data:`DEVICES` (ignored for ``models.device: cpu``, which plans for
            the host's memory shared by the workers).
        memory_gb: a worker's memory budget in GB, instead of the device's.

    Raises:
        CycleQDError: an unknown device, or models whose shapes cannot be read.
    """
    if device not in DEVICES:
        raise CycleQDError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if config.models.source != "paths":
        raise CycleQDError(
            f"cycleqd plan reads models given by path or id (models.base / models.experts); "
            f"source {config.models.source!r} builds its own small models, which need no plan"
        )
    notes: list[str] = []
    blockers: list[str] = []
    arch = architecture(config.models.base)
    evaluation = config.evaluation
    workers = evaluation.workers if evaluation.backend == "ray" else 1
    spec, budget, on_cpu = _budget(config, device, memory_gb, workers, notes)
    k = len(config.tasks)
    b = _DTYPE_BYTES[config.models.dtype] if config.models.dtype else arch.dtype_bytes
    mutation = config.evolution.mutation
    targets = _svd_targets(arch, mutation)
    memory, transient = _weights_memory(arch, k, b, mutation, targets)
    loads = [workload(t) for t in config.tasks]
    for w in loads:
        notes += [f"{w.task}: assumed {a}" for a in w.assumed]
    generating = [w for w in loads if w.sequences and w.new_tokens]
    memory |= _generation_memory(arch, generating, b, spec, budget, on_cpu, notes, blockers)
    steady = sum(memory.values())
    generation = memory.get("kv cache", 0.0) + memory.get("activations", 0.0)
    first_child = steady - generation + max(transient.values(), default=0.0)
    memory["overhead"] = 2 * GiB + 0.05 * max(steady, first_child)
    # the driver makes children and scores the final report: base and task vectors, and the
    # resident model with its workspace, SVD factors and their transients for the report
    driver = memory["base"] + memory["task vectors"] + memory["resident model"]
    driver += memory.get("materialiser workspace", 0.0) + memory.get("svd cache", 0.0)
    driver += max(transient.values(), default=0.0)
    if not on_cpu and evaluation.backend == "ray":
        notes.append(
            f"the driver holds up to {driver / GiB:.1f} GiB on {config.models.device} (base, "
            "task vectors, and a resident model with its SVD factors to score the final "
            "report): give it a device no worker uses"
        )
    seconds = _child_seconds(arch, k, b, spec, mutation, targets, generating)
    children = config.evolution.generations * config.evolution.batch_size
    run_hours = children * sum(seconds.values()) / workers / 3600
    if spec.memory == 0:
        spec = Device(spec.name, budget, spec.bandwidth, spec.flops, spec.flops32)
    return Plan(
        spec,
        budget,
        memory,
        seconds,
        arch,
        loads,
        notes,
        run_hours,
        dtype_bytes=b,
        blockers=blockers,
        transient=transient,
        first_child=first_child,
        steady=steady,
        driver=driver,
    )
