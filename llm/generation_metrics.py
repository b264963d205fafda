"""How well a model's generations match references: BLEU (sacrebleu), ROUGE-L (Google's
rouge-score) and exact match, over a JSON-lines file of `{"prompt", "reference"}`
records (`llm eval MODEL_DIR --generation FILE.jsonl`).

The scores are the libraries' own: corpus BLEU with sacrebleu's default 13a
tokenization (0-100), the mean ROUGE-L F-measure (0-1), and the share of generations
equal to their reference once surrounding whitespace is stripped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llm.data import read_jsonl_file
from llm.errors import DataError

KEYS = ("prompt", "reference")


@dataclass(frozen=True)
class GenerationCase:
    prompt: str
    reference: str


@dataclass(frozen=True)
class GenerationScores:
    cases: int
    bleu: float
    rouge_l: float
    exact_match: float


def read_cases(path: str | Path) -> list[GenerationCase]:
    """The records of `path`; a malformed one is a DataError naming its line."""
    path = Path(path)
    cases = []
    for number, record in read_jsonl_file(path):
        fields = [record.get(key) if isinstance(record, dict) else None for key in KEYS]
        if not all(isinstance(value, str) for value in fields):
            raise DataError(f"{path}, line {number}: needs string fields 'prompt' and 'reference'")
        cases.append(GenerationCase(*fields))
    if not cases:
        raise DataError(f"{path}: no records")
    return cases


def score(generations: list[str], references: list[str]) -> GenerationScores:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = list(zip(generations, references, strict=True))
    rouge = [scorer.score(ref, generated)["rougeL"].fmeasure for generated, ref in pairs]
    exact = [generated.strip() == reference.strip() for generated, reference in pairs]
    return GenerationScores(
        cases=len(generations),
        bleu=float(sacrebleu.corpus_bleu(generations, [references]).score),
        rouge_l=sum(rouge) / len(rouge),
        exact_match=sum(exact) / len(exact),
    )
