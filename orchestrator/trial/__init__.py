"""One trial, as a Ray worker runs it: everything that happens on the worker's side.

``trainable`` is the function Ray Tune calls; ``training`` builds the model with the
method, trains, evaluates and measures (free of Ray, so tests call it directly);
``precision`` picks the dtype/autocast; ``per_example`` writes the per-example records
the judge reads; ``faults`` names the ways a trial can fail and ``watchdog`` stops a
stalled one; ``worker_imports`` makes optional extras importable on a worker. The
driver records what a trial reports (``orchestrator.execute.recorder``); nothing here
writes to MLflow.
"""
