"""Helpers for testing loss, length-penalty and sampler plugins on hand-made batches (used by the
project's own tests; third-party plugin packages may use them too).

    from reasonzoo.testing import scored_group
    from reasonzoo.trainer import collate

    batch = collate([scored_group(policy, [1, 0], ["1+2=3;#3", "#7"])], policy.pad_token_id)
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from .types import FinishReason, Problem, RewardResult, Rollout, RolloutGroup, Segment


def scored_group(policy, rewards: Sequence[float], texts: Sequence[str], uid: str = "p",
                 correct: Optional[Sequence[bool]] = None, length_rewards: Optional[Sequence[float]] = None,
                 prompt: str = "1+2=", answer: str = "3", version: int = 0,
                 versions: Optional[Sequence[Union[int, Sequence[int]]]] = None,
                 logprobs: Optional[Sequence[Union[float, Sequence[float]]]] = None) -> RolloutGroup:
    """A scored :class:`RolloutGroup` of one problem: one finished (``STOP``) rollout per text,
    encoded by ``policy`` (response tokens end with EOS); reward scores ``rewards``, ``correct``
    (default: score > 0) and length rewards (default 0).

    Which policy sampled what (for losses' treatment of samples from an older policy): by default
    every response is one segment at policy ``version`` with behaviour log-probs 0.
    ``versions``: per text, an int (one segment at that version) or one version per response
    token (EOS included; consecutive equal versions form one :class:`Segment`). ``logprobs``: per
    text, a float for every token or one behaviour log-prob per response token.

    :raises ValueError: ``rewards`` and ``texts`` (or ``correct`` / ``length_rewards`` /
        ``versions`` / ``logprobs``) differ in length, or a per-token list is not as long as its
        response.
    """
    n = len(texts)
    if len(rewards) != n or (correct is not None and len(correct) != n) or (length_rewards is not None and len(length_rewards) != n):
        raise ValueError(f"scored_group: {n} texts but {len(rewards)} rewards"
                         f"{'' if correct is None else f', {len(correct)} correct flags'}"
                         f"{'' if length_rewards is None else f', {len(length_rewards)} length rewards'}")
    for name, per_text in (("versions", versions), ("logprobs", logprobs)):
        if per_text is not None and len(per_text) != n:
            raise ValueError(f"scored_group: {n} texts but {len(per_text)} {name}")
    p = Problem(uid=uid, prompt=prompt, answer=answer)
    prompt_ids = policy.encode_prompt(p.prompt)
    rolls = []
    for i, t in enumerate(texts):
        ids = policy.encode_response(t)
        v = version if versions is None else versions[i]
        tok_versions = [int(v)] * len(ids) if isinstance(v, int) else [int(x) for x in v]
        lp = 0.0 if logprobs is None else logprobs[i]
        tok_logprobs = [float(lp)] * len(ids) if isinstance(lp, (int, float)) else [float(x) for x in lp]
        for name, vals in (("versions", tok_versions), ("logprobs", tok_logprobs)):
            if len(vals) != len(ids):
                raise ValueError(f"scored_group: text {i} ({t!r}) has {len(ids)} response tokens but {len(vals)} {name}")
        segs, start = [], 0
        for j in range(1, len(ids) + 1):
            if j == len(ids) or tok_versions[j] != tok_versions[start]:
                segs.append(Segment(start, j, tok_versions[start]))
                start = j
        rolls.append(Rollout(p, prompt_ids, ids, tuple(tok_logprobs), FinishReason.STOP, tuple(segs), t))
    correct = [bool(x) for x in rewards] if correct is None else list(correct)
    res = tuple(RewardResult(float(x), bool(c)) for x, c in zip(rewards, correct))
    return RolloutGroup(p, tuple(rolls), res, tuple(length_rewards or (0.0,) * n))


#: Metrics two runs of the same seed must share exactly when only their placement differs (same
#: rollouts), and those that may differ by the float order of a summed gradient (see
#: :func:`assert_same_run`).
SAME_RUN_EXACT = ("reward/accuracy", "reward/mean", "response/mean_length", "response/tokens", "eval/accuracy",
                  "policy_version")
SAME_RUN_CLOSE = ("loss/total", "train/grad_norm", "loss/k15")


def uneven_groups(policy) -> list[RolloutGroup]:
    """Three scored groups of unequal sizes and lengths (7 rows: not a multiple of 2 or 3
    micro-batches), for tests of how an update splits a batch (data-parallel ranks, micro-batches):
    ``collate(uneven_groups(policy), policy.pad_token_id)``."""
    return [
        scored_group(policy, [1, 0, 0, 1], ["3#3", "#4", "1+2=3;3+4=7;7*2=4;#4", "12;#3"], "p"),
        scored_group(policy, [1, 0], ["1+2=3;#3", "#7"], "q"),
        scored_group(policy, [0, 1], ["1+2=3;3*3=9;9+9=8;8-1=7;#7", "#3"], "r"),
    ]


def assert_same_run(a: Sequence[dict], b: Sequence[dict], tol: float = 1e-4) -> None:
    """Assert that two runs' metrics records (``metrics.jsonl`` as dicts) are the same run: the
    same iterations, :data:`SAME_RUN_EXACT` equal, :data:`SAME_RUN_CLOSE` within ``tol``
    (absolute). For a run against the same run placed elsewhere (several trainer ranks, engine
    actors): the ranks sum gradients in another order, ~1e-7 apart in the weights.

    :raises AssertionError: naming the iteration and the key that differ.
    """
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
    for ra, rb in zip(a, b):
        for k in SAME_RUN_EXACT:
            assert ra.get(k) == rb.get(k), (ra["iteration"], k, ra.get(k), rb.get(k))
        for k in SAME_RUN_CLOSE:
            if k in ra:
                assert abs(rb[k] - ra[k]) <= tol, (ra["iteration"], k, ra[k], rb[k])


def entry_point_package(site, module: str, source: str, entry_name: str, version: str = "0.1"):
    """Write a minimal installed distribution into folder ``site``: package ``module`` holding
    ``source`` (its ``__init__.py``) and a dist-info whose ``reasonzoo`` entry point ``entry_name``
    names it, as ``pip install --target site`` would leave it. With ``site`` on ``sys.path`` (and a
    worker's ``PYTHONPATH``) the registry finds its plugins. Returns ``site``."""
    import textwrap
    from pathlib import Path

    site = Path(site)
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[reasonzoo]\n{entry_name} = {module}\n")
    return site


def on_gloo_ranks(world: int, target, folder, *args, strategy: str = "ddp") -> list:
    """Run ``target(dp, *args)`` on ``world`` forked gloo ranks (a file rendezvous in ``folder``),
    ``dp`` each rank's :class:`reasonzoo.distributed.DataParallel` (``strategy`` ``ddp`` or
    ``fsdp2``); returns the ranks' results in rank order (saved with ``torch.save`` in ``folder``).
    For tests of data-parallel code; a rank's traceback fails the caller's assertion.

    :raises AssertionError: a rank raised (its traceback in the message).
    """
    import multiprocessing
    import traceback
    from pathlib import Path

    import torch

    from .distributed import DataParallel

    folder = Path(folder)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def rank_main(rank):
        try:
            torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
            try:
                torch.save(target(DataParallel(rank, world, strategy=strategy), *args), folder / f"rank{rank}.pt")
                queue.put((rank, None))
            finally:
                torch.distributed.destroy_process_group()
        except BaseException:  # noqa: BLE001 - reported to the parent
            queue.put((rank, traceback.format_exc()))

    procs = [ctx.Process(target=rank_main, args=(r,)) for r in range(world)]
    for p in procs:
        p.start()
    for _ in procs:
        rank, err = queue.get(timeout=300)
        assert err is None, f"rank {rank}:\n{err}"
    for p in procs:
        p.join(timeout=60)
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)]
