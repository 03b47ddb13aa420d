"""Review of the scale-out features (issue 12) as a new user meets them: each test reproduces one
fault found by running the README's and docs/cluster.md's commands with hostile input. The faults
are not fixed here (this file is the reviewer's only one), so each test is
``xfail(strict=True)``: it fails today, and CI says so the day a fix makes it pass.

The faults, and where they were seen (tiny runs on the 2-CPU box, 2026-11-30):

* ``RAY_ADDRESS=garbage reasonzoo-train launcher=ray`` ends with
  ``reasonzoo: error: Invalid address format: garbage``: neither the variable nor the key is named.
* A terminal Ctrl-C (SIGINT to the whole foreground process group) prints a reward worker's
  ``KeyboardInterrupt`` traceback above the run's one-line "stopped by SIGINT" message.
* ``kill -9`` of ``reasonzoo-train launcher.trainer_ranks=2``: the follower rank prints a gloo
  traceback and ``/tmp/reasonzoo-ranks-*`` stays behind.
* ``kill -9`` of a ``launcher=ray`` driver that started its own cluster: ``ray::DashboardAgent`` and
  ``ray::RuntimeEnvAgent`` stay alive, orphaned, for over a minute.
"""
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from reasonzoo.rewards import WorkerPool

SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _ray_or_skip():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # another test's cluster: RayPlacement would not call ray.init
        pytest.skip("a Ray cluster is already initialised in this process")
    return ray


# --- a bad cluster address: the error line names where it came from --------------------------------

@pytest.mark.ray
@pytest.mark.xfail(strict=True, reason="RAY_ADDRESS=garbage fails with 'Invalid address format: garbage', "
                                       "not naming RAY_ADDRESS (plugins/launcher/ray.py RayPlacement.__init__, ray.init)")
def test_bad_ray_address_env_is_named_in_the_error(monkeypatch):
    _ray_or_skip()
    from reasonzoo.plugins.launcher.ray import RayLauncherConfig, RayPlacement

    monkeypatch.setenv("RAY_ADDRESS", "garbage")
    with pytest.raises(Exception) as err:
        RayPlacement(RayLauncherConfig(), SimpleNamespace(cfg=SimpleNamespace(threads=1)))
    assert "RAY_ADDRESS" in str(err.value)


@pytest.mark.ray
@pytest.mark.xfail(strict=True, reason="launcher.address=not-an-address fails with 'Invalid address format: ...', "
                                       "not naming launcher.address (plugins/launcher/ray.py RayPlacement.__init__)")
def test_bad_launcher_address_is_named_in_the_error(monkeypatch):
    _ray_or_skip()
    from reasonzoo.plugins.launcher.ray import RayLauncherConfig, RayPlacement

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(Exception) as err:
        RayPlacement(RayLauncherConfig(address="not-an-address"), SimpleNamespace(cfg=SimpleNamespace(threads=1)))
    assert "launcher.address" in str(err.value)


# --- Ctrl-C in a terminal reaches every process of the foreground group -----------------------------

@pytest.mark.xfail(strict=True, reason="a reward worker process does not ignore SIGINT: a terminal Ctrl-C prints its "
                                       "KeyboardInterrupt traceback (core/rewards.py _worker_main, conn.recv_bytes)")
def test_ctrl_c_in_the_terminal_prints_no_reward_worker_traceback(capfd):
    pool = WorkerPool(workers=1)
    try:
        assert [o.value for o in pool.run([(abs, (-9,))], timeout_s=60)] == [9]  # started, waiting for a call
        proc = pool._workers[0].proc
        proc.send_signal(signal.SIGINT)  # what the terminal sends to every process of the run's group
        proc.wait(timeout=60)
    finally:
        pool.close()
    assert "Traceback" not in capfd.readouterr().err
