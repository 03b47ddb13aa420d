"""Plugin declaration, discovery and the per-run plugin manager.

A plugin is a class decorated with :func:`plugin`, which names its hook point (= config group),
its name (= config option = file stem) and its config dataclass. The catalogue holds every plugin
class that is available: the built-in modules listed in :data:`BUILTIN_PLUGINS` and the modules
(or classes) named by entry points in the ``reasonzoo`` group of installed packages.

A run gets a fresh :class:`pluggy.PluginManager` holding one *instance* of the plugin selected
for each hook point, built from its validated config. Set ``REASONZOO_TRACE=1`` to print every
hook call.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Mapping

import pluggy
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import hookspecs
from .ranges import check_ranges

hookimpl = pluggy.HookimplMarker("reasonzoo")
ENTRY_POINT_GROUP = "reasonzoo"

#: Hook points, each a config group with one plugin selected per run.
HOOK_POINTS: tuple[str, ...] = (
    "task",
    "model",
    "engine",
    "warmup",
    "sampler",
    "rollout",
    "reward",
    "length_penalty",
    "loss",
    "distiller",
    "logger",
    "launcher",
)

#: Built-in plugin modules; each defines one plugin class.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "reasonzoo.plugins.task.modarith",
    "reasonzoo.plugins.task.jsonl",
    "reasonzoo.plugins.task.reasoning_gym",
    "reasonzoo.plugins.task.code_jsonl",
    "reasonzoo.plugins.task.synth_code",
    "reasonzoo.plugins.model.hf",
    "reasonzoo.plugins.engine.torch",
    "reasonzoo.plugins.engine.vllm",
    "reasonzoo.plugins.warmup.sft",
    "reasonzoo.plugins.warmup.none",
    "reasonzoo.plugins.sampler.uniform",
    "reasonzoo.plugins.sampler.curriculum",
    "reasonzoo.plugins.sampler.prioritized",
    "reasonzoo.plugins.rollout.sync",
    "reasonzoo.plugins.rollout.partial",
    "reasonzoo.plugins.rollout.dynamic",
    "reasonzoo.plugins.reward.answer",
    "reasonzoo.plugins.reward.math",
    "reasonzoo.plugins.reward.reasoning_gym",
    "reasonzoo.plugins.reward.code",
    "reasonzoo.plugins.length_penalty.k15",
    "reasonzoo.plugins.length_penalty.none",
    "reasonzoo.plugins.loss.k15",
    "reasonzoo.plugins.loss.grpo",
    "reasonzoo.plugins.loss.rloo",
    "reasonzoo.plugins.loss.reinforce",
    "reasonzoo.plugins.loss.rest",
    "reasonzoo.plugins.loss.ppo",
    "reasonzoo.plugins.distiller.none",
    "reasonzoo.plugins.distiller.merge",
    "reasonzoo.plugins.logger.wandb",
    "reasonzoo.plugins.logger.none",
    "reasonzoo.plugins.launcher.local",
    "reasonzoo.plugins.launcher.ray",
)


class PluginError(Exception):
    """A plugin is unknown, misconfigured or conflicts with another."""


@dataclass(frozen=True)
class PluginInfo:
    """A plugin available in this environment."""

    hook_point: str
    name: str
    cls: type
    config_cls: type
    module: str
    package: str  #: distribution that provides it
    version: str

    @property
    def hooks(self) -> list[str]:
        return sorted(n for n, _ in inspect.getmembers(self.cls) if n.startswith("rz_"))

    @property
    def doc(self) -> str:
        return (inspect.getdoc(self.cls) or inspect.getdoc(sys.modules[self.cls.__module__]) or "").split("\n")[0]


def plugin(hook_point: str, name: str, config: type | None = None) -> Callable[[type], type]:
    """Class decorator declaring a reasonzoo plugin.

    :param hook_point: the config group it belongs to (one of :data:`HOOK_POINTS`, or a new group
        a third-party package adds).
    :param name: option name in that group; also the YAML file stem.
    :param config: a dataclass whose fields are the plugin's options (defaults to no options).
        The class is constructed as ``cls(cfg)`` with an instance of it. Give numeric fields their
        allowed range with :func:`reasonzoo.ranges.ranged` (``tau: float = ranged(0.1, gt=0)``):
        config validation then refuses a value outside it in one line naming the key.

    Class attributes that config validation reads (all optional):

    * ``min_samples_per_prompt``: an int, or a function of the plugin's config returning one; a
      run with fewer ``samples_per_prompt`` is refused (a group baseline needs 2).
    * ``problem_fields_required`` (rewards): the :class:`~reasonzoo.types.Problem` fields it reads,
      e.g. ``("answer",)`` or ``("meta.tests",)``;
    * ``problem_fields_provided`` (tasks): the fields its problems carry. A reward whose required
      fields the selected task does not provide is refused naming both; a task that declares
      nothing is not checked.
    """
    if config is None:
        config = dataclasses.make_dataclass(f"{name.title()}Config", [])
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"plugin {hook_point}/{name}: config must be a dataclass, got {config!r}")

    def wrap(cls: type) -> type:
        cls.__reasonzoo_plugin__ = (hook_point, name, config)
        return cls

    return wrap


def _plugins_in(obj: ModuleType | type) -> list[type]:
    if isinstance(obj, type):
        return [obj] if hasattr(obj, "__reasonzoo_plugin__") else []
    return [
        v
        for v in vars(obj).values()
        if isinstance(v, type) and "__reasonzoo_plugin__" in v.__dict__ and v.__module__ == obj.__name__
    ]


def _info(cls: type, package: str, version: str) -> PluginInfo:
    hook_point, name, config_cls = cls.__reasonzoo_plugin__
    return PluginInfo(hook_point, name, cls, config_cls, cls.__module__, package, version)


def catalogue() -> dict[str, dict[str, PluginInfo]]:
    """Every available plugin: ``{hook_point: {name: PluginInfo}}``.

    Raises :class:`PluginError` when an entry point fails to load or two plugins claim the same
    hook point and name.
    """
    from . import __version__

    found: list[PluginInfo] = []
    for modname in BUILTIN_PLUGINS:
        mod = importlib.import_module(modname)
        found += [_info(c, "reasonzoo", __version__) for c in _plugins_in(mod)]
    return _catalogue_from(found + _entry_point_infos())


def _entry_point_infos() -> list[PluginInfo]:
    """The plugin classes named by entry points of the ``reasonzoo`` group (imported)."""
    found: list[PluginInfo] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party package must say who it is
            raise PluginError(f"entry point {ep.name!r} = {ep.value!r} of package {dist!r} failed to load: {exc!r}") from exc
        classes = _plugins_in(obj)
        if not classes:
            raise PluginError(f"entry point {ep.name!r} = {ep.value!r} of package {dist!r} defines no @reasonzoo.plugin class")
        found += [_info(c, dist, version) for c in classes]
    return found


def _catalogue_from(found: list[PluginInfo]) -> dict[str, dict[str, PluginInfo]]:
    cat: dict[str, dict[str, PluginInfo]] = {}
    for info in found:
        group = cat.setdefault(info.hook_point, {})
        if info.name in group:
            other = group[info.name]
            raise PluginError(
                f"two plugins are named {info.hook_point}/{info.name}: {other.module} ({other.package}) and "
                f"{info.module} ({info.package})"
            )
        group[info.name] = info
    return cat


@dataclass(frozen=True)
class PluginListing:
    """One row of ``reasonzoo plugins``: what :func:`plugin_listing` reads without importing."""

    hook_point: str
    name: str
    module: str
    package: str  #: distribution that provides it
    version: str
    hooks: tuple[str, ...]  #: ``rz_*`` hook implementations, sorted


def _parse_module(modname: str) -> ast.Module | None:
    spec = importlib.util.find_spec(modname)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as f:
        return ast.parse(f.read(), spec.origin)


def _static_hooks(tree: ast.Module, modname: str, cls: ast.ClassDef, depth: int = 0) -> set[str] | None:
    """The ``rz_*`` methods of ``cls`` and of its base classes, found through the module's own
    classes and ``from <module> import <name>`` lines; ``None`` where a base cannot be resolved."""
    hooks = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("rz_")}
    if depth > 8:
        return None
    for base in cls.bases:
        if not isinstance(base, ast.Name):
            return None
        if base.id == "object":
            continue
        local = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == base.id), None)
        if local is not None:
            found = _static_hooks(tree, modname, local, depth + 1)
        else:
            imp = next((n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module
                        and any((a.asname or a.name) == base.id and a.asname is None for a in n.names)), None)
            other = _parse_module(imp.module) if imp is not None else None
            cdef = other and next((n for n in other.body if isinstance(n, ast.ClassDef) and n.name == base.id), None)
            found = _static_hooks(other, imp.module, cdef, depth + 1) if cdef else None
        if found is None:
            return None
        hooks |= found
    return hooks


def _declared_plugins(modname: str) -> list[tuple[str, str, tuple[str, ...]]] | None:
    """``(hook_point, name, hooks)`` of the ``@plugin("<hook point>", "<name>", ...)`` classes in a
    module's source, read with :mod:`ast` (no import, so no torch), base classes followed through
    the module's ``from ... import`` lines. ``None`` when the source cannot be read statically
    (non-literal decorator arguments, an unresolvable base class): the caller then imports it."""
    tree = _parse_module(modname)
    if tree is None:
        return None
    out = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for dec in node.decorator_list:
            func = dec.func if isinstance(dec, ast.Call) else None
            if not (isinstance(func, ast.Name) and func.id == "plugin" or isinstance(func, ast.Attribute) and func.attr == "plugin"):
                continue
            args = dec.args[:2]
            if len(args) < 2 or not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                return None
            hooks = _static_hooks(tree, modname, node)
            if hooks is None:
                return None
            out.append((args[0].value, args[1].value, tuple(sorted(hooks))))
    return out


def plugin_listing() -> list[PluginListing]:
    """Every available plugin, for listing: built-in modules are read with :mod:`ast` rather than
    imported (``reasonzoo plugins`` stays well under a second: no torch or transformers), entry
    points of third-party packages are imported. Sorted by hook point and name; the same plugins
    and hooks as :func:`catalogue` (a test checks this).

    Raises :class:`PluginError` as :func:`catalogue` does for a broken entry point.
    """
    from . import __version__

    rows: list[PluginListing] = []
    for modname in BUILTIN_PLUGINS:
        declared = _declared_plugins(modname)
        if declared is None:
            mod = importlib.import_module(modname)
            declared = [(*c.__reasonzoo_plugin__[:2], tuple(_info(c, "", "").hooks)) for c in _plugins_in(mod)]
        rows += [PluginListing(hp, name, modname, "reasonzoo", __version__, hooks) for hp, name, hooks in declared]
    for info in _entry_point_infos():
        rows.append(PluginListing(info.hook_point, info.name, info.module, info.package, info.version, tuple(info.hooks)))
    return sorted(rows, key=lambda r: (r.hook_point, r.name))


def conf_search_paths() -> list[str]:
    """Hydra search paths of third-party plugin packages: ``pkg://<top module>.conf`` for each
    entry point whose top-level module ships a ``conf`` folder."""
    paths = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        top = ep.value.split(":")[0].split(".")[0]
        spec = importlib.util.find_spec(top)
        if spec and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                if os.path.isdir(os.path.join(loc, "conf")):
                    path = f"pkg://{top}.conf"
                    if path not in paths:
                        paths.append(path)
    return paths


def validate_plugin_config(info: PluginInfo, node: Mapping[str, Any] | DictConfig) -> Any:
    """Build the plugin's config dataclass from a config node; unknown keys, bad types and values
    outside a field's declared range (:func:`reasonzoo.ranges.ranged`) are errors that name the
    key, the plugin and what is allowed.

    :raises PluginError: one line naming the key and the plugin.
    """
    raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    raw = {k: v for k, v in raw.items() if k != "name"}
    schema = OmegaConf.structured(info.config_cls)
    allowed = [f.name for f in dataclasses.fields(info.config_cls)]
    for key in raw:
        if key not in allowed:
            raise PluginError(
                f"{info.hook_point}.{key}: unknown key for plugin {info.hook_point}/{info.name} "
                f"({info.config_cls.__name__}); allowed keys: {', '.join(allowed) or '(none)'}"
            )
    try:
        merged = OmegaConf.merge(schema, raw)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise PluginError(f"{info.hook_point}.{key}: invalid value for plugin {info.hook_point}/{info.name}: {exc.msg if hasattr(exc, 'msg') else exc}") from exc
    except (ValueError, TypeError) as exc:  # the dataclass's own __post_init__ checks
        raise PluginError(f"plugin {info.hook_point}/{info.name}: {exc}") from exc
    try:
        check_ranges(obj, f"{info.hook_point}.")
    except ValueError as exc:
        raise PluginError(f"{exc} (plugin {info.hook_point}/{info.name})") from exc
    return obj


def select(cat: Mapping[str, Mapping[str, PluginInfo]], hook_point: str, name: str) -> PluginInfo:
    """Look up a plugin by hook point and name, with an error that lists the alternatives."""
    if hook_point not in cat:
        raise PluginError(f"no plugins for hook point {hook_point!r}; known hook points: {', '.join(sorted(cat))}")
    if name not in cat[hook_point]:
        raise PluginError(
            f"{hook_point}={name}: unknown plugin; available {hook_point} plugins: {', '.join(sorted(cat[hook_point]))}"
        )
    return cat[hook_point][name]


def exclusive_hooks() -> list[str]:
    return [
        n
        for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
        if n.startswith("rz_") and getattr(f, "reasonzoo_spec", {}).get("firstresult")
    ]


def make_manager(plugins: Mapping[str, object] = {}) -> pluggy.PluginManager:
    """A fresh plugin manager with the given plugin instances registered under their keys.

    Checks that every implemented hook exists (``check_pending``) and that no exclusive hook has
    two implementations. ``REASONZOO_TRACE=1`` prints hook calls to stderr.
    """
    pm = pluggy.PluginManager("reasonzoo")
    pm.add_hookspecs(hookspecs)
    for key, obj in plugins.items():
        pm.register(obj, name=key)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r} implements a hook that does not exist: {exc}") from exc
    for hook in exclusive_hooks():
        impls = getattr(pm.hook, hook).get_hookimpls()
        if len(impls) > 1:
            raise PluginError(
                f"exclusive hook {hook} is implemented by {len(impls)} active plugins: "
                f"{', '.join(i.plugin_name for i in impls)}; select only one"
            )
    if os.environ.get("REASONZOO_TRACE"):
        pm.trace.root.setwriter(lambda s: sys.stderr.write(s))
        pm.enable_tracing()
    return pm


def build_plugins(cfg: DictConfig, cat: Mapping[str, Mapping[str, PluginInfo]] | None = None) -> dict[str, object]:
    """Instantiate the plugin selected for every hook point in ``cfg`` (validated configs).

    Keys of the result are ``"<hook_point>/<name>"``.
    """
    cat = catalogue() if cat is None else cat
    out: dict[str, object] = {}
    for hook_point in [h for h in cat if h in cfg] + [h for h in HOOK_POINTS if h not in cat and h in cfg]:
        node = cfg[hook_point]
        if not isinstance(node, DictConfig) or "name" not in node:
            raise PluginError(f"config group {hook_point!r} must select a plugin (a node with a 'name' key)")
        info = select(cat, hook_point, node["name"])
        config = validate_plugin_config(info, node)
        try:
            out[f"{hook_point}/{info.name}"] = info.cls(config)
        except (ValueError, TypeError) as exc:  # the plugin's own checks of its options
            raise PluginError(f"{hook_point}={info.name}: {exc}") from exc
    return out

