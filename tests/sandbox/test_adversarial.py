"""Hostile programs against every isolating backend: each has an expected verdict and, where it
matters, a check on what it printed or on the host afterwards.

Placeholders filled per test: {secret_path} (a file outside the sandbox holding SECRET_FILE_TEXT),
{port} (a TCP listener of this test process on 127.0.0.1 that must never receive a connection).
The last tests check the host: no leftover processes, no scratch files, secret file untouched,
nothing written outside, and the pools still serve a trivial program. ``test_wrong_body_never_passes``
runs wrong or hostile function bodies through the function-test harness (issue 8 item 6): none may
pass, whatever it prints, however it exits, whatever it patches or reads.
"""

from __future__ import annotations

import os
import socket
import tempfile
import textwrap
import threading
import time

import pytest

from reasonzoo.sandbox import Limits

FAST = Limits(cpu_s=1.0, wall_s=2.0, memory_bytes=128 << 20, processes=8, open_files=32,
              output_bytes=64 << 10, file_bytes=1 << 20)
"""Small limits so that hostile programs fail fast."""
SECRET_VALUE = "s3cr3t-env-7f1d2c"  # conftest puts it in this process's environment

SECRET_FILE_TEXT = "s3cr3t-file-91ab33"
OUTSIDE_PATHS = ("/tmp/reasonzoo_pwned", "/work/reasonzoo_pwned", "/root/reasonzoo_pwned",
                 "/dev/shm/reasonzoo_pwned")


@pytest.fixture(scope="module")
def secret_path():
    d = tempfile.mkdtemp(prefix="rz-secret-")
    path = os.path.join(d, "secret.txt")
    with open(path, "w") as f:
        f.write(SECRET_FILE_TEXT)
    os.chmod(path, 0o644)  # world-readable on purpose: only isolation may protect it
    yield path
    os.unlink(path)
    os.rmdir(d)


@pytest.fixture(scope="module")
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    hits, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
                hits.append(addr)
                conn.close()
            except (TimeoutError, OSError):
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], hits
    stop.set()
    t.join()
    srv.close()


def _no_secret(res):
    assert SECRET_FILE_TEXT not in res.stdout + res.stderr
    assert SECRET_VALUE not in res.stdout + res.stderr


def _says(text):
    def check(res):
        assert text in res.stdout, res
    return check


def _count_at_most(prefix, limit):
    def check(res):
        line = next(l for l in res.stdout.splitlines() if l.startswith(prefix))
        assert int(line.split()[1]) <= limit, res.stdout
    return check


def _fast(seconds):
    def check(res):
        assert res.wall_s < seconds, res
    return check


def _all_denied(res):
    assert "ALLOWED" not in res.stdout and "denied" in res.stdout, res


CASES = [
    # --- CPU and wall time ---
    ("infinite_loop", "while True:\n    pass", "time_limit", None),
    ("sleep_past_wall", "import time\ntime.sleep(60)", "time_limit", _fast(3.5)),
    ("ignore_sigxcpu", "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass",
     "time_limit", None),
    ("blocked_read_forever", "import os\nr, w = os.pipe()\nos.read(r, 1)", "time_limit", _fast(3.5)),
    # --- processes ---
    ("fork_bomb", """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass""", "time_limit", None),
    ("fork_until_refused", """
        import os, time
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
        except OSError:
            print("forked", n)""", "ok", _count_at_most("forked", FAST.processes)),
    ("thread_bomb", """
        import threading, time
        ts = []
        while True:
            t = threading.Thread(target=time.sleep, args=(30,), daemon=True)
            t.start()
            ts.append(t)""", "runtime_error", None),
    ("subprocess_spawn_many", """
        import subprocess
        procs = []
        try:
            while True:
                procs.append(subprocess.Popen(["/bin/sleep", "30"]))
        except OSError:
            print("spawned", len(procs))""", "ok", _count_at_most("spawned", FAST.processes)),
    ("setsid_double_fork_daemon", """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)   # holds stdout/stderr open
                open("/scratch/run/late", "w").write("daemon survived")
                os._exit(0)
            os._exit(0)
        print("parent done")""", "ok", lambda r: (_says("parent done")(r), _fast(1.5)(r))),
    ("daemon_spams_stdout", """
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                while True:
                    os.write(1, b"x")
                    time.sleep(0.001)
            os._exit(0)
        print("parent done")""", "ok", _fast(1.5)),
    ("kill_parent", """
        import os, signal
        try:
            os.kill(os.getppid(), signal.SIGKILL)
            print("ALLOWED")
        except PermissionError:
            print("denied")""", "ok", _all_denied),
    ("kill_everything", """
        import os, signal, time
        if os.fork() == 0:
            time.sleep(30)
        os.kill(-1, signal.SIGKILL)
        print("still here")""", "ok", _says("still here")),
    # --- memory ---
    ("memory_hog_one_block", "x = bytearray(1 << 30)\nprint(len(x))", "memory_limit", None),
    ("memory_hog_growing", "l = []\nwhile True:\n    l.append(bytearray(1 << 20))", "memory_limit", None),
    ("deep_recursion", "def f(n):\n    return f(n + 1)\nf(0)", "runtime_error", None),
    ("c_stack_overflow", """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, 1 << 20))
        sys.setrecursionlimit(10**8)
        nested = ()
        for _ in range(10**5):
            nested = (nested,)
        print(hash(nested))  # C recursion past the stack: SIGSEGV""", "runtime_error",
     lambda r: r.signal == 11 or pytest.fail(f"expected SIGSEGV: {r}")),
    # --- output and files ---
    ("huge_stdout", "while True:\n    print('x' * 1000)", "output_limit", None),
    ("huge_stderr_then_answer", "import sys\nsys.stderr.write('e' * (1 << 20))\nprint(42)", "ok",
     lambda r: (_says("42")(r), len(r.stderr) <= FAST.stderr_bytes or pytest.fail("stderr kept"))),
    ("huge_file", "f = open('big', 'wb')\nwhile True:\n    f.write(b'0' * (1 << 16))", "output_limit", None),
    ("close_fd_1", "import os\nos.close(1)\nprint('lost')", "runtime_error", None),
    ("replace_sys_stdout", """
        import sys, io
        sys.stdout = io.StringIO()
        print("hidden")
        sys.__stdout__.write("visible\\n")""", "ok", _says("visible")),
    ("exhaust_fds", """
        n = 0
        fs = []
        try:
            while True:
                fs.append(open("main.py"))
        except OSError:
            print("opened", len(fs))""", "ok", _count_at_most("opened", FAST.open_files)),
    # --- filesystem ---
    ("write_outside_scratch", f"""
        for p in {OUTSIDE_PATHS!r} + ("/usr/pwned", "/etc/pwned", "/pwned", "/proc/sys/kernel/hostname"):
            try:
                open(p, "w").write("x")
                print("ALLOWED", p)
            except OSError:
                print("denied", p)""", "ok", _all_denied),
    ("read_secret_file", "print(open({secret_path!r}).read())", "runtime_error", _no_secret),
    ("shell_cat_secret", "import os\nos.system('cat {secret_path} /etc/shadow; ls /work /home')",
     "ok", _no_secret),
    ("chmod_chown_mount", """
        import os, ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for name, call in [("chmod", lambda: os.chmod("/usr/bin", 0o777)),
                           ("chown", lambda: os.chown("/usr/bin/env", 12345, 12345)),
                           ("chown_self", lambda: os.chown("main.py", os.getuid(), os.getgid())),
                           ("setuid", lambda: os.setuid(0))]:
            try:
                call()
                print("ALLOWED", name)
            except OSError:
                print("denied", name)
        rc = libc.mount(b"none", b"/scratch/run", b"tmpfs", 0, None)
        print("denied mount" if rc != 0 else "ALLOWED mount")""", "ok", _all_denied),
    ("proc_root_escape", """
        import os
        for p in ("/proc/1/root/work", "/proc/1/cwd", "/proc/1/environ", "/proc/1/mem"):
            try:
                os.listdir(p) if not p.endswith(("environ", "mem")) else open(p, "rb").read(1)
                print("ALLOWED", p)
            except OSError:
                print("denied", p)""", "ok", _all_denied),
    # --- secrets in memory / environment / other processes ---
    ("read_environment", "import os\nprint(dict(os.environ))", "ok", _no_secret),
    ("proc_snooping", """
        import os
        seen = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                for part in ("cmdline", "environ"):
                    try:
                        seen.append(open(f"/proc/{pid}/{part}", "rb").read().decode(errors="replace"))
                    except OSError:
                        pass
        print("pids", sum(p.isdigit() for p in os.listdir("/proc")))
        print("\\n".join(seen))""", "ok",
     lambda r: (_no_secret(r), "pytest" not in r.stdout or pytest.fail("sees host processes"),
                _count_at_most("pids", 4)(r))),
    # --- network ---
    ("tcp_to_host_listener", "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
     "runtime_error", None),
    ("raw_socket_syscall_via_ctypes", """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.socket(2, 1, 0)
        print("denied" if fd < 0 else "ALLOWED")""", "ok", _all_denied),
    # --- kernel interfaces through ctypes ---
    ("ctypes_namespace_and_ptrace", """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        calls = {"unshare": lambda: libc.unshare(0x10000000),
                 "ptrace": lambda: libc.ptrace(16, os.getppid(), 0, 0),
                 "setns": lambda: libc.setns(0, 0),
                 "chroot": lambda: libc.chroot(b"/scratch")}
        for name, call in calls.items():
            print("denied" if call() != 0 else "ALLOWED", name)""", "ok", _all_denied),
    ("ctypes_segfault", "import ctypes\nctypes.string_at(0)", "runtime_error", None),
    ("syntax_error", "def f(:\n    pass", "runtime_error", None),
]


@pytest.mark.parametrize("name,program,expected,check", CASES, ids=[c[0] for c in CASES])
def test_hostile_program(pool, name, program, expected, check, secret_path, listener, secret_env_value):
    assert os.environ["REASONZOO_TEST_SECRET"] == secret_env_value == SECRET_VALUE
    port, hits = listener
    src = textwrap.dedent(program).strip("\n").replace("{secret_path}", secret_path).replace(
        "{port}", str(port))
    res = pool.run(src, stdin="", limits=FAST)
    assert res.verdict == expected, (res.verdict, res.stdout[-500:], res.stderr[-1500:])
    if check is not None:
        check(res)
    assert not hits, f"the sandbox reached the host listener: {hits}"


def test_cannot_delete_concurrent_scratch(pool):
    victim = textwrap.dedent("""
        import time
        open("mine.txt", "w").write("intact")
        time.sleep(0.8)
        print(open("mine.txt").read(), sorted(__import__("os").listdir(".")))""")
    attacker = textwrap.dedent("""
        import glob, os, shutil
        for pattern in ("/scratch/*", "/scratch/*/*", "/dev/shm/*", "/dev/shm/*/*", "/tmp/*", "/proc/*/cwd/*"):
            for p in glob.glob(pattern):
                try:
                    shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
                except OSError:
                    pass
        print("done")""")
    a = pool.submit(victim)
    time.sleep(0.2)
    b = pool.submit(attacker)
    assert b.result().verdict == "ok"
    ra = a.result()
    assert ra.verdict == "ok" and ra.stdout.startswith("intact"), ra


def test_hung_server_costs_one_result(pools):
    """A dead fork server gives sandbox_error for the run in flight, then is replaced."""
    pool = pools["forkserver"]
    res = pool.run("import os, signal\nprint('x')")  # make sure workers exist
    for worker in _live_workers(pool):
        worker.proc.kill()
    res = pool.run("print(6 * 7)")
    assert res.verdict in ("ok", "sandbox_error")
    res = pool.run("print(6 * 7)")
    assert res.verdict == "ok" and res.stdout == "42\n", res


def _live_workers(pool):
    workers = []
    while True:  # drain the idle queue without blocking, then put everything back
        try:
            workers.append(pool._idle.get_nowait())
        except Exception:  # noqa: BLE001 - queue.Empty
            break
    for w in workers:
        pool._idle.put(w)
    return [w for w in workers if w is not None and getattr(w, "proc", None) is not None]


def _sandbox_uid_processes(pools) -> list[str]:
    uids = set()
    for pool in pools.values():
        base = pool.config.uid_base
        uids.update(range(base, base + (1 << 23)))
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                uid_line = next(l for l in f if l.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) in uids:
            found.append(pid)
    return found


def test_zz_host_unchanged_afterwards(pools, secret_path):
    for pool in pools.values():
        res = pool.run("print(sum(map(int, input().split())))", stdin="2 3\n")
        assert res.verdict == "ok" and res.stdout == "5\n", res
    deadline = time.monotonic() + 3
    while _sandbox_uid_processes(pools) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_uid_processes(pools) == []
    with open(secret_path) as f:
        assert f.read() == SECRET_FILE_TEXT
    for path in OUTSIDE_PATHS:
        assert not os.path.exists(path), path
    scratch = pools["bwrap"]._scratch.path
    assert scratch is None or os.listdir(scratch) == []


# --- function tests (assert-style, HumanEval layout): wrong bodies that must never pass ---------
# The problem: a hand-written function-completion problem in HumanEval's layout (prompt + test with
# check(candidate) + entry_point); the response completes the body. Each body below is wrong or
# hostile; with the harness none may pass, whatever it prints, however it exits, whatever it patches.
FN_PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
FN_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
FN_FAKE_VERDICT = '{"i":0,"verdict":"ok","detail":""}\\n'
LEAK_PROBE = """
def _probe():
    import gc, os, sys
    found = []
    import ctypes
    head, tail = b"assert candidate(-1, ", bytes([49, 41, 32, 61, 61])  # the test's text, never whole here
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    for fields in regions:  # this process's anonymous memory (heap, arenas, stack)
        if not fields[1].startswith("r") or (len(fields) > 5 and fields[5] not in ("[heap]", "[stack]")):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        chunk = ctypes.string_at(start, end - start)
        i = chunk.find(head)
        while i >= 0:
            if chunk[i + len(head):i + len(head) + len(tail)] == tail:
                found.append("memory")
                break
            i = chunk.find(head, i + 1)
    needle = "".join(reversed("0 == )1 ,1-(etadidnac tressa"))  # the test's text, built at run time
    for obj in gc.get_objects():
        try:
            if isinstance(obj, (dict, list, tuple)) and needle in repr(obj):
                found.append("gc")
        except Exception:
            pass
    frame = sys._getframe(1)  # the callers: the harness and its module
    while frame is not None:
        if needle in repr(frame.f_locals) or needle in repr(frame.f_globals):
            found.append("frame")
        frame = frame.f_back
    for p in ("/proc/%d/mem" % os.getppid(), "/proc/%d/fd/0" % os.getppid(), "/proc/%d/fd/1" % os.getppid(),
              "/proc/%d/environ" % os.getppid(), "/proc/%d/cmdline" % os.getppid(), "/proc/self/fd/0"):
        try:
            with open(p, "rb") as f:
                if needle.encode() in f.read(1 << 20):
                    found.append(p)
        except OSError:
            pass
    print("LEAK" if found else "no leak", found, file=sys.stderr)
_probe()
"""
WRONG_BODIES = [
    ("return_none", "    return None\n", "wrong_answer"),
    ("print_passed", f"    print('PASSED')\n    print('{FN_FAKE_VERDICT}')\n    return None\n"
                     f"print('PASSED')\nprint('{FN_FAKE_VERDICT}')\n", "wrong_answer"),
    ("exit0_in_body", "    exit(0)\n", "runtime_error"),
    ("sys_exit0_at_load", "    return a + b\nimport sys\nsys.exit(0)\n", "runtime_error"),
    ("os_exit0_in_body", "    import os\n    os._exit(0)\n", "runtime_error"),
    ("os_exit0_at_load", "    return a + b\nimport os\nos._exit(0)\n", "runtime_error"),
    ("raise_systemexit", "    raise SystemExit(0)\n", "runtime_error"),
    ("raise_keyboardinterrupt", "    raise KeyboardInterrupt\n", "runtime_error"),
    ("raise_baseexception", "    raise BaseException('ok')\n", "runtime_error"),
    ("raise_stopiteration", "    raise StopIteration\n", "runtime_error"),
    ("eq_always_true", "    class Yes:\n        def __eq__(self, other):\n            return True\n"
                       "        __hash__ = object.__hash__\n    return Yes()\n", "runtime_error"),
    ("int_subclass_eq", "    class B(int):\n        def __eq__(self, other):\n            return True\n"
                        "    return B(0)\n", "runtime_error"),
    ("patch_builtins", "    import builtins\n    builtins.AssertionError = type('AE', (Exception,), {})\n"
                       "    builtins.print = lambda *a, **k: None\n    builtins.isinstance = lambda *a: True\n"
                       "    return None\n", ("wrong_answer", "runtime_error")),  # its own json breaks
    ("fake_verdict_on_every_fd", "    import os\n    for fd in range(3, 256):\n        try:\n"
                                 f"            os.write(fd, b'{FN_FAKE_VERDICT}')\n"
                                 "        except OSError:\n            pass\n"
                                 "    for p in ('/proc/%d/fd/1' % os.getppid(), '/dev/stdout', '/proc/1/fd/1'):\n"
                                 "        try:\n"
                                 f"            open(p, 'w').write('{FN_FAKE_VERDICT}')\n"
                                 "        except OSError:\n            pass\n    return None\n",
     ("runtime_error", "wrong_answer")),
    ("fork_child_fakes_verdict", "    import os\n    if os.fork() == 0:\n        for fd in range(256):\n"
                                 "            try:\n"
                                 f"                os.write(fd, b'{FN_FAKE_VERDICT}')\n"
                                 "            except OSError:\n                pass\n        os._exit(0)\n"
                                 "    return None\n", ("wrong_answer", "runtime_error")),  # its own json breaks
    ("close_all_fds", "    import os\n    os.closerange(0, 1024)\n    return a + b + 1\n", "runtime_error"),
    ("kill_checker", "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return a + b\n",
     "runtime_error"),
    ("read_test_from_memory", "    return None\n" + LEAK_PROBE, "wrong_answer"),
]


@pytest.mark.parametrize("name,body,expected", WRONG_BODIES, ids=[b[0] for b in WRONG_BODIES])
def test_wrong_body_never_passes(pool, name, body, expected):
    from reasonzoo.sandbox import judge_functions

    test = {"kind": "assert", "test": FN_TEST, "entry_point": "add"}
    right = judge_functions(pool, FN_PROMPT + "    return a + b\n", [test], FAST, context=FN_PROMPT)
    assert right.verdicts == ["ok"], right.runs[0]
    res = judge_functions(pool, FN_PROMPT + body, [test], FAST, context=FN_PROMPT)
    assert res.score == 0.0
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert res.verdicts[0] in expected, (res.verdicts, res.runs[0].stdout, res.runs[0].stderr[-800:])
    assert "LEAK" not in res.runs[0].stderr, res.runs[0].stderr[-800:]
