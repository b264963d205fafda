"""`llm eval MODEL_DIR --generation FILE.jsonl`: BLEU, ROUGE-L and exact match of greedy
generations against references, computed by sacrebleu and rouge-score."""

from __future__ import annotations

import json

import pytest
from conftest import peaked_model

from llm.checkpoint import save_model_dir
from llm.cli import main as llm
from llm.errors import DataError
from llm.generate import SamplingParams, complete
from llm.generation_metrics import read_cases, score
from llm.tokenizer import ByteTokenizer


def test_scores_of_identical_and_disjoint_generations():
    same = score(["the cat sat on the mat", "a b"], ["the cat sat on the mat", " a b "])
    assert (same.cases, same.bleu, same.rouge_l, same.exact_match) == (2, pytest.approx(100), 1, 1)
    apart = score(["xyz uvw"], ["the cat sat"])
    assert (apart.bleu, apart.rouge_l, apart.exact_match) == (0, 0, 0)
    half = score(["the cat sat", "the dog ran"], ["the cat sat", "the dog slept"])
    assert half.exact_match == 0.5 and 0.5 < half.rouge_l < 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "a", "reference": "b"}\n{oops\n', "line 2: malformed JSON"),
        ('{"prompt": "a"}\n', "line 1: needs string fields 'prompt' and 'reference'"),
        ("\n\n", "no records"),
    ],
)
def test_a_bad_record_is_named_by_its_line(tmp_path, content, message):
    path = tmp_path / "cases.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_cases(path)


def test_llm_eval_generation_scores_the_models_greedy_completions(workdir, capsys):
    tokenizer = ByteTokenizer()
    model = peaked_model(tokenizer.vocab_size, 32)
    save_model_dir(workdir / "model", model, tokenizer)
    prompts = ["the model ", "reads tokens", "and predicts"]
    params = SamplingParams(max_new_tokens=6, temperature=0.0, eos_id=tokenizer.eos_id)
    encoded = [tokenizer.encode(prompt) for prompt in prompts]
    generated = [c.text for c in complete(model, tokenizer, encoded, params)]
    references = [generated[0], generated[1] + " and more", "something else entirely"]
    pairs = zip(prompts, references, strict=True)
    lines = [json.dumps({"prompt": p, "reference": r}) for p, r in pairs]
    (workdir / "cases.jsonl").write_text("\n".join(lines) + "\n")
    args = ["eval", "model", "--generation", "cases.jsonl", "--max-new-tokens", "6"]
    assert llm([*args, "--batch-size", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = score(generated, references)
    assert out == {
        "generation": "cases.jsonl",
        "cases": 3,
        "bleu": pytest.approx(expected.bleu),
        "rouge_l": pytest.approx(expected.rouge_l),
        "exact_match": pytest.approx(1 / 3),
    }
    (workdir / "bad.jsonl").write_text('{"prompt": 1, "reference": "x"}\n')
    assert llm(["eval", "model", "--generation", "bad.jsonl"]) == 2
    assert "bad.jsonl, line 1" in capsys.readouterr().err
