"""Embedded and user datasets, deterministic splits, tokenisation cache, models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.spec.models import TaskSpec
from orchestrator.tasks import datasets
from orchestrator.tasks.models import ModelUnavailableError, load_tokenizer, resolve_model
from orchestrator.tasks.prepare import prepare_task


def test_rotten_tomatoes_is_embedded_balanced_and_deduplicated():
    data = datasets.load_dataset("embedded:rotten-tomatoes", Path("."))
    sizes = data.sizes()
    assert 4800 <= sum(sizes.values()) <= 4870
    assert data.label_names == ["rotten", "fresh"]
    texts = [t for split in data.splits.values() for t in split[0]]
    assert len(texts) == len(set(texts))
    labels = [l for split in data.splits.values() for l in split[1]]
    assert 0.45 < sum(labels) / len(labels) < 0.55
    assert 0.55 < sizes["train"] / sum(sizes.values()) < 0.65


def test_split_depends_on_the_text_only():
    texts = [f"sentence number {i}" for i in range(200)]
    labels = [i % 2 for i in range(200)]
    a = datasets._hash_split(texts, labels, ["a", "b"])
    b = datasets._hash_split(list(reversed(texts)), list(reversed(labels)), ["a", "b"])
    for split in datasets.SPLITS:
        assert sorted(a.splits[split][0]) == sorted(b.splits[split][0])
    assert set(a.splits["train"][0]).isdisjoint(a.splits["test"][0])


def test_csv_with_string_labels_and_custom_columns(tmp_path):
    rows = ["review,verdict"] + [f"text number {i},{'good' if i % 2 else 'bad'}" for i in range(50)]
    (tmp_path / "data.csv").write_text("\n".join(rows))
    data = datasets.load_dataset("csv:data.csv", tmp_path, text_column="review", label_column="verdict")
    assert data.label_names == ["bad", "good"]
    assert sum(data.sizes().values()) == 50


def test_jsonl_and_a_clear_error_for_a_missing_column(tmp_path):
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": f"t{i}", "label": i % 3}) for i in range(30)))
    assert datasets.load_dataset("jsonl:d.jsonl", tmp_path).label_names == ["0", "1", "2"]
    with pytest.raises(datasets.DatasetUnavailableError, match="no column 'sentence'"):
        datasets.load_dataset("jsonl:d.jsonl", tmp_path, text_column="sentence")


def test_hub_dataset_offline_gives_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(datasets.DatasetUnavailableError) as info:
        datasets.load_dataset("glue/sst2", Path("."))
    message = str(info.value)
    assert "embedded:rotten-tomatoes" in message and "\n" not in message


def test_hub_model_offline_names_the_embedded_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="embedded:minilm-l6"):
        load_tokenizer(resolve_model("bert-base-uncased"))


def test_embedded_model_resolves_offline():
    ref = resolve_model("embedded:minilm-l6")
    assert (Path(ref.path) / "model.safetensors").exists()
    assert load_tokenizer(ref)("a fine film")["input_ids"][0] == 101  # [CLS]


def test_tokenised_once_then_read_from_the_cache(tmp_path, monkeypatch):
    task = TaskSpec(model="random:bert-tiny", dataset="synthetic:polarity", train_examples=64, val_examples=32, test_examples=32)
    first = prepare_task(task, tmp_path, tmp_path / "cache")
    assert first.sizes() == {"train": 64, "validation": 32, "test": 32}
    import orchestrator.tasks.prepare as prepare

    monkeypatch.setattr(prepare, "load_tokenizer", lambda ref: (_ for _ in ()).throw(AssertionError("tokenised twice")))
    second = prepare_task(task, tmp_path, tmp_path / "cache")
    assert (second.splits["train"].ids == first.splits["train"].ids).all()
    batch = next(second.splits["train"].batches(8, second.pad_id))
    assert batch["input_ids"].shape[0] == 8 and batch["attention_mask"].sum() < batch["input_ids"].numel() + 1


def _padded_tokens(split, order, batch_size: int) -> int:
    lengths = split.lengths[order]
    return sum(int(lengths[i : i + batch_size].max()) * len(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size))


def test_length_grouped_training_order_is_a_seeded_permutation_with_less_padding(tmp_path):
    data = prepare_task(TaskSpec(train_examples=600, val_examples=32, test_examples=32), tmp_path, tmp_path / "cache")
    train = data.splits["train"]
    grouped = train.order(32, shuffle_seed=3, by_length=True)
    assert sorted(grouped.tolist()) == list(range(len(train)))
    assert (grouped == train.order(32, shuffle_seed=3, by_length=True)).all()
    assert not (grouped == train.order(32, shuffle_seed=4, by_length=True)).all()
    shuffled = train.order(32, shuffle_seed=3)
    assert _padded_tokens(train, grouped, 32) < 0.75 * _padded_tokens(train, shuffled, 32)
    assert (train.order(32) == range(len(train))).all()  # no seed, no grouping: split order


def test_evaluation_batches_by_length_but_returns_predictions_in_split_order(tmp_path):
    """A model that predicts 1 for an odd number of tokens: evaluate() must return its
    predictions in split order although it batches by length."""
    import types

    import numpy as np
    import torch

    from orchestrator.training import evaluate

    class ParityOfLength(torch.nn.Module):
        def forward(self, input_ids, attention_mask, **_):
            odd = (attention_mask.sum(-1) % 2).float()
            return types.SimpleNamespace(logits=torch.stack([1 - odd, odd], dim=-1))

    data = prepare_task(TaskSpec(train_examples=32, val_examples=200, test_examples=8), tmp_path, tmp_path / "cache")
    val = data.splits["validation"]
    assert not (val.order(16, by_length=True) == np.arange(len(val))).all()  # the sorted order differs
    _, _, predictions = evaluate(ParityOfLength(), val, data.pad_id, 16, "accuracy", "cpu")
    expected = val.lengths % 2
    assert 0 < expected.sum() < len(expected)
    assert predictions.tolist() == expected.tolist()
