"""bitsandbytes is kept out of Ray Tune workers whose arms do not quantise
(orchestrator.trial.worker_imports), and only there."""

from __future__ import annotations

import sys

import pytest

from orchestrator.trial.worker_imports import hide_bitsandbytes_unless


def test_outside_a_ray_actor_nothing_is_hidden():
    assert hide_bitsandbytes_unless(False) is False
    assert sys.modules.get("bitsandbytes", "absent") is not None


@pytest.mark.slow
def test_a_worker_hides_it_unless_an_arm_needs_it_and_peft_imports_either_way(shared_ray):
    import ray

    from orchestrator.execute.ray_session import ray_session

    @ray.remote(num_cpus=0)
    class Worker:
        def start(self, needed: bool) -> tuple[bool, bool, bool]:
            from orchestrator.trial.worker_imports import hide_bitsandbytes_unless

            hidden = hide_bitsandbytes_unless(needed)
            import peft  # noqa: F401
            from peft.import_utils import is_bnb_available

            return hidden, is_bnb_available(), sys.modules.get("bitsandbytes") is not None

    with ray_session(num_cpus=2):
        plain, quantising = Worker.remote(), Worker.remote()
        assert ray.get(plain.start.remote(False), timeout=300) == (True, False, False)
        assert ray.get(quantising.start.remote(True), timeout=300) == (False, True, True)
        # a second call in the same worker changes nothing (peft is imported by now)
        assert ray.get(plain.start.remote(True), timeout=60) == (False, False, False)
