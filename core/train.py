"""``reasonzoo-train``: the Hydra application that composes a recipe and runs it.

    reasonzoo-train                                   # the k1.5 recipe on the default task
    reasonzoo-train sampler=prioritized length_penalty=none
    reasonzoo-train -m sampler=uniform,curriculum seed=1,2
    reasonzoo-train resume=outputs/2026-11-29/12-00-00  # continue a run from its last checkpoint

Config groups of third-party plugin packages (``pkg://<package>.conf``) are added to Hydra's
search path automatically.

Before Hydra starts (and creates any directory), :func:`main` composes the config with the same
overrides (every combination of a ``-m`` sweep) and validates it; a mistake is one line
``reasonzoo: config error: <key>: ...`` and exit code 2, with nothing written. The default run
directory ``outputs/<date>/<time>`` is created exclusively (``<time>-1``, ... when a run started
in the same second took it), and removed again when the run fails before writing anything into it.
Errors are reported by :mod:`reasonzoo.errors` (one line; ``REASONZOO_DEBUG=1`` for the traceback).
"""
from __future__ import annotations

import itertools
import logging
import re
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .errors import EXIT_USAGE, RunInterrupted, UsageError, report, signals_raise
from .registry import PluginError, conf_search_paths

log = logging.getLogger("reasonzoo")


def _searchpath_override(args: list[str]) -> list[str]:
    paths = conf_search_paths()
    if not paths or any(a.startswith("hydra.searchpath=") for a in args):
        return []
    return [f"hydra.searchpath=[{','.join(paths)}]"]


def compose(overrides: list[str] = (), hydra_config: bool = False) -> DictConfig:
    """The composed config for ``overrides`` (what ``reasonzoo-train`` would run); with
    ``hydra_config`` it keeps the ``hydra`` node (run directory etc.)."""
    from hydra import compose as hcompose, initialize_config_module

    overrides = list(overrides)
    with initialize_config_module(config_module="reasonzoo.conf", version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides + _searchpath_override(overrides),
                        return_hydra_config=hydra_config)


@hydra.main(config_path="pkg://reasonzoo.conf", config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .trainer import train

    _run(train, cfg, Path(HydraConfig.get().runtime.output_dir))


#: The run directory :func:`main` created for this process (removed if the run fails before using it).
_created_dir: Path | None = None
_created_parents: list[Path] = []


def _run(train, cfg: DictConfig, run_dir: Path) -> None:
    try:
        train(cfg, run_dir)
    except (Exception, KeyboardInterrupt, RunInterrupted) as exc:  # known errors: one line and an exit code
        _remove_if_unused(run_dir)
        sys.exit(report(exc))  # unknown ones are re-raised with their traceback


def _remove_if_unused(run_dir: Path) -> None:
    """Remove the directory :func:`main` created for this run when the run wrote nothing into it
    (only Hydra's ``.hydra/``, its log and the lock): a failed set-up leaves no empty directory."""
    from .rundir import run_outputs

    if _created_dir is None or Path(run_dir).resolve() != _created_dir.resolve() or run_outputs(run_dir):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in _created_parents:  # innermost first: outputs/<date> when this run created it
        try:
            parent.rmdir()
        except OSError:  # not empty (another run's) or gone
            break


def _resume(run_dir: str, extra: list[str]) -> None:
    from .trainer import CONFIG_FILE, train

    path = Path(run_dir)
    saved = path / CONFIG_FILE
    if not saved.is_file():
        raise UsageError(f"resume={run_dir}: not a reasonzoo run directory ({CONFIG_FILE} missing)")
    placement = [o for o in extra if _key_of(o).split(".")[0] == "launcher" or _key_of(o) == "train.device"]
    if len(placement) < len(extra):
        raise UsageError(f"resume takes the run's saved config; drop the overrides {[o for o in extra if o not in placement]} "
                         "(only launcher=..., launcher.*=... and train.device=... may change: where the run executes, not what it computes)")
    try:
        cfg = OmegaConf.load(saved)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{saved}: not UTF-8 text (byte {exc.start}); expected the run's saved YAML config") from exc
    except Exception as exc:  # a YAML syntax error: name the file
        raise ValueError(f"{saved}: not a readable YAML config ({str(exc).splitlines()[0]})") from exc
    _override_launcher(cfg, placement)
    cfg.resume = str(path)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    train(cfg, path)


def _override_launcher(cfg: DictConfig, overrides: list[str]) -> None:
    """Apply ``launcher=<name>`` (that launcher's defaults from ``conf/launcher/<name>.yaml``) and
    ``launcher.<key>=<value>`` (and ``train.device=<device>``) to a resumed run's saved config: a
    checkpoint resumes on another world size, cluster or device (a run saved before the launcher
    group had none: ``local``)."""
    import importlib.resources

    import yaml

    conf = importlib.resources.files("reasonzoo.conf") / "launcher"

    def defaults(name: str) -> DictConfig:
        f = conf / f"{name}.yaml"
        if not f.is_file():
            names = sorted(x.name[:-5] for x in conf.iterdir() if x.name.endswith(".yaml"))
            raise UsageError(f"launcher={name}: no such launcher; allowed: {', '.join(names)}")
        return OmegaConf.create(f.read_text())

    if "launcher" not in cfg:
        cfg.launcher = defaults("local")
    for o in overrides:
        key, _, value = o.lstrip("+").partition("=")
        if key == "launcher":
            cfg.launcher = defaults(value)
        else:
            OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None, force_add=False)


# --- validation before Hydra -------------------------------------------------------------------

_OVERRIDE_FAILED = re.compile(r"Could not override '([^']+)'")


def _key_of(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def _check_syntax(overrides: list[str]) -> None:
    """Each override must parse as a Hydra override; the one that does not is named, with how to
    quote its value (a shell removes ``'...'``: ``task.prompt_template='{prompt} ...'`` reaches
    Hydra as ``{prompt} ...``, which Hydra reads as the start of a dictionary)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except HydraException as exc:
            key, _, value = o.partition("=")
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            hint = (f"; a value with braces, spaces, quotes or backslashes needs Hydra's quotes inside the shell's: "
                    f"\"{key}='{value}'\"") if value and not value.startswith(("'", '"')) else ""
            raise UsageError(f"{o}: not a valid override ({why}){hint}") from None


def _compose_checked(overrides: list[str], check: bool = True) -> DictConfig:
    """Compose and validate ``overrides`` as ``reasonzoo-train`` would, with Hydra's errors turned
    into the project's one-line messages (``check=False``: compose only; the caller validates).

    An override of a key that does not exist (Hydra: "Could not override 'loss.taus'", which
    suggests ``+loss.taus``) is composed again as an addition, so that validation names the key,
    the plugin and its allowed keys; an unknown plugin names the available ones; an override
    Hydra cannot parse is named with how to quote it.

    :raises PluginError: a config mistake. :raises UsageError: another malformed override.
    """
    from hydra.errors import HydraException, MissingConfigException

    from .config import validate

    _check_syntax(list(overrides))
    attempt = list(overrides)
    for _ in range(len(overrides) + 1):
        try:
            cfg = compose(attempt)
        except MissingConfigException as exc:
            m = re.search(r"Could not find '([^']+)/([^'/]+)'", str(exc))
            if m and exc.options:
                raise PluginError(f"{m.group(1)}={m.group(2)}: unknown plugin; available {m.group(1)} plugins: "
                                  f"{', '.join(sorted(exc.options))}") from None
            raise UsageError(" ".join(str(exc).split("Config search path")[0].split())) from None
        except HydraException as exc:
            m = _OVERRIDE_FAILED.search(str(exc))
            bad = [i for i, o in enumerate(attempt) if m and not o.startswith(("+", "~")) and _key_of(o) == m.group(1)]
            if bad:  # validate it as an added key: the message then names the plugin and its allowed keys
                attempt[bad[0]] = "+" + attempt[bad[0]]
                continue
            raise UsageError("; ".join(line.strip() for line in str(exc).splitlines() if line.strip())) from None
        if check:
            validate(cfg)
        return cfg
    raise UsageError(f"cannot compose the overrides {overrides}")


def _config_sweep_params(overrides: list[str]) -> list[str]:
    """The ``hydra.sweeper.params`` a config sets (a ``conf/sweep/*.yaml`` file: ``key: a,b,c``), as
    overrides, for the keys the command line does not set (Hydra's basic sweeper does the same:
    the command line wins).

    :raises PluginError: a fixed override of a key that its group's choice lacks, where that group
        is not swept (``-m seed=0,1 loss.bogus=1``; ``-m sweep=losses task=jsonl task.min_steps=2``).
    :raises UsageError: a fixed override of a key that the config composed without the swept
        choices lacks (``-m loss=grpo,ppo loss.clip_high=0.28``: the default loss has no
        ``clip_high``; Hydra composes a multirun's fixed overrides before any job's choice, and
        refuses it with a hint to write ``+loss.clip_high``, which the jobs would refuse in turn):
        the message names the override and its working form ``++loss.clip_high=0.28``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    fixed = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
    try:
        hcfg = compose(fixed, hydra_config=True).hydra
    except HydraException as exc:
        m = _OVERRIDE_FAILED.search(str(exc))
        bad = [o for o in fixed if m and not o.startswith(("+", "~")) and _key_of(o) == m.group(1)]
        if not bad:
            raise
        from . import conf

        groups = {d.name for d in Path(conf.__file__).parent.iterdir() if d.is_dir() and not d.name.startswith("_")}
        parsed = OverridesParser.create().parse_overrides(overrides)
        chosen = {_key_of(o) for o in fixed}
        swept = any(o.is_sweep_override() and o.key_or_group in groups for o in parsed) or "sweep" in chosen
        if not swept or _key_of(bad[0]).split(".", 1)[0] in chosen:  # its group is not swept: the plain error
            _compose_checked(fixed)
            raise
        raise UsageError(f"{bad[0]}: no such key in the config before the swept choices are applied (a sweep's "
                         f"fixed overrides are composed first, with the default groups); write ++{bad[0]} to set "
                         f"it in every job (each job then checks that its choice has the key)") from None
    params = hcfg.sweeper.get("params") or {}
    given = {_key_of(o) for o in overrides}
    return [f"{k}={v}" for k, v in params.items() if k not in given]


def _sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job of a ``-m`` sweep (``a=1,2 b=x,y``: 4 jobs; with the
    ``hydra.sweeper.params`` of a ``sweep=<name>`` config, as Hydra's sweeper runs them); a sweep
    that cannot be enumerated here (``glob``, ``interval``) is left out.

    :raises UsageError: ``sweep`` itself swept (``sweep=losses,sampling``); see also
        :func:`_config_sweep_params`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra.errors import HydraException

    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_sweep_override() and o.key_or_group == "sweep":  # Hydra would run one job per file, none of its params
            raise UsageError(f"{o.input_line}: a sweep file cannot itself be swept (its hydra.sweeper.params are read "
                             f"before a job chooses it, so each job would run one config, not the file's sweep); "
                             f"run one reasonzoo-train -m sweep=<name> per file")
    options = []
    overrides = list(overrides) + _config_sweep_params(overrides)
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except HydraException:  # glob() / interval(): left to Hydra's sweeper, each job validated by train()
                continue
            options.append([f"{o.get_key_element()}={v}" for v in values])
        else:
            options.append([o.input_line])
    return [list(job) for job in itertools.product(*options)]


def _preflight(args: list[str]) -> list[str]:
    """Validate before Hydra runs; returns the extra overrides to hand to Hydra (the run directory
    created exclusively when the user did not choose one). Help and info flags pass through."""
    global _created_dir
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException

    try:
        ns = get_args_parser().parse_args(args)
    except SystemExit as exc:  # argparse printed the usage error already
        raise SystemExit(EXIT_USAGE if exc.code else 0) from None
    if ns.help or ns.hydra_help or ns.info or ns.shell_completion or ns.config_path or ns.config_dir \
            or ns.config_name or getattr(ns, "experimental_rerun", None):
        return []
    overrides = list(ns.overrides)
    _check_syntax(overrides)
    try:
        jobs = _sweep_jobs(overrides) if ns.multirun else [overrides]
    except HydraException as exc:
        raise UsageError("; ".join(line.strip() for line in str(exc).splitlines() if line.strip())) from None
    cfgs = [_compose_checked(job) for job in jobs]
    if ns.cfg:  # only printing the config
        return []
    from .rundir import RunLock, check_fresh, is_locked, unique_dir

    key = "hydra.sweep.dir" if ns.multirun else "hydra.run.dir"
    chosen = next((o.split("=", 1)[1].strip("'\"") for o in overrides if o.lstrip("+").startswith(key + "=")), None)
    if chosen is not None:
        # refuse a live or a held run before Hydra writes into it (for a sweep: before Hydra rewrites
        # each existing job's .hydra/ files, which would relabel the finished run held there)
        if ns.multirun:
            subdir = OmegaConf.to_container(compose(jobs[0], hydra_config=True).hydra.sweep, resolve=False)["subdir"]
            held = [(Path(chosen) / str(i), c) for i, c in enumerate(cfgs)] if subdir == "${hydra.job.num}" else []
        else:
            held = [(Path(chosen), cfgs[0])]
        for job, c in held:
            if job.is_dir():
                if is_locked(job):
                    RunLock(job).acquire()  # raises RunDirError naming the pid
                check_fresh(job, bool(c.get("overwrite", False)))
        return []
    hcfg = compose(jobs[0], hydra_config=True).hydra
    target = Path(hcfg.sweep.dir if ns.multirun else hcfg.run.dir)
    global _created_parents
    _created_parents = [p for p in target.parents if not p.exists()]  # removed too if left empty
    _created_dir = unique_dir(target)
    return [f"{key}='{_created_dir}'"]


def main() -> None:
    """Console entry point of ``reasonzoo-train`` (exit 2: usage or config error, 1: run failure)."""
    with signals_raise():  # SIGTERM / Ctrl-C at any point: one line and 128 + signum, no traceback
        _main()


def _main() -> None:
    args = sys.argv[1:]
    resume = [a for a in args if a.startswith("resume=")]
    try:
        if resume and resume[0].split("=", 1)[1] not in ("", "null"):
            _resume(resume[0].split("=", 1)[1], [a for a in args if a not in resume])
            return
        extra = _preflight(args + _searchpath_override(args))
    except (Exception, KeyboardInterrupt, RunInterrupted) as exc:
        sys.exit(report(exc))
    sys.argv = [sys.argv[0]] + args + _searchpath_override(args) + extra
    try:
        _app()
    except (KeyboardInterrupt, RunInterrupted) as exc:  # Ctrl-C while Hydra starts or ends: no traceback
        sys.exit(report(exc))


if __name__ == "__main__":
    main()
