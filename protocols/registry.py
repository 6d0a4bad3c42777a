"""Protocols by name: classes registered in code, the entry-point group `knowevo.protocols`
(where knowevo's pyproject.toml declares its built-ins, as a user's package declares its
own), a dotted path `package.module:Class`, or a strategy string mixing patterns by round
("debate,reflection,debate", as in MachineSoM): parsed here into the patterns' instances,
which a `Strategy` holds."""
from __future__ import annotations

from importlib.metadata import entry_points

from agents.plugins import import_dotted
from protocols.base import Protocol, ProtocolError
from protocols.strategy import Strategy

ENTRY_POINT_GROUP = "knowevo.protocols"
_REGISTERED: dict[str, type[Protocol]] = {}


def register_protocol(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator: make `cls` known by its `name`."""
    if not (isinstance(cls, type) and issubclass(cls, Protocol)) or not cls.name:
        raise ProtocolError(f"register_protocol: {cls!r} must subclass protocols.base.Protocol and set `name`")
    _REGISTERED[cls.name] = cls
    return cls


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_protocols() -> list[str]:
    return sorted(set(_REGISTERED) | set(_entry_points()))


def _load(path: str, what: str) -> type[Protocol]:
    try:
        obj = import_dotted(path)
    except ImportError as e:
        raise ProtocolError(f"protocol: cannot load {what}: {e}") from None
    if not (isinstance(obj, type) and issubclass(obj, Protocol)):
        raise ProtocolError(f"protocol: {path!r} is not a subclass of protocols.base.Protocol")
    return obj


def get_protocol(name: str) -> type[Protocol]:
    """The protocol class called `name` (or at the dotted path `name`)."""
    if not isinstance(name, str) or not name.strip():
        raise ProtocolError(f"protocol: {name!r}; give a protocol name, e.g. one of {known_protocols()}")
    name = name.strip()
    if ":" in name:
        return _load(name, "class")
    if name in _REGISTERED:
        return _REGISTERED[name]
    eps = _entry_points()
    if name in eps:
        obj = eps[name].load()
        if not (isinstance(obj, type) and issubclass(obj, Protocol)):
            raise ProtocolError(f"protocol: entry point {name!r} ({eps[name].value}) is not a Protocol subclass")
        return obj
    raise ProtocolError(f"protocol: unknown protocol {name!r}; known: {known_protocols()}; or give "
                        "'package.module:Class', or a strategy of known names such as 'debate,reflection,debate'")


def make_protocol(spec: str, params: dict | None = None) -> Protocol:
    """A protocol instance from a name, dotted path or strategy string, with its parameters
    (checked by name and type before any work). A strategy's parameters are its own (`rounds`,
    `synchronous`, `until_consensus`) and, under a pattern's name, that pattern's:
    {debate: {judge: true}}."""
    params = dict(params or {})
    if isinstance(spec, str) and "," in spec:
        return _strategy(spec, params)
    return get_protocol(spec)(**params)


def _strategy(spec: str, params: dict) -> Strategy:
    names = [p.strip() for p in spec.split(",")]
    if not all(names):
        raise ProtocolError(f"protocol: strategy {spec!r} has an empty pattern; write names "
                            "separated by commas, e.g. 'debate,reflection,debate'")
    classes = {}
    for n in names:
        try:
            classes[n] = get_protocol(n)
        except ProtocolError:
            raise ProtocolError(f"protocol: strategy {spec!r} has an unknown pattern {n!r}; "
                                f"known: {known_protocols()} (or 'package.module:Class')") from None
    per = {k: params.pop(k) for k in list(params) if k in classes}
    for k, v in per.items():
        if not isinstance(v, dict):
            raise ProtocolError(f"params.{k}: give the {k!r} pattern's parameters as a mapping")
    return Strategy([classes[n](**per.get(n, {})) for n in names], **params)
