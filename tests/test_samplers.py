"""sampler/uniform, sampler/curriculum, sampler/prioritized."""
from collections import Counter

import pytest

from reasonzoo.plugins.sampler.curriculum import Curriculum, CurriculumConfig
from reasonzoo.plugins.sampler.prioritized import Prioritized, PrioritizedConfig
from reasonzoo.plugins.sampler.uniform import Uniform
from reasonzoo.types import Problem, RewardResult, RolloutGroup

POOL = [Problem(uid=f"p{d}-{i}", prompt="", answer="", difficulty=d) for d in (1, 2, 3, 4) for i in range(10)]


def test_uniform_is_seeded_and_distinct(make_ctx):
    a = Uniform(None).rz_sample_problems(make_ctx(iteration=5), POOL, 8)
    b = Uniform(None).rz_sample_problems(make_ctx(iteration=5), POOL, 8)
    c = Uniform(None).rz_sample_problems(make_ctx(iteration=6), POOL, 8)
    assert a == b and a != c and len({p.uid for p in a}) == 8
    with pytest.raises(ValueError, match="prompts_per_iteration=41"):
        Uniform(None).rz_sample_problems(make_ctx(), POOL, 41)


def test_curriculum_mixed_then_hard(make_ctx):
    cur = Curriculum(CurriculumConfig(schedule="mixed_then_hard", switch_iteration=24, hard_min_difficulty=3))
    early = [p.difficulty for it in range(1, 25) for p in cur.rz_sample_problems(make_ctx(iteration=it), POOL, 8)]
    assert set(early) == {1, 2, 3, 4}
    late = [p.difficulty for it in range(25, 40) for p in cur.rz_sample_problems(make_ctx(iteration=it), POOL, 8)]
    assert set(late) == {3, 4}


def test_curriculum_linear_grows(make_ctx):
    cur = Curriculum(CurriculumConfig(schedule="linear", ramp_iterations=10))
    assert {p.difficulty for p in cur.eligible(POOL, 0)} == {1}
    assert {p.difficulty for p in cur.eligible(POOL, 5)} == {1, 2}  # top = 1 + 3 * 0.5 = 2.5
    assert {p.difficulty for p in cur.eligible(POOL, 10)} == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="sampler.schedule='sideways'"):
        Curriculum(CurriculumConfig(schedule="sideways"))


def _scored(problem, correct):
    return RolloutGroup(problem, (), tuple(RewardResult(float(c), c) for c in correct))


def test_prioritized_weights_follow_success_rate(make_ctx):
    s = Prioritized(PrioritizedConfig())
    a, b, c = POOL[0], POOL[1], POOL[2]
    metrics = s.rz_iteration_end(make_ctx(), [_scored(a, [1, 1, 1, 1]), _scored(b, [1, 0, 0, 0])])
    assert s.success_rate(a.uid) == 1.0 and s.success_rate(b.uid) == 0.25 and s.success_rate(c.uid) == 0.0
    assert s.weights([a, b, c]) == [0.0, 0.75, 1.0]
    assert metrics["sampler/seen_problems"] == 2.0
    # a solved problem (weight 0) is never drawn while others remain; draws ∝ 1 - s
    counts = Counter(p.uid for it in range(400) for p in s.rz_sample_problems(make_ctx(iteration=it), [a, b, c], 1))
    assert counts[a.uid] == 0
    assert 0.6 < counts[b.uid] / counts[c.uid] < 0.9  # expected 0.75


def test_prioritized_state_roundtrip(make_ctx):
    s = Prioritized(PrioritizedConfig(min_weight=0.1))
    s.rz_iteration_end(make_ctx(), [_scored(POOL[0], [1, 1])])
    t = Prioritized(PrioritizedConfig(min_weight=0.1))
    t.rz_load_state(make_ctx(), s.rz_checkpoint_state(make_ctx()))
    assert t.weights(POOL[:2]) == [0.1, 1.0]
    with pytest.raises(KeyError, match="sampler/prioritized"):
        t.rz_load_state(make_ctx(), {})
