"""Synthetic one-line programs: a code task small enough for the tiny character-level model, for
``reward=code`` (Kimi k1.5 §2.1: code problems verified by test cases run in a sandbox).

A problem asks for a program that reads an integer n and prints an arithmetic function of it.
The prompt states the function; the reference solution is one line of Python::

    prompt    f(n)=3*n+1 mod 7:                 solution  n=int(input());print((3*n+1)%7)
    prompt    f(n)=n*n-4:                       solution  n=int(input());print(n*n-4)

The expression has ``difficulty`` binary operations (``ops``) over ``n`` and one-digit constants,
with Python's precedence (the prompt and the program read the same); with probability ``mod_prob``
the whole value is reduced ``mod m`` (2 <= m <= 9), which the program writes as ``(...)%m``. At
most 4 operations keep prompt + solution under 60 characters (max length 256, ~64 new tokens).

Tests (``meta["tests"]``): ``tests_per_problem`` distinct inputs n in ``[0, input_max]`` from
``reasonzoo.testgen.generate_inputs`` (seeded per problem); expected outputs are the expression's
value computed here, which is what the reference program prints (a test runs it in the sandbox).
Train and eval splits are generated from the run seed and are disjoint.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from reasonzoo import hookimpl, plugin
from reasonzoo.context import derive_seed
from reasonzoo.testgen import generate_inputs
from reasonzoo.types import Problem

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
PRECEDENCE = {"+": 0, "-": 0, "*": 1}
MAX_OPS = 4


@dataclass
class SynthCodeConfig:
    min_ops: int = 1  #: easiest difficulty (binary operations in the expression)
    max_ops: int = 3  #: hardest difficulty (at most 4: prompt + solution stay under 60 characters)
    ops: str = "+-*"  #: operators to draw from
    mod_prob: float = 0.5  #: probability that the value is reduced mod m (2 <= m <= 9)
    input_max: int = 99  #: test inputs n are drawn from [0, input_max]
    tests_per_problem: int = 4  #: distinct test inputs per problem
    train_size: int = 4000  #: problems in the training pool (equal share per difficulty)
    eval_per_difficulty: int = 100  #: held-out problems per difficulty (level 1 has only ~500 distinct problems)


def evaluate(expr: list[str], n: int) -> int:
    """Value of a token list (operands ``n`` or digits, binary operators) with Python precedence:
    ``*`` before ``+``/``-``, left to right within a level."""
    values = [n if t == "n" else int(t) for t in expr[0::2]]
    ops = expr[1::2]
    terms, pending = [values[0]], []  # fold '*' first, keeping +/- for the second pass
    for op, v in zip(ops, values[1:]):
        if PRECEDENCE[op]:
            terms[-1] = OPS[op](terms[-1], v)
        else:
            pending.append(op)
            terms.append(v)
    acc = terms[0]
    for op, v in zip(pending, terms[1:]):
        acc = OPS[op](acc, v)
    return acc


def make_problem(rng: random.Random, n_ops: int, ops: str, mod_prob: float) -> tuple[str, str, list[str], int | None]:
    """A random problem: ``(prompt, solution, expression tokens, modulus or None)``."""
    operands = [("n" if rng.random() < 0.5 else str(rng.randint(1, 9))) for _ in range(n_ops + 1)]
    if "n" not in operands:
        operands[rng.randrange(len(operands))] = "n"
    expr = [operands[0]]
    for v in operands[1:]:
        expr += [rng.choice(ops), v]
    text = "".join(expr)
    modulus = rng.randint(2, 9) if rng.random() < mod_prob else None
    if modulus is None:
        return f"f(n)={text}:", f"n=int(input());print({text})", expr, None
    return f"f(n)={text} mod {modulus}:", f"n=int(input());print(({text})%{modulus})", expr, modulus


@plugin("task", "synth_code", SynthCodeConfig)
class SynthCode:
    """One-line Python programs for arithmetic functions of an input integer, with tests."""

    problem_fields_provided = ("answer", "solutions", "meta.tests")  #: read by config validation (reward needs)

    def __init__(self, cfg: SynthCodeConfig):
        if not 1 <= cfg.min_ops <= cfg.max_ops <= MAX_OPS:
            raise ValueError(f"task.min_ops={cfg.min_ops}, task.max_ops={cfg.max_ops}: need 1 <= min_ops <= max_ops <= {MAX_OPS}")
        if not cfg.ops or set(cfg.ops) - set(OPS):
            raise ValueError(f"task.ops={cfg.ops!r}: allowed characters are {''.join(OPS)}")
        if not 0.0 <= cfg.mod_prob <= 1.0:
            raise ValueError(f"task.mod_prob={cfg.mod_prob}: must be in [0, 1]")
        if cfg.tests_per_problem < 1 or cfg.input_max + 1 < cfg.tests_per_problem:
            raise ValueError(f"task.tests_per_problem={cfg.tests_per_problem}: must be in [1, input_max + 1 = {cfg.input_max + 1}]")
        if cfg.train_size < 1 or cfg.eval_per_difficulty < 1:
            raise ValueError(f"task.train_size={cfg.train_size}, task.eval_per_difficulty={cfg.eval_per_difficulty}: must be >= 1")
        self.cfg = cfg

    def _problem(self, drawn: tuple[str, str, list[str], int | None], n_ops: int, seed: int, split: str) -> Problem:
        prompt, solution, expr, modulus = drawn
        hi = self.cfg.input_max
        inputs = generate_inputs([lambda r: f"{r.randint(0, hi)}\n"], self.cfg.tests_per_problem,
                                 derive_seed(seed, "synth_code-tests", prompt), max_attempts=50)
        tests = []
        for text in inputs:
            value = evaluate(expr, int(text))
            tests.append({"input": text, "output": f"{value % modulus if modulus else value}\n"})
        return Problem(uid=prompt, prompt=prompt, answer=solution, difficulty=n_ops, solutions=(solution,),
                       meta={"tests": tests, "split": split})

    def _split(self, seed: int, split: str) -> list[Problem]:
        levels = range(self.cfg.min_ops, self.cfg.max_ops + 1)
        rng = random.Random(f"synth_code-{seed}-eval")
        evals: dict[str, Problem] = {}
        for d in levels:  # small levels have few distinct problems: stop after 20x tries
            n = tries = 0
            while n < self.cfg.eval_per_difficulty and tries < 20 * self.cfg.eval_per_difficulty:
                tries += 1
                drawn = make_problem(rng, d, self.cfg.ops, self.cfg.mod_prob)
                if drawn[0] not in evals:
                    evals[drawn[0]] = self._problem(drawn, d, seed, "eval")
                    n += 1
        if split == "eval":
            return list(evals.values())
        rng = random.Random(f"synth_code-{seed}-train")
        per = max(1, self.cfg.train_size // len(levels))
        train: dict[str, Problem] = {}
        for d in levels:
            n = tries = 0
            while n < per and tries < 20 * per:
                tries += 1
                drawn = make_problem(rng, d, self.cfg.ops, self.cfg.mod_prob)
                if drawn[0] not in evals and drawn[0] not in train:
                    train[drawn[0]] = self._problem(drawn, d, seed, "train")
                    n += 1
        if not train:
            raise ValueError(f"task synth_code: no training problem left after holding out the eval split; "
                             f"lower task.eval_per_difficulty ({self.cfg.eval_per_difficulty}) or raise task.max_ops")
        return list(train.values())

    @hookimpl
    def rz_load_problems(self, ctx, split):
        if split not in ("train", "eval"):
            raise ValueError(f"task synth_code: unknown split {split!r}; allowed: train, eval")
        return self._split(ctx.data_seed, split)
