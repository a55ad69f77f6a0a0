"""Batched greedy decoding with a KV cache against transformers' generate, one prompt at a time.

Same model (a randomly initialised 4-layer Llama with a BPE tokenizer trained on the agent-skill
text), same 150 validation prompts of the three skills, same 24 new tokens each, greedy. Checks
that both produce the same completions. Last line: ``RESULT decode_speedup=<x>``.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cycleqd.generation.decode import greedy_decode, train_tokenizer
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

    start = time.perf_counter()
    ours = greedy_decode(model, tokenizer, prompts, max_new_tokens=new_tokens, stop=None)
    t_ours = time.perf_counter() - start

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
    same = sum(a == b for a, b in zip(ours, reference, strict=True))
    print(
        f"{len(prompts)} prompts x {new_tokens} tokens: batched {t_ours:.2f} s, "
        f"generate one by one {t_ref:.2f} s; identical completions {same}/{len(prompts)}"
    )
    print(f"RESULT decode_speedup={t_ref / t_ours:.1f}")


if __name__ == "__main__":
    main()
