"""``reasonzoo``: inspect what is installed.

    reasonzoo plugins            every plugin: hook point, name, hooks, package and version
    reasonzoo hooks              the hook points, exclusive or additive, in call order
    reasonzoo config [k=v ...]   the composed config that ``reasonzoo-train k=v ...`` would run
    reasonzoo eval PATH [k=v ...] pass@k, mean@n, maj@n of a run, checkpoint or model folder
    reasonzoo report PATH ...     markdown tables and plots of sweeps / runs, arms named by their overrides
"""
from __future__ import annotations

import argparse
import inspect
import sys

from omegaconf import OmegaConf


def _plugins() -> int:
    from .registry import plugin_listing

    rows = [("hook point", "name", "package", "version", "hooks")]
    for r in plugin_listing():  # built-ins read with ast: no torch import, well under a second
        rows.append((r.hook_point, r.name, r.package, r.version, ",".join(h[3:] for h in r.hooks)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def _hooks() -> int:
    from . import hookspecs
    from .registry import exclusive_hooks

    excl = set(exclusive_hooks())
    funcs = [f for n, f in vars(hookspecs).items() if n.startswith("rz_") and inspect.isfunction(f)]
    for f in funcs:
        kind = "exclusive" if f.__name__ in excl else "additive "
        print(f"{f.__name__:<22} {kind}  {inspect.getdoc(f).splitlines()[0]}")
    return 0


def _config(overrides: list[str]) -> int:
    from .train import _compose_checked

    cfg = _compose_checked(overrides)  # Hydra's errors as the project's one-line messages
    print(OmegaConf.to_yaml(cfg), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``reasonzoo``; returns the exit code (0; 2: usage or config error;
    1: failure), known errors reported in one line by :mod:`reasonzoo.errors`."""
    from .errors import report

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:  # its own parser: a path, Hydra overrides and options (reasonzoo.evalcmd)
        from .evalcmd import main as eval_main

        try:
            return eval_main(argv[1:])
        except (Exception, KeyboardInterrupt) as exc:
            return report(exc)
    p = argparse.ArgumentParser(prog="reasonzoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("plugins", help="list every registered plugin")
    sub.add_parser("hooks", help="list the hook points")
    c = sub.add_parser("config", help="print the composed config")
    c.add_argument("overrides", nargs="*", help="Hydra overrides, as for reasonzoo-train")
    sub.add_parser("eval", help="evaluate a run, checkpoint or model folder (reasonzoo eval -h)")
    from .ablation_report import add_arguments as report_arguments

    report_arguments(sub.add_parser("report", help="markdown tables (mean ± std over seeds per arm) and plots of "
                                    "sweep or run directories (reasonzoo.ablation_report)"))
    args = p.parse_args(argv)
    try:
        if args.cmd == "plugins":
            return _plugins()
        if args.cmd == "hooks":
            return _hooks()
        if args.cmd == "report":
            from .ablation_report import run_command

            return run_command(args)
        return _config(args.overrides)
    except (Exception, KeyboardInterrupt) as exc:  # known errors: one line and an exit code; unknown ones keep their traceback
        return report(exc)


if __name__ == "__main__":
    sys.exit(main())
