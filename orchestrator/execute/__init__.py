"""The Execute stage: run a ``Plan`` on Ray Tune, record every trial, confirm the winners.

Public names (import them from their modules; this file imports nothing, so that the
judge can read ``looks`` without importing Ray):

- ``runner.run_plan(plan, options) -> RunOutcome``, ``RunOptions``, ``AllTrialsFailedError``:
  the driver's flow (search every arm, pick winners, confirm, judge, close the runs).
- ``state.RunState``: what a run has done, saved after every change (resume reads it).
- ``looks.Look`` / ``replay_looks``: the sequential confirmation's looks, for the judge.
- ``progress.Progress``: the live table a run prints in a terminal, or one plain line per
  trial, seed and phase when stderr is a log (``run_log`` formats them and sends Ray's own
  lines to a file under the state folder).
- ``ray_session.prepare_ray_environment``: Ray started quietly, on loopback, no secrets.
- ``recorder.TrialRecorder``: the Ray Tune callback that puts each trial into MLflow once.

Inside: ``tuning`` (one Tuner for every arm's search, then the confirmations),
``by_arm`` (searcher and scheduler that dispatch by arm), ``searcher`` and ``pruning``
(Optuna's samplers and pruners behind Ray Tune's interfaces), ``winners`` and ``pareto``
(each arm's best trial and front), ``confirm`` (rounds of fresh seeds), ``archive``
(finished trials reused across runs), ``mlflow_runs`` (the runs' lifecycle),
``run_context`` (what the steps share), ``run_lock``, ``interrupts``.
"""
