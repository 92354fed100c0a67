"""How far one driver scales: the real search driver against trivial trials on a
simulated cluster, over concurrent trials x trials per arm x sampler x tracking store.

    python benchmarks/scale.py --quick              # CI-sized: 2 and 8 at once, 40 trials, tpe (~2-4 min)
    python benchmarks/scale.py [--full]             # every row (hours on a 2-core machine)
    python benchmarks/scale.py --concurrency 8,32 --trials 200 --samplers tpe,gp --json out.json

What runs is ``orchestrator.execute.tuning.run_searches`` as ``orchestrate run`` calls it:
the plan's ``HonestOptunaSearch`` behind the per-arm ``ArmSearcher``, ASHA behind
``ArmScheduler``, the MLflow ``TrialRecorder`` callback, ``RunState`` saved per event and
``Progress``. Only the trainable is replaced (``tuning._trainable``): it sleeps
a fixed time per epoch and reports a smooth toy objective; it imports neither torch nor
``orchestrator`` (a worker that unpickled the real trainable's ``TrialSetup`` would import
torch, ~10 s of CPU each). A trial lasts ``concurrency / --offered-rate`` seconds: were the
driver free, ``concurrency`` trials at once would end ``--offered-rate`` times a second
(4 by default, more than this driver sustains). So the slots fill (pending points are
real: at 0.05 s a trial, 8 slots never held more than 2 running trials, the driver
being slower than the trials) while the driver stays the bottleneck, and its rate is
what trials/s measures.

The cluster is ``ray.cluster_utils.Cluster``: several raylets on 127.0.0.1, each
declaring logical CPUs and GPUs, and every trial asks for ``{cpu: 1, gpu: 1}``
(``--single-node`` uses one ``ray.init`` with the same totals instead).

Per row, timed by wrapping the driver's own methods (``instrumented``): trials per
second (overall, and steady: between the 25th and 75th percent of completions),
suggestion latency p50/p95 with the running trials at that moment (pending points),
the searcher's ``tell``, every MLflow write of the recorder (``Tracker`` calls), the run
state's saves and file size, the driver's peak RSS, and the share of wall time the
driver spends in our code rather than in Ray (searcher + recorder callback, state saves
and MLflow writes included, over wall time). Then each cost is fitted as constant /
linear / quadratic in the finished trials (least squares on binned medians, the lowest
BIC wins), and the fits say at what study size our layer's time per trial exceeds
60 s / concurrency: where the driver falls behind a cluster whose trials take 60 s.
Timings on a shared machine are noisy; the growth, not the third digit, is the finding.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import psutil  # type: ignore[import-untyped]

from orchestrator.execute.ray_session import prepare_ray_environment

prepare_ray_environment()  # before ray is imported: its listeners on 127.0.0.1

ROOT = Path(__file__).resolve().parent.parent

#: Largest study per sampler: Optuna's GP refits an O(n^3) model on every finished trial
#: per suggestion (2.3 s per ask at 1,000 trials: benchmarks/suggest_latency.py); botorch
#: fits a bounded subset (orchestrator/search/model_subset.py).
SAMPLER_CAPS = {"tpe": 1000, "gp": 200, "botorch": 1000}
FULL_GRID: dict[str, list[Any]] = {
    "concurrency": [2, 8, 16, 32, 64],
    "trials": [40, 200, 1000],
    "samplers": ["tpe", "gp", "botorch"],
}
QUICK_GRID: dict[str, list[Any]] = {"concurrency": [2, 8], "trials": [40], "samplers": ["tpe"]}
#: Ray's per-node logical slots; more concurrency adds nodes.
SLOTS_PER_NODE = 16
#: Memory a 64-trial row needs (64 Ray workers at ~80-120 MB each, the driver, the raylets).
MEMORY_FOR_64_GB = 12.0
CLUSTER_TRIAL_S = 60.0
#: How far past the largest measured study a fit is trusted to say where the driver falls behind.
EXTRAPOLATION = 25
#: The shipped LoRA space (search_spaces/lora.yaml): what the samplers model.
SPACE: dict[str, dict[str, Any]] = {
    "r": {"type": "categorical", "choices": [2, 4, 8, 16, 32]},
    "lora_alpha": {"type": "categorical", "choices": [8, 16, 32]},
    "lr": {"type": "float", "low": 1e-4, "high": 5e-3, "log": True},
    "lora_dropout": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.05},
}


@dataclass(frozen=True)
class Case:
    """One row to run: one arm's search of ``trials`` trials, ``concurrency`` at once."""

    sampler: str
    concurrency: int
    trials: int
    tracking: str = "sqlite"
    pending_pg: str = "auto"  # TUNE_MAX_PENDING_TRIALS_PG: "auto" (max_concurrent) as orchestrate leaves it; 1 before


@dataclass
class Probe:
    """What the wrapped driver methods saw during one row. ``x`` of every sample is the
    number of trials the searcher had been told of (the study's size) at that moment."""

    suggest: list[tuple[int, int, float]] = field(default_factory=list)  # (finished, pending, s)
    tell: list[tuple[int, float]] = field(default_factory=list)
    writes: list[tuple[int, float]] = field(default_factory=list)  # one per Tracker write, as its caller waits
    requests: list[tuple[int, float]] = field(default_factory=list)  # one per store request, on any thread
    saves: list[tuple[int, float]] = field(default_factory=list)  # (records in the state, s)
    completions: list[float] = field(default_factory=list)  # perf_counter at each trial's end
    searcher_other_s: float = 0.0  # on_trial_result and experiment checkpoints (ArmSearcher.save)
    callback_s: float = 0.0  # the recorder callback, MLflow writes and state saves included
    in_callback: int = 0  # > 0 while the recorder callback runs (Tune calls it on the driver's thread)
    nested_s: float = 0.0  # MLflow writes and state saves made inside the callback
    outside_s: float = 0.0  # ... and outside it: the arm's runs and state around the Tune run
    started: int = 0

    @property
    def finished(self) -> int:
        return len(self.tell)


@dataclass(frozen=True)
class Row:
    """One measured row of the table (times in ms unless named ``_s``)."""

    sampler: str
    concurrency: int
    trials: int
    tracking: str
    pending_pg: str
    wall_s: float
    trials_per_s: float
    steady_trials_per_s: float
    suggest_p50_ms: float
    suggest_p95_ms: float
    pending_p50: float
    pending_max: int
    tell_p95_ms: float
    write_p95_ms: float
    writes_per_trial: float
    request_p50_ms: float
    request_p95_ms: float
    save_ms_per_trial: float
    state_kb: float
    driver_peak_rss_mb: float
    driver_share: float


@dataclass(frozen=True)
class Skipped:
    case: Case
    reason: str


@dataclass(frozen=True)
class Fit:
    """A cost against the study size: ``model`` is constant, linear or quadratic."""

    cost: str
    model: str
    coefficients: tuple[float, ...]  # seconds; c0 + c1 n + c2 n^2

    def at(self, n: float) -> float:
        return float(sum(c * n**power for power, c in enumerate(self.coefficients)))

    def describe(self) -> str:
        terms = [f"{self.coefficients[0] * 1e3:.3g} ms"]
        terms += [f"{c * 1e3:.3g} ms x n{'' if p == 1 else '^2'}" for p, c in enumerate(self.coefficients) if p]
        return " + ".join(terms)


# -- the trivial trial -------------------------------------------------------------------


def sleepy_trial(config: dict[str, Any], epochs: int, epoch_s: float) -> None:
    """Sleeps ``epoch_s`` per epoch and reports a smooth function of the LoRA space.
    Self-contained (pickled by value): a worker imports only Ray."""
    import math
    import time

    from ray import tune

    lr, rank = float(config.get("lr", 1e-3)), float(config.get("r", 8))
    quality = 0.9 - 0.05 * (math.log10(lr) + 2.6) ** 2 - 0.01 * abs(math.log2(rank) - 3)
    for epoch in range(1, epochs + 1):
        time.sleep(epoch_s)
        tune.report({"epoch": epoch, "val_accuracy": quality * epoch / (epoch + 0.5)})


def _trivial_trainable(epochs: int, epoch_s: float) -> Callable[..., Any]:
    """A stand-in for ``tuning._trainable``: the same resources, the trivial trial."""
    from ray import tune

    from orchestrator.execute.tuning import resources_dict

    def build(setups: Any, data_ref: Any, seed: int, resources: Any) -> Any:
        trial = tune.with_parameters(sleepy_trial, epochs=epochs, epoch_s=epoch_s)
        return tune.with_resources(trial, resources_dict(resources))

    return build


# -- instrumentation ---------------------------------------------------------------------


def _wrap(owner: Any, name: str, record: Callable[[Any, float, Any], None]) -> Any:
    """Patch ``owner.name`` so that ``record(self, seconds, result)`` follows each call."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = original(self, *args, **kwargs)
        record(self, time.perf_counter() - started, result)
        return result

    return mock.patch.object(owner, name, timed)


def _records_in(state: Any) -> int:
    return sum(len(kind) for arm in state.content.arms.values() for kind in arm.records.values())


#: The ``RecorderCallback`` methods Tune calls (each an event on Tune's loop).
RECORDER_EVENTS = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error", "on_trial_recover")


def _wrap_callback(owner: Any, name: str, probe: Probe) -> Any:
    """Patch a recorder event so that its time, and which writes and saves happen inside
    it, reach ``probe`` (also when it raises); a completion's time stamp too."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        probe.in_callback += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            probe.in_callback -= 1
            probe.callback_s += time.perf_counter() - started
            if name == "on_trial_complete":
                probe.completions.append(time.perf_counter())

    return mock.patch.object(owner, name, timed)


#: The ``Tracker`` methods the recorder writes with (each timed as its caller waits for it).
TRACKER_WRITES = (
    "start_run", "log_params", "log_metrics", "log_batch", "set_tags", "end_run", "log_text", "log_artifacts",
)  # fmt: skip


@contextlib.contextmanager
def instrumented(probe: Probe) -> Iterator[None]:
    """The driver's methods, timed into ``probe`` for the block."""
    from orchestrator.execute.by_arm import ArmSearcher
    from orchestrator.execute.recorder import RecorderCallback
    from orchestrator.execute.searcher import HonestOptunaSearch
    from orchestrator.execute.state import RunState
    from orchestrator.tracking import Tracker

    def suggested(_: Any, seconds: float, config: Any) -> None:
        probe.suggest.append((probe.finished, probe.started - probe.finished, seconds))
        probe.started += isinstance(config, dict)

    def told(_: Any, seconds: float, __: Any) -> None:
        probe.tell.append((probe.finished, seconds))

    def other(_: Any, seconds: float, __: Any) -> None:
        probe.searcher_other_s += seconds

    def in_or_outside_callback(seconds: float) -> None:
        if probe.in_callback:
            probe.nested_s += seconds
        else:
            probe.outside_s += seconds

    def saved(state: Any, seconds: float, _: Any) -> None:
        probe.saves.append((_records_in(state), seconds))
        in_or_outside_callback(seconds)

    def wrote(_: Any, seconds: float, __: Any) -> None:
        probe.writes.append((probe.finished, seconds))
        in_or_outside_callback(seconds)

    patches = [
        _wrap(HonestOptunaSearch, "suggest", suggested),
        _wrap(HonestOptunaSearch, "on_trial_complete", told),
        _wrap(HonestOptunaSearch, "on_trial_result", other),
        _wrap(ArmSearcher, "save", other),
        _wrap(RunState, "save", saved),
        *(_wrap_callback(RecorderCallback, name, probe) for name in RECORDER_EVENTS),
        *(_wrap(Tracker, name, wrote) for name in TRACKER_WRITES),
        # each request to the store, also those made on the write lanes of a server (orchestrator/write_lanes.py)
        _wrap(Tracker, "_call", lambda _, s, __: probe.requests.append((probe.finished, s))),
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield


@contextlib.contextmanager
def peak_rss_mb() -> Iterator[list[float]]:
    """The driver's resident memory, sampled every 0.1 s; the peak lands in the list."""
    process, peak, done = psutil.Process(), [0.0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss / 2**20)
            done.wait(0.1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


# -- one row -----------------------------------------------------------------------------


def run_driver(case: Case, folder: Path, epochs: int, tracking_uri: str | None = None) -> None:
    """One arm's search through ``tuning.run_searches``, built as ``orchestrate run`` builds it."""
    import orchestrator.execute.tuning as tuning
    from orchestrator.execute.progress import Progress
    from orchestrator.execute.recorder import TrialRecorder
    from orchestrator.execute.state import RunState
    from orchestrator.plan import ArmPlan, SearchSettings
    from orchestrator.results import RunKind
    from orchestrator.search.samplers import SamplerPlan, default_startup_trials
    from orchestrator.search.space import ParamSpec
    from orchestrator.spec.models import Resources, TrainingSpec
    from orchestrator.tracking import ARM, LEVEL, Tracker
    from orchestrator.trial.training import TrialSetup

    tracker = Tracker(tracking_uri or f"sqlite:///{folder}/mlflow.db")
    experiment = tracker.experiment_id(f"scale-{folder.name}")
    parent = tracker.start_run(experiment, "scale", {LEVEL: "hypothesis"})
    arm_run = tracker.start_run(experiment, "arm", {LEVEL: "arm", ARM: "a"}, parent)
    # as the planner builds it: botorch reads every reported epoch (SamplerPlan.epochs)
    sampler = SamplerPlan(case.sampler, 0, default_startup_trials(case.sampler, case.trials), 1, epochs=epochs)
    plan = ArmPlan(
        arm="a", method="lora", routed=False, space_file=None,
        params={name: ParamSpec(**spec) for name, spec in SPACE.items()}, fixed={}, points_to_evaluate=[],
        sampler=sampler, objectives={"val_accuracy": "max"}, constraints=[], scheduler="asha", trials=case.trials,
    )  # fmt: skip
    settings = SearchSettings(
        seed=0, max_concurrent=case.concurrency, resources=Resources(cpu=1, gpu=1), max_retries=1,
        trial_timeout_s=None, trial_memory_mb=None, reuse_trials=False,
    )  # fmt: skip
    training = TrainingSpec(epochs=epochs)
    setup = TrialSetup(arm="a", method="lora", model="random:bert-tiny", metric="accuracy", training=training)
    state = RunState.open(folder / "state", "scale", "default", "x", fresh=True)
    progress = Progress(quiet=True).arm("a", "search", case.trials, "val_accuracy", "max")
    recorder = TrialRecorder(
        tracker, experiment, arm_run, "a", RunKind.TRIAL, epochs, [], state, progress, {}, list(SPACE)
    )
    request = tuning.SearchRequest(plan, setup, recorder)
    records = tuning.run_searches([request], settings, None, str(folder / "ray"), "scale")
    if len(records["a"]) != case.trials:
        raise RuntimeError(f"{case}: {len(records['a'])} trials recorded, {case.trials} asked")


def measure(case: Case, epochs: int, offered_rate: float, tracking_uri: str | None = None) -> tuple[Row, Probe]:
    """Run one case in a fresh folder and summarise what the probe saw."""
    import orchestrator.execute.tuning as tuning

    probe, epoch_s = Probe(), case.concurrency / offered_rate / epochs
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp, peak_rss_mb() as peak:
        folder = Path(tmp)
        trivial = mock.patch.object(tuning, "_trainable", _trivial_trainable(epochs, epoch_s))
        pending = mock.patch.dict(os.environ, {"TUNE_MAX_PENDING_TRIALS_PG": case.pending_pg})
        with trivial, pending, instrumented(probe):
            started = time.perf_counter()
            run_driver(case, folder, epochs, tracking_uri)
            wall = time.perf_counter() - started
        state_bytes = (folder / "state" / "scale--default.json").stat().st_size
    return summarise(case, probe, wall, state_bytes, peak[0]), probe


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _steady_rate(completions: list[float]) -> float:
    """Trials per second between the 25th and the 75th percent of completions: the
    driver's rate once the workers are up and before the last stragglers."""
    low, high = len(completions) // 4, (3 * len(completions)) // 4
    if high - low < 2:
        return float("nan")
    return (high - low) / max(completions[high] - completions[low], 1e-9)


def summarise(case: Case, probe: Probe, wall: float, state_bytes: int, rss_mb: float) -> Row:
    suggest_s = [s for _, _, s in probe.suggest]
    driver_s = sum(suggest_s) + sum(s for _, s in probe.tell) + probe.searcher_other_s + probe.callback_s
    return Row(
        sampler=case.sampler,
        concurrency=case.concurrency,
        trials=case.trials,
        tracking=case.tracking,
        pending_pg=case.pending_pg,
        wall_s=wall,
        trials_per_s=case.trials / wall,
        steady_trials_per_s=_steady_rate(probe.completions),
        suggest_p50_ms=_percentile(suggest_s, 50) * 1e3,
        suggest_p95_ms=_percentile(suggest_s, 95) * 1e3,
        pending_p50=_percentile([float(p) for _, p, _ in probe.suggest], 50),
        pending_max=max((p for _, p, _ in probe.suggest), default=0),
        tell_p95_ms=_percentile([s for _, s in probe.tell], 95) * 1e3,
        write_p95_ms=_percentile([s for _, s in probe.writes], 95) * 1e3,
        writes_per_trial=len(probe.writes) / case.trials,
        request_p50_ms=_percentile([s for _, s in probe.requests], 50) * 1e3,
        request_p95_ms=_percentile([s for _, s in probe.requests], 95) * 1e3,
        save_ms_per_trial=sum(s for _, s in probe.saves) / case.trials * 1e3,
        state_kb=state_bytes / 1024,
        driver_peak_rss_mb=rss_mb,
        driver_share=driver_s / wall,
    )


# -- growth fits -------------------------------------------------------------------------


def fit_growth(cost: str, samples: list[tuple[int, float]], bins: int = 20) -> Fit:
    """Constant, linear or quadratic in n, by least squares on the medians of ``bins``
    bins of n (medians: a GC pause or a neighbour's job is one outlier, not a trend);
    of the models whose growth terms are not negative, the lowest BIC wins."""
    xs = np.array([x for x, _ in samples], dtype=float)
    ys = np.array([y for _, y in samples], dtype=float)
    edges = np.unique(np.quantile(xs, np.linspace(0, 1, bins + 1)))
    groups = [(xs >= lo) & (xs <= hi) for lo, hi in itertools.pairwise(edges)] or [xs == xs]
    bx = np.array([np.median(xs[g]) for g in groups if g.any()])
    by = np.array([np.median(ys[g]) for g in groups if g.any()])
    best: tuple[float, Fit] | None = None
    for degree, model in enumerate(("constant", "linear", "quadratic")):
        if len(bx) < (1 if degree == 0 else degree + 2):
            break  # a constant needs one bin (every suggestion at one n: all trials started at once)
        design = np.vander(bx, degree + 1, increasing=True)
        coefficients, *_ = np.linalg.lstsq(design, by, rcond=None)
        if degree and (coefficients[1:] < 0).any():
            continue  # a cost that shrinks as the study grows is noise; it would extrapolate below zero
        residual = float(np.sum((design @ coefficients - by) ** 2)) + 1e-18
        bic = len(bx) * math.log(residual / len(bx)) + (degree + 1) * math.log(len(bx))
        if best is None or bic < best[0]:
            best = (bic, Fit(cost, model, tuple(float(c) for c in coefficients)))
    assert best is not None, f"{cost}: no samples"
    return best[1]


@dataclass(frozen=True)
class CostModel:
    """Our layer's seconds per trial at study size n: each fitted cost times how often a
    trial pays it, plus what the fits leave out (the callback's own bookkeeping,
    ``on_trial_result``, experiment checkpoints) as a measured constant."""

    sampler: str
    fits: dict[str, Fit]
    calls_per_trial: dict[str, float]
    other_s: float
    outside_s: float = 0.0  # writes and saves outside the callback in the whole row (not per trial)

    def parts(self, n: float) -> dict[str, float]:
        parts = {cost: fit.at(n) * self.calls_per_trial[cost] for cost, fit in self.fits.items()}
        return parts | {"other": self.other_s}

    def per_trial(self, n: float) -> float:
        return sum(self.parts(n).values())

    def falls_behind_at(self, concurrency: int, limit: int) -> int | None:
        """The smallest study size where the time per trial exceeds 60 s / concurrency."""
        budget = CLUSTER_TRIAL_S / concurrency
        for n in np.unique(np.geomspace(1, limit, 400).astype(int)):
            if self.per_trial(float(n)) > budget:
                return int(n)
        return None


def cost_model(case: Case, probe: Probe) -> CostModel:
    trials = case.trials
    fits = {
        "suggest": fit_growth("suggest", [(n, s) for n, _, s in probe.suggest]),
        "tell": fit_growth("tell", probe.tell),
        "mlflow write": fit_growth("mlflow write", probe.writes),
        "state save": fit_growth("state save", probe.saves),
    }
    calls = {
        "suggest": len(probe.suggest) / trials,
        "tell": len(probe.tell) / trials,
        "mlflow write": len(probe.writes) / trials,
        "state save": len(probe.saves) / trials,
    }
    # the callback's own time: its writes and saves are in their fits; those made outside
    # it (the arm's runs, the state around the Tune run) are not the callback's to subtract
    other = (probe.callback_s - probe.nested_s + probe.searcher_other_s) / trials
    return CostModel(case.sampler, fits, calls, other, probe.outside_s)


# -- the cluster and the grid ------------------------------------------------------------


@contextlib.contextmanager
def simulated_cluster(slots: int, single_node: bool) -> Iterator[str]:
    """``slots`` logical CPUs and GPUs on 127.0.0.1: several raylets of at most
    ``SLOTS_PER_NODE`` each (``Cluster``), or one ``ray.init`` with ``single_node``."""
    import ray
    from ray._common.utils import get_default_ray_temp_dir
    from ray.cluster_utils import Cluster

    from orchestrator.execute.ray_session import _environment_without_secrets

    nodes = 1 if single_node else max(2, math.ceil(slots / SLOTS_PER_NODE))
    per_node = math.ceil(slots / nodes)
    with tempfile.TemporaryDirectory(prefix="scale-ray-", dir="/tmp") as temp:
        # Ray's processes start without secret-looking variables; the driver keeps its own
        # (the tracking server's credentials) for the rows
        with _environment_without_secrets():
            if single_node:
                ray.init(address="local", num_cpus=slots, num_gpus=slots, include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1", _temp_dir=temp)  # fmt: skip
                cluster = None
            else:
                # Cluster writes its address to <RAY_TMPDIR or /tmp>/ray/ray_current_cluster
                # whatever temp_dir says, and does not create that folder: on a machine where
                # Ray never ran, it fails (ray 2.x's cluster_utils; ray.init creates it)
                os.makedirs(get_default_ray_temp_dir(), exist_ok=True)
                node: dict[str, Any] = {"num_cpus": per_node, "num_gpus": per_node, "node_ip_address": "127.0.0.1"}
                head = {**node, "include_dashboard": False, "temp_dir": temp}
                cluster = Cluster(initialize_head=True, head_node_args=head)
                for _ in range(nodes - 1):
                    cluster.add_node(**node)
                ray.init(address=cluster.address, log_to_driver=False)
                cluster.wait_for_nodes()
        try:
            yield f"{nodes} Ray node(s) on 127.0.0.1, {per_node} logical CPUs + GPUs each"
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()


def plan_cases(grid: dict[str, list[Any]]) -> tuple[list[Case], list[Skipped]]:
    """Every combination of the grid, less the studies over a sampler's cap and the
    concurrency this machine's memory cannot hold."""
    available_gb = psutil.virtual_memory().available / 2**30
    cases, skipped = [], []
    for trials in grid["trials"]:  # small studies first: a partial run still covers every sampler
        for sampler in grid["samplers"]:
            for concurrency in grid["concurrency"]:
                case = Case(sampler, concurrency, trials)
                if trials > SAMPLER_CAPS.get(sampler, trials):
                    skipped.append(Skipped(case, f"{sampler} capped at {SAMPLER_CAPS[sampler]} trials (O(n^3) fit)"))
                elif concurrency >= 64 and available_gb < MEMORY_FOR_64_GB:
                    skipped.append(Skipped(case, f"{available_gb:.0f} GiB free, {MEMORY_FOR_64_GB:.0f} needed"))
                else:
                    cases.append(case)
    return cases, skipped


# -- output ------------------------------------------------------------------------------

COLUMNS = (
    "sampler", "conc.", "trials", "tracking", "pending PGs", "wall s", "trials/s", "steady trials/s",
    "suggest p50 / p95 ms", "pending p50 / max", "tell p95 ms", "MLflow write p95 ms", "writes / trial",
    "store request p50 / p95 ms",
    "state save ms / trial", "state KB", "driver peak RSS MB", "driver share of wall",
)  # fmt: skip


def table(rows: list[Row], skipped: list[Skipped]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [
            r.sampler, str(r.concurrency), str(r.trials), r.tracking, r.pending_pg, f"{r.wall_s:.1f}",
            f"{r.trials_per_s:.2f}",
            f"{r.steady_trials_per_s:.2f}", f"{r.suggest_p50_ms:.1f} / {r.suggest_p95_ms:.1f}",
            f"{r.pending_p50:.0f} / {r.pending_max}", f"{r.tell_p95_ms:.1f}", f"{r.write_p95_ms:.1f}",
            f"{r.writes_per_trial:.1f}", f"{r.request_p50_ms:.1f} / {r.request_p95_ms:.1f}",
            f"{r.save_ms_per_trial:.1f}", f"{r.state_kb:.0f}",
            f"{r.driver_peak_rss_mb:.0f}", f"{r.driver_share:.0%}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for s in skipped:
        case = s.case
        cells = [case.sampler, str(case.concurrency), str(case.trials), case.tracking, case.pending_pg]
        cells.append(f"skipped: {s.reason}")
        lines.append("| " + " | ".join(cells + [""] * (len(COLUMNS) - len(cells))) + " |")
    return "\n".join(lines)


def growth_report(models: list[tuple[Case, CostModel]]) -> str:
    lines = ["| sampler (fitted on) | cost | calls / trial | growth in n (finished trials) |", "|---|---|---|---|"]
    for case, model in models:
        where = f"{case.sampler} ({case.trials} trials, {case.concurrency} at once)"
        for cost, fit in model.fits.items():
            lines.append(f"| {where} | {cost} | {model.calls_per_trial[cost]:.1f} | {fit.model}: {fit.describe()} |")
        lines.append(f"| {where} | other (constant) | 1 | {model.other_s * 1e3:.3g} ms |")
        outside = f"{model.outside_s:.2f} s in the row (the arm's runs and state around the Tune run)"
        lines.append(f"| {where} | writes and saves outside the callback | | {outside} |")
    lines += ["", "| sampler | concurrency | budget s / trial | falls behind at n = | largest cost there |"]
    lines += ["|---|---|---|---|---|"]
    for case, model in models:
        limit = EXTRAPOLATION * case.trials
        for concurrency in (16, 32, 64, 128, 256, 512):
            n = model.falls_behind_at(concurrency, limit)
            parts = model.parts(float(n or limit))
            top = max(parts, key=lambda k: parts[k])
            shown = f"beyond {limit:,} (not extrapolated)" if n is None else "from the start" if n == 1 else f"{n:,}"
            budget = CLUSTER_TRIAL_S / concurrency
            lines.append(f"| {case.sampler} | {concurrency} | {budget:.2f} | {shown} | {top} ({parts[top]:.2f} s) |")
    return "\n".join(lines)


@contextlib.contextmanager
def postgres_tracking_server(auth_cache_ttl_s: int = 0) -> Iterator[str]:
    """The PostgreSQL-backed ``mlflow server`` (basic auth, one user) that
    tests/test_tracking_server.py starts, for the length of the run: its URI, with the
    user's credentials in the environment as a researcher's driver would have them.
    ``auth_cache_ttl_s``: the server's credential cache (MLflow's default 0: off)."""
    import pytest

    import methods  # noqa: F401  (imported first: tests/methods/ on the path would shadow it)

    sys.path.append(str(ROOT / "tests"))
    from test_tracking_server import postgres_on_loopback, tracking_server_on  # type: ignore[import-not-found]

    try:
        with (
            postgres_on_loopback() as postgres,
            tracking_server_on(postgres, auth_cache_ttl_s) as server,
            mock.patch.dict(os.environ, server.user.environment()),
        ):
            print(f"tracking: {server.uri} (PostgreSQL on port {postgres.port})", file=sys.stderr)
            yield server.uri
    except pytest.skip.Exception as missing:  # what the test would skip for (no PostgreSQL binaries, ...)
        raise SystemExit(f"--tracking-server: {missing}") from None


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="CI-sized: concurrency 2 and 8, 40 trials, tpe")
    mode.add_argument("--full", action="store_true", help="every row (the default when no axis is given)")
    parser.add_argument("--concurrency", type=_ints, help="e.g. 2,8,32 (overrides the mode's)")
    parser.add_argument("--trials", type=_ints, help="trials per arm, e.g. 40,200")
    parser.add_argument("--samplers", type=lambda t: t.split(","), help="e.g. tpe,gp,botorch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (ASHA stops some early)")
    parser.add_argument("--offered-rate", type=float, default=4.0, help="trials/s the slots would end at")
    parser.add_argument("--single-node", action="store_true", help="one ray.init instead of a multi-node Cluster")
    parser.add_argument(
        "--pending-pg",
        default="auto",
        help="TUNE_MAX_PENDING_TRIALS_PG: auto (as orchestrate leaves it since 2026-11-30) or 1 (as it set it before)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--tracking-uri", help="an MLflow server to write to instead of a fresh sqlite file per row")
    where.add_argument(
        "--tracking-server",
        action="store_true",
        help="start a group's server for the run (mlflow server with basic auth on a throwaway PostgreSQL, "
        "both on 127.0.0.1: tests/test_tracking_server.py's) and write every row to it",
    )
    parser.add_argument(
        "--auth-cache-ttl",
        type=int,
        default=0,
        help="with --tracking-server: its auth_cache_ttl_seconds (MLflow's default 0 checks the password hash on"
        " every request; docs/scale.md)",
    )
    parser.add_argument(
        "--write-lanes",
        type=int,
        help="ORCHESTRATE_WRITE_LANES for the run: threads writing to a server (0: synchronously, as before"
        " 2026-11-30's evening); unset: the tool's default (orchestrator/tracking.py)",
    )
    parser.add_argument("--json", type=Path, help="also write rows, fits and skips here")
    return parser.parse_args(argv)


def tracking_label(args: argparse.Namespace) -> str:
    """The tracking column: sqlite, or the server with its write lanes and auth cache."""
    from orchestrator.tracking import write_lanes

    if not (args.tracking_uri or args.tracking_server):
        return "sqlite"
    lanes = write_lanes(args.tracking_uri or "http://server")
    cache = f", auth cache {args.auth_cache_ttl} s" if args.tracking_server and args.auth_cache_ttl else ""
    return f"server, {lanes} lanes{cache}"


def _best_models(models: list[tuple[Case, CostModel]], case: Case, probe: Probe) -> list[tuple[Case, CostModel]]:
    """Per sampler, the cost model of its largest study (then its highest concurrency)."""
    kept = next((c for c, _ in models if c.sampler == case.sampler), None)
    if kept is not None and (case.trials, case.concurrency) < (kept.trials, kept.concurrency):
        return models
    return [(c, m) for c, m in models if c.sampler != case.sampler] + [(case, cost_model(case, probe))]


def save_json(path: Path, rows: list[Row], skipped: list[Skipped], models: list[tuple[Case, CostModel]]) -> None:
    fits = {c.sampler: {k: asdict(f) for k, f in m.fits.items()} for c, m in models}
    out = {"rows": [asdict(r) for r in rows], "skipped": [asdict(s) for s in skipped], "fits": fits}
    path.write_text(json.dumps(out, indent=1))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    grid = dict(QUICK_GRID if args.quick else FULL_GRID)
    chosen = {"concurrency": args.concurrency, "trials": args.trials, "samplers": args.samplers}
    grid.update({axis: values for axis, values in chosen.items() if values})
    cases, skipped = plan_cases(grid)
    if args.write_lanes is not None:
        from orchestrator.tracking import WRITE_LANES_VARIABLE

        os.environ[WRITE_LANES_VARIABLE] = str(args.write_lanes)
    tracking = tracking_label(args)
    cases = [Case(c.sampler, c.concurrency, c.trials, tracking, args.pending_pg) for c in cases]
    rows: list[Row] = []
    models: list[tuple[Case, CostModel]] = []
    try:
        with contextlib.ExitStack() as stack:
            if args.tracking_server:
                args.tracking_uri = stack.enter_context(postgres_tracking_server(args.auth_cache_ttl))
            where = stack.enter_context(simulated_cluster(max(c.concurrency for c in cases), args.single_node))
            print(f"cluster: {where}", file=sys.stderr)
            measure(Case("tpe", 2, 4), args.epochs, args.offered_rate)  # warm the driver's imports; not reported
            for case in cases:
                row, probe = measure(case, args.epochs, args.offered_rate, args.tracking_uri)
                rows.append(row)
                models = _best_models(models, case, probe)
                print(table([row], []).splitlines()[-1], file=sys.stderr, flush=True)  # as it goes
                if args.json:
                    save_json(args.json, rows, skipped, models)
    except KeyboardInterrupt:
        print("interrupted: the table holds the rows finished so far", file=sys.stderr)
    print(table(rows, skipped))
    print()
    print(growth_report(models))


if __name__ == "__main__":
    main()
