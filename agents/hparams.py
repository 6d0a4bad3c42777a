"""Methods' hyperparameters: one base for every editor's and learner's dataclass.

A method's hparams are a dataclass subclassing `HyperParams`: fields with defaults, and
`rules()` saying what a good value of each is. `read(kwargs)` builds one from keyword
arguments (a call's, a command line's, a run config's): an unknown name is an error listing
the known ones (a typo must not fall back to a default silently), a switch declared `bool`
takes only True or False ("False" from a command line is a truthy string), and a list given
for a tuple field becomes a tuple. Every rule is checked on construction, so a bad value fails
before any work, naming the field and what a good value is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar


def is_int(v, least: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (least is None or v >= least)


def is_number(v, least: float | None = None, above: float | None = None, most: float | None = None) -> bool:
    """A finite int or float (not a bool) with the bounds given: `least` <= v, `above` < v, v <= `most`."""
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (least is None or v >= least) and (above is None or v > above) and (most is None or v <= most))


@dataclass
class HyperParams:
    method: ClassVar[str] = ""                       # named in error messages
    error: ClassVar[type[Exception]] = ValueError    # what the method raises for bad input

    def rules(self) -> dict[str, tuple[bool, str]]:
        """{field: (whether its value is good, what a good value is)}."""
        return {}

    def __post_init__(self) -> None:
        for name, (ok, want) in self.rules().items():
            if not ok:
                raise self.error(f"{self.method}: hparam {name}={getattr(self, name)!r} is invalid; give {want}")

    @classmethod
    def read(cls, hp: dict, also_known=(), error: type[Exception] | None = None) -> "HyperParams":
        """The hparams from keyword arguments; `also_known`: keywords the method takes beside
        them (named in the unknown-name error)."""
        return read_hparams(cls, hp, cls.method, also_known, error or cls.error)


def read_hparams(cls, hp: dict, method: str, also_known=(), error: type[Exception] = ValueError):
    """Any hparams dataclass (a `HyperParams` or a user's plain one) from keyword arguments, as
    `HyperParams.read` says."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(hp) - known)
    if unknown:
        raise error(f"{method}: unknown hparam {unknown[0]!r}; known: {sorted(known | set(also_known))}")
    hp = dict(hp)
    for f in fields(cls):
        if f.name not in hp:
            continue
        kind = str(f.type)
        if kind in ("bool", str(bool)) and not isinstance(hp[f.name], bool):
            raise error(f"{method}: hparam {f.name}={hp[f.name]!r} must be true or false "
                        f"(on the command line: --set {f.name}=false)")
        if kind.startswith("tuple") and isinstance(hp[f.name], list):
            hp[f.name] = tuple(hp[f.name])
    try:
        return cls(**hp)
    except error:
        raise
    except ValueError as e:        # the class's own error, asked for as `error`
        raise error(str(e)) from None
