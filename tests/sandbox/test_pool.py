"""Behaviour of the pool, judge, output comparison, languages, config validation and the probe."""

from __future__ import annotations

import concurrent.futures as cf
import os

import pytest

from reasonzoo.sandbox import (LANGUAGES, Language, Limits, SandboxConfig, SandboxPool, normalise_output,
                               outputs_match, probe)

ADD = "print(sum(map(int, input().split())))"


def test_run_reports_numbers(pool):
    res = pool.run(ADD, stdin="40 2\n")
    assert (res.verdict, res.stdout, res.exit_code, res.signal) == ("ok", "42\n", 0, None)
    assert 0 <= res.cpu_s < 1 and 0 < res.wall_s < 2 and res.max_rss > 1 << 20
    assert res.backend in ("forkserver", "bwrap")


def test_exit_codes_and_exceptions(pool):
    assert pool.run("import sys\nsys.exit(0)").verdict == "ok"
    res = pool.run("import sys\nsys.exit(3)")
    assert (res.verdict, res.exit_code) == ("runtime_error", 3)
    res = pool.run("raise ValueError('boom')")
    assert res.verdict == "runtime_error" and "ValueError: boom" in res.stderr
    assert "_server.py" not in res.stderr  # the sandbox's own frames are hidden


def test_cpu_limit_uses_exact_seconds(pool):
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.7: pass"
    assert pool.run(spin, limits=Limits(cpu_s=1.0)).verdict == "ok"
    res = pool.run(spin, limits=Limits(cpu_s=0.4))  # rlimit fires at 1 s; the verdict uses 0.4 s
    assert res.verdict == "time_limit" and res.cpu_s > 0.4


def test_programs_get_a_fresh_interpreter_state(pool):
    first = pool.run("import random, sys\nsys.modules['math'].pi = 3\nprint(random.random())")
    second = pool.run("import math, random\nprint(math.pi, random.random())")
    assert second.stdout.split()[0] == "3.141592653589793"
    assert first.stdout.strip() != second.stdout.split()[1]  # random state not shared


def test_judge_fraction_and_all(pool):
    tests = [("1 2\n", "3\n"), ("2 2\n", "4"), ("5 5\n", "11\n")]
    res = pool.judge(ADD, tests, mode="fraction")
    assert res.verdicts == ["ok", "ok", "wrong_answer"] and res.score == pytest.approx(2 / 3)
    assert res.passed == 2
    res = pool.judge(ADD, tests, mode="all")
    assert res.score == 0.0 and res.verdicts[:2] == ["ok", "ok"] and res.verdicts[2] == "wrong_answer"
    res = pool.judge(ADD, tests[:2], mode="all")
    assert res.score == 1.0


def test_judge_all_skips_after_failure(pool):
    tests = [("", "x")] + [("", "")] * 8
    res = pool.judge("import time\ntime.sleep(0.2)\nprint('y')", tests, mode="all")
    assert res.score == 0.0 and res.verdicts[0] == "wrong_answer"
    assert "skipped" in res.verdicts and all(v in ("wrong_answer", "skipped") for v in res.verdicts)


def test_judge_rejects_bad_arguments(pool):
    with pytest.raises(ValueError, match="'fraction' or 'all'"):
        pool.judge(ADD, [("", "")], mode="some")
    with pytest.raises(ValueError, match="unknown language 'cobol'"):
        pool.run(ADD, language="cobol")


def test_output_normalisation():
    assert normalise_output(" 1   2 \r\n3\t4\n\n\n") == ["1 2", "3 4"]
    assert outputs_match("1  2 \n\n", "1 2")
    assert not outputs_match("1\n2", "1 2")
    assert not outputs_match("Yes", "yes")
    assert not outputs_match("", "0")
    assert outputs_match("\n", "")


def test_many_threads_share_two_workers(pool):
    with cf.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda i: pool.run(ADD, stdin=f"{i} {i}\n"), range(24)))
    assert [r.stdout for r in results] == [f"{2 * i}\n" for i in range(24)]


def test_other_languages_compile_and_run(pool):
    langs = {"sh": LANGUAGES["sh"],
             "shc": Language("shc", "prog.txt", ("/bin/sh", "compiled.sh"),
                             compile=("/bin/cp", "{src}", "compiled.sh"))}
    with SandboxPool(backend=pool.backend, workers=1, languages=langs) as p:
        res = p.run("read a b; echo $((a * b))", language="sh", stdin="6 7\n")
        assert (res.verdict, res.stdout) == ("ok", "42\n")
        res = p.run("read a; echo got $a", language="shc", stdin="x\n")
        assert (res.verdict, res.stdout) == ("ok", "got x\n")
        broken = Language("broken", "p.txt", ("/bin/true",), compile=("/bin/sh", "-c", "echo bad >&2; exit 2"))
        p.languages["broken"] = broken
        res = p.run("", language="broken")
        assert res.verdict == "compile_error" and "bad" in res.stderr


def test_pool_is_lazy_and_closes():
    with SandboxPool(workers=3) as p:
        assert all(p._idle.get_nowait() is None for _ in range(3))  # nothing started yet
        for _ in range(3):
            p._idle.put(None)
        assert p.run("print(1)").stdout == "1\n"
        worker = next(w for w in (p._idle.get() for _ in range(3)) if w is not None)
        cgroup_dirs = list(worker.cgroups.dirs.values())
        for _ in range(3):
            p._idle.put(worker if _ == 0 else None)
        assert cgroup_dirs and all(os.path.isdir(d) for d in cgroup_dirs)
    assert not any(os.path.exists(d) for d in cgroup_dirs)  # removed on close
    with pytest.raises(RuntimeError, match="closed"):
        p.run("print(1)")
    p.close()  # idempotent


def test_config_errors_name_the_culprit():
    with pytest.raises(ValueError, match=r"SandboxConfig.backend must be one of .*'forkserver'"):
        SandboxConfig(backend="docker")
    with pytest.raises(ValueError, match="Limits.cpu_s must be a positive number"):
        Limits(cpu_s=-1)
    with pytest.raises(ValueError, match="SandboxConfig.workers"):
        SandboxConfig(workers=0)
    with pytest.raises(TypeError, match=r"unknown SandboxConfig key\(s\) \['worker'\]"):
        SandboxPool(worker=2)
    with pytest.raises(TypeError, match="limits must be"):
        SandboxPool(workers=1).run("print(1)", limits={"cpu_s": 1})


def test_unsafe_backend_refused_unless_opted_in():
    with pytest.raises(RuntimeError, match=r"allow_unsandboxed=True"):
        SandboxPool(backend="unsafe_subprocess")
    with SandboxPool(backend="unsafe_subprocess", allow_unsandboxed=True, workers=1) as p:
        assert p.run(ADD, stdin="1 1\n").stdout == "2\n"
        assert p.run("while True: pass", limits=Limits(cpu_s=1, wall_s=3)).verdict == "time_limit"
        assert p.run("print('x' * 10**7)", limits=Limits(output_bytes=1000)).verdict == "output_limit"


def test_probe_finds_isolating_backends_and_picks_fastest():
    info = probe()
    assert info.backends["bwrap"] == "", info
    assert info.backends["forkserver"] == "", info  # CI runs as root with bubblewrap installed
    assert info.seccomp and info.cgroup_dirs.get("memory"), info
    assert SandboxPool(workers=1).backend == "forkserver"
