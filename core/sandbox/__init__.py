"""Sandbox for running model-generated (untrusted) programs: ``reasonzoo.sandbox``.

Scope: run a program with stdin under resource limits in an isolated environment and report a
verdict, or judge it on tests: stdin/stdout tests (``SandboxPool.judge``) or function tests, assert-
style ``check(candidate)`` and calls compared with ``strict_equal`` (``judge_functions``, run by a
two-process harness whose verdicts the program cannot forge). Backends (``SandboxConfig.backend``): ``forkserver`` (default when
root: pre-forked server inside bubblewrap, one fork per run, ~10 ms), ``bwrap`` (one bubblewrap per
run, any user, any language), ``unsafe_subprocess`` (no isolation, opt-in only). ``probe()`` says
what this host supports. Design notes: docs/sandbox.md.

    from reasonzoo.sandbox import SandboxPool, Limits
    with SandboxPool(workers=2) as pool:
        pool.run("print(input()[::-1])", stdin="abc\\n").stdout          # 'cba\\n'
        pool.judge(src, [("1 2\\n", "3\\n")], Limits(cpu_s=1)).score     # 1.0 or 0.0
"""

from .config import BACKENDS, Limits, SandboxConfig
from .functional import judge_functions, strict_equal
from .languages import LANGUAGES, Language
from .pool import SandboxPool, default_pool, judge
from .probe import HostInfo, default_backend, probe
from .results import VERDICTS, JudgeResult, RunResult, normalise_output, outputs_match

__all__ = ["BACKENDS", "LANGUAGES", "VERDICTS", "HostInfo", "JudgeResult", "Language", "Limits",
           "RunResult", "SandboxConfig", "SandboxPool", "default_backend", "default_pool", "judge", "judge_functions",
           "normalise_output", "outputs_match", "probe", "strict_equal"]
