"""The Ray Tune entry point of one trial: unpack, run, report. Nothing else.

All the work is in ``orchestrator.trial.training.run_trial`` (testable without Ray). This
adapter turns its reports into ``tune.report`` calls; the last one carries the
trial's artifact folder as a checkpoint, so the files reach the run's storage (shared
or object store on a cluster) and the driver can log them to MLflow. A trial that
fails of its own doing reports the reason as its last result instead of raising, so
Ray Tune retries only the transient failures (``orchestrator.trial.faults``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from orchestrator.trial.faults import failure_result, is_transient
from orchestrator.trial.training import TrialSetup, run_trial
from orchestrator.trial.watchdog import HangWatchdog
from orchestrator.trial.worker_imports import hide_bitsandbytes_unless

SEED_KEY = "_seed"
ARM_KEY = "_arm"  # which arm's setup a trial runs: one Tuner serves every arm (search, confirmation)


def tune_entry(config: dict[str, Any], setups: dict[str, TrialSetup], data: Any, seed: int) -> None:
    """One trial. ``setups`` maps arm -> setup: the search and the confirmation Tuners
    each hold every arm (``config[ARM_KEY]`` says which), so one worker process, with
    torch and peft imported once, serves every arm's trials."""
    hide_bitsandbytes_unless(any(s.uses_bitsandbytes for s in setups.values()))  # before the first import of peft
    from ray import tune

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report calls sys.stdout.isatty(); keep trial logs quiet
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    setup = setups[config[ARM_KEY]] if ARM_KEY in config else next(iter(setups.values()))
    trial_seed = int(config.get(SEED_KEY, seed))
    params = {k: v for k, v in config.items() if not k.startswith("_")}

    def report(metrics: dict[str, Any], artifacts: Path | None) -> None:
        if artifacts is not None:
            (artifacts / "metrics_final.txt").write_text("\n".join(f"{k} = {v}" for k, v in sorted(metrics.items())))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(artifacts)))
        else:
            tune.report(metrics)

    with tempfile.TemporaryDirectory(prefix="orchestrate-trial-") as workdir:
        try:
            _import_trial_libraries(setups)  # start-up, not the trial's time: outside its budget
            with HangWatchdog(setup.timeout_s):
                run_trial(setup, params, trial_seed, data, report, Path(workdir))
        except Exception as exc:
            if is_transient(exc):
                raise  # Ray Tune retries it (search.max_retries)
            tune.report(failure_result(exc))  # the trial's own fault: recorded, not retried


def _import_trial_libraries(setups: dict[str, TrialSetup]) -> None:
    """Import torch, transformers' model classes and peft (through the arms' methods)
    before the trial's time budget starts. A fresh worker spends ~10 s of CPU on them
    (the BERT classes alone ~4 s: transformers imports them lazily): that is the worker's
    start-up, paid once per worker, and charged to its first trial it would make a tight
    ``search.trial_timeout_s`` fail that trial alone. Later calls cost nothing."""
    import torch  # noqa: F401
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification  # noqa: F401

    from methods import get_method

    for setup in setups.values():
        get_method(setup.method)
