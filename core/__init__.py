"""reasonzoo: a plugin-based zoo of reinforcement-learning algorithms for reasoning LMs.

Public API for plugin authors::

    from reasonzoo import hookimpl, plugin
    from reasonzoo.types import Problem, Rollout, RolloutGroup, RewardResult, TrainBatch, LossOutput
"""
__version__ = "0.1.0"

from .registry import hookimpl, plugin  # noqa: E402

__all__ = ["hookimpl", "plugin", "__version__"]
