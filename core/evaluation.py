"""Evaluation of a policy on held-out problems: one module for training-time evaluation and for
``reasonzoo eval``.

For every problem the engine draws ``n`` responses (``temperature`` 0 = greedy, one response);
the run's reward plugin judges them (``RewardResult.correct``). Per problem with ``c`` of ``n``
correct, and then averaged over problems (overall and per difficulty):

- ``pass@k`` for each ``k <= n``: the unbiased estimator of Chen et al. 2021, "Evaluating Large
  Language Models Trained on Code" (arXiv 2107.03374), §2.1, eq. (1):
  ``pass@k = 1 - C(n - c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``
  (the paper's numerically stable form). ``pass@1 = c / n``.
- ``mean@n``: the share of correct responses, ``c / n`` (= pass@1).
- ``maj@n``: majority voting ("self-consistency", Wang et al. 2022, arXiv 2203.11171): the answer
  given most often among the ``n`` responses, read from ``RewardResult.info["extracted"]`` (every
  reward plugin fills it with a canonical string of the extracted answer); ties go to the answer
  seen first; responses with no extracted answer do not vote. The problem counts as solved when
  a response carrying that answer is correct.
- ``mean_length``: mean response length in tokens over all responses; ``truncated``: the share
  of responses cut at ``max_new_tokens`` (``FinishReason.LENGTH``).

The eval-time decoder is the engine's sampling; a search-based decoder (best-of-N with a
verifier, MCTS) plugs in as ``generate`` in :func:`evaluate`, which receives the problems and
returns one :class:`RolloutGroup` of ``n`` rollouts per problem.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from .types import FinishReason, GenerationRequest, Problem, RewardResult, RolloutGroup, SamplingParams


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` correct of ``n`` samples (Chen et al. 2021,
    eq. 1): the probability that at least one of ``k`` samples drawn without replacement from the
    ``n`` is correct. Raises ``ValueError`` unless ``0 <= c <= n`` and ``1 <= k <= n``."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """maj@n of one problem: whether the most frequent non-``None`` answer (ties: first seen) is
    judged correct (by any response that gave it)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return any(ok for a, ok in zip(answers, correct) if a == winner)


@dataclass(frozen=True)
class ProblemResult:
    """The ``n`` judged responses to one problem.

    :ivar uid: problem id. :ivar difficulty: its label (``None`` when unknown).
    :ivar correct: per response, judged correct. :ivar lengths: per response, tokens.
    :ivar truncated: per response, cut at the length limit.
    :ivar answers: per response, ``info["extracted"]`` of the reward (``None``: no answer).
    :ivar texts: per response, the decoded text.
    """

    uid: str
    difficulty: int | None
    correct: tuple[bool, ...]
    lengths: tuple[int, ...]
    truncated: tuple[bool, ...]
    answers: tuple[str | None, ...]
    texts: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return len(self.correct)


def aggregate(results: Sequence[ProblemResult], ks: Iterable[int] = (1,)) -> dict[str, float]:
    """Mean over problems of ``pass@k`` (each ``k <= n``; every problem must have the same ``n``),
    ``mean@n``, ``maj@n``; mean response length over responses and the truncated share.
    Keys: ``pass@<k>``, ``mean@<n>``, ``maj@<n>``, ``mean_length``, ``truncated``, ``problems``."""
    if not results:
        raise ValueError("no problems to aggregate")
    ns = {r.n for r in results}
    if len(ns) != 1:
        raise ValueError(f"problems have different sample counts {sorted(ns)}")
    n = ns.pop()
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        if k <= n:
            out[f"pass@{k}"] = sum(pass_at_k(n, sum(r.correct), k) for r in results) / len(results)
    out[f"mean@{n}"] = sum(sum(r.correct) / n for r in results) / len(results)
    out[f"maj@{n}"] = sum(majority_correct(r.answers, r.correct) for r in results) / len(results)
    out["mean_length"] = sum(sum(r.lengths) for r in results) / (n * len(results))
    out["truncated"] = sum(sum(r.truncated) for r in results) / (n * len(results))
    out["problems"] = float(len(results))
    return out


def by_difficulty(results: Sequence[ProblemResult]) -> dict[Any, list[ProblemResult]]:
    """Results grouped by difficulty, sorted (``None`` last)."""
    groups: dict[Any, list[ProblemResult]] = defaultdict(list)
    for r in results:
        groups[r.difficulty].append(r)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] if kv[0] is not None else 0)))


def eval_split(problems: Sequence[Problem], per_difficulty: int) -> list[Problem]:
    """The first ``per_difficulty`` problems of each difficulty level, in their order."""
    seen: dict[Any, int] = defaultdict(int)
    out = []
    for p in problems:
        if seen[p.difficulty] < per_difficulty:
            seen[p.difficulty] += 1
            out.append(p)
    return out


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate.

    :ivar n: responses per problem (1 when ``temperature == 0``: greedy decoding is deterministic).
    :ivar temperature: 0 = greedy. :ivar top_p: nucleus threshold.
    :ivar max_new_tokens: response length limit in tokens.
    :ivar batch_size: problems generated per engine call (each with its ``n`` responses).
    :ivar ks: the ``k`` of pass@k to report (those ``<= n``).
    :ivar stream: name of the random stream (``ctx.generator``) the engine samples from.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    batch_size: int = 256
    ks: tuple[int, ...] = (1,)
    stream: str = "eval"
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.n < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError(f"evaluation needs n >= 1, batch_size >= 1, max_new_tokens >= 1: {self}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"evaluation needs temperature >= 0 and 0 < top_p <= 1: {self}")
        if self.temperature == 0 and self.n != 1:
            object.__setattr__(self, "n", 1)


def sample_groups(ctx, problems: Sequence[Problem], settings: EvalSettings) -> list[RolloutGroup]:
    """``settings.n`` engine samples per problem, as one unscored group per problem."""
    from .trainer import make_rollout

    policy, engine = ctx.policy, ctx.engine
    params = SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                            max_new_tokens=settings.max_new_tokens, stop_strings=settings.stop_strings)
    gen = ctx.generator(settings.stream)
    groups: list[RolloutGroup] = []
    was_training = policy.model.training
    policy.model.eval()
    for start in range(0, len(problems), settings.batch_size):
        chunk = problems[start : start + settings.batch_size]
        prompts = [policy.encode_prompt(p.prompt) for p in chunk]
        reqs = [GenerationRequest(ids) for ids in prompts for _ in range(settings.n)]
        outs = engine.generate(reqs, params, gen)
        for i, (p, ids) in enumerate(zip(chunk, prompts)):
            mine = outs[i * settings.n : (i + 1) * settings.n]
            groups.append(RolloutGroup(p, tuple(make_rollout(ctx, p, ids, o) for o in mine)))
    policy.model.train(was_training)
    return groups


def evaluate(ctx, problems: Sequence[Problem], settings: EvalSettings,
             generate: Callable[[Any, Sequence[Problem], EvalSettings], list[RolloutGroup]] | None = None
             ) -> list[ProblemResult]:
    """Generate ``settings.n`` responses per problem (with ``generate``, default
    :func:`sample_groups`), judge them with the run's rewards (``ctx.reward``: ``rz_reward``), and return one
    :class:`ProblemResult` per problem, in order."""
    groups = (generate or sample_groups)(ctx, problems, settings)
    rewards = ctx.reward(groups)  # the placement's reward workers when it has them
    out = []
    for g, rw in zip(groups, rewards):
        out.append(ProblemResult(
            uid=g.problem.uid, difficulty=g.problem.difficulty,
            correct=tuple(bool(x.correct) for x in rw),
            lengths=tuple(r.length for r in g.rollouts),
            truncated=tuple(r.finish_reason is FinishReason.LENGTH for r in g.rollouts),
            answers=tuple(_answer(x) for x in rw),
            texts=tuple(r.text for r in g.rollouts),
        ))
    return out


def _answer(rw: RewardResult) -> str | None:
    a = rw.info.get("extracted") if rw.info else None
    return None if a is None else str(a)


def training_metrics(results: Sequence[ProblemResult]) -> dict[str, float]:
    """The metrics the training loop logs: ``eval/accuracy`` (mean@n, = pass@1),
    ``eval/mean_length``, ``eval/truncated``, and per difficulty ``eval/accuracy/d<d>`` and
    ``eval/mean_length/d<d>``."""
    def row(rs):
        a = aggregate(rs)
        return a[f"mean@{rs[0].n}"], a["mean_length"], a["truncated"]

    acc, length, trunc = row(results)
    out = {"eval/accuracy": acc, "eval/mean_length": length, "eval/truncated": trunc}
    for d, rs in by_difficulty(results).items():
        a, n, _ = row(rs)
        out[f"eval/accuracy/d{d}"] = a
        out[f"eval/mean_length/d{d}"] = n
    return out


def report(results: Sequence[ProblemResult], ks: Iterable[int]) -> dict[str, Any]:
    """``{"all": aggregate, "by_difficulty": {d: aggregate}}`` for the JSON file and table."""
    ks = tuple(ks)
    return {"all": aggregate(results, ks),
            "by_difficulty": {str(d): aggregate(rs, ks) for d, rs in by_difficulty(results).items()}}


def markdown_table(rep: Mapping[str, Any], title: str = "") -> str:
    """One markdown table: a row per difficulty and one for all problems; a column per metric."""
    allm = rep["all"]
    cols = [k for k in allm if k != "problems"]
    head = "| difficulty | problems | " + " | ".join(cols) + " |"
    lines = ([f"**{title}**", ""] if title else []) + [head, "|" + "---:|" * (len(cols) + 2)]

    def cell(k, v):
        return f"{v:.1f}" if k == "mean_length" else f"{v:.3f}"

    for name, m in [*rep["by_difficulty"].items(), ("all", allm)]:
        lines.append(f"| {name} | {int(m['problems'])} | " + " | ".join(cell(k, m[k]) for k in cols) + " |")
    return "\n".join(lines)
