"""Saving a side memory beside a model dir, and putting it back.

`Agent.save` writes the model through `save_pretrained`, which sees the main memory only (side
memories are non-persistent buffers: a saved dir stays a plain checkpoint that transformers
and vLLM load). The side memory goes to two extra files in the same dir:
`wise.safetensors` (shard deltas, masks, thresholds, key centre and whitening) and
`wise.json` (layer, structure, margins' unit, the edits each shard holds). So:

    agent.save(d); save_side_memory(agent, d)
    agent = Agent.load(d); load_side_memory(agent, d)

Without `load_side_memory` the loaded agent is the unedited main model: the edits live only
in the side memory. A side memory is not a weight delta, so it cannot be exported as a LoRA
adapter (agents/adapters.py sees `agent.delta() == {}` after WISE edits).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from agents.state import register_extension, register_state
from evolution.editors.requests import EditError
from evolution.editors.wise.memory import install, side_memory_of

TENSORS = ("deltas", "masks", "thresholds", "center", "whiten")


def save_side_memory(agent, path: str | Path) -> Path:
    """Write the agent's side memory into `path` (a model dir); an error if it has none."""
    value = take_memory(agent.model)
    if value is None:
        raise EditError("save_side_memory: this agent has no side memory (no 'wise' edit was made)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: value[k].detach().cpu().contiguous() for k in TENSORS}, str(path / "wise.safetensors"))
    (path / "wise.json").write_text(json.dumps(_meta(value), indent=1))
    return path


def has_side_memory(path: str | Path) -> bool:
    return (Path(path) / "wise.safetensors").exists()


def load_side_memory(agent, path: str | Path):
    """Install the side memory saved in `path` into the agent's model (replacing any it has)."""
    path = Path(path)
    if not has_side_memory(path):
        raise EditError(f"load_side_memory: {str(path)!r} has no wise.safetensors; save it with save_side_memory")
    value = _value(load_file(str(path / "wise.safetensors")), json.loads((path / "wise.json").read_text()))
    mem = side_memory_of(agent.model)
    if mem is not None and mem.layer != value["layer"]:
        raise EditError(f"load_side_memory: the agent has a side memory at layer {mem.layer}, the saved one is at "
                        f"layer {value['layer']}; uninstall it first (evolution.editors.wise.uninstall)")
    mem = install(agent.model, value["layer"])
    if tuple(value["deltas"].shape[1:]) != mem.shape:
        raise EditError(f"load_side_memory: saved shards have shape {tuple(value['deltas'].shape[1:])}, the "
                        f"model's down-projection {mem.shape}; load it into the model it was made on")
    return put_memory(agent.model, value)


# -- the side memory as a value: the files above, and agent state (placements, Agent.save/load) -
KEY = "wise_memory"


def take_memory(model) -> dict | None:
    mem = side_memory_of(model)
    if mem is None:
        return None
    return {**mem.state(), "layer": mem.layer, "structure": dict(getattr(mem, "structure", {}))}


def put_memory(model, value: dict):
    """Install `value` as the model's side memory, on the model's device and in its dtypes."""
    mem = install(model, value["layer"])
    dev, dtype = mem.weight.device, mem.weight.dtype
    as_ = {"masks": torch.bool, "thresholds": torch.float32}
    mem.restore({k: v.to(dev, as_.get(k, dtype)) if k in TENSORS else v for k, v in value.items()})
    mem.structure = dict(value["structure"])
    return mem


def _meta(value: dict) -> dict:
    """The JSON part of a side memory (the rest is TENSORS)."""
    return {"layer": value["layer"], "structure": value["structure"], "ref_norm": value["ref_norm"],
            "shard_prompts": [[list(e) for e in shard] for shard in value["shard_prompts"]]}


def _value(tensors: dict, meta: dict) -> dict:
    return {**{k: tensors[k] for k in TENSORS}, "layer": meta["layer"], "structure": meta.get("structure", {}),
            "ref_norm": meta["ref_norm"], "shard_prompts": [[tuple(e) for e in s] for s in meta["shard_prompts"]]}


def _to_tensors(value: dict):
    return {f"{KEY}.{k}": value[k] for k in TENSORS}, _meta(value)


def _from_tensors(tensors: dict, meta: dict) -> dict:
    return _value({k: tensors[f"{KEY}.{k}"] for k in TENSORS}, meta)


register_state(KEY, _to_tensors, _from_tensors)
register_extension(KEY, take_memory, put_memory)
