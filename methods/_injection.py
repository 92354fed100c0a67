"""Putting hand-written adapter layers into a base model: peft's ``inject_adapter`` in small.

Shared by every method peft does not ship: the rank-adaptive ones built on
``methods._masked_lora`` (plateau_lora, dylora, sora), snell, and the gated and routed
ones built on ``methods._routing`` (galora, cogalora, radlora). Each wrapper keeps the
frozen layer as ``base_layer`` (the attribute name peft uses), so
``methods.base.linear_shapes`` sees through it as through peft's wrappers.

Example::

    layers = inject_adapters(model, ctx, self.config.target_modules, lambda linear: MyAdapter(linear))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from torch import nn

if TYPE_CHECKING:
    from collections.abc import Iterable

    from methods.base import BuildContext

AdapterT = TypeVar("AdapterT", bound=nn.Module)


def matches_suffix(name: str, suffixes: Iterable[str]) -> bool:
    """peft's rule for a list of target modules: the exact name or a ``.suffix`` ending."""
    return any(name == s or name.endswith("." + s) for s in suffixes)


def find_targets(
    model: nn.Module, suffixes: list[str], exclude: Iterable[str] = (), *, plain_only: bool = True
) -> list[tuple[str, nn.Linear]]:
    """Every linear layer named by ``suffixes``, outside the ``exclude`` (head) modules.

    ``plain_only`` keeps exactly ``nn.Linear`` (the routed methods: a subclass, e.g. an
    already adapted or quantised layer, is left alone); False also takes subclasses.
    Raises ValueError when nothing matches: a typo in ``target_modules`` must not
    silently train the head alone.
    """
    found = []
    for name, module in model.named_modules():
        is_linear = type(module) is nn.Linear if plain_only else isinstance(module, nn.Linear)
        if not is_linear or not matches_suffix(name, suffixes):
            continue
        if any(f".{h}." in f".{name}." for h in exclude):  # the head itself or inside it
            continue
        found.append((name, module))
    if not found:
        raise ValueError(f"no nn.Linear module matches target_modules {suffixes}")
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` was."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def adapt_linear_layers(
    model: nn.Module, target_modules: list[str], make: Callable[[str, nn.Linear], AdapterT]
) -> dict[str, AdapterT]:
    """Replace every ``nn.Linear`` (subclasses included) whose name matches
    ``target_modules`` by ``make(name, layer)``; the adapters by name."""
    adapted = {}
    for name, module in find_targets(model, target_modules, plain_only=False):
        adapter = make(name, module)
        replace_module(model, name, adapter)
        adapted[name] = adapter
    return adapted


def freeze_base_train_head(model: nn.Module, head_modules: list[str]) -> None:
    """Freeze every parameter, then make the task head trainable in full (like peft's
    ``modules_to_save``). Adapter parameters created afterwards are trainable."""
    for param in model.parameters():
        param.requires_grad_(False)
    for name, module in model.named_modules():
        if matches_suffix(name, head_modules):
            for param in module.parameters():
                param.requires_grad_(True)


def inject_adapters(
    model: nn.Module, ctx: BuildContext, own_targets: list[str] | None, make: Callable[[nn.Linear], AdapterT]
) -> dict[str, AdapterT]:
    """How a hand-written method's ``build`` starts: freeze the base, keep the head
    trainable, and replace every target linear layer (the method's own
    ``target_modules`` if set, else the task's) by ``make(layer)``; the adapters by name."""
    freeze_base_train_head(model, ctx.head_modules)
    return adapt_linear_layers(model, list(own_targets or ctx.target_modules), lambda _name, linear: make(linear))


def adapters(model: nn.Module, kind: type[AdapterT]) -> Iterator[tuple[str, AdapterT]]:
    """(name, layer) of every adapter layer of type ``kind`` in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, kind):
            yield name, module
