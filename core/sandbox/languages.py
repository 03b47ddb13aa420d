"""The language table: how to put a program on disk, compile it and run it.

Scope: data only. Each backend turns a ``Language`` into concrete steps. Placeholders in commands:
``{python}`` (the pool's interpreter), ``{src}`` (the source file name) and ``{exe}`` (the compiled
binary's name); all run in the scratch directory. Add a language by adding a ``Language`` to a
dict passed to ``SandboxPool(languages=...)`` or to ``LANGUAGES``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Limits


@dataclass(frozen=True)
class Language:
    """One programming language."""

    name: str
    """Key used in ``run(language=...)``."""
    source_file: str
    """File name the program text is written to in the scratch directory."""
    run: tuple[str, ...]
    """Command that runs the program (argv; first element an absolute path or ``{python}``)."""
    compile: tuple[str, ...] | None = None
    """Command that compiles it first, or None. A non-zero exit gives ``compile_error``."""
    compile_limits: Limits = Limits(cpu_s=10.0, wall_s=20.0, memory_bytes=1 << 30, processes=32,
                                    file_bytes=64 << 20)
    """Limits of the compile step (the run step uses the caller's limits)."""
    address_space_limit: bool = True
    """Whether RLIMIT_AS may enforce the memory limit (runtimes that reserve large virtual ranges,
    such as the JVM or Go, need False and rely on the memory cgroup)."""
    inprocess_python: bool = False
    """The fork server may run it inside its pre-started interpreter instead of exec'ing ``run``."""


LANGUAGES: dict[str, Language] = {
    "python": Language("python", "main.py", ("{python}", "-I", "-S", "{src}"), inprocess_python=True),
    "c": Language("c", "main.c", ("./{exe}",),
                  compile=("/usr/bin/gcc", "-O2", "-std=gnu17", "-o", "{exe}", "{src}", "-lm")),
    "cpp": Language("cpp", "main.cpp", ("./{exe}",),
                    compile=("/usr/bin/g++", "-O2", "-std=gnu++17", "-o", "{exe}", "{src}")),
    "sh": Language("sh", "main.sh", ("/bin/sh", "{src}")),
}
"""Built-in languages. ``c``/``cpp`` need gcc/g++ on the host (bound read-only from /usr)."""


def expand(argv: tuple[str, ...], lang: Language, python: str) -> list[str]:
    """Fill the placeholders of a command."""
    return [a.format(python=python, src=lang.source_file, exe="main.bin") for a in argv]
