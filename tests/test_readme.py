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


def test_ablations_doc_tables_match_the_results_file():
    """docs/ablations.md's generated tables hold each arm's numbers of results/ablations.json (both
    written by benchmarks/ablations.py from the same sweeps), and every sweep is reported."""
    import json
    import re

    res = json.loads((ROOT / "benchmarks" / "results" / "ablations.json").read_text())
    doc = (ROOT / "docs" / "ablations.md").read_text()
    block = doc.split("<!-- report -->", 1)[1].split("<!-- /report -->", 1)[0]
    assert set(res["sweeps"]) == {p.stem for p in (ROOT / "conf" / "sweep").glob("*.yaml")}
    for name, sweep in res["sweeps"].items():
        assert f"## {sweep['dir']}" in block
        section = block.split(f"## {sweep['dir']}", 1)[1].split("\n## ", 1)[0]
        for arm in sweep["arms"]:
            row = next(l for l in section.splitlines() if l.startswith(f"| `{arm['arm']}` ") or
                       (arm["arm"] == "(all same)" and l.startswith("| (all same) ")))
            m, s = arm["final"]
            assert f"| {m:.3f} ± {s:.3f} |" in row, (name, arm["arm"], row)
            assert re.search(rf"\| {arm['seeds']} \|", row)
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", block):
        assert (ROOT / "docs" / img).is_file(), img
