"""Run directories: unique by default, locked while a run is live, never clobbered by accident.

* :func:`unique_dir` creates the default directory exclusively (``outputs/<date>/<time>``, then
  ``<time>-1``, ``<time>-2``, ... when a run started in the same second already took it).
* :class:`RunLock` is an exclusive ``fcntl.flock`` on ``<run dir>/.reasonzoo.lock``, held for the
  whole run. The kernel drops it when the process ends, however it ends, so a ``resume=`` after a
  crash takes it again; a second run into a live directory is refused with the pid holding it.
* :func:`check_fresh` refuses a fresh run into a directory that holds a finished or resumable run
  (its config, metrics, checkpoints or summary) unless ``overwrite=true``; :func:`clear_run`
  removes that run's outputs, and is called only once the new run's set-up has succeeded.
* :func:`remove_stale_temporaries` deletes the temporary files and folders of writers that are
  no longer alive (a killed checkpoint write); a live writer's are left alone.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from pathlib import Path

from .errors import RunDirError

LOCK_FILE = ".reasonzoo.lock"
#: Files and folders that make a directory hold a run (written by ``reasonzoo.trainer``).
RUN_OUTPUTS = ("reasonzoo_config.yaml", "metrics.jsonl", "checkpoints", "summary.json", "final", "distilled",
               "progress.png", "wandb")
#: The run's log (``reasonzoo.runlog.LOG_FILE``; Hydra's job log has the same name): not a sign of a
#: run by itself, but an old run's lines are dropped when it is replaced.
LOG_NAME = "train.log"
_TMP = re.compile(r"^\.(?:tmp-.*-|.*\.tmp)(\d+)$")


def unique_dir(path: str | Path, attempts: int = 1000) -> Path:
    """Create ``path`` (parents included) exclusively and return it; when it exists, create
    ``<path>-1``, ``<path>-2``, ... instead. Raises :class:`FileExistsError` after ``attempts``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(attempts):
        cand = path if i == 0 else path.with_name(f"{path.name}-{i}")
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free run directory after {attempts} tries", str(path))


def run_outputs(run_dir: str | Path) -> list[str]:
    """Names of the run outputs present in ``run_dir`` (empty: it holds no run)."""
    run_dir = Path(run_dir)
    return [n for n in RUN_OUTPUTS if (run_dir / n).exists()]


def is_finished(run_dir: str | Path) -> bool:
    """True when the run in ``run_dir`` completed (its ``summary.json`` was written last)."""
    return (Path(run_dir) / "summary.json").is_file()


def check_fresh(run_dir: str | Path, overwrite: bool) -> list[str]:
    """Refuse a fresh run into a directory holding a run, unless ``overwrite``.

    :returns: the outputs of the old run (what :func:`clear_run` will remove).
    :raises RunDirError: naming the directory, what it holds and the three ways out.
    """
    found = run_outputs(run_dir)
    if found and not overwrite:
        how = "" if is_finished(run_dir) else f"continue it with resume={run_dir}, "
        raise RunDirError(
            f"{run_dir} holds a {'finished' if not how else 'resumable'} run ({', '.join(found)}); {how}"
            f"choose another directory, or add overwrite=true to replace it")
    return found


def log_size(run_dir: str | Path) -> int:
    """Bytes in ``run_dir``'s log now (0 when there is none): where a new run's lines will start."""
    try:
        return (Path(run_dir) / LOG_NAME).stat().st_size
    except OSError:
        return 0


def clear_run(run_dir: str | Path, old_log_bytes: int = 0) -> None:
    """Remove the outputs of the run held in ``run_dir`` (for ``overwrite=true``), and drop the
    first ``old_log_bytes`` of its log (the old run's lines; what the new run logged since is
    kept). The log is rewritten in place, not replaced, because a log handler (Hydra's) may hold
    it open in append mode."""
    for name in RUN_OUTPUTS:
        p = Path(run_dir) / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    log = Path(run_dir) / LOG_NAME
    if old_log_bytes > 0 and log.is_file() and not log.is_symlink():
        with open(log, "r+b") as f:
            f.seek(old_log_bytes)
            new = f.read()
            f.seek(0)
            f.write(new)
            f.truncate()


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists (this process included; one owned by another user counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete temporaries (``.tmp-<name>-<pid>``, ``.<name>.tmp<pid>``) in ``run_dir`` and its
    ``checkpoints/`` whose writer process is gone. Returns what was removed."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = _TMP.match(p.name)
            if m and not pid_alive(int(m.group(1))):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
    return removed


class RunLock:
    """An exclusive lock on a run directory, held by the live run (``fcntl.flock``).

    :raises RunDirError: from :meth:`acquire` when another live process holds it (names the pid).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirError(
                f"{self.path.parent} is in use by a live run (pid {holder}, lock {self.path}); "
                f"choose another directory or wait for that run to end") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(run_dir: str | Path) -> bool:
    """True when a live process holds the lock of ``run_dir`` (checked without taking it for long)."""
    if not (Path(run_dir) / LOCK_FILE).exists():
        return False
    try:
        RunLock(run_dir).acquire().release()
    except RunDirError:
        return True
    return False
