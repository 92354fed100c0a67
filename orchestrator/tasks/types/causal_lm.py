"""Causal language modelling: a prompt in, a completion generated; the loss on the completion only.

Models (``lm_models``): ``embedded:smollm2-135m``, ``random:llama-tiny`` /
``random:llama-h{H}-l{L}``, a folder or a hub id, as ``*ForCausalLM``. Data
(``orchestrator.tasks.lm_data``): ``embedded:rotten-tomatoes-lm``,
``synthetic:polarity-lm``, ``csv:PATH`` / ``jsonl:PATH`` with a prompt and a completion
per row.

Preprocessing. No chat template: an example is the plain concatenation
``tokenizer(prompt) + tokenizer(completion, add_special_tokens=False) + [eos]``. The
prompt gets the tokenizer's own special tokens, so a BOS exactly where the model's
tokenizer puts one (Llama 2/3 add it; SmolLM2's does not); the EOS after the completion
teaches the model to stop, which greedy decoding needs. Labels are -100 on the prompt
and on padding, so the loss is on the completion's tokens and its EOS only. Cached as
flat ids, offsets and the prompt's length (where the completion starts) per example.
An example longer than ``task.max_length`` tokens is never cut: in a user's file it is
refused at its FILE:LINE; the built-in datasets keep the examples that fit (a fixed
rule, so the same examples for every arm).

Evaluation, per example in split order (``SplitOutcome``):

- ``losses``: the mean negative log-likelihood of the completion's tokens (EOS
  included), teacher-forced, fp32 logits. ``val_loss`` is their mean; ``perplexity`` is
  ``exp(val_loss)``, the exponential of a mean, so it is judged on seed variance only
  (not per example: its per-example values do not average to it).
- ``predictions``: 1 where greedy decoding hits the completion, else 0; ``gold`` is 1,
  so ``exact_match`` is their mean and pairs example by example in the judge like
  accuracy does. Greedy decoding runs for the completion's token count + ``EXTRA_TOKENS``
  (stopping at EOS), then the text and the gold completion are compared normalised
  (``normalise``: lowercase, whitespace stripped and collapsed). Decoding recomputes the
  whole sequence at every step (no KV cache): routed methods pool the sequence to route
  it (``methods._routing``), and with a cache they would see one token at a time.

FLOPs are per token (``adapter_flops_per_token``), counted on prompt + completion
without padding, as for text.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.tasks.types import register_task_type
from orchestrator.tasks.types.base import FlopProbe, ModelRef, SplitOutcome, TaskType, dataset_identity
from orchestrator.tasks.types.lm_models import is_known_lm_ref, load_lm, load_lm_tokenizer, resolve_lm
from orchestrator.tasks.types.sequence_classification import batch_order

if TYPE_CHECKING:
    import torch
    from torch import nn

    from orchestrator.spec.errors import SpecIssue
    from orchestrator.spec.models import TaskSpec
    from orchestrator.spec.yaml_lines import LocatedYaml
    from orchestrator.tasks.lm_data import LmExample
    from orchestrator.tasks.prepare import PreparedTask
    from orchestrator.trial.precision import PrecisionChoice

CACHE_VERSION = 1
IGNORE = -100  # the label torch's cross-entropy skips
#: Tokens greedy decoding may run past the completion's own count (EOS included).
EXTRA_TOKENS = 2
#: Logits one evaluation forward may hold (rows x tokens x vocab): 2^26 floats, 256 MiB.
LOGIT_BUDGET = 1 << 26
#: What ``predictions`` hold (``PreparedTask.label_names``): 0 a miss, 1 a hit; gold is 1.
OUTCOME_NAMES = ["miss", "hit"]


def normalise(text: str) -> str:
    """What exact match compares: lowercase, whitespace stripped and collapsed.

    >>> normalise("  Positive \\n") == normalise("positive")
    True
    """
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class LmSplit:
    """Prompt + completion ids stored flat (``ids[offsets[i]:offsets[i+1]]`` is example i);
    its completion starts ``prompt_lengths[i]`` tokens in."""

    ids: np.ndarray
    offsets: np.ndarray
    prompt_lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    @property
    def lengths(self) -> np.ndarray:
        return self.offsets[1:] - self.offsets[:-1]

    def example(self, index: int) -> np.ndarray:
        return self.ids[self.offsets[index] : self.offsets[index + 1]].astype(np.int64)

    def batch(self, chosen: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
        """Right-padded prompt + completion, labels on the completion only."""
        import torch

        lengths = self.lengths[chosen]
        input_ids = torch.full((len(chosen), int(lengths.max())), pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE)
        for row, index in enumerate(chosen):
            ids = torch.from_numpy(self.example(int(index)))
            start = int(self.prompt_lengths[index])
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
            labels[row, start : len(ids)] = ids[start:]
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    def prompts(self, chosen: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompts (ids, attention mask), so every row's next token is the last column."""
        import torch

        lengths = self.prompt_lengths[chosen]
        width = int(lengths.max())
        input_ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, (index, length) in enumerate(zip(chosen, lengths, strict=True)):
            input_ids[row, width - length :] = torch.from_numpy(self.example(int(index))[:length])
            mask[row, width - length :] = 1
        return input_ids, mask

    def batches(
        self, batch_size: int, pad_id: int, shuffle_seed: int | None = None, by_length: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        order = batch_order(self.lengths, batch_size, shuffle_seed, by_length)
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size], pad_id)


@register_task_type
class CausalLM(TaskType):
    name = "causal-lm"
    flop_unit = "token"
    own_fields = frozenset({"max_length", "prompt_column", "completion_column"})
    metrics = ("exact_match", "perplexity")
    peft_task_type = "CAUSAL_LM"
    model_examples = "embedded:smollm2-135m, random:llama-tiny, random:llama-h64-l4, a folder or a hub id"
    dataset_examples = "embedded:rotten-tomatoes-lm, synthetic:polarity-lm, csv:PATH, jsonl:PATH"
    array_parts = ("ids", "offsets", "prompt_lengths")

    # -- spec stage ------------------------------------------------------------------------
    def model_ref_problem(self, ref: str) -> str | None:
        if is_known_lm_ref(ref):
            return None
        return f"{ref!r} is not a causal language model; causal-lm takes {self.model_examples}"

    def dataset_ref_problem(self, ref: str) -> str | None:
        from orchestrator.tasks.lm_data import lm_dataset_ref_problem

        return lm_dataset_ref_problem(ref)

    def data_file_issues(self, tasks: list[tuple[TaskSpec, LocatedYaml]], base_dir: Path) -> list[SpecIssue]:
        from orchestrator.tasks.lm_data import lm_data_file_issues

        return lm_data_file_issues(tasks, base_dir)

    # -- data --------------------------------------------------------------------------------
    def cache_fields(self, task: TaskSpec, base_dir: Path) -> dict[str, Any]:
        dataset = dataset_identity(task.dataset, base_dir)
        return {
            "v": CACHE_VERSION,
            "type": self.name,
            "model": task.model,
            "dataset": dataset,
            "max_length": task.max_length,
            "caps": [task.train_examples, task.val_examples, task.test_examples],
            "columns": [task.prompt_column, task.completion_column],
        }

    def prepare(self, task: TaskSpec, base_dir: Path) -> PreparedTask:
        from orchestrator.tasks.datasets import SPLITS
        from orchestrator.tasks.lm_data import load_lm_dataset
        from orchestrator.tasks.prepare import PreparedTask

        # resolving converts an embedded GGUF model once, here in the driver, before trials load it
        tokenizer = load_lm_tokenizer(resolve_lm(task.model))
        if tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer of {task.model!r} has no EOS token; a completion could not end")
        data = load_lm_dataset(task.dataset, base_dir, task.prompt_column, task.completion_column)
        encoded = {name: _encode(tokenizer, data.splits[name]) for name in SPLITS}
        too_long = [
            (example, length)
            for name in SPLITS
            for example, (_, length) in zip(data.splits[name], encoded[name], strict=True)
            if length > task.max_length
        ]
        if too_long and data.path is not None:
            raise _too_long_error(data.path, too_long, task.max_length)
        caps = {"train": task.train_examples, "validation": task.val_examples, "test": task.test_examples}
        splits = {}
        for name in SPLITS:
            kept = [(ids, start) for ids, start in encoded[name] if len(ids) <= task.max_length]
            kept = kept[: caps[name]] if caps[name] else kept
            lengths = np.array([len(ids) for ids, _ in kept], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            flat = np.fromiter((t for ids, _ in kept for t in ids), dtype=np.int32, count=int(offsets[-1]))
            splits[name] = LmSplit(flat, offsets, np.array([start for _, start in kept], dtype=np.int64))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return PreparedTask(task.model, task.dataset, list(OUTCOME_NAMES), int(pad_id), splits, self.name)

    def split_arrays(self, split: LmSplit) -> dict[str, np.ndarray]:
        return {"ids": split.ids, "offsets": split.offsets, "prompt_lengths": split.prompt_lengths}

    def split_from_arrays(self, parts: dict[str, np.ndarray]) -> LmSplit:
        return LmSplit(parts["ids"], parts["offsets"], parts["prompt_lengths"])

    def split_problem(self, parts: dict[str, np.ndarray], num_labels: int) -> str | None:
        ids, offsets, starts = parts["ids"], parts["offsets"], parts["prompt_lengths"]
        if not all(a.ndim == 1 and np.issubdtype(a.dtype, np.integer) for a in (ids, offsets, starts)):
            return "arrays are not flat integer arrays"
        bounded = len(offsets) == len(starts) + 1 and offsets[0] == 0 and offsets[-1] == len(ids)
        if not bounded or np.any(np.diff(offsets) < 0):
            return f"offsets do not split the {len(ids)} token ids into {len(starts)} examples"
        if len(starts) and (starts.min() < 1 or np.any(starts >= np.diff(offsets))):
            return "a prompt is empty or leaves no completion token"
        return None

    # -- the trial ---------------------------------------------------------------------------
    def resolve_model(self, ref: str) -> ModelRef:
        return resolve_lm(ref)

    def load_model(self, ref: ModelRef, num_labels: int, seed: int) -> nn.Module:
        return load_lm(ref, seed)

    def default_target_modules(self, model: nn.Module) -> list[str]:
        """LLaMA's q_proj and v_proj (the LoRA paper's q, v); also the names of Mistral,
        Qwen2 and most decoders on the hub."""
        family = getattr(getattr(model, "config", None), "model_type", "llama")
        from orchestrator.tasks.types.base import DEFAULT_TARGET_MODULES

        return list(DEFAULT_TARGET_MODULES.get(family, ["q_proj", "v_proj"]))

    def head_modules(self, model: nn.Module) -> list[str]:
        """None: ``lm_head`` is pretrained (tied to the input embeddings in LLaMA-family
        models), not a head added at random as a classifier's is; it stays frozen, as in
        peft's causal-LM examples and the DoRA/PiSSA papers' setups."""
        return []

    def batches(
        self,
        data: PreparedTask,
        split: str,
        batch_size: int,
        shuffle_seed: int | None = None,
        by_length: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        return data.splits[split].batches(batch_size, data.pad_id, shuffle_seed, by_length=by_length)

    def evaluate_split(
        self,
        model: nn.Module,
        data: PreparedTask,
        split: str,
        batch_size: int,
        device: str,
        precision: PrecisionChoice | None = None,
    ) -> SplitOutcome:
        """Teacher-forced completion losses, then greedy decoding; batched by length."""
        import contextlib

        import torch

        from orchestrator.trial.precision import autocast

        examples: LmSplit = data.splits[split]
        tokenizer = _tokenizer(data.model_ref)
        order = batch_order(examples.lengths, batch_size, by_length=True)
        losses = np.zeros(len(examples), dtype=np.float64)
        hits = np.zeros(len(examples), dtype=np.int64)
        model.eval()
        with torch.no_grad(), autocast(precision) if precision is not None else contextlib.nullcontext():
            for start in range(0, len(order), batch_size):
                chosen = order[start : start + batch_size]
                losses[chosen] = _completion_losses(model, examples, chosen, data.pad_id, device)
                generated = _greedy(model, examples, chosen, data.pad_id, tokenizer.eos_token_id, device)
                for index, tokens in zip(chosen, generated, strict=True):
                    gold = examples.example(int(index))[int(examples.prompt_lengths[index]) : -1]
                    hits[index] = normalise(tokenizer.decode(tokens, skip_special_tokens=True)) == normalise(
                        tokenizer.decode(gold.tolist(), skip_special_tokens=True)
                    )
        model.train()
        return SplitOutcome(predictions=hits, gold=np.ones(len(examples), dtype=np.int64), losses=losses)

    def flop_probe(self, data: PreparedTask, split: str, examples: int) -> FlopProbe:
        """The first examples' prompt + completion, each a batch of one without padding."""
        import torch

        lm: LmSplit = data.splits[split]
        singles = []
        for index in range(min(examples, len(lm))):
            ids = torch.from_numpy(lm.example(index)).unsqueeze(0)
            singles.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        return FlopProbe(singles, sum(int(e["input_ids"].shape[1]) for e in singles))


# -- helpers ----------------------------------------------------------------------------------
def _encode(tokenizer: Any, examples: list[LmExample]) -> list[tuple[list[int], int]]:
    """(prompt + completion + EOS ids, where the completion starts) per example."""
    if not examples:
        return []
    prompts = tokenizer([e.prompt for e in examples])["input_ids"]
    completions = tokenizer([e.completion for e in examples], add_special_tokens=False)["input_ids"]
    eos = [int(tokenizer.eos_token_id)]
    return [(list(p) + list(c) + eos, len(p)) for p, c in zip(prompts, completions, strict=True)]


def _too_long_error(path: Path, too_long: list[tuple[LmExample, int]], max_length: int) -> Exception:
    from orchestrator.errors import DataFileError

    first, length = min(too_long, key=lambda item: item[0].line or 0)
    lines = sorted(e.line or 0 for e, _ in too_long)
    more = f" ({len(lines)} rows: lines {', '.join(map(str, lines[:5]))}{', ...' if len(lines) > 5 else ''})"
    return DataFileError(
        f"{path}:{first.line}: prompt + completion is {length} tokens (EOS included), more than task.max_length "
        f"{max_length}; a completion is never cut: shorten the prompt or raise task.max_length"
        + (more if len(lines) > 1 else "")
    )


@functools.lru_cache(maxsize=4)
def _tokenizer(model_ref: str) -> Any:
    """The task's tokenizer, once per process (decoding needs it; trials never tokenise)."""
    return load_lm_tokenizer(resolve_lm(model_ref))


def _completion_losses(model: nn.Module, split: LmSplit, chosen: np.ndarray, pad_id: int, device: str) -> np.ndarray:
    """Mean NLL of each example's completion tokens, in fp32, in as many forwards as the
    logits need to stay within ``LOGIT_BUDGET``."""
    import torch

    out = []
    width = int(split.lengths[chosen].max())
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 50_000)
    rows = max(1, LOGIT_BUDGET // max(1, width * vocab))
    for part in range(0, len(chosen), rows):
        batch = {k: v.to(device) for k, v in split.batch(chosen[part : part + rows], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
        )
        counted = (targets != IGNORE).sum(1)
        out.append((nll.sum(1) / counted.clamp_min(1)).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def _greedy(
    model: nn.Module, split: LmSplit, chosen: np.ndarray, pad_id: int, eos_id: int, device: str
) -> list[list[int]]:
    """Greedy tokens per row, up to its EOS (excluded) or the batch's longest completion
    + ``EXTRA_TOKENS``. Left-padded, with position ids that skip the padding, so a row
    decodes as it would alone; the whole sequence is run at every step (no KV cache)."""
    import torch

    input_ids, mask = split.prompts(chosen, pad_id)
    input_ids, mask = input_ids.to(device), mask.to(device)
    completion = split.lengths[chosen] - split.prompt_lengths[chosen]
    done = torch.zeros(len(chosen), dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for _ in range(int(completion.max()) + EXTRA_TOKENS):
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
        token = logits[:, -1].argmax(-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        steps.append(token)
        done |= token == eos_id
        input_ids = torch.cat([input_ids, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        if bool(done.all()):
            break
    generated = torch.stack(steps, 1).cpu().tolist()
    return [row[: row.index(eos_id)] if eos_id in row else row for row in generated]
