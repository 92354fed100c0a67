"""Statistics -> verdicts: judge a hypothesis's claims on its confirmation runs.

>>> from orchestrator.judge import judge_claims
>>> runs = {"a": {"acc": {1: 0.91, 2: 0.93, 3: 0.92}}, "b": {"acc": {1: 0.90, 2: 0.92, 3: 0.92}}}
>>> [v.verdict for v in judge_claims(["a.acc >= b.acc - 0.02", "a.acc in [0.8, 1.0]"], runs)]
['SUPPORTED', 'SUPPORTED']
"""

from orchestrator.judge.stats import Samples, holm
from orchestrator.judge.verdicts import ReferenceEvidence, Verdict, judge_claims

__all__ = ["ReferenceEvidence", "Samples", "Verdict", "holm", "judge_claims"]
