"""Keep bitsandbytes out of Ray Tune workers that do not quantise.

peft imports bitsandbytes whenever it is installed (``peft.import_utils.is_bnb_available``
asks ``importlib.util.find_spec``), and that import costs a worker process 2-4 s of CPU
on a small machine: about a quarter of its start-up (torch, transformers, peft, ray.tune:
~12-15 s here). Every Tuner starts fresh worker processes, so a run pays it once per
worker per Tuner even when no arm quantises.

A ``None`` entry in ``sys.modules`` is Python's documented way to make a module
unimportable: ``find_spec`` then answers ``None`` and peft and transformers take their
no-bitsandbytes paths (the same code as on a machine without it). It is set only

- inside a Ray actor (a trial's own worker process, never the driver or a test process),
- before peft or transformers is imported there (both read the answer once), and
- when no arm this worker can serve uses a method that ``requires`` bitsandbytes (a worker
  serves the trials of one Tuner only, whose arms ``tune_entry`` is given).

Written by hand: neither peft nor Ray has a switch for it.
"""

from __future__ import annotations

import sys

_READERS = ("bitsandbytes", "peft", "transformers", "accelerate")


def hide_bitsandbytes_unless(needed: bool) -> bool:
    """Make ``import bitsandbytes`` fail in this worker unless ``needed``; True if hidden."""
    if needed or any(name in sys.modules for name in _READERS) or not _in_ray_actor():
        return False
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
    return True


def _in_ray_actor() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
