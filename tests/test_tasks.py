"""Embedded and user datasets, deterministic splits, tokenisation cache, models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from orchestrator.errors import DataFileError
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
    labels = [label for split in data.splits.values() for label in split[1]]
    assert 0.45 < sum(labels) / len(labels) < 0.55
    assert 0.55 < sizes["train"] / sum(sizes.values()) < 0.65


def test_split_depends_on_the_text_only():
    texts = [f"sentence number {i}" for i in range(200)]
    labels = [i % 2 for i in range(200)]
    a = datasets.hash_split(texts, labels, ["a", "b"])
    b = datasets.hash_split(list(reversed(texts)), list(reversed(labels)), ["a", "b"])
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
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": f"text {i}", "label": i % 3}) for i in range(90)))
    assert datasets.load_dataset("jsonl:d.jsonl", tmp_path).label_names == ["0", "1", "2"]
    with pytest.raises(DataFileError, match=re.escape("d.jsonl:1: sentence: no key 'sentence'")):
        datasets.load_dataset("jsonl:d.jsonl", tmp_path, text_column="sentence")


def test_hub_dataset_offline_gives_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(datasets.DatasetUnavailableError) as info:
        datasets.load_dataset("glue/sst2", Path("."))
    message = str(info.value)
    assert "embedded:rotten-tomatoes" in message and "\n" not in message


def test_image_and_lm_hub_ids_keep_their_owner_and_fail_offline_in_one_line(monkeypatch):
    """Every type loads hub data through ``datasets.load_hub``; image and LM references are
    NAME[:CONFIG], so an owner's dataset (uoft-cs/cifar100) is not read as dataset + config."""
    from orchestrator.tasks.image_data import load_image_dataset
    from orchestrator.tasks.lm_data import load_lm_dataset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import orchestrator.tasks.image_data as image_data
    import orchestrator.tasks.lm_data as lm_data

    asked = []

    def spy(ref, name, config, offline):  # records the split of the reference, then loads for real
        asked.append((name, config))
        return datasets.load_hub(ref, name, config, offline)

    monkeypatch.setattr(image_data, "load_hub", spy)
    monkeypatch.setattr(lm_data, "load_hub", spy)
    with pytest.raises(datasets.DatasetUnavailableError, match="embedded:digits") as info:
        load_image_dataset("uoft-cs/cifar100", Path("."), "fine_label")
    assert "\n" not in str(info.value)
    with pytest.raises(datasets.DatasetUnavailableError, match="embedded:rotten-tomatoes-lm"):
        load_lm_dataset("zwhe99/commonsense_170k:default", Path("."), "instruction", "answer")
    assert asked == [("uoft-cs/cifar100", ""), ("zwhe99/commonsense_170k", "default")]


def test_hub_model_offline_names_the_embedded_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="embedded:minilm-l6"):
        load_tokenizer(resolve_model("bert-base-uncased"))


def test_embedded_model_resolves_offline():
    ref = resolve_model("embedded:minilm-l6")
    assert (Path(ref.path) / "model.safetensors").exists()
    assert load_tokenizer(ref)("a fine film")["input_ids"][0] == 101  # [CLS]


def test_tokenised_once_then_read_from_the_cache(tmp_path, monkeypatch):
    task = TaskSpec(
        model="random:bert-tiny", dataset="synthetic:polarity", train_examples=64, val_examples=32, test_examples=32
    )
    first = prepare_task(task, tmp_path, tmp_path / "cache")
    assert first.sizes() == {"train": 64, "validation": 32, "test": 32}
    import orchestrator.tasks.types.sequence_classification as sequence_classification

    monkeypatch.setattr(
        sequence_classification, "load_tokenizer", lambda ref: (_ for _ in ()).throw(AssertionError("tokenised twice"))
    )
    second = prepare_task(task, tmp_path, tmp_path / "cache")
    assert (second.splits["train"].ids == first.splits["train"].ids).all()
    batch = next(second.splits["train"].batches(8, second.pad_id))
    assert batch["input_ids"].shape[0] == 8 and batch["attention_mask"].sum() < batch["input_ids"].numel() + 1


def _padded_tokens(split, order, batch_size: int) -> int:
    lengths = split.lengths[order]
    return sum(
        int(lengths[i : i + batch_size].max()) * len(lengths[i : i + batch_size])
        for i in range(0, len(lengths), batch_size)
    )


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

    from orchestrator.trial.training import evaluate

    class ParityOfLength(torch.nn.Module):
        def forward(self, input_ids, attention_mask, **_):
            odd = (attention_mask.sum(-1) % 2).float()
            return types.SimpleNamespace(logits=torch.stack([1 - odd, odd], dim=-1))

    data = prepare_task(TaskSpec(train_examples=32, val_examples=200, test_examples=8), tmp_path, tmp_path / "cache")
    val = data.splits["validation"]
    assert not (val.order(16, by_length=True) == np.arange(len(val))).all()  # the sorted order differs
    _, _, predictions = evaluate(ParityOfLength(), data, "validation", 16, "accuracy", "cpu")
    expected = val.lengths % 2
    assert 0 < expected.sum() < len(expected)
    assert predictions.tolist() == expected.tolist()


# -- task heads: what a method must train besides its adapter ------------------------------
_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)


def _tiny_config(family: str):
    """A tiny random config of each family the shipped profiles (and the model table) use."""
    import transformers

    return {
        "bert": lambda: transformers.BertConfig(**_TINY),
        "roberta": lambda: transformers.RobertaConfig(**_TINY),
        "deberta-v2": lambda: transformers.DebertaV2Config(**_TINY),
        "distilbert": lambda: transformers.DistilBertConfig(
            dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=100
        ),
        "llama": lambda: transformers.LlamaConfig(**_TINY, num_key_value_heads=2, pad_token_id=0),
    }[family]()


@pytest.fixture(scope="module")
def saved_base_models(tmp_path_factory) -> dict[str, Path]:
    """Each family's *base* model (``AutoModel``, no task head) saved as a checkpoint, the
    way bert-base-uncased or deberta-v3-base come from the hub."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    folders = {}
    for family in ("bert", "roberta", "deberta-v2", "distilbert", "llama"):
        torch.manual_seed(0)
        folders[family] = tmp_path_factory.mktemp(family)
        transformers.AutoModel.from_config(_tiny_config(family)).save_pretrained(folders[family])
    return folders


def _load_for_classification(folder: Path):
    """The classification model and the parameter names the base checkpoint did not hold
    (transformers initialised them at random)."""
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, attn_implementation="eager", output_loading_info=True
    )
    return model, set(info["missing_keys"])


_HEADS_BY_FAMILY = {
    "bert": ["classifier"],  # bert.pooler is pretrained and stays frozen
    "roberta": ["classifier"],  # dense + out_proj
    "deberta-v2": ["pooler", "classifier"],
    "distilbert": ["pre_classifier", "classifier"],
    "llama": ["score"],
}


@pytest.mark.parametrize("family", sorted(_HEADS_BY_FAMILY))
def test_head_modules_are_the_modules_a_base_checkpoint_leaves_random(family, saved_base_models):
    from orchestrator.tasks.models import head_modules

    model, random_init = _load_for_classification(saved_base_models[family])
    heads = head_modules(model)
    assert heads == _HEADS_BY_FAMILY[family]
    assert {name.split(".")[0] for name in random_init} == set(heads)


def _as_base_name(name: str) -> str:
    """A trained parameter's name in the unwrapped model (peft wraps the model and
    trains a copy of each head under ``modules_to_save.default``)."""
    return name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")


@pytest.mark.parametrize("method_name", ["lora", "adalora", "galora"])
@pytest.mark.parametrize("family", sorted(_HEADS_BY_FAMILY))
def test_every_method_trains_the_randomly_initialised_head_and_no_other_base_weight(
    family, method_name, saved_base_models
):
    """DeBERTa-v3 with peft's default heads trained with ``pooler.dense`` frozen at
    random: every parameter missing from the base checkpoint must be trained, and no
    parameter the checkpoint holds (adapters are new parameters, not base ones)."""
    from methods import get_method
    from methods.base import BuildContext
    from orchestrator.tasks.models import default_target_modules, head_modules

    model, random_init = _load_for_classification(saved_base_models[family])
    base_names = {name for name, _ in model.named_parameters()}
    ctx = BuildContext(
        total_steps=10,
        steps_per_epoch=10,
        num_labels=2,
        target_modules=default_target_modules(model),
        seed=0,
        head_modules=head_modules(model),
    )
    built = get_method(method_name)().build(model, ctx)
    trained = {_as_base_name(name) for name, param in built.named_parameters() if param.requires_grad}
    assert random_init <= trained, f"frozen at random init: {sorted(random_init - trained)}"
    assert trained & base_names <= random_init, f"pretrained but trained: {sorted(trained & base_names - random_init)}"
