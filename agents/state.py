"""Method-owned agent state (ROME/MEMIT's edit memory, ...): what a method keeps about an
agent beside its weights, saved and loaded with the agent.

A method registers a codec for its key: `to_tensors(value) -> (tensors, json meta)` and
`from_tensors(tensors, meta) -> value`. `save_state` writes `state.safetensors` (tensors named
`<key>.*`) and `state.json`; a key without a codec is an error at save time, not a silent
loss. State lives in `agent.state` (a dict), never in a cache keyed by a model object.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

CODECS: dict[str, tuple[Callable, Callable]] = {}
EXTENSIONS: dict[str, tuple[Callable, Callable]] = {}
ROWS: dict[str, Callable] = {}


def register_state(key: str, to_tensors: Callable, from_tensors: Callable) -> None:
    CODECS[key] = (to_tensors, from_tensors)


def register_extension(key: str, take: Callable, put: Callable, rows: Callable | None = None) -> None:
    """A method that adds modules to a model (WISE's side memory) says how its state leaves a
    model and goes back into a plain one: `take(model) -> value or None` (None: not there),
    `put(model, value)`. In a snapshot or a saved dir the value travels as agent state under
    `key` (which needs a codec too), so the agent is base + delta + this state, and every
    placement, `Agent.save` and `Agent.load` bring it back without a method-specific call.

    `rows(model, value) -> {module name: RowAddition}` (optional) gives the same change as
    additions to the outputs of the base model's own modules. With it a population placement
    scores the agent on its shared base model, row by row beside other agents, instead of on a
    model of the agent's own."""
    EXTENSIONS[key] = (take, put)
    if rows is not None:
        ROWS[key] = rows


def _builtins() -> None:
    from agents.methods import load_plugins     # the methods register their codecs and extensions on import
    load_plugins()


def take_extensions(model) -> dict:
    """{key: value} of the registered extensions this model carries."""
    _builtins()
    return {k: v for k, (take, _) in EXTENSIONS.items() if (v := take(model)) is not None}


def carries_extensions(state: dict) -> bool:
    """Whether `state` holds a registered extension's value (an agent with modules of its own)."""
    _builtins()
    return any(k in EXTENSIONS for k in state)


def put_extensions(model, state: dict) -> dict:
    """Install the extension values found in `state` into `model`; the rest of the state."""
    _builtins()
    for k, v in state.items():
        if k in EXTENSIONS:
            EXTENSIONS[k][1](model, v)
    return {k: v for k, v in state.items() if k not in EXTENSIONS}


@dataclass(frozen=True)
class RowAddition:
    """What an agent's extension adds to one module's output, for the rows `x` of the module's
    input that are the agent's: `add(x, prepared)`. `prepare(x)` (optional) computes the
    tensors (rows first) `add` reads before the agent's own state comes in; additions that hold
    the same `prepare` object have it computed once per batch, over all their agents' rows."""
    add: Callable
    prepare: Callable | None = None


def row_additions(model, state: dict) -> dict[str, list[RowAddition]] | None:
    """Per module name of `model`, the additions the extensions in `state` make to its output;
    None when one of them has no row form (the agent needs a model of its own)."""
    _builtins()
    out: dict[str, list[RowAddition]] = {}
    for k, v in state.items():
        if k in EXTENSIONS:
            if k not in ROWS:
                return None
            for mname, add in ROWS[k](model, v).items():
                out.setdefault(mname, []).append(add)
    return out


def _codec(key: str):
    if key not in CODECS:
        _builtins()
    if key not in CODECS:
        raise ValueError(f"agent state {key!r} has no codec; its method must call "
                         "agents.state.register_state(key, to_tensors, from_tensors)")
    return CODECS[key]


def state_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {}
    for key, value in state.items():
        t, m = _codec(key)[0](value)
        bad = [k for k in t if not k.startswith(key + ".")]
        if bad:
            raise ValueError(f"agent state {key!r}: tensor names {bad[:3]} must start with '{key}.'")
        tensors.update({k: v.detach().cpu().contiguous() for k, v in t.items()})
        meta[key] = m
    return tensors, meta


def state_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    return {key: _codec(key)[1]({k: v for k, v in tensors.items() if k.startswith(key + ".")}, m)
            for key, m in meta.items()}


def save_state(state: dict, path: str | Path) -> None:
    path = Path(path)
    tensors, meta = state_tensors(state)
    if tensors:
        save_file(tensors, str(path / "state.safetensors"))
    (path / "state.json").write_text(json.dumps(meta))


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if not (path / "state.json").exists():
        return {}
    meta = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "state.safetensors")) if (path / "state.safetensors").exists() else {}
    return state_from_tensors(tensors, meta)
