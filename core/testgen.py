"""Test-case generation for code problems, filtered by reference solutions (Kimi k1.5 §2.3.5,
"Test Case Generation for Coding").

The paper generates 50 candidate tests per problem, runs 10 randomly sampled ground-truth
submissions on each, keeps a test when at least 7 of the 10 agree on its output, and keeps the
problem when at least 9 of the 10 pass every selected test. This module does the same with the
numbers in :class:`TestgenConfig`:

1. :func:`generate_inputs`: *generators* (plain callables ``rng -> str``; the paper has its model
   write CYaRon scripts) produce ``num_tests`` distinct candidate inputs. Candidate ``i`` is drawn
   with a ``random.Random`` seeded by ``(seed, i)``, so the inputs do not depend on timing,
   threads or the other candidates.
2. :func:`select_tests`: up to ``num_solutions`` reference solutions (a seeded sample when there
   are more) run on every input in the sandbox (``reasonzoo.sandbox``). Outputs are compared after
   the sandbox's ``normalise_output`` (whitespace per line, trailing blank lines). A run that does
   not end with verdict ``ok`` (crash, time limit, ...) agrees with nobody.

   * a test is **valid** when at least ``test_agree`` solutions print the same output; that
     (majority) output becomes the expected output. ``test_agree > num_solutions / 2`` is
     required, so at most one output can reach it.
   * a solution **passes** when its output matches the expected output on every valid test.
   * the problem is **kept** when at least ``problem_pass`` solutions pass and at least
     ``min_tests`` tests are valid (no valid test would make every program pass).

   With fewer solutions than ``num_solutions`` (m < n), both thresholds scale to
   ``ceil(k * m / n)`` (7 of 10 becomes 4 of 5 and 1 of 1), which keeps the strict majority.

Nothing here trains or reads a config file: it is a library for building code datasets offline
(``docs/code.md`` shows a script that writes a ``task=code_jsonl`` file) and for tasks that make
tests at load time.
"""
from __future__ import annotations

import collections
import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from .context import derive_seed
from .sandbox import Limits, SandboxPool, normalise_output

#: A test-input generator: given a seeded RNG, returns one program input (stdin text).
Generator = Callable[[random.Random], str]


@dataclass(frozen=True)
class TestgenConfig:
    """The numbers of the paper's filter (§2.3.5); each field names the paper's value."""

    num_tests: int = 50
    """Candidate tests generated per problem (paper: 50)."""
    num_solutions: int = 10
    """Reference solutions run per problem, sampled when a problem has more (paper: 10)."""
    test_agree: int = 7
    """A test is valid when at least this many of the ``num_solutions`` agree on its output
    (paper: 7); must be more than half of ``num_solutions``."""
    problem_pass: int = 9
    """A problem is kept when at least this many of the ``num_solutions`` pass every valid test
    (paper: 9)."""
    min_tests: int = 1
    """A problem also needs at least this many valid tests (the paper does not say; 1 rules out a
    test set every program passes)."""
    max_attempts: int = 10
    """Generator calls allowed per wanted test before giving up on more distinct inputs (a
    generator with few possible outputs cannot yield ``num_tests`` distinct ones)."""

    def __post_init__(self) -> None:
        for name in ("num_tests", "num_solutions", "test_agree", "problem_pass", "min_tests", "max_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TestgenConfig.{name} must be an int >= 1, got {value!r}")
        n = self.num_solutions
        if not n / 2 < self.test_agree <= n:
            raise ValueError(f"TestgenConfig.test_agree={self.test_agree}: must be a strict majority of "
                             f"num_solutions={n}, i.e. in ({n / 2:g}, {n}]")
        if self.problem_pass > n:
            raise ValueError(f"TestgenConfig.problem_pass={self.problem_pass}: must be <= num_solutions={n}")

    def scaled(self, m: int) -> tuple[int, int]:
        """``(test_agree, problem_pass)`` for a problem with ``m`` solutions run."""
        n = min(m, self.num_solutions)
        return (math.ceil(self.test_agree * n / self.num_solutions),
                math.ceil(self.problem_pass * n / self.num_solutions))


@dataclass(frozen=True)
class CandidateTest:
    """One generated input and what the reference solutions printed on it."""

    input: str
    outputs: tuple[str | None, ...]
    """Normalised output of each solution run (lines joined by ``\\n``); None when the run's
    verdict was not ``ok``."""
    verdicts: tuple[str, ...]
    """Sandbox verdict of each solution run."""
    expected: str | None
    """The majority output when the test is valid, else None."""
    agree: int
    """How many solutions printed the most common output (0 when none ran ``ok``)."""

    @property
    def valid(self) -> bool:
        return self.expected is not None


@dataclass(frozen=True)
class TestgenResult:
    """The outcome of filtering one problem's candidate tests."""

    candidates: tuple[CandidateTest, ...]
    solution_passes: tuple[bool, ...]
    """Per solution run (in the order used): whether it passes every valid test."""
    kept: bool
    reason: str
    """Why the problem was dropped ('' when kept)."""
    thresholds: tuple[int, int]
    """The ``(test_agree, problem_pass)`` applied (scaled to the number of solutions)."""

    @property
    def tests(self) -> list[dict[str, str]]:
        """The valid tests as ``{"input", "output"}`` (the format of ``problem.meta["tests"]``)."""
        return [{"input": c.input, "output": c.expected} for c in self.candidates if c.valid]


def generate_inputs(generators: Sequence[Generator], num_tests: int, seed: int,
                    max_attempts: int = 10) -> list[str]:
    """Up to ``num_tests`` distinct inputs, taking the generators in turn (round robin).

    Attempt ``i`` calls ``generators[i % len(generators)]`` with ``random.Random`` seeded by
    ``(seed, i)``; duplicates are skipped; at most ``num_tests * max_attempts`` attempts.
    """
    if not generators:
        raise ValueError("generate_inputs needs at least one generator")
    out: list[str] = []
    seen: set[str] = set()
    for i in range(num_tests * max_attempts):
        if len(out) == num_tests:
            break
        gen = generators[i % len(generators)]
        text = gen(random.Random(derive_seed(seed, "testgen", i)))
        if not isinstance(text, str):
            raise TypeError(f"test generator {getattr(gen, '__name__', gen)!r} returned "
                            f"{type(text).__name__}, expected str")
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def _normalised(stdout: str) -> str:
    return "\n".join(normalise_output(stdout))


def select_tests(inputs: Sequence[str], solutions: Sequence[str], pool: SandboxPool,
                 cfg: TestgenConfig = TestgenConfig(), limits: Limits | None = None,
                 language: str = "python", seed: int = 0) -> TestgenResult:
    """Run the reference solutions on ``inputs`` in ``pool`` and apply the paper's filter.

    When there are more than ``cfg.num_solutions`` solutions, a sample seeded by ``seed`` is run.
    Expected outputs are the normalised majority output plus a final newline.
    """
    if not solutions:
        raise ValueError("select_tests needs at least one reference solution")
    if not inputs:
        raise ValueError("select_tests needs at least one candidate input")
    chosen = list(solutions)
    if len(chosen) > cfg.num_solutions:
        chosen = random.Random(derive_seed(seed, "testgen-solutions")).sample(chosen, cfg.num_solutions)
    agree_need, pass_need = cfg.scaled(len(chosen))
    futures = [[pool.submit(src, language, text, limits) for src in chosen] for text in inputs]
    candidates = []
    for text, row in zip(inputs, futures):
        runs = [f.result() for f in row]
        outs = tuple(_normalised(r.stdout) if r.verdict == "ok" else None for r in runs)
        counts = collections.Counter(o for o in outs if o is not None)
        top, agree = counts.most_common(1)[0] if counts else (None, 0)
        expected = top + "\n" if agree >= agree_need else None
        candidates.append(CandidateTest(text, outs, tuple(r.verdict for r in runs), expected, agree))
    valid = [c for c in candidates if c.valid]
    passes = tuple(all(c.outputs[j] is not None and c.outputs[j] + "\n" == c.expected for c in valid)
                   for j in range(len(chosen)))
    if len(valid) < cfg.min_tests:
        reason = f"{len(valid)} valid tests (< min_tests={cfg.min_tests})"
    elif sum(passes) < pass_need:
        reason = f"{sum(passes)} of {len(chosen)} solutions pass all valid tests (< {pass_need})"
    else:
        reason = ""
    return TestgenResult(tuple(candidates), passes, not reason, reason, (agree_need, pass_need))


def generate_tests(generators: Sequence[Generator], solutions: Sequence[str], pool: SandboxPool,
                   cfg: TestgenConfig = TestgenConfig(), limits: Limits | None = None,
                   language: str = "python", seed: int = 0) -> TestgenResult:
    """:func:`generate_inputs` then :func:`select_tests`: the whole §2.3.5 pipeline for one problem."""
    inputs = generate_inputs(generators, cfg.num_tests, seed, cfg.max_attempts)
    return select_tests(inputs, solutions, pool, cfg, limits, language, seed)
