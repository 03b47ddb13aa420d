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
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import pytest
import torch

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


# --- kill -9 of a run's driver ------------------------------------------------------------------------

def _start_until_iteration(args, run_dir, env, iterations_seen=2):
    """``reasonzoo-train args`` in its own session, returned once ``iterations_seen`` records
    after the one before RL are in its metrics (or it ended)."""
    proc = subprocess.Popen([sys.executable, "-m", "reasonzoo.train", *args, f"hydra.run.dir={run_dir}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    while proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) > iterations_seen:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    return proc


@pytest.fixture(scope="module")
def killed_two_rank_run(request, tmp_path_factory):
    """``reasonzoo-train launcher.trainer_ranks=2`` killed with SIGKILL mid-run: its stderr
    after the kill (read to the end: until the follower rank, which shares it, has left) and
    its TMPDIR."""
    tiny = next(p.TINY for p in request.config.pluginmanager.get_plugins() if hasattr(p, "TINY"))
    base = tmp_path_factory.mktemp("killed_two_rank")
    tmp = base / "tmp"
    tmp.mkdir()
    env = {**SUBPROCESS_ENV, "TMPDIR": str(tmp), "REASONZOO_CACHE_DIR": str(base / "cache")}
    proc = _start_until_iteration([*tiny, "iterations=500", "eval.every=0", "launcher.trainer_ranks=2"], base / "run", env)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    return SimpleNamespace(err=err, tmp=tmp)


@pytest.mark.xfail(strict=True, reason="kill -9 of a 2-rank local run: the follower prints a gloo 'Connection closed by "
                                       "peer' traceback (core/launch.py _follower_process, traceback.print_exc)")
def test_kill_9_of_a_two_rank_run_prints_no_follower_traceback(killed_two_rank_run):
    assert "Traceback" not in killed_two_rank_run.err


@pytest.mark.xfail(strict=True, reason="kill -9 of a 2-rank local run leaves /tmp/reasonzoo-ranks-* behind "
                                       "(core/launch.py LocalPlacement.start_trainer: only rank 0's close() removes it)")
def test_kill_9_of_a_two_rank_run_leaves_no_temp_dir(killed_two_rank_run):
    assert sorted(p.name for p in killed_two_rank_run.tmp.glob("reasonzoo-ranks-*")) == []


RAY_DRIVER = """
import sys, time
from types import SimpleNamespace
from reasonzoo.plugins.launcher.ray import RayLauncherConfig, RayPlacement
RayPlacement(RayLauncherConfig(), SimpleNamespace(cfg=SimpleNamespace(threads=1)))
import ray
print(ray.get_runtime_context().get_node_id() and ray._private.worker._global_node.get_session_dir_path(), flush=True)
time.sleep(600)
"""


def _processes_using(folder):
    """``(pid, command line)`` of every process with a file open under ``folder`` (Ray's agents
    rename themselves, ``ray::DashboardAgent``, but keep their session's log files open)."""
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if any(os.readlink(f"/proc/{d}/fd/{fd}").startswith(folder) for fd in os.listdir(f"/proc/{d}/fd")):
                out.append((int(d), open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")[:120]))
        except OSError:  # gone, or not ours to read
            continue
    return out


@pytest.mark.ray
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.xfail(strict=True, reason="kill -9 of a launcher=ray driver that started its own cluster leaves "
                                       "ray::DashboardAgent and ray::RuntimeEnvAgent running for over a minute "
                                       "(plugins/launcher/ray.py RayPlacement.__init__, ray.init(num_cpus=...))")
def test_kill_9_of_a_ray_driver_leaves_no_ray_process():
    _ray_or_skip()
    folder = tempfile.mkdtemp(prefix="rz-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**SUBPROCESS_ENV, "RAY_TMPDIR": folder}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", RAY_DRIVER], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    session = proc.stdout.readline().strip()
    assert session.startswith(folder), session  # the cluster is this driver's own
    assert len(_processes_using(session)) > 1  # its processes are found by their open files
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    left = _processes_using(session)
    for _ in range(150):  # up to 30 s for the cluster to notice that its driver is gone
        if not left:
            break
        time.sleep(0.2)
        left = _processes_using(session)
    try:
        assert left == []
    finally:
        for pid, _cmd in left:  # the test's own leftovers, killed by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(folder, ignore_errors=True)


# --- a backend this torch does not have -------------------------------------------------------------

@pytest.mark.skipif(torch.distributed.is_nccl_available(), reason="this torch has NCCL")
@pytest.mark.xfail(strict=True, reason="launcher.trainer_ranks=2 launcher.backend=nccl without NCCL passes validation, "
                                       "then fails after the warm-up with two tracebacks (core/launch.py init_rank; "
                                       "plugins/launcher/local.py checks only the name)")
def test_nccl_backend_without_nccl_is_refused_at_validation():
    from reasonzoo.config import validate
    from reasonzoo.train import compose

    with pytest.raises(Exception, match="launcher.backend"):  # one config-error line naming the key
        validate(compose(["launcher.trainer_ranks=2", "launcher.backend=nccl"]))
