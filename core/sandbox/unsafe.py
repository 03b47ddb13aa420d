"""``unsafe_subprocess`` backend: a plain subprocess with rlimits. NOT a sandbox.

Scope: for trusted programs or hosts without bubblewrap, and as the naive reference of the
benchmark. The program runs as the trainer's user, can read the trainer's files, reach the network
and write wherever the trainer can; as root even RLIMIT_NPROC does not apply. Only rlimits, a clean
environment, a scratch working directory and a process-group kill after the run are applied (a
setsid'd grandchild escapes the kill). The pool refuses this backend unless
``SandboxConfig(allow_unsandboxed=True)``.
"""

from __future__ import annotations

import os
import signal

from . import procio
from .bwrap import RUN_ENV, ScratchRoot
from .config import Limits, SandboxConfig
from .languages import Language, expand
from .probe import HostInfo
from .results import RunResult, compile_failed, make_result
from .subproc import run_step


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class UnsafeWorker:
    """One worker slot of the ``unsafe_subprocess`` backend."""

    name = "unsafe_subprocess"

    def __init__(self, cfg: SandboxConfig, info: HostInfo, scratch: ScratchRoot):
        self.info, self.scratch = info, scratch

    def _step(self, run_dir: str, argv: list[str], stdin: bytes, limits: Limits, address_space: bool):
        lim = limits.as_dict()
        env = {**RUN_ENV, "HOME": run_dir, "TMPDIR": run_dir}
        return run_step([*procio.prlimit_argv(lim, address_space), *argv], stdin, lim, cwd=run_dir,
                        env=env, new_session=True, after_exit=_kill_group)

    def execute(self, lang: Language, program: str, stdin: str, limits: Limits) -> RunResult:
        run_dir = self.scratch.new_run_dir(None)
        try:
            with open(os.path.join(run_dir, lang.source_file), "w") as f:
                f.write(program)
            if lang.compile:
                facts, out, err = self._step(run_dir, expand(lang.compile, lang, self.info.python), b"",
                                             lang.compile_limits, True)
                if facts["exit_code"] != 0:
                    return compile_failed(facts, out, err, self.name)
            facts, out, err = self._step(run_dir, expand(lang.run, lang, self.info.python),
                                         stdin.encode(), limits, lang.address_space_limit)
            return make_result(facts, out, err, limits, self.name)
        finally:
            procio.remove_tree(run_dir)

    def close(self) -> None:
        pass
