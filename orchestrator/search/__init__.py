"""The search's library side, free of Ray: search spaces and the samplers that walk them.

``space`` turns a method's search-space file into typed parameters (and Optuna
distributions); ``samplers`` is the registry of samplers a hypothesis can name and
builds them; ``botorch_sampler`` is our own mixed-space BoTorch sampler. The Ray Tune
side that drives them during a run (``Searcher``, pruners) is in ``orchestrator.execute``.
The spec and the planner import this package too, so it never imports either.
"""
