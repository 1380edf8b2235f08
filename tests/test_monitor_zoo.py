"""No false alarm: every model of the real-architecture zoo trained for 300 steps under the
TrainingMonitor raises no alert (tests/monitor_zoo.py says how a run is made; the published
rates per 1,000 steps come from benchmarks/monitor_false_alarms.py)."""

from __future__ import annotations

import pytest
from architectures import ZOO
from monitor_zoo import STEPS, healthy_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", list(ZOO))
def test_a_healthy_zoo_run_raises_no_alert(name):
    monitor = healthy_run(name)  # Adam 3e-4, 16 batches cycled, measured every 10 steps
    assert monitor.step == STEPS
    assert monitor.alerts == (), "\n".join(a.message for a in monitor.alerts)
    assert monitor.metrics()["grad_norm"] > 0  # it measured
