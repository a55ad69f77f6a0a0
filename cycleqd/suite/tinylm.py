"""The embedded default's language models: a tiny Llama, its base and its three skill experts.

Read top to bottom: the recipe, the data, the training loop, the builder. Plain torch, no
trainer framework, deterministic from a seed, cached by the recipe's hash.

* Generic text: CPython 3.11's documentation topics (``pydoc_data``), shipped with cycleqd so
  that nothing is downloaded and no Python version changes them; some topics are held out for
  the language-retention metric.
* The base is pretrained on a mixture of generic text and a share of every skill's examples (a
  base that knows none of the skills gives experts whose merges collapse).
* Each expert is fine-tuned from the base on its skill, the loss on the answer only, held to the
  base on the other skills' sequences (KL anchors) and trained to work at a fraction of its task
  vector; then the experts train a last round side by side, each with the others' task vectors
  present at random scales. Together these make task vectors that add up, as large models' do
  (a lab construction: ``bench/stage.py`` measures what each device gives).
* A build uses :data:`BUILD_THREADS` threads and deterministic kernels, and records a SHA-256 of
  its weights: the same recipe gives the same weights on any machine of a kind.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cycleqd.engine.progress import progress
from cycleqd.errors import CycleQDError
from cycleqd.models.sources import PathsSource
from cycleqd.suite.skills import SKILLS, generate, prompt_of

__all__ = [
    "TinyLMRecipe",
    "TinyLMSource",
    "build",
    "build_info",
    "format_example",
    "generic_text",
    "prompt_of",
    "weights_hash",
]


#: Bump when the training procedure changes in a way the recipe and the data do not show.
BUILD_VERSION = 2
#: Torch threads while building: CPU kernels split their sums by thread, so the count is part of
#: the recipe; a build gives the same weights whatever threads the calling process uses.
BUILD_THREADS = 2
#: What an expert's fine-tuning may change (``expert_train``): parameter-name filters.
EXPERT_TRAIN: dict[str, tuple[str, ...]] = {
    "all": ("",),
    "blocks": (".layers.",),
    "mlp": (".mlp.",),
    "attention": (".self_attn.",),
}


@dataclass(frozen=True)
class TinyLMRecipe:
    """Model size and training schedule of the embedded experts.

    The defaults are the quickstart's recipe (1.2 M parameters, about 9 minutes on 2 CPU
    cores; ``python bench/stage.py`` measures it). ``expert_anchor_weight``: the weight of the
    KL divergence that holds each expert to the base on the other skills' sequences (0: off).
    ``expert_scale_floor``: each expert step runs at a task-vector scale drawn from
    ``[floor, 1]`` (0: off). ``expert_train``: ``all``, ``blocks`` (no embeddings or head),
    ``mlp`` or ``attention``. ``expert_joint_steps``: steps per expert of a last round in which
    the experts train side by side, each with the others' task vectors present at random scales
    (0: off; see :func:`train_jointly`).
    """

    vocab_size: int = 768
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    max_len: int = 160
    base_steps: int = 800
    base_lr: float = 2e-3
    base_skill_share: float = 0.25
    base_copy_share: float = 0.3
    expert_steps: int = 400
    expert_lr: float = 1e-3
    expert_anchor_weight: float = 1.0
    expert_scale_floor: float = 0.2
    expert_train: str = "all"
    expert_joint_steps: int = 100
    batch_size: int = 32
    train_problems: int = 4000
    seed: int = 0

    def __post_init__(self) -> None:
        from cycleqd.errors import CycleQDError

        if self.expert_train not in EXPERT_TRAIN:
            raise CycleQDError(
                f"tinylm recipe: expert_train={self.expert_train!r}; use one of "
                f"{', '.join(EXPERT_TRAIN)}"
            )
        for name, spec in self.__dataclass_fields__.items():
            value = getattr(self, name)
            if spec.type == "str":
                continue
            wanted = float if spec.type == "float" else int
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CycleQDError(f"tinylm recipe: {name} must be a number, not {value!r}")
            if wanted is int and value != int(value):
                raise CycleQDError(f"tinylm recipe: {name} must be a whole number, not {value}")
            if (
                value < 0
                or (name.endswith("share") and value >= 1)
                or (name.endswith("floor") and value > 1)
            ):
                raise CycleQDError(f"tinylm recipe: {name}={value} is out of range")
        if self.hidden % self.heads:
            raise CycleQDError(
                f"tinylm recipe: hidden={self.hidden} must be a multiple of heads={self.heads}"
            )

    @classmethod
    def micro(cls) -> TinyLMRecipe:
        """A recipe that builds in seconds: for tests and smoke runs, not for scores."""
        return cls(
            vocab_size=300,
            hidden=32,
            layers=1,
            heads=2,
            max_len=96,
            base_steps=4,
            expert_steps=2,
            batch_size=4,
            train_problems=40,
            expert_anchor_weight=1.0,
            expert_scale_floor=0.3,
            expert_joint_steps=2,
        )

    def key(self) -> str:
        """The cache key: a hash of the recipe and of the data it trains on.

        The data is hashed too, so that a change to the skills' generators (templates, held-out
        values, the database, the fixture) or to the generic text never reuses stale experts.
        """
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        digest.update(f"build {BUILD_VERSION}".encode())
        for skill in SKILLS:
            for prompt, answer in _skill_examples(skill, self.train_problems, self.seed):
                digest.update(f"{prompt}\x00{answer}\x00".encode())
        for text in generic_text("train"):
            digest.update(text.encode())
        from cycleqd.suite.skills import shell_fixture, sql_database

        digest.update(sql_database().encode())
        digest.update(json.dumps(shell_fixture(), sort_keys=True).encode())
        return digest.hexdigest()[:12]


def format_example(prompt: str, answer: str) -> tuple[str, str]:
    """``(prompt text, answer text)`` of a training example; the answer ends with a newline."""
    return prompt_of(prompt), f" {answer}\n"


def generic_text(split: str) -> list[str]:
    """Paragraphs of the Python documentation topics; ``test`` topics are held out.

    The topics ship with cycleqd (``data/python_docs_topics.json.gz``, CPython 3.11's
    ``pydoc_data``), not read from the running Python, whose patch version would change them.
    """
    topics = _docs_topics()
    names = sorted(topics)
    held_out = set(names[::8])
    chosen = [n for n in names if (n in held_out) == (split == "test")]
    paragraphs = []
    for name in chosen:
        for para in topics[name].split("\n\n"):
            para = " ".join(para.split())
            if len(para) > 40:
                paragraphs.append(para[:400])
    return paragraphs


@functools.cache
def _docs_topics() -> dict[str, str]:
    path = Path(__file__).parent / "data" / "python_docs_topics.json.gz"
    return json.loads(gzip.decompress(path.read_bytes()))


def copy_examples(n: int, words: list[str], seed: int) -> list[tuple[str, str]]:
    """``n`` generic copying drills: repeat a random run of words and numbers.

    Skill-free practice for the one thing every skill needs, copying arguments from the request
    into the answer (without it, tiny experts miscopy numbers and names they were not trained on).
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        items = [
            str(rng.randrange(10 ** rng.randint(1, 6))) if rng.random() < 0.4 else rng.choice(words)
            for _ in range(rng.randint(2, 10))
        ]
        sep = rng.choice([" ", ", ", " and "])
        out.append(format_example(f"Repeat {sep.join(items)}.", sep.join(items)))
    return out


def _encode(tokenizer: Any, prompt: str, answer: str, max_len: int) -> tuple[list[int], int]:
    p = tokenizer(prompt)["input_ids"]
    a = tokenizer(answer)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p + a)[:max_len]
    return ids, min(len(p), len(ids))


def _batches(
    examples: list[tuple[list[int], int]], recipe: TinyLMRecipe, pad: int, rng: random.Random
):
    while True:
        batch = rng.sample(examples, min(recipe.batch_size, len(examples)))
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        for row, (tokens, answer_from) in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            labels[row, answer_from : len(tokens)] = torch.tensor(tokens[answer_from:])
        yield ids, labels


def _train(
    model: Any,
    examples: list[tuple[list[int], int]],
    steps: int,
    lr: float,
    recipe: TinyLMRecipe,
    pad: int,
    seed: int,
    label: str,
    train: tuple[str, ...] = ("",),
    anchor: tuple[Any, list[tuple[list[int], int]], float] | None = None,
    scale_floor: float = 0.0,
) -> None:
    """Train ``model`` on ``examples`` (loss where the labels are set).

    ``anchor``: ``(reference model, examples, weight)``: each step adds ``weight`` × the KL
    divergence from the reference's next-token distributions to the model's on a batch of those
    examples, at their answer positions. ``scale_floor`` > 0: each step runs the model at
    ``θ_0 + s (θ − θ_0)``, ``θ_0`` its starting weights and ``s`` drawn from
    ``[scale_floor, 1]``, so that the change training makes works at any of those scales.
    """
    from rich.progress import Progress
    from torch.func import functional_call

    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = [p for name, p in model.named_parameters() if any(f in name for f in train)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    batches = _batches(examples, recipe, pad, rng)
    anchors = _batches(anchor[1], recipe, pad, rng) if anchor else None
    origin = {n: p.detach().clone() for n, p in model.named_parameters()} if scale_floor else {}
    with Progress(transient=True) as progress:
        task = progress.add_task(f"training {label}", total=steps)
        for _ in range(steps):
            scale = rng.uniform(scale_floor, 1.0) if scale_floor else 1.0

            def forward(ids: Any, scale: float = scale, **kwargs: Any) -> Any:
                kwargs |= {"input_ids": ids, "attention_mask": (ids != pad).long()}
                if not origin:
                    return model(**kwargs)
                weights = {
                    n: origin[n] + scale * (p - origin[n]) for n, p in model.named_parameters()
                }
                return functional_call(model, weights, args=(), kwargs=kwargs)

            ids, labels = next(batches)
            loss = forward(ids, labels=labels).loss
            if anchor is not None and anchors is not None:
                reference = functools.partial(_run, anchor[0], pad)
                loss = loss + anchor[2] * _anchor_kl(forward, reference, *next(anchors))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            schedule.step()
            progress.update(task, advance=1, description=f"training {label} loss {loss:.3f}")
    model.eval()


def _run(model: Any, pad: int, ids: Any) -> Any:
    return model(input_ids=ids, attention_mask=(ids != pad).long())


def _anchor_kl(forward: Any, reference: Any, ids: Any, labels: Any) -> Any:
    """KL(reference ‖ model) of the next-token distributions where ``labels`` are set.

    ``forward(ids)`` runs the model being trained, ``reference(ids)`` the one it is held to.
    """
    import torch.nn.functional as F

    where = labels[:, 1:] != -100
    with torch.no_grad():
        target = reference(ids).logits[:, :-1][where]
    logits = forward(ids).logits[:, :-1][where]
    return F.kl_div(
        F.log_softmax(logits.float(), -1),
        F.log_softmax(target.float(), -1),
        log_target=True,
        reduction="batchmean",
    )


@functools.cache
def _skill_examples(skill: str, train_problems: int, seed: int) -> tuple[tuple[str, str], ...]:
    """A skill's training examples (cached: the cache key and the build both read them)."""
    return tuple(
        format_example(p.prompt, p.gold)
        for p in generate(skill, "train", train_problems, seed=seed)
    )


def build(cache_dir: Path, recipe: TinyLMRecipe | None = None) -> tuple[Path, dict[str, Path]]:
    """Train (or reuse from the cache) the base and one expert per skill.

    Returns:
        The base's Hugging Face directory and each skill's expert directory (each with the
        tokenizer).
    """
    from transformers.utils import logging as hf_logging

    recipe = recipe or TinyLMRecipe()
    root = Path(cache_dir).expanduser() / f"tinylm-{recipe.key()}"
    paths = {s: root / f"expert-{s}" for s in SKILLS}
    if (root / "done").is_file():
        return root / "base", paths
    # built in a private folder renamed into place at the end: an interrupted build leaves no
    # half-built models under the cache key
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own bar shows progress; not one per saved file
    try:
        _build(tmp, recipe)
        if (root / "done").is_file():  # another process built the same recipe meanwhile
            shutil.rmtree(tmp)
        else:
            if root.exists():  # a folder an older version left without its "done" marker
                shutil.rmtree(root)
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return root / "base", paths


def _build(root: Path, recipe: TinyLMRecipe) -> None:
    start = time.perf_counter()
    with build_threads():
        train_base(root / "base", recipe)
        for i, skill in enumerate(SKILLS):
            train_expert(root / f"expert-{skill}", root / "base", recipe, skill, i)
        if recipe.expert_joint_steps:
            train_jointly(root, recipe)
    seconds = round(time.perf_counter() - start, 1)
    digest = weights_hash(root)
    progress(f"models built in {seconds:.0f} s: weights sha256 {digest}")
    info = {"recipe": asdict(recipe), "weights_sha256": digest, "build_s": seconds}
    (root / "done").write_text(json.dumps(info))


def build_info(base: Path) -> dict[str, Any]:
    """What the build of the models beside ``base`` recorded: recipe, weights hash, seconds."""
    return json.loads((Path(base).parent / "done").read_text())


@contextlib.contextmanager
def build_threads() -> Iterator[None]:
    """Train with :data:`BUILD_THREADS` threads and deterministic kernels, then restore both."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(BUILD_THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _mixture(recipe: TinyLMRecipe) -> tuple[list[str], list[tuple[str, str]]]:
    """The base's generic text and skill-free copying drills."""
    generic = generic_text("train")
    n_copy = int(recipe.base_copy_share * len(generic) / (1 - recipe.base_copy_share))
    words = sorted({w for text in generic for w in text.split() if w.isalpha() and len(w) > 2})
    return generic, copy_examples(n_copy, words, recipe.seed)


def train_base(out: Path, recipe: TinyLMRecipe) -> None:
    """Train the tokenizer and the base; save both to ``out``.

    The base reads generic text (loss on everything), a share of every skill's examples and the
    copying drills.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from cycleqd.generation.decode import train_tokenizer

    skill_text = {s: _skill_examples(s, recipe.train_problems, recipe.seed) for s in SKILLS}
    generic, drills = _mixture(recipe)
    corpus = generic + [p + a for pairs in skill_text.values() for p, a in pairs[:1000]]
    tokenizer = train_tokenizer(corpus, vocab_size=recipe.vocab_size)
    pad = tokenizer.pad_token_id
    torch.manual_seed(recipe.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden,
        intermediate_size=4 * recipe.hidden,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.max_len,
        tie_word_embeddings=False,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        architectures=["LlamaForCausalLM"],
    )
    model = LlamaForCausalLM(config)
    n_skill = int(recipe.base_skill_share * len(generic) / (1 - recipe.base_skill_share))
    mixture = [(_encode(tokenizer, "", text, recipe.max_len)[0], 0) for text in generic]
    for s in SKILLS:
        for p, a in skill_text[s][: n_skill // len(SKILLS)]:
            mixture.append(_encode(tokenizer, p, a, recipe.max_len))
    mixture += [_encode(tokenizer, p, a, recipe.max_len) for p, a in drills]
    progress(f"building the base ({recipe.base_steps} steps)")
    _train(model, mixture, recipe.base_steps, recipe.base_lr, recipe, pad, recipe.seed, "base")
    _save(model, tokenizer, out)


def train_expert(out: Path, base: Path, recipe: TinyLMRecipe, skill: str, index: int) -> None:
    """Fine-tune the base at ``base`` on ``skill`` (the loss on the answer); save to ``out``.

    With ``expert_anchor_weight`` > 0 every step also holds the expert to the base outside its
    skill: the KL divergence from the base's next-token distributions to the expert's on a batch
    of the other skills' training sequences, at the answer's positions, weighted so. (The
    expert never learns the other skills' answers: its targets there are the base's own
    predictions.) As a large model's fine-tune leaves unrelated inputs alone, task vectors then
    add up instead of overwriting each other. ``expert_train`` says which weights change.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base)
    expert = LlamaForCausalLM.from_pretrained(base)

    def encoded(s: str) -> list[tuple[list[int], int]]:
        pairs = _skill_examples(s, recipe.train_problems, recipe.seed)
        return [_encode(tokenizer, p, a, recipe.max_len) for p, a in pairs]

    anchor = None
    if recipe.expert_anchor_weight:
        reference = LlamaForCausalLM.from_pretrained(base).eval()
        others = [example for s in SKILLS if s != skill for example in encoded(s)]
        anchor = (reference, others, recipe.expert_anchor_weight)
    progress(f"building expert {skill} ({recipe.expert_steps} steps)")
    _train(
        expert,
        encoded(skill),
        recipe.expert_steps,
        recipe.expert_lr,
        recipe,
        tokenizer.pad_token_id,
        recipe.seed + 1 + index,
        f"expert {skill}",
        EXPERT_TRAIN[recipe.expert_train],
        anchor,
        recipe.expert_scale_floor,
    )
    _save(expert, tokenizer, out)


def train_jointly(root: Path, recipe: TinyLMRecipe) -> None:
    """The experts' last round: each trains with the others' task vectors present.

    Step by step in turn, expert ``k`` runs at ``θ_0 + s τ_k + Σ_j c_j τ_j``: ``s`` is drawn
    from ``[expert_scale_floor, 1]``; every other ``c_j`` is 0 or, with probability 1/2, drawn
    from ``[0, 1]``; the others stay fixed for the step. The loss is its own skill's loss on a
    batch, plus ``expert_anchor_weight`` × the KL divergence from the same model without
    ``τ_k`` to it, on the other skills' sequences. Only ``τ_k`` changes, and only through its
    own skill's answers and the no-``τ_k`` model's predictions: an expert never learns another
    skill. What it learns is to keep its skill, and to leave the others' alone, whatever the
    other task vectors add, as large models' fine-tunes do. Overwrites the experts under
    ``root``.
    """
    from torch.func import functional_call
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    model = LlamaForCausalLM.from_pretrained(root / "base").eval()
    pad = tokenizer.pad_token_id
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    allowed = EXPERT_TRAIN[recipe.expert_train]
    vectors, optimizers, schedules, batches, anchors = [], [], [], [], []
    rng = random.Random(recipe.seed + 100)
    torch.manual_seed(recipe.seed + 100)
    encoded = {
        s: [
            _encode(tokenizer, p, a, recipe.max_len)
            for p, a in _skill_examples(s, recipe.train_problems, recipe.seed)
        ]
        for s in SKILLS
    }
    for skill in SKILLS:
        expert = LlamaForCausalLM.from_pretrained(root / f"expert-{skill}")
        tau = {
            n: (p.detach() - origin[n]).requires_grad_(any(f in n for f in allowed))
            for n, p in expert.named_parameters()
        }
        trained = [t for t in tau.values() if t.requires_grad]
        opt = torch.optim.AdamW(trained, lr=recipe.expert_lr, weight_decay=0.0)
        steps = recipe.expert_joint_steps
        schedules.append(
            torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=recipe.expert_lr, total_steps=steps, pct_start=0.1
            )
        )
        vectors.append(tau)
        optimizers.append(opt)
        batches.append(_batches(encoded[skill], recipe, pad, rng))
        others = [example for s in SKILLS if s != skill for example in encoded[s]]
        anchors.append(_batches(others, recipe, pad, rng))

    def run(weights: dict[str, Any], ids: Any, labels: Any = None) -> Any:
        kwargs = {"input_ids": ids, "attention_mask": (ids != pad).long(), "labels": labels}
        return functional_call(model, weights, args=(), kwargs=kwargs)

    progress(f"training the experts side by side ({recipe.expert_joint_steps} steps each)")
    for _ in range(recipe.expert_joint_steps):
        for k in range(len(SKILLS)):
            scale = rng.uniform(recipe.expert_scale_floor, 1.0)
            others = {
                j: rng.uniform(0.0, 1.0) if rng.random() < 0.5 else 0.0
                for j in range(len(SKILLS))
                if j != k
            }
            with torch.no_grad():
                rest = {
                    n: origin[n] + sum(c * vectors[j][n] for j, c in others.items()) for n in origin
                }
            weights = {n: rest[n] + scale * vectors[k][n] for n in origin}
            loss = run(weights, *next(batches[k])).loss
            if recipe.expert_anchor_weight:
                kl = _anchor_kl(
                    functools.partial(run, weights),
                    functools.partial(run, rest),
                    *next(anchors[k]),
                )
                loss = loss + recipe.expert_anchor_weight * kl
            optimizers[k].zero_grad()
            loss.backward()
            trained = [t for t in vectors[k].values() if t.requires_grad]
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizers[k].step()
            schedules[k].step()
    for skill, tau in zip(SKILLS, vectors, strict=True):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(origin[n] + tau[n])
        _save(model, tokenizer, root / f"expert-{skill}")


def _save(model: Any, tokenizer: Any, out: Path) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def weights_hash(root: Path) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) of the models under ``root``.

    Independent of file layout and metadata: two builds with equal hashes hold equal weights.
    """
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for path in sorted(Path(root).glob("*/model.safetensors")):
        digest.update(path.parent.name.encode())
        tensors = load_file(path)
        for name in sorted(tensors):
            tensor = tensors[name].contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_multitask(cache_dir: Path, recipe: TinyLMRecipe | None = None, seed: int = 0) -> Path:
    """The multi-task fine-tuning baseline: the base trained on every skill's data at once.

    It takes as many steps as all experts together (``len(SKILLS) × expert_steps``) at the
    experts' learning rate, on the union of their training examples; ``seed`` seeds the batches.
    Cached beside the experts (built in a private folder, renamed into place).

    Returns:
        The fine-tuned model's Hugging Face directory (with the tokenizer).
    """
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    recipe = recipe or TinyLMRecipe()
    base, _ = build(cache_dir, recipe)
    out = base.parent / f"multitask-{seed}"
    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples = [
        _encode(tokenizer, p, a, recipe.max_len)
        for s in SKILLS
        for p, a in _skill_examples(s, recipe.train_problems, recipe.seed)
    ]
    model = LlamaForCausalLM.from_pretrained(base)
    steps = len(SKILLS) * recipe.expert_steps
    pad = tokenizer.pad_token_id
    with build_threads():
        _train(model, examples, steps, recipe.expert_lr, recipe, pad, 1000 + seed, "multi-task")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not (out / "config.json").is_file():
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            hf_logging.enable_progress_bar()
    return out


class TinyLMSource(PathsSource):
    """The embedded language models: a tiny Llama base and one expert per agent skill.

    Trained on first use (:mod:`cycleqd.suite.tinylm`) and cached.

    Args:
        **recipe: fields of :class:`cycleqd.suite.tinylm.TinyLMRecipe`.
    """

    def __init__(self, **recipe: Any) -> None:
        try:
            self.recipe = TinyLMRecipe(**recipe)
        except TypeError as exc:
            raise CycleQDError(
                f"tinylm source: {exc}; accepted: {', '.join(TinyLMRecipe.__dataclass_fields__)}"
            ) from None
        self.model = None

    def prepare(self, cache_dir: Path) -> tuple[Path, dict[str, Path]]:
        """Build (or reuse) the base and experts; their Hugging Face directories."""
        self.base, self.experts = build(cache_dir, self.recipe)
        return self.base, dict(self.experts)
