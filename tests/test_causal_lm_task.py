"""Causal LM (task.type causal-lm): masking, exact match, data errors, metrics, FLOPs per token, a run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.cli import main
from orchestrator.errors import DataFileError
from orchestrator.spec.loader import load_hypothesis
from orchestrator.spec.models import TaskSpec, TrainingSpec
from orchestrator.tasks.lm_data import EMBEDDED_LM_DATASETS, LABEL_WORDS, load_lm_dataset
from orchestrator.tasks.prepare import prepare_task
from orchestrator.tasks.types import get_task_type
from orchestrator.tasks.types.base import SplitOutcome
from orchestrator.tasks.types.causal_lm import IGNORE, normalise
from orchestrator.trial.per_example import PerExampleRecord
from orchestrator.trial.training import TrialSetup, run_trial

ROOT = Path(__file__).resolve().parent.parent
POLARITY = TaskSpec(
    type="causal-lm",
    model="random:llama-tiny",
    dataset="synthetic:polarity-lm",
    train_examples=64,
    val_examples=16,
    test_examples=16,
)


@pytest.fixture(scope="module")
def polarity(tmp_path_factory):
    return prepare_task(POLARITY, Path("."), tmp_path_factory.mktemp("cache"))


# -- preprocessing ------------------------------------------------------------------------------
def test_the_loss_is_masked_to_the_completion_and_its_eos(polarity):
    from transformers import AutoTokenizer

    from orchestrator.tasks.types.lm_models import lm_tokenizer_path, resolve_lm

    tokenizer = AutoTokenizer.from_pretrained(lm_tokenizer_path(resolve_lm("random:llama-tiny")))
    split = polarity.splits["train"]
    batch = next(split.batches(8, polarity.pad_id))
    for row in range(8):
        length, start = int(split.lengths[row]), int(split.prompt_lengths[row])
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        assert (labels[:start] == IGNORE).all() and (labels[length:] == IGNORE).all()  # prompt, padding
        assert torch.equal(labels[start:length], ids[start:length])
        assert int(ids[length - 1]) == tokenizer.eos_token_id and batch["attention_mask"][row].sum() == length
        assert tokenizer.decode(ids[start : length - 1]) in LABEL_WORDS  # the completion, its leading space kept
    assert "token_type_ids" not in batch


def test_the_cache_round_trips(polarity, tmp_path):
    prepare_task(POLARITY, Path("."), tmp_path)
    again = prepare_task(POLARITY, Path("."), tmp_path)
    assert again.task_type == "causal-lm" and again.sizes() == {"train": 64, "validation": 16, "test": 16}
    assert (again.splits["test"].prompt_lengths == polarity.splits["test"].prompt_lengths).all()


def test_the_embedded_task_asks_for_the_reviews_label_word():
    data = load_lm_dataset(EMBEDDED_LM_DATASETS[0], Path("."), "prompt", "completion")
    examples = [e for split in data.splits.values() for e in split]
    assert len(examples) > 4000 and {e.completion for e in examples} == set(LABEL_WORDS)
    assert all(e.prompt.startswith("Is this movie review positive or negative?\nReview: ") for e in examples)
    assert all(e.prompt.endswith("\nAnswer:") for e in examples)


# -- exact match ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "generated,gold", [(" Positive", " positive"), ("positive\n", " positive"), (" a  b ", "a b")]
)
def test_exact_match_ignores_case_and_surrounding_or_repeated_whitespace(generated, gold):
    assert normalise(generated) == normalise(gold)


def test_exact_match_still_tells_different_answers_apart():
    assert normalise(" positive.") != normalise(" positive") and normalise("positive") != normalise("negative")


def _common_prefix(a: list[int], b: list[int]) -> int:
    # the lists may differ in length: a common prefix stops at the shorter one
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


class Oracle(torch.nn.Module):
    """Predicts the next token of the example whose ids the input (left padding removed)
    shares the longest start with, by a wide margin (``wrong``: the token after it):
    greedy decoding must reproduce every completion, or none."""

    def __init__(self, split, vocab: int, wrong: bool = False) -> None:
        super().__init__()
        self.examples = [split.example(i).tolist() for i in range(len(split))]
        self.vocab, self.wrong = vocab, wrong
        self.config = type("Config", (), {"vocab_size": vocab})()

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep=0, **_):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for row in range(input_ids.shape[0]):
            ids = input_ids[row][attention_mask[row].bool()].tolist()
            full = max(self.examples, key=lambda e: _common_prefix(e, ids))
            for position in range(len(ids)):
                column = input_ids.shape[1] - len(ids) + position if position_ids is not None else position
                target = full[position + 1] if position + 1 < len(full) else full[-1]
                logits[row, column, (target + 1) % self.vocab if self.wrong else target] = 30.0
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return type("Out", (), {"logits": logits})()


def test_greedy_decoding_scores_a_perfect_model_1_and_a_wrong_one_0(polarity):
    task_type = get_task_type("causal-lm")
    split = polarity.splits["validation"]
    perfect = task_type.evaluate_split(Oracle(split, 49152), polarity, "validation", 5, "cpu")
    assert perfect.score("exact_match") == 1.0 and (perfect.gold == 1).all() and perfect.mean_loss < 1e-6
    wrong = task_type.evaluate_split(Oracle(split, 49152, wrong=True), polarity, "validation", 5, "cpu")
    assert wrong.score("exact_match") == 0.0 and wrong.mean_loss > 10
    assert wrong.score("perplexity") == pytest.approx(math.exp(wrong.mean_loss))


def test_exact_match_is_judged_per_example_and_perplexity_is_not():
    outcome = SplitOutcome(np.array([1, 0, 1, 1]), np.ones(4, dtype=np.int64), np.array([0.1, 2.0, 0.2, 0.3]))
    record = PerExampleRecord.of(outcome.predictions, outcome.gold, outcome.losses, "test", "test_exact_match")
    means = record.per_example_means()
    assert means["test_exact_match"].mean() == outcome.score("exact_match") == 0.75
    assert "test_perplexity" not in means


# -- the spec -------------------------------------------------------------------------------------------
def _hypothesis(folder: Path, task: str) -> Path:
    path = folder / "h.yaml"
    path.write_text(
        f"name: lm\nstatement: a causal LM\ntask:\n{task}arms:\n  a: {{method: lora}}\n  b: {{method: dora}}\n"
    )
    return path


def test_a_causal_lm_is_scored_by_exact_match_unless_told_and_perplexity_is_minimised(tmp_path):
    lm = "  type: causal-lm\n  model: random:llama-tiny\n  dataset: synthetic:polarity-lm\n"
    spec = load_hypothesis(_hypothesis(tmp_path, lm)).hypothesis
    assert spec.task.metric == "exact_match" and spec.search.objectives == {"val_exact_match": "max"}
    spec = load_hypothesis(_hypothesis(tmp_path, lm + "  metric: perplexity\n")).hypothesis
    assert spec.search.objectives == {"val_perplexity": "min"}


@pytest.mark.parametrize(
    "task,line,message",
    [
        (
            "  type: causal-lm\n  model: random:llama-tiny\n  dataset: synthetic:polarity-lm\n  metric: accuracy\n",
            7,
            "task.metric: task.metric accuracy does not apply to task.type causal-lm; use exact_match or perplexity",
        ),
        (
            "  model: random:bert-tiny\n  dataset: synthetic:polarity\n  metric: exact_match\n",
            6,
            "task.metric: task.metric exact_match does not apply to task.type sequence-classification",
        ),
        (
            "  type: causal-lm\n  model: random:llama-tiny\n  dataset: synthetic:polarity-lm\n  text_column: t\n",
            7,
            "task.text_column: task.text_column does not apply to task.type causal-lm",
        ),
        (
            "  model: random:bert-tiny\n  dataset: synthetic:polarity\n  prompt_column: p\n",
            6,
            "task.prompt_column: task.prompt_column does not apply to task.type sequence-classification",
        ),
        (
            "  type: causal-lm\n  model: random:bert-tiny\n  dataset: synthetic:polarity-lm\n",
            5,
            "task.model: 'random:bert-tiny' is not a causal language model",
        ),
    ],
)
def test_a_metric_or_field_of_another_type_is_refused_at_its_line(tmp_path, capsys, task, line, message):
    path = _hypothesis(tmp_path, task)
    assert main(["validate", str(path)]) == 2
    assert f"{path}:{line}: {message}" in capsys.readouterr().err


# -- bad data ----------------------------------------------------------------------------------------------
def _lm_file(folder: Path, rows: list[dict]) -> Path:
    (folder / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return _hypothesis(folder, "  type: causal-lm\n  model: random:llama-tiny\n  dataset: jsonl:data.jsonl\n")


def test_a_missing_key_or_a_blank_completion_is_refused_at_its_line(tmp_path, capsys):
    rows = [{"prompt": f"say {i}", "completion": f" {i}"} for i in range(20)]
    rows[3] = {"prompt": "say 3"}
    rows[7]["completion"] = "  "
    path = _lm_file(tmp_path, rows)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data.jsonl'}:4: completion: no key 'completion'" in err
    assert f"{tmp_path / 'data.jsonl'}:8: completion: blank completion" in err


def test_a_csv_without_the_prompt_column_is_refused_at_its_header(tmp_path, capsys):
    (tmp_path / "data.csv").write_text("question,completion\nwhat,yes\n")
    path = _hypothesis(tmp_path, "  type: causal-lm\n  model: random:llama-tiny\n  dataset: csv:data.csv\n")
    assert main(["validate", str(path)]) == 2
    assert (
        f"{tmp_path / 'data.csv'}:1: prompt: no column 'prompt' (columns: 'question', 'completion')"
        in capsys.readouterr().err
    )


def test_an_example_longer_than_max_length_is_refused_never_cut(tmp_path):
    rows = [{"prompt": f"say {i}", "completion": f" {i}"} for i in range(20)]
    rows[5]["prompt"] = "word " * 40
    _lm_file(tmp_path, rows)
    task = TaskSpec(type="causal-lm", model="random:llama-tiny", dataset="jsonl:data.jsonl", max_length=16)
    with pytest.raises(DataFileError, match=rf"^{tmp_path / 'data.jsonl'}:6: prompt \+ completion is \d+ tokens"):
        prepare_task(task, tmp_path)


# -- a trial ----------------------------------------------------------------------------------------------
def test_lora_r8_is_the_flop_reference_per_token_and_no_head_trains(polarity, tmp_path):
    setup = TrialSetup(
        arm="a",
        method="lora",
        model="random:llama-tiny",
        metric="exact_match",
        training=TrainingSpec(epochs=1, batch_size=32),
        fixed={"r": 8},
    )
    final = run_trial(setup, {"lr": 1e-2}, 0, polarity, lambda m, a: None, tmp_path)
    assert final["adapter_flops_per_token"] == 2 * 8 * (32 + 32) * 4  # q_proj, v_proj of 2 blocks, hidden 32
    assert final["flops_ratio"] == 1.0 and final["head_params"] == 0
    assert 0.0 <= final["val_exact_match"] <= 1.0 and math.isfinite(final["val_loss"])


# -- end to end and the embedded model ---------------------------------------------------------------------
@pytest.mark.slow
def test_the_decoder_peft_smoke_profile_runs_end_to_end_with_verdicts(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(ROOT / "hypotheses" / "decoder_peft.yaml"),
            "--profile",
            "smoke",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dora.test_exact_match >= lora.test_exact_match" in result.stdout + result.stderr


@pytest.mark.slow
def test_the_embedded_smollm2_is_a_pretrained_llama_of_134_5m_parameters():
    task_type = get_task_type("causal-lm")
    model = task_type.load_model(task_type.resolve_model("embedded:smollm2-135m"), 2, 0)
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) == 134_515_008
    assert task_type.default_target_modules(model) == ["q_proj", "v_proj"] and task_type.head_modules(model) == []
