"""Reading a store's hypothesis runs side by side: ``orchestrate compare`` and ``history``.

Like ``report``, a small pipeline that reads only MLflow: ``runs`` (a store's hypothesis
runs from their tags; which one a user named), ``claims`` (claims paired across two
runs: same, changed = post hoc, added, removed), ``comparison`` (two runs -> a
``Comparison``), ``blocks`` and ``page`` (its Markdown and HTML), ``history`` (the
history's rows and the ``refines`` lineages).
"""

from orchestrator.compare.comparison import Comparison, compare_runs
from orchestrator.compare.runs import HypothesisRun, hypothesis_runs, resolve_target

__all__ = ["Comparison", "HypothesisRun", "compare_runs", "hypothesis_runs", "resolve_target"]
