"""Name -> function tables for editing and learning methods.

The core does not know any method. A method is `fn(agent, requests_or_data, **hparams) ->
report`, found by name: `@register_editor(name)` in Python, an entry point in the group
`knowevo.editors` / `knowevo.learners` of a package (the built-ins are declared so in
knowevo's own pyproject.toml), or a dotted path `package.module:function` given as the method
name (so `knowevo edit --method` takes them).
"""
from __future__ import annotations

import warnings
from dataclasses import fields
from importlib.metadata import entry_points
from typing import Callable

from agents.hparams import read_hparams
from agents.plugins import import_dotted

EDITORS: dict[str, Callable] = {}
LEARNERS: dict[str, Callable] = {}
HPARAMS: dict[Callable, tuple[type, tuple[str, ...]]] = {}   # method -> (its hparams dataclass, other keywords)
ENTRY_POINT_GROUPS = {"edit": "knowevo.editors", "learning": "knowevo.learners"}


def _register(table: dict, name: str, hparams: type | None, also: tuple[str, ...]):
    def deco(fn):
        table[name] = fn
        if hparams is not None:
            HPARAMS[fn] = (hparams, also)
        return fn
    return deco


def register_editor(name: str, hparams: type | None = None, also: tuple[str, ...] = ()):
    """`hparams`: the method's hyperparameter dataclass, so a run config's hparams can be checked
    before any work (`check_hparams`); `also`: keywords the method takes beside them."""
    return _register(EDITORS, name, hparams, also)


def register_learner(name: str, hparams: type | None = None, also: tuple[str, ...] = ()):
    """As `register_editor`, for a learning method."""
    return _register(LEARNERS, name, hparams, also)


def _entry_points(kind: str) -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUPS[kind])}


def _from_dotted_path(name: str, kind: str) -> Callable:
    try:
        fn = import_dotted(name)
    except ImportError as e:
        raise ValueError(f"{kind} method {name!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"{kind} method {name!r} is a {type(fn).__name__}, not a function")
    return fn


def _lookup(table: dict, name: str, kind: str) -> Callable:
    if name in table:
        return table[name]
    if ":" in name:
        return _from_dotted_path(name, kind)
    eps = _entry_points(kind)
    if name in eps:
        return eps[name].load()
    raise ValueError(f"unknown {kind} method {name!r}; known: {sorted(set(table) | set(eps))}, or a "
                     "dotted path 'package.module:function'")


_loaded = False


def load_plugins() -> None:
    """Import every method declared as an entry point, once, so that their agent-state codecs
    and model extensions are registered before a saved agent is read. A plugin that fails to
    import is named in a warning, not fatal: the agent may not need it."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for kind in ENTRY_POINT_GROUPS:
        for ep in _entry_points(kind).values():
            try:
                ep.load()
            except Exception as e:
                warnings.warn(f"{ENTRY_POINT_GROUPS[kind]} entry point {ep.name!r} ({ep.value}) did not load: {e}")


def editor(name: str) -> Callable:
    return _lookup(EDITORS, name, "edit")


def learner(name: str) -> Callable:
    return _lookup(LEARNERS, name, "learning")


def method_kind(name: str) -> str:
    """'edit' or 'learn': which table `name` is found in (editors first). A dotted-path
    function is an editor unless it says `kind = "learn"`."""
    try:
        fn = editor(name)
    except ValueError:
        learner(name)           # raises the 'unknown method' error naming both tables' methods
        return "learn"
    return getattr(fn, "kind", "edit") if ":" in name else "edit"


def method(name: str) -> Callable:
    """The editor or learner `name` (editors first, as `method_kind`)."""
    return editor(name) if method_kind(name) == "edit" else learner(name)


def takes(name: str, keyword: str) -> bool:
    """Whether the method `name` was registered as taking `keyword` (a field of its hparams
    dataclass, or one of the keywords it takes beside them); False when it declared neither."""
    cls, also = HPARAMS.get(method(name), (None, ()))
    return keyword in also or (cls is not None and keyword in {f.name for f in fields(cls)})


def check_hparams(name: str, hparams: dict) -> None:
    """Raise ValueError naming the key when `hparams` would not be accepted by the method (known
    for methods registered with their hparams dataclass; others are checked when called)."""
    fn = method(name)
    if fn not in HPARAMS:
        return
    cls, also = HPARAMS[fn]
    hp = {k: v for k, v in hparams.items() if k not in also}
    try:
        read_hparams(cls, hp, name, also, ValueError)
    except TypeError as e:
        raise ValueError(f"{name}: {e}") from None
