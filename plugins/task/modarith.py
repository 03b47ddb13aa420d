"""Modular chain arithmetic: a synthetic verifiable task where a chain of thought helps and harder
instances need longer chains.

A problem is a chain of one-digit terms combined left to right with ``+ - *`` modulo ``modulus``;
the difficulty is the number of operations. The prompt labels each step (``3a+4b*2c-2=``); the
policy either answers at once (``#4``) or works step by step (``a3+4=2;b2*2=4;c4-2=2;#2``, mod 5):
one step is 7 tokens, so the worked solution of a d-step problem is 7d + 2 tokens (+ EOS).

Two choices make the task learnable by the tiny default model in a ~5-minute warm-up:
- the labels make each step's operands content-addressable: without them the model must locate
  the i-th operator by position in prompts of varying length, which it had not learned after
  minutes of SFT (the operator copy stayed at ~1.1 nats);
- modulus 5 by default: a 75-entry (a, op, b) table, learned to near-zero loss in 1200 SFT steps,
  where the 300-entry mod-10 table was still at ~1.3 nats per result after 800.
Worked solutions are then near-perfect while direct answers of multi-step chains stay near
chance, so RL that rewards correctness should learn to think, and to think longer on harder
problems (k1.5 Figure 5, in miniature).

Train and eval splits are generated from ``data_seed`` and are disjoint (no eval prompt in train).

Tempting wrong shortcut (``shortcut_steps: K``, off by default; docs/negative_gradients.md): each
problem gets a third reference solution that works the first K steps as the worked solution does
and then answers the accumulator reached (``a3+4=2;b2*2=4;#4`` for K = 2), i.e. reasoning cut
short. It is right whenever the chain has at most K steps (it is then the worked solution) and on
longer chains only when the remaining steps happen to leave the accumulator unchanged; it is
shorter than the worked solution, so k1.5's length reward favours it when it is right. A warm-up
mix that prefers it (``warmup.mix: [w_worked, w_direct, w_shortcut]``) gives a policy that stops
thinking too early, the start on which the k1.5 paper's negative-gradient ablation (§3.5,
Figure 10: k1.5 vs ReST) can show. With K = 0 the problems, and every seeded result, are exactly
those of the task without the option.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from reasonzoo import hookimpl, plugin
from reasonzoo.ranges import ranged
from reasonzoo.types import Problem

OPS = {"+": lambda a, b, m: (a + b) % m, "-": lambda a, b, m: (a - b) % m, "*": lambda a, b, m: (a * b) % m}


@dataclass
class ModArithConfig:
    min_steps: int = 2  #: easiest difficulty (operations per problem)
    max_steps: int = 8  #: hardest difficulty (at most 26: one label letter per step)
    ops: str = "+-*"  #: operators to draw from
    modulus: int = 5  #: results are reduced modulo this (at most 10: one digit)
    train_size: int = 20000  #: problems in the training pool (equal share per difficulty)
    eval_per_difficulty: int = 500  #: held-out problems per difficulty
    shortcut_steps: int = ranged(0, ge=0)  #: K > 0 adds solution 2: the first K steps worked, then answer (wrong shortcut); 0 = off


LABELS = "abcdefghijklmnopqrstuvwxyz"


def render(terms: list[int], ops: list[str]) -> str:
    """The prompt: each operator is preceded by its step label, ``3a+4b*2c-7=``."""
    return f"{terms[0]}" + "".join(f"{LABELS[i]}{op}{t}" for i, (op, t) in enumerate(zip(ops, terms[1:]))) + "="


def solve(terms: list[int], ops: list[str], modulus: int) -> tuple[int, str]:
    """The answer and the worked solution: ``<label><acc><op><term>=<new acc>;`` per step, then
    ``#answer``."""
    acc, steps = terms[0], []
    for i, (op, t) in enumerate(zip(ops, terms[1:])):
        new = OPS[op](acc, t, modulus)
        steps.append(f"{LABELS[i]}{acc}{op}{t}={new};")
        acc = new
    return acc, "".join(steps) + f"#{acc}"


def shortcut(terms: list[int], ops: list[str], modulus: int, steps: int) -> tuple[int, str]:
    """Reasoning cut short: the worked solution of the first ``steps`` operations only, answered
    with the accumulator reached (``solve`` of the chain's prefix). ``steps >= len(ops)`` gives
    the full worked solution. Returns ``(answer, response)``."""
    return solve(terms[: steps + 1], ops[:steps], modulus)


@plugin("task", "modarith", ModArithConfig)
class ModArith:
    """Modular chain arithmetic with a difficulty knob (number of steps)."""

    problem_fields_provided = ("answer", "solutions")  #: read by config validation (reward needs)

    def __init__(self, cfg: ModArithConfig):
        if not 1 <= cfg.min_steps <= cfg.max_steps <= len(LABELS):
            raise ValueError(f"task.min_steps={cfg.min_steps}, task.max_steps={cfg.max_steps}: need 1 <= min <= max <= {len(LABELS)}")
        if not 2 <= cfg.modulus <= 10:
            raise ValueError(f"task.modulus={cfg.modulus}: must be in 2..10 (one-digit results)")
        bad = set(cfg.ops) - set(OPS)
        if bad or not cfg.ops:
            raise ValueError(f"task.ops={cfg.ops!r}: allowed characters are {''.join(OPS)}")
        if cfg.shortcut_steps >= cfg.max_steps:
            raise ValueError(f"task.shortcut_steps={cfg.shortcut_steps}: must be in 0..{cfg.max_steps - 1} "
                             f"(0 = off; >= task.max_steps={cfg.max_steps} would never be wrong)")
        self.cfg = cfg

    def _problem(self, rng: random.Random, steps: int, split: str, i: int) -> Problem:
        terms = [rng.randrange(self.cfg.modulus) for _ in range(steps + 1)]
        ops = [rng.choice(self.cfg.ops) for _ in range(steps)]
        answer, worked = solve(terms, ops, self.cfg.modulus)
        prompt = render(terms, ops)
        solutions = (worked, f"#{answer}")
        if self.cfg.shortcut_steps:  # computed from the drawn terms: the rng stream is the same as without it
            solutions += (shortcut(terms, ops, self.cfg.modulus, self.cfg.shortcut_steps)[1],)
        return Problem(uid=prompt, prompt=prompt, answer=str(answer), difficulty=steps,
                       solutions=solutions, meta={"split": split})

    def _split(self, seed: int, split: str) -> list[Problem]:
        levels = range(self.cfg.min_steps, self.cfg.max_steps + 1)
        rng = random.Random(f"modarith-{seed}-eval")
        evals: dict[str, Problem] = {}
        for d in levels:
            n = 0
            while n < self.cfg.eval_per_difficulty:
                p = self._problem(rng, d, "eval", n)
                if p.uid not in evals:
                    evals[p.uid] = p
                    n += 1
        if split == "eval":
            return list(evals.values())
        rng = random.Random(f"modarith-{seed}-train")
        per = max(1, self.cfg.train_size // len(levels))
        train: dict[str, Problem] = {}
        for d in levels:
            n, tries = 0, 0
            while n < per and tries < 20 * per:
                tries += 1
                p = self._problem(rng, d, "train", n)
                if p.uid not in evals and p.uid not in train:
                    train[p.uid] = p
                    n += 1
        return list(train.values())

    @hookimpl
    def rz_load_problems(self, ctx, split):
        if split not in ("train", "eval"):
            raise ValueError(f"task modarith: unknown split {split!r}; allowed: train, eval")
        return self._split(ctx.data_seed, split)
