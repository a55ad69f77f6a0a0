"""Batched greedy decoding equals transformers' generate; the tokenizer saves and loads."""

from __future__ import annotations

import pytest
import torch

from cycleqd.generation.decode import greedy_decode, train_tokenizer
from cycleqd.suite.skills import SKILLS, generate


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(
        [f"{p.prompt} {p.gold}" for s in SKILLS for p in generate(s, "train", 100)], vocab_size=400
    )


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def _generate_one_by_one(model, tokenizer, prompts, n):
    out = []
    for prompt in prompts:
        encoded = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(
                **encoded, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        out.append(
            tokenizer.decode(ids[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    return out


def test_batched_decoding_equals_generate(model, tokenizer):
    prompts = [p.prompt for s in SKILLS for p in generate(s, "val", 4)]
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1  # padding is exercised
    ours = greedy_decode(model, tokenizer, prompts, max_new_tokens=12, stop=None, batch_size=5)
    assert ours == _generate_one_by_one(model, tokenizer, prompts, 12)


def test_per_prompt_limits_equal_decoding_each_with_its_own(model, tokenizer):
    prompts = [p.prompt for s in SKILLS for p in generate(s, "val", 2)]
    limits = [3, 9, 1, 12, 5, 7]
    together = greedy_decode(model, tokenizer, prompts, max_new_tokens=limits, stop=None)
    alone = [
        greedy_decode(model, tokenizer, [p], max_new_tokens=n, stop=None)[0]
        for p, n in zip(prompts, limits, strict=True)
    ]
    assert together == alone
    assert len({len(tokenizer(a)["input_ids"]) for a in together}) > 1


def test_stop_string_ends_a_completion(model, tokenizer):
    prompts = [p.prompt for p in generate("sql", "val", 3)]
    full = greedy_decode(model, tokenizer, prompts, max_new_tokens=12, stop=None)
    cut_at = full[0][3:5] or full[0][:1]
    stopped = greedy_decode(model, tokenizer, prompts[:1], max_new_tokens=12, stop=cut_at)
    assert stopped[0] == full[0].split(cut_at)[0]


@pytest.mark.parametrize("char", [" ", "e", "\n"])
def test_a_one_character_stop_checked_per_token_cuts_where_the_text_does(model, tokenizer, char):
    prompts = [p.prompt for s in SKILLS for p in generate(s, "val", 3)]
    full = greedy_decode(model, tokenizer, prompts, max_new_tokens=10, stop=None)
    cut = greedy_decode(model, tokenizer, prompts, max_new_tokens=10, stop=char)
    assert cut == [t.split(char)[0] for t in full]
    if char != "\n":
        assert any(char in t for t in full)  # the stop is exercised


def test_tokenizer_round_trips_through_save_and_autotokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "SELECT COUNT(*) FROM employees WHERE salary > 80000"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.pad_token == "<pad>" and loaded.eos_token == "<eos>"


def test_the_lean_decoder_gives_the_tokens_of_the_models_own_forward(model, tokenizer):
    """Many prompts of mixed length, per-prompt limits and a stop: rows finish at different
    steps and leave the batch (compaction), the prompts are packed; completions are equal."""
    from cycleqd.generation.lean import LeanLlama, supports

    assert supports(model)
    prompts = [p.prompt for s in SKILLS for p in generate(s, "val", 30)]
    limits = [3 + i % 17 for i in range(len(prompts))]
    lean = LeanLlama(model)
    kwargs = {"max_new_tokens": limits, "stop": "e", "batch_size": 64}
    ours = greedy_decode(model, tokenizer, prompts, engine=lean, **kwargs)
    theirs = greedy_decode(model, tokenizer, prompts, engine="transformers", **kwargs)
    assert ours == theirs
    assert len({len(t) for t in ours}) > 3  # rows ended at different steps
    # its work is counted (bench/decode.py's roofline): every call, prompts packed
    assert lean.flops > 0 and lean.bytes_read > 0 and len(lean.calls) > 2
    # used by hand, outside greedy_decode's no_grad (parameters that require grad): the same
    # first token as the model's own forward
    encoded = tokenizer(prompts[:4], return_tensors="pt", padding=True, padding_side="left")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    first = lean.start(ids, mask, ids.shape[1] + 2).argmax(-1)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    own = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    assert torch.equal(first, own.argmax(-1))
    assert lean.step(first).shape == (4, model.config.vocab_size)


def test_prefix_nodes_share_what_prompts_have_in_common():
    from cycleqd.generation.lean import prefix_nodes

    pad = 0
    ids = torch.tensor([[pad, 5, 6, 7], [5, 6, 8, 9], [pad, pad, 5, 6], [pad, 4, 6, 7]])
    mask = (ids != pad).long()
    nodes, reps = prefix_nodes(ids, mask)
    # distinct prefixes: 5 | 5 6 | 5 6 7 | 5 6 8 | 5 6 8 9 | 4 | 4 6 | 4 6 7
    assert len(reps) == 8
    grid = nodes.view(4, 4)
    assert grid[0, 1:3].tolist() == grid[1, :2].tolist()  # rows 0 and 1 share "5 6"
    assert grid[2, 2:].tolist() == grid[0, 1:3].tolist()  # "5 6": the same two nodes
    assert grid[3, 2] != grid[0, 2]  # "4 6" is not "5 6": same token, other prefix
    assert grid[1, 2] != grid[0, 3]  # "5 6 8" is not "5 6 7"
    assert (nodes[mask.view(-1) == 0] == len(reps)).all()  # pads: the extra zero row
    # each node's representative is a position holding that node, its first appearance
    assert (nodes[reps] == torch.arange(len(reps))).all()
    assert reps.tolist() == sorted(reps.tolist())


def test_compaction_keeps_each_running_rows_cache(model, tokenizer):
    """Rows dropped mid-batch: the rows moved into their slots decode on as if nothing moved."""
    from cycleqd.generation.lean import LeanLlama

    prompts = [p.prompt for p in generate("sql", "val", 7)]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    whole, packed = LeanLlama(model), LeanLlama(model)
    first = whole.start(ids, mask, ids.shape[1] + 4).argmax(-1)
    assert torch.equal(first, packed.start(ids, mask, ids.shape[1] + 4).argmax(-1))
    token = whole.step(first).argmax(-1)
    packed.step(first)
    drop = torch.tensor([False, True, False, False, True, False, True])
    order = packed.compact(drop)
    # four rows stay: row 5, the one kept behind the new end, moves into dropped row 1's slot
    assert order.tolist() == [0, 5, 2, 3] and packed.rows == 4
    full = whole.step(token)
    kept = packed.step(token[order])
    torch.testing.assert_close(kept, full[order], rtol=1e-5, atol=1e-5)
    assert torch.equal(kept.argmax(-1), full[order].argmax(-1))
    with pytest.raises(ValueError, match="one token per running row"):
        packed.step(token)
    with pytest.raises(ValueError, match="a bool per running row"):
        packed.compact(drop)


def test_the_lean_decoder_follows_weights_changed_in_place(model, tokenizer):
    prompts = [p.prompt for p in generate("code", "val", 6)]
    before = greedy_decode(model, tokenizer, prompts, max_new_tokens=8, stop=None, engine="lean")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.5)
        lean = greedy_decode(model, tokenizer, prompts, max_new_tokens=8, stop=None, engine="lean")
        own = greedy_decode(
            model, tokenizer, prompts, max_new_tokens=8, stop=None, engine="transformers"
        )
    finally:
        model.load_state_dict(saved)
    assert lean == own and lean != before


def test_models_the_lean_decoder_does_not_cover_decode_through_their_own_forward(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from cycleqd.generation.lean import supports

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64)
    ).eval()
    assert not supports(gpt2)
    prompts = [p.prompt for p in generate("sql", "val", 3)]
    auto = greedy_decode(gpt2, tokenizer, prompts, max_new_tokens=5, stop=None)
    assert auto == greedy_decode(
        gpt2, tokenizer, prompts, max_new_tokens=5, stop=None, engine="transformers"
    )
    with pytest.raises(ValueError, match="lean engine decodes plain float32 Llamas"):
        greedy_decode(gpt2, tokenizer, prompts, max_new_tokens=5, stop=None, engine="lean")
    with pytest.raises(ValueError, match="engine must be auto, lean or transformers"):
        greedy_decode(gpt2, tokenizer, prompts, engine="fast")


def test_an_empty_prompt_decodes_as_through_the_models_own_forward(model, tokenizer):
    prompts = ["", "SELECT", "ls -la"]
    auto = greedy_decode(model, tokenizer, prompts, max_new_tokens=6, stop=None)
    assert auto == greedy_decode(
        model, tokenizer, prompts, max_new_tokens=6, stop=None, engine="transformers"
    )
