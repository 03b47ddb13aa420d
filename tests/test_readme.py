"""The README says what is true: its first command is the set-up CI runs (issue 9 item 15), and its
measured main-job figures are generated from benchmarks/results/main_job.json (issue 8 item 18)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _code_blocks(text: str) -> list[str]:
    return [m.strip() for m in re.findall(r"\n\n    (.+?)\n\n", text)]


def test_readme_setup_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Setup (one command)", 1)[1]
    assert _code_blocks(setup)[0] == "bash .ci/setup && . .venv/bin/activate"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^bash \.ci/setup$", ci, re.M) and "pip install -q -e '.[test]'" not in ci  # one set-up path
    script = (ROOT / ".ci" / "setup").read_text()
    assert ".ci/apt-packages.txt" in script and "torch==2.13.0" in script and "apt-get install" in script
    pkgs = (ROOT / ".ci" / "apt-packages.txt").read_text().split()
    assert {"bubblewrap", "libseccomp2", "util-linux"} <= set(pkgs)
    tests = readme.split("## Tests (one command)", 1)[1]
    assert _code_blocks(tests)[0] == "OMP_NUM_THREADS=1 python -m pytest" and "python -m pytest -q\n" in ci


def test_readme_results_block_matches_results_file():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "<!-- results:main_job -->\nMeasured by `benchmarks/main_job.py`" in (ROOT / "README.md").read_text()
