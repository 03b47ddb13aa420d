"""The main job as a user runs it (`reasonzoo-train` with no arguments): warm-up, RL, final
evaluation. Slow (about 10 minutes on 2 cores): run with `pytest -m slow`."""
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_default_recipe_improves_held_out_accuracy(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "reasonzoo.train", f"hydra.run.dir={tmp_path}/run"],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    before, after = summary["initial_eval"], summary["final_eval"]
    assert after["eval/accuracy"] >= before["eval/accuracy"] + 0.10, summary["table"]
    levels = sorted(int(k.rsplit("/d", 1)[1]) for k in after if k.startswith("eval/mean_length/d"))
    lengths = [after[f"eval/mean_length/d{d}"] for d in levels]
    assert lengths[-1] > lengths[0], "harder problems should get longer responses"
    assert (tmp_path / "run" / "progress.png").exists()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "wandb runs offline by default"
    assert "after RL acc" in proc.stdout
