"""Code reward (Kimi k1.5 §2.1 and §2.6.4): run the program in the response on the problem's test
cases in a sandbox; r = the fraction of tests passed (``mode: fraction``) or 1 only when all pass
(``mode: all``, the paper's binary r in {0, 1}). ``correct`` = every test passed, in both modes.

**Tests** come from ``problem.meta["tests"]``, a non-empty list mixing three kinds of record:

* ``{"input": str, "output": str}`` (optionally ``"kind": "stdio"``): stdin and expected stdout,
  compared by the sandbox's ``outputs_match`` (per line, whitespace runs collapse and ends are
  stripped; trailing blank lines are ignored; case matters);
* ``{"kind": "assert", "test": str, "entry_point": str}``: function completion (HumanEval's layout):
  ``test`` defines ``check(candidate)``; the test passes when ``check`` returns normally, called
  with the program's ``entry_point``;
* ``{"kind": "call", "fn": str, "args": list, "kwargs"?: dict, "expected": any, "tol"?: float}``:
  ``fn(*args, **kwargs)`` must return ``expected`` (type-aware, ``reasonzoo.sandbox.strict_equal``).

Function tests (Python only) run in the sandbox's two-process harness (``reasonzoo.sandbox.functional``):
the response's code never shares a process with the test code, and its return values come back
as plain data, so printing ``PASSED``, exiting early, patching builtins or returning an object whose
``__eq__`` is always true all fail.

**Program assembly**: a problem with ``meta["prefix"]`` (HumanEval's ``prompt``: imports, helpers and
the function's signature and docstring) is completed by the response: program = prefix (ending in a
newline) + the extracted code with its indentation kept (a body continues the stub; a response that
repeats the whole ``def`` at column 0 redefines it, which is valid after a stub whose docstring is its
body). ``prefix`` is also run before an ``assert`` test's code, so helpers it defines exist there.

**Program extraction** (default, ``pattern: null``): the *last* fenced block tagged with the
language (for Python: ```` ```python ````, ```` ```py ```` or ```` ```python3 ````); else the last
untagged fenced block (```` ``` ````); else the whole response, stripped. With ``pattern`` set,
the program is the first group of the last match of that regex (DOTALL); no match means no
program: the sample scores 0 and every test gets the verdict ``no_program`` without running.

**Language**: ``language`` names an entry of the sandbox's language table
(``reasonzoo.sandbox.LANGUAGES``: python, c, cpp, sh); a problem may override it with
``meta["language"]``.

**Verdicts** per test go into ``RewardResult.info["verdicts"]``: the sandbox's ``ok``,
``wrong_answer``, ``time_limit``, ``memory_limit``, ``runtime_error`` (a syntax error is one),
``output_limit``, ``compile_error``, ``sandbox_error``, ``skipped`` (``mode: all`` runs the tests in
order and stops at the first failure, so the verdicts do not depend on timing), plus ``no_program``. ``rz_iteration_end`` reports ``reward/verdict_<v>`` = share of this
iteration's test runs with verdict v (all keys every iteration, so curves line up), and
``reward/code_*`` totals.

**Truncated responses** (``truncated``, :class:`reasonzoo.rewards.RewardConfig`): a response cut at
``max_new_tokens`` scores 0 without being run (``zero``, default), also leaves the loss (``mask``),
or is run and scored as-is (``score``). ``info["extracted"]`` is the program (majority voting in
:mod:`reasonzoo.evaluation` then groups identical programs).

**Concurrency and failures**: the rollouts of one call are judged by ``threads`` threads, each
handing its tests to one shared :class:`reasonzoo.sandbox.SandboxPool` of ``workers`` sandboxes
(created on first use, closed in ``rz_run_end``). The pool turns a crashed sandbox into a
``sandbox_error`` verdict and kills a hung program at ``limits.wall_s``; any other exception while
scoring one rollout is logged and scores that rollout 0 (``reasonzoo.rewards.score_groups``).
Results are returned in rollout order and depend only on the programs and tests.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import re
import threading
from dataclasses import dataclass, field
from typing import Optional

from reasonzoo import hookimpl, plugin
from reasonzoo.rewards import RewardConfig, check_config, check_pattern, reward_metrics, score_groups
from reasonzoo.sandbox import BACKENDS, LANGUAGES, VERDICTS, Limits, SandboxConfig, SandboxPool, judge_functions
from reasonzoo.sandbox.functional import check_test
from reasonzoo.sandbox.results import OK, SKIPPED, WRONG_ANSWER
from reasonzoo.types import FinishReason, RewardResult

MODES = ("fraction", "all")
NO_PROGRAM = "no_program"
#: Fence tags accepted per language; a language not listed here is tagged with its own name.
FENCE_TAGS = {"python": ("python", "py", "python3"), "cpp": ("cpp", "c++"), "c": ("c",), "sh": ("sh", "bash")}
MiB, KiB = 1 << 20, 1 << 10
FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)


@dataclass
class CodeLimitsConfig:
    cpu_s: float = 1.0  #: CPU seconds per test run -> time_limit
    wall_s: float = 3.0  #: wall seconds per test run (kills sleeping/blocked programs) -> time_limit
    memory_mib: int = 256  #: memory per run in MiB (address space + memory cgroup) -> memory_limit
    processes: int = 16  #: processes + threads per run; more fail with EAGAIN inside the program
    open_files: int = 64  #: open file descriptors per process
    output_kib: int = 1024  #: stdout kept per run in KiB; more -> output_limit
    file_mib: int = 8  #: largest file the program may write, in MiB -> output_limit

    def to_limits(self) -> Limits:
        """The sandbox :class:`Limits` with these values (stderr and stack keep the sandbox's defaults)."""
        return Limits(cpu_s=self.cpu_s, wall_s=self.wall_s, memory_bytes=self.memory_mib * MiB,
                      processes=self.processes, open_files=self.open_files,
                      output_bytes=self.output_kib * KiB, file_bytes=self.file_mib * MiB)


@dataclass
class CodeConfig(RewardConfig):
    mode: str = "fraction"  #: fraction (r = passed / tests) or all (r = 1 only if every test passes)
    language: str = "python"  #: key of the sandbox language table; a problem's meta["language"] overrides it
    pattern: Optional[str] = None  #: regex whose first group is the program; None = fenced-block rule
    backend: str = "auto"  #: sandbox backend: auto, forkserver, bwrap or unsafe_subprocess
    allow_unsandboxed: bool = False  #: must be true for unsafe_subprocess (no isolation)
    workers: int = 2  #: programs running at once (sandbox workers)
    threads: int = 8  #: rollouts judged at once (each waits on its tests in the sandbox pool)
    limits: CodeLimitsConfig = field(default_factory=CodeLimitsConfig)  #: per test run


def extract_program(text: str, language: str = "python", pattern: str | None = None,
                    keep_indent: bool = False) -> str | None:
    """The program in a response, by the rule in the module docstring (None: ``pattern`` did not
    match). ``keep_indent``: strip only blank leading lines and trailing whitespace, so that a
    completion's indented first line stays indented (used when a problem has a ``prefix``)."""
    def clean(code: str) -> str:
        if not keep_indent:
            return code.strip()
        lines = code.rstrip().split("\n")
        while lines and not lines[0].strip():
            lines.pop(0)
        return "\n".join(lines)

    if pattern is not None:
        found = re.findall(pattern, text, flags=re.DOTALL)
        if not found:
            return None
        last = found[-1]
        return clean(last[0] if isinstance(last, tuple) else last)
    tags = FENCE_TAGS.get(language, (language,))
    blocks = [(tag.strip().lower(), body) for tag, body in FENCE.findall(text)]
    for wanted in (tags, ("",)):
        bodies = [body for tag, body in blocks if tag in wanted]
        if bodies:
            return clean(bodies[-1])
    return clean(text)


def assemble_program(prefix: str, code: str) -> str:
    """``prefix`` + ``code`` as described under "Program assembly" (no prefix: ``code``)."""
    if not prefix:
        return code
    return (prefix if prefix.endswith("\n") else prefix + "\n") + code + "\n"


def parse_tests(meta) -> list[dict]:
    """``meta["tests"]`` as records: ``{"kind": "stdio", "input", "output"}`` or a function test
    (``reasonzoo.sandbox.functional.check_test``); a missing or malformed list raises ``ValueError``."""
    tests = meta.get("tests")
    if not isinstance(tests, (list, tuple)) or not tests:
        raise ValueError("problem.meta['tests'] must be a non-empty list of {'input', 'output'} or function "
                         "tests (use a code task: task=code_jsonl or task=synth_code)")
    out = []
    for i, t in enumerate(tests):
        if isinstance(t, dict) and t.get("kind", "stdio") == "stdio":
            if not (isinstance(t.get("input"), str) and isinstance(t.get("output"), str)):
                raise ValueError(f"problem.meta['tests'][{i}] must be {{'input': str, 'output': str}}, got {t!r}")
            out.append({"kind": "stdio", "input": t["input"], "output": t["output"]})
        else:
            out.append(check_test(t, f"problem.meta['tests'][{i}]"))
    return out


@plugin("reward", "code", CodeConfig)
class CodeReward:
    """Pass fraction (or all-pass) of the response's program on the problem's tests, in a sandbox."""

    problem_fields_required = ("meta.tests",)  #: checked against the task at config validation

    def __init__(self, cfg: CodeConfig):
        check_config(cfg)
        if cfg.mode not in MODES:
            raise ValueError(f"reward.mode={cfg.mode!r}: allowed values are {', '.join(MODES)}")
        if cfg.language not in LANGUAGES:
            raise ValueError(f"reward.language={cfg.language!r}: allowed values are {', '.join(sorted(LANGUAGES))}")
        if cfg.backend not in BACKENDS:
            raise ValueError(f"reward.backend={cfg.backend!r}: allowed values are {', '.join(BACKENDS)}")
        if cfg.backend == "unsafe_subprocess" and not cfg.allow_unsandboxed:
            raise ValueError("reward.backend=unsafe_subprocess runs programs without isolation; "
                             "set reward.allow_unsandboxed=true to use it anyway")
        for key in ("workers", "threads"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"reward.{key}={getattr(cfg, key)}: must be >= 1")
        check_pattern(cfg.pattern)
        try:
            self.limits = cfg.limits.to_limits()
        except ValueError as exc:  # Limits names its own field; say which config key that is
            raise ValueError(f"reward.limits: {exc}") from None
        self.cfg = cfg
        self._lock = threading.Lock()
        self._pool: SandboxPool | None = None
        self._threads: cf.ThreadPoolExecutor | None = None

    # ---- resources ----
    def _resources(self) -> tuple[SandboxPool, cf.ThreadPoolExecutor]:
        with self._lock:
            if self._pool is None:
                try:
                    self._pool = SandboxPool(SandboxConfig(
                        backend=self.cfg.backend, workers=self.cfg.workers, limits=self.limits,
                        allow_unsandboxed=self.cfg.allow_unsandboxed))
                except RuntimeError as exc:  # no usable backend: a set-up error, not one sample's
                    raise RuntimeError(f"reward=code: cannot start the sandbox (reward.backend="
                                       f"{self.cfg.backend}, reward.allow_unsandboxed="
                                       f"{self.cfg.allow_unsandboxed}): {exc}") from exc
                self._threads = cf.ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="reasonzoo-code-reward")
            return self._pool, self._threads

    def close(self) -> None:
        """Stop the judging threads and the sandbox pool (a later call to ``rz_reward`` starts new ones)."""
        with self._lock:
            pool, threads, self._pool, self._threads = self._pool, self._threads, None, None
        if threads is not None:
            threads.shutdown(wait=True, cancel_futures=True)
        if pool is not None:
            pool.close()

    # ---- scoring ----
    def score(self, rollout, pool: SandboxPool) -> RewardResult:
        problem = rollout.problem
        tests = parse_tests(problem.meta)
        language = problem.meta.get("language", self.cfg.language)
        prefix = problem.meta.get("prefix", "")
        if not isinstance(prefix, str):
            raise ValueError(f"problem.meta['prefix'] must be a string, got {type(prefix).__name__}")
        if language != "python" and any(t["kind"] != "stdio" for t in tests):
            raise ValueError(f"problem {problem.uid!r}: function tests (assert, call) need language python, "
                             f"got {language!r}")
        program = extract_program(rollout.text, language, self.cfg.pattern, keep_indent=bool(prefix))
        if program is None:
            return RewardResult(score=0.0, correct=False, info={
                "program": None, "extracted": None, "language": language, "verdicts": [NO_PROGRAM] * len(tests),
                "passed": 0, "tests": len(tests)})
        program = assemble_program(prefix, program)
        verdicts, runs = self._judge(pool, program, tests, language, prefix)
        passed = verdicts.count(OK)
        score = passed / len(tests) if self.cfg.mode == "fraction" else float(passed == len(tests))
        info = {"program": program, "extracted": program, "language": language, "verdicts": verdicts, "passed": passed, "tests": len(tests)}
        failed = next((r for r, v in zip(runs, verdicts) if r is not None and v not in (OK, WRONG_ANSWER)), None)
        if failed is not None and failed.stderr.strip():
            info["stderr"] = failed.stderr.strip().splitlines()[-1][:200]
        return RewardResult(score=score, correct=passed == len(tests), info=info)

    def _judge(self, pool: SandboxPool, program: str, tests: list[dict], language: str,
               prefix: str) -> tuple[list[str], list]:
        """Verdict and run of each test. stdin/stdout tests first, then function tests (each kind
        keeps its order). ``fraction``: all tests at once on the pool. ``all``: in order, stopping
        at the first failure (the rest ``skipped``), so which tests ran does not depend on timing
        (the pool's own ``mode="all"`` cancels whatever has not started yet)."""
        stdio = [i for i, t in enumerate(tests) if t["kind"] == "stdio"]
        func = [i for i, t in enumerate(tests) if t["kind"] != "stdio"]
        verdicts: list[str] = [SKIPPED] * len(tests)
        runs: list = [None] * len(tests)
        pairs = [(tests[i]["input"], tests[i]["output"]) for i in stdio]
        failed = False
        if self.cfg.mode == "fraction" and pairs:
            res = pool.judge(program, pairs, self.limits, mode="fraction", language=language)
            for i, v, r in zip(stdio, res.verdicts, res.runs):
                verdicts[i], runs[i] = v, r
        else:
            for i, pair in zip(stdio, pairs):
                res = pool.judge(program, [pair], self.limits, mode="fraction", language=language)
                verdicts[i], runs[i] = res.verdicts[0], res.runs[0]
                if res.verdicts[0] != OK:
                    failed = True
                    break
        if func and not failed:
            res = judge_functions(pool, program, [tests[i] for i in func], self.limits, mode=self.cfg.mode,
                                  context=prefix)
            for i, v, r in zip(func, res.verdicts, res.runs):
                verdicts[i], runs[i] = v, r
        return verdicts, runs

    @hookimpl
    def rz_reward(self, ctx, groups):
        pool, threads = self._resources()
        futures: dict[int, cf.Future] = {}
        for g in groups:
            for r in g.rollouts:  # a truncated response is not run unless reward.truncated=score
                if id(r) not in futures and (self.cfg.truncated == "score" or r.finish_reason is not FinishReason.LENGTH):
                    futures[id(r)] = threads.submit(self.score, r, pool)
        # score_groups re-raises each rollout's exception in turn and scores it 0 (logged)
        return score_groups(groups, lambda r: futures[id(r)].result(), "code", truncated=self.cfg.truncated)

    @hookimpl
    def rz_iteration_end(self, ctx, groups):
        counts: collections.Counter = collections.Counter()
        errors = samples = passed = 0
        for g in groups:
            for rw in g.rewards or ():
                samples += 1
                counts.update(rw.info.get("verdicts", ()))
                errors += "error" in rw.info
                if rw.info.get("tests"):
                    passed += rw.info["passed"] / rw.info["tests"]
        runs = sum(counts.values())
        out = {f"reward/verdict_{v}": counts[v] / runs if runs else 0.0 for v in (*VERDICTS, NO_PROGRAM)}
        out.update({
            "reward/code_test_runs": float(runs),  # tests judged this iteration (skipped included)
            "reward/code_pass_fraction": passed / samples if samples else 0.0,  # mean share of tests passed
            "reward/code_errors": errors / samples if samples else 0.0,  # share of samples that failed to score
        })
        return {**out, **reward_metrics(groups)}

    @hookimpl
    def rz_run_end(self, ctx, summary):
        self.close()
