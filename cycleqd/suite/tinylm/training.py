"""The training: the base, each expert, and the experts' last round side by side.

Plain torch, no trainer framework, deterministic from a seed.

* The base is pretrained on a mixture of generic text and a share of every skill's examples (a
  base that knows none of the skills gives experts whose merges collapse).
* Each expert is fine-tuned from the base on its skill, the loss on the answer only, held to the
  base on the other skills' sequences (KL anchors) and trained to work at a fraction of its task
  vector; then the experts train a last round side by side, each with the others' task vectors
  present at random scales. Together these make task vectors that add up, as large models' do
  (a lab construction: ``bench/stage.py`` measures what each device gives).
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cycleqd.engine.progress import progress
from cycleqd.suite.skills.problems import SKILLS
from cycleqd.suite.tinylm.corpus import _skill_examples, copy_examples, generic_text
from cycleqd.suite.tinylm.recipe import BUILD_THREADS, EXPERT_TRAIN, TinyLMRecipe

__all__ = ["build_threads", "train_base", "train_expert", "train_jointly"]


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
