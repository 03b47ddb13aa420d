"""The paper's ablations as sweep configs (``conf/sweep/*.yaml``, ``reasonzoo-train -m sweep=<name>``):
each enumerates its arms over at least three RL seeds, every job is a valid config, the sweep's
``hydra.sweeper.params`` are seen by the pre-flight validation as Hydra's sweeper runs them (the
command line winning), and a smoke version of every sweep runs end to end (tiny settings, one
seed, jobs in this process) and reads as its arms in ``reasonzoo report``."""
import sys
from importlib.resources import files

import pytest
from omegaconf import OmegaConf

from reasonzoo.ablation_report import load_tables
from reasonzoo.train import _compose_checked, _sweep_jobs

SWEEPS = sorted(p.name[:-5] for p in files("reasonzoo.conf").joinpath("sweep").iterdir() if p.name.endswith(".yaml"))
#: what each sweep compares (the paper's ablations, issue #10)
EXPECTED_ARMS = {
    "negative_gradients": {"recipe": ["k15", "rest"]},
    "sampling": {"sampler": ["uniform", "curriculum", "prioritized"]},
    "length_penalty": {"length_penalty": ["none", "k15"]},
    "losses": {"recipe": ["k15", "reinforce", "rloo", "grpo", "dr_grpo", "dapo", "ppo"]},
    "cot_length": {"recipe": ["k15"]},
    "model_size": {"model.tiny.hidden_size": ["48", "64", "96"]},
}


def test_every_paper_ablation_has_a_sweep():
    assert set(SWEEPS) == set(EXPECTED_ARMS)


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_enumerates_arms_over_three_seeds_and_every_job_is_valid(name):
    jobs = _sweep_jobs([f"sweep={name}"])
    seeds = {o.split("=", 1)[1] for j in jobs for o in j if o.startswith("seed=")}
    assert len(seeds) >= 3
    for key, values in EXPECTED_ARMS[name].items():
        assert sorted({o.split("=", 1)[1] for j in jobs for o in j if o.startswith(key + "=")}) == sorted(values)
    assert len(jobs) == len(seeds) * len(next(iter(EXPECTED_ARMS[name].values())))
    for job in jobs:
        cfg = _compose_checked(job)
        assert cfg.logger.name == "none" and cfg.progress is False
    hydra = _compose_hydra(name)
    assert hydra.launcher._target_.endswith("JoblibLauncher") and hydra.launcher.n_jobs == 2
    assert f"multirun/{name}/" in hydra.sweep.dir


def _compose_hydra(name):
    from reasonzoo.train import compose

    return compose([f"sweep={name}"], hydra_config=True).hydra


def test_command_line_wins_over_the_sweep_params():
    jobs = _sweep_jobs(["sweep=sampling", "seed=7"])
    assert jobs == [["sweep=sampling", "seed=7", f"sampler={s}"] for s in ("uniform", "curriculum", "prioritized")]
    assert len(_sweep_jobs(["sweep=sampling", "sampler=uniform,prioritized"])) == 2 * 3


def test_a_bad_sweep_job_is_refused_before_anything_runs(tmp_path, cli):
    proc = cli(["-m", "sweep=sampling", "seed=0", "train.lr=-1", f"hydra.sweep.dir={tmp_path}/s"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "train.lr" in out and not (tmp_path / "s").exists()


#: per sweep, what its smoke version changes beyond the tiny settings
SMOKE = {"negative_gradients": ["task.max_steps=4"],
         "losses": ["budget.generated_tokens=200", "iterations=20", "prompts_per_iteration=16"]}  # dapo keeps 16 groups


@pytest.mark.parametrize("name", SWEEPS)
def test_smoke_sweep_runs_and_reads_as_its_arms(name, tmp_path, monkeypatch, tiny_overrides):
    from reasonzoo import train as train_mod

    sweep = tmp_path / name
    args = ["-m", f"sweep={name}", "seed=0", "hydra.launcher.n_jobs=1",  # joblib with one job runs them in this process
            *tiny_overrides, *SMOKE.get(name, []),
            f"hydra.sweep.dir={sweep}"]
    monkeypatch.setattr(sys, "argv", ["reasonzoo-train", *args])
    monkeypatch.setattr(train_mod, "_created_dir", None)
    train_mod.main()  # a failing job exits (SystemExit) with its one-line error
    [table] = load_tables([sweep])
    [(key, values)] = EXPECTED_ARMS[name].items()
    assert len(table.arms) == len(values)
    for runs in table.arms.values():
        [run] = runs
        assert run.summary["final_eval"]["eval/accuracy"] >= 0
        assert run.records[-1]["tokens/generated"] > 0
    if name == "losses":  # every arm stopped by the token budget, not by its iteration cap
        assert all(run.summary["stopped_by"] == "generated_tokens" for runs in table.arms.values() for run in runs)
    cfg = OmegaConf.load(sweep / "0" / "reasonzoo_config.yaml")
    assert cfg.seed == 0 and cfg.warmup_seed == 0 and cfg.data_seed == 0


def test_a_sweep_into_a_directory_holding_finished_jobs_is_refused_and_changes_nothing(tmp_path, cli, tiny_overrides):
    """A second sweep into an existing sweep directory used to be refused only once Hydra had
    rewritten each old job's .hydra/overrides.yaml: the finished runs were then relabelled (the
    report named the k15 results recipe=rloo). Now refused before Hydra starts."""
    sweep = tmp_path / "s"
    args = ["-m", *[a for a in tiny_overrides if not a.startswith("iterations=")], "iterations=1", "eval.before=false",
            f"hydra.sweep.dir={sweep}"]
    proc = cli(args + ["length_penalty=none,k15"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file() and p.suffix in (".yaml", ".jsonl")}
    proc = cli(args + ["length_penalty=k15,none"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2 and f"{sweep / '0'} holds a finished run" in out, out
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file() and p.suffix in (".yaml", ".jsonl")} == before
