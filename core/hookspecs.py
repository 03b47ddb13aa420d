"""Hook specifications: the hook points of reasonzoo, in the order the training loop calls them.

Every hook is called with keyword arguments; an implementation may accept any subset of the
arguments listed here (pluggy passes only the ones it names).

Two kinds of hook:

* **exclusive** (``firstresult=True``): exactly one active plugin decides. The core refuses a run
  in which two registered plugins implement the same exclusive hook, and names them.
* **additive**: every implementation is called; the rule that combines the results is stated in
  the hook's docstring.

The ``ctx`` argument is the run's :class:`reasonzoo.context.RunContext`: the composed config,
the hook relay, the run directory, the iteration counter, the policy version, the policy, the
engine and the optimizer, and per-iteration random streams.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("reasonzoo")

# -----------------------------------------------------------------------------------------------
# Set-up: task, policy, engine, run start, resume or warm-up
# -----------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def rz_load_problems(ctx, split):
    """Load the problems of one split of the task.

    Called once per split at run start (``"train"`` for the sampler's pool and the warm-up,
    ``"eval"`` for held-out evaluation). Group ``task``.

    :param ctx: the run context (``ctx.data_seed`` seeds synthetic generators and the held-out split).
    :param str split: ``"train"`` or ``"eval"``.
    :returns: ``list[Problem]``, non-empty, uids unique within the split.

    Exclusive: stops at first non-None result.
    """


@hookspec(firstresult=True)
def rz_build_policy(ctx):
    """Build the trainable policy: a causal LM and its tokenizer.

    Called once at run start, before the engine. Group ``model``.

    :param ctx: the run context.
    :returns: a :class:`reasonzoo.policy.Policy`.

    Exclusive: stops at first non-None result.
    """


@hookspec(firstresult=True)
def rz_place(ctx):
    """Where the run's parts execute: the rollout engine(s) and the trainer's ranks. Group ``launcher``.

    Called once, right after the policy is built (before the engine). ``launcher=local`` (the
    default) keeps everything in this process; ``launcher=ray`` places engine actors and trainer
    ranks on a Ray cluster (docs/cluster.md).

    :param ctx: the run context (``ctx.policy`` is set).
    :returns: a :class:`reasonzoo.launch.Placement`: ``engine(ctx, policy)`` builds the rollout
        engine (locally: ``rz_build_engine``), ``start_trainer(ctx)`` starts the trainer's other
        ranks and returns this process's :class:`reasonzoo.distributed.DataParallel` place (or
        ``None`` for one rank), ``metrics()`` gives per-iteration counters (restarts, retries),
        ``close()`` releases what it started; optionally ``reward(ctx, groups)`` scores groups
        (reward workers; ``ctx.reward`` calls it) and ``diagnose()`` names a dead rank or actor.
        ``None``: the local placement.

    Exclusive: stops at first non-None result.
    """


@hookspec(firstresult=True)
def rz_build_engine(ctx, policy):
    """Build the rollout engine that generates token ids from the policy.

    Called once after the policy is built, by the placement's ``engine()`` (``rz_place``; in an
    engine actor under ``launcher=ray``). The engine must implement
    :class:`reasonzoo.engine.Engine` (``generate`` and ``sync_weights``). Group ``engine``.

    :param ctx: the run context.
    :param Policy policy: the policy whose weights the engine serves.
    :returns: an :class:`reasonzoo.engine.Engine`.

    Exclusive: stops at first non-None result.
    """


@hookspec
def rz_trainable_parameters(ctx, policy):
    """Parameters a plugin trains beside the policy's (a critic's value head or value model).

    Called once, after the policy and the engine are built and before the optimizer is created,
    on fresh and resumed runs alike (resume then loads the saved optimizer state, which covers
    these groups, and the plugin restores its weights in place in ``rz_load_state``). The groups
    join the policy's in the one optimizer (``ctx.optimizer``): the core zeroes, divides
    (micro-batches) and steps them with the policy's, and clips each group's gradient norm on its
    own (``train.max_grad_norm``; logged as ``train/grad_norm/<name>``, the policy's as
    ``train/grad_norm``). A group's parameters must not be the policy's, and only a loss that
    back-propagates into them gives them a gradient.

    :param ctx: the run context (``ctx.optimizer`` is not set yet).
    :param Policy policy: the built policy (before the warm-up).
    :returns: ``list[dict]`` of torch optimizer param groups, each with ``params`` and a unique
        ``name`` (not ``"policy"``, the policy's group), optionally ``lr`` and other optimizer
        options (default: ``train.*``), or ``None``. Additive: the lists are concatenated in the
        order pluggy calls the plugins; a repeated name is an error.
    """


@hookspec
def rz_run_start(ctx):
    """The run starts (after set-up and warm-up, before the first iteration).

    Loggers open their runs here. Group ``logger`` and any plugin that needs set-up.

    :param ctx: the run context.
    :returns: ``None``. Additive: every implementation is called.
    """


@hookspec
def rz_load_state(ctx, state):
    """Restore plugin state from a checkpoint (resume).

    Called once, on resume, after ``rz_run_start``. ``state`` maps plugin keys to what each
    plugin returned from ``rz_checkpoint_state``; each plugin reads its own key.

    :param ctx: the run context.
    :param dict state: ``{plugin_key: plugin_state}``.
    :returns: ``None``. Additive: every implementation is called.
    """


@hookspec(firstresult=True)
def rz_warmup(ctx, policy, problems):
    """Supervised warm-up of the policy before RL (the paper's long-CoT SFT stage, §2.2).

    Called once after ``rz_run_start``, only on a fresh run (never on resume). Trains
    ``policy.model`` in place or loads a cached result. Group ``warmup``.

    :param ctx: the run context.
    :param Policy policy: the policy to warm up.
    :param list[Problem] problems: the training split.
    :returns: a dict of metrics (``warmup/*``) or ``None`` when no warm-up is done.

    Exclusive: stops at first non-None result.
    """


# -----------------------------------------------------------------------------------------------
# One iteration
# -----------------------------------------------------------------------------------------------


@hookspec
def rz_iteration_start(ctx):
    """An iteration begins; ``ctx.iteration`` and ``ctx.policy_version`` are set.

    The reference policy of k1.5 is the iterate at this moment; loss plugins that reset the
    optimizer each iteration (k1.5) do it here.

    :param ctx: the run context.
    :returns: ``None``. Additive: every implementation is called.
    """


@hookspec(firstresult=True)
def rz_sample_problems(ctx, problems, n):
    """Choose the problems of this iteration. Group ``sampler``.

    :param ctx: the run context (``ctx.rng("sampler")`` is this iteration's random stream).
    :param list[Problem] problems: the training pool.
    :param int n: how many problems to return.
    :returns: ``list[Problem]`` of length ``n``.

    Exclusive: stops at first non-None result.
    """


@hookspec(firstresult=True)
def rz_rollout(ctx, problems, engine, samples_per_problem, sampling):
    """Produce this iteration's rollout groups. Group ``rollout``.

    A scheduler may return groups for problems it started in earlier iterations (partial
    rollouts) and may hold back unfinished responses; each rollout's ``segments`` record the
    policy version that produced each part. A scheduler may also drive the policy step by step
    (MCTS) instead of calling ``engine.generate``, and may call ``ctx.hook.rz_reward``.

    :param ctx: the run context.
    :param list[Problem] problems: the problems the sampler chose.
    :param Engine engine: the rollout engine.
    :param int samples_per_problem: k, the group size.
    :param SamplingParams sampling: sampling settings.
    :returns: ``list[RolloutGroup]`` with ``rewards`` unset; every rollout finished. May be empty
        (a partial-rollout scheduler that finished no group): the core then skips rewards and the
        update, keeps the policy version, and still logs and checkpoints the iteration.

    Exclusive: stops at first non-None result.
    """


@hookspec(firstresult=True)
def rz_reward(ctx, groups):
    """Score every rollout. Group ``reward``.

    A failure to score one sample must be caught by the plugin, logged and scored (0, not
    correct, with the error in ``info``): it never ends the run.

    :param ctx: the run context.
    :param list[RolloutGroup] groups: unscored groups.
    :returns: ``list[list[RewardResult]]``, one list per group, one result per rollout.

    Exclusive: stops at first non-None result.
    """


@hookspec(firstresult=True)
def rz_length_penalty(ctx, groups):
    """Length reward added to each score (§2.3.3). Group ``length_penalty``.

    :param ctx: the run context (``ctx.iteration`` drives warm-up schedules).
    :param list[RolloutGroup] groups: scored groups (``rewards`` set).
    :returns: ``list[list[float]]``: the already-weighted term ``w * len_reward`` for each
        rollout; the total reward is ``score + term``.

    Exclusive: stops at first non-None result.
    """


@hookspec
def rz_prepare_update(ctx, batch):
    """Compute per-rollout tensors the loss needs, once per iteration before any update.

    Examples: the reference log-probs and group baselines of k1.5, a critic's values.
    Called with the full batch, under ``torch.no_grad()``, before the first optimizer step.

    :param ctx: the run context.
    :param TrainBatch batch: the collated batch.
    :returns: ``dict[str, Tensor]`` of tensors with leading dimension N. Additive: the dicts are
        merged into ``batch.extras``; two plugins returning the same key is an error.
    """


@hookspec(firstresult=True)
def rz_loss(ctx, batch):
    """The loss of one minibatch. Group ``loss``.

    Called ``epochs x minibatches x train.microbatches`` times per iteration; the core runs
    backward, clips the gradient norm and steps the optimizer once per minibatch. A loss that
    owns extra parameters (a critic) declares them with ``rz_trainable_parameters``; the core then
    steps them with the policy's, and its loss includes their term (PPO's value loss).

    Contract: the loss is a *mean over units* of ``batch`` (rows, or response tokens for a
    token-mean) and ``LossOutput.denominator`` says how many (``None`` = its row count; 0 with
    no unit, the loss then a zero that keeps the graph; a minibatch with none in all its parts
    takes no optimizer step). Per-group statistics such as baselines
    come from ``rz_prepare_update``, which sees the full batch. With ``train.microbatches = m > 1``
    the core cuts each minibatch into ``m`` length-sorted parts, calls this hook on each,
    back-propagates ``loss_i * d_i`` and divides the gradients by ``Σ d_i`` before clipping and
    the one optimizer step, which is then exactly the step on the mean over the whole minibatch's
    units. Its metrics are combined with weights ``d_i / Σ d_i``, except keys ending in ``max``
    (maximum) or ``min`` (minimum); every call must return the same metric keys.

    :param ctx: the run context.
    :param TrainBatch batch: a minibatch (``extras`` included).
    :returns: :class:`LossOutput`.

    Exclusive: stops at first non-None result.
    """


@hookspec
def rz_iteration_end(ctx, groups):
    """The update of this iteration is done; observe its scored groups.

    Samplers update per-problem statistics here (prioritized sampling).

    :param ctx: the run context.
    :param list[RolloutGroup] groups: this iteration's scored groups.
    :returns: ``dict[str, float]`` of metrics or ``None``. Additive: dicts are merged into the
        iteration's metrics; two plugins returning the same key is an error.
    """


@hookspec
def rz_log_metrics(ctx, metrics, step):
    """Record one iteration's metrics (already written to ``metrics.jsonl`` by the core).

    Group ``logger``.

    :param ctx: the run context.
    :param dict metrics: flat ``{name: float}``.
    :param int step: the iteration.
    :returns: ``None``. Additive: every implementation is called.
    """


@hookspec
def rz_checkpoint_state(ctx):
    """State to save with a checkpoint, so that resume continues exactly.

    Called every time a checkpoint is written.

    :param ctx: the run context.
    :returns: ``dict`` ``{plugin_key: picklable state}`` or ``None``. Additive: the dicts are
        merged; two plugins returning the same key is an error.
    """


# -----------------------------------------------------------------------------------------------
# After RL
# -----------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def rz_distill(ctx, policy):
    """Long2short distillation after RL (§2.4). Group ``distiller``.

    Called once after the last iteration. A distiller may read other runs' checkpoints
    (``reasonzoo.checkpoint.load_model_weights``), train or merge, and returns the distilled
    policy, which the core evaluates and saves under ``distilled/``.

    :param ctx: the run context.
    :param Policy policy: the trained policy.
    :returns: a :class:`Policy`, or ``None`` for no distillation.

    Exclusive: stops at first non-None result.
    """


@hookspec
def rz_run_end(ctx, summary):
    """The run is over (also called when it ends with an error, with ``summary["error"]``).

    Loggers close their runs; plugins release pools and processes.

    :param ctx: the run context.
    :param dict summary: final metrics.
    :returns: ``None``. Additive: every implementation is called.
    """
