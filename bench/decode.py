"""Greedy decoding three ways, and the lean decoder against the machine's roofline.

Same model (a randomly initialised 4-layer Llama with a BPE tokenizer trained on the agent-skill
text), same 150 validation prompts of the three skills, same 24 new tokens each, greedy:
``transformers``' ``generate`` one prompt at a time; :func:`greedy_decode` batched through the
model's own forward (``engine="transformers"``); and batched through the lean decoder
(:mod:`cycleqd.generation.lean`). Checks that all three give the same completions.

The roofline: the lean decoder counts the floating-point operations of every forward call and
the bytes it reads (weights once per call, each row's KV cache once per layer); the machine's
matrix-product throughput is measured on the model's own largest product at the batch's size,
and its memory bandwidth on a large copy. ``flop_roofline`` is the time the operations take at
that throughput over the time decoding took (the goal: >= 0.5); ``roofline`` also lets each call
be bound by its bytes at that bandwidth (the classic roofline: attention over a KV cache reads
more than it computes). Last line: ``RESULT decode_speedup=<x> lean_speedup=<x>
flop_roofline=<f> roofline=<f>``.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cycleqd.generation.decode import greedy_decode, train_tokenizer
from cycleqd.generation.lean import LeanLlama
from cycleqd.suite.skills import SKILLS, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="15 prompts (smoke run)")
    parser.add_argument("--repeats", type=int, default=1, help="(accepted for symmetry)")
    args = parser.parse_args()
    per_skill = 5 if args.small else 50
    texts = [f"{p.prompt} {p.gold}" for s in SKILLS for p in generate(s, "train", 300)]
    tokenizer = train_tokenizer(texts, vocab_size=512)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    prompts = [p.prompt for s in SKILLS for p in generate(s, "val", per_skill)]
    new_tokens = 24

    def batched(engine):
        return greedy_decode(
            model, tokenizer, prompts, max_new_tokens=new_tokens, stop=None, engine=engine
        )

    batched("lean")  # warm-up
    start = time.perf_counter()
    ours = batched("transformers")
    t_ours = time.perf_counter() - start
    lean = LeanLlama(model)
    start = time.perf_counter()
    leaned = batched(lean)
    t_lean = time.perf_counter() - start
    flops_per_s, bytes_per_s = machine(config.hidden_size, config.intermediate_size, len(prompts))
    flop_time = lean.flops / flops_per_s
    bound = sum(max(f / flops_per_s, b / bytes_per_s) for f, b in lean.calls)

    start = time.perf_counter()
    reference = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **encoded,
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        reference.append(
            tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    t_ref = time.perf_counter() - start
    same = sum(a == b == c for a, b, c in zip(ours, leaned, reference, strict=True))
    print(
        f"{len(prompts)} prompts x {new_tokens} tokens: lean {t_lean:.3f} s, batched "
        f"transformers {t_ours:.3f} s, generate one by one {t_ref:.2f} s; identical "
        f"completions {same}/{len(prompts)}"
    )
    print(
        f"lean decoder: {lean.flops / 1e9:.2f} GFLOP, {lean.bytes_read / 1e9:.2f} GB read in "
        f"{len(lean.calls)} calls; machine {flops_per_s / 1e9:.0f} GFLOP/s, "
        f"{bytes_per_s / 1e9:.1f} GB/s: FLOP-bound time {flop_time * 1000:.1f} ms, roofline "
        f"time {bound * 1000:.1f} ms, measured {t_lean * 1000:.1f} ms"
    )
    if same != len(prompts):
        raise SystemExit("the three ways decoded different completions")
    print(
        f"RESULT decode_speedup={t_ref / t_ours:.1f} lean_speedup={t_ours / t_lean:.2f} "
        f"flop_roofline={flop_time / t_lean:.2f} roofline={bound / t_lean:.2f}"
    )


def machine(hidden: int, inner: int, rows: int) -> tuple[float, float]:
    """This machine's float32 matrix-product FLOP/s (the model's MLP product at ``rows`` rows,
    best of 50) and its copy bandwidth in bytes/s (a 256 MB copy, best of 5)."""
    a, w = torch.randn(rows, hidden), torch.randn(hidden, 2 * inner)
    best = float("inf")
    for _ in range(50):
        start = time.perf_counter()
        a @ w
        best = min(best, time.perf_counter() - start)
    flops = 2 * rows * hidden * 2 * inner / best
    src = torch.randn(64 * 2**20)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return flops, 2 * src.numel() * 4 / best  # a copy reads and writes every byte


if __name__ == "__main__":
    main()
