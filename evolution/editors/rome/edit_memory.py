"""The keys of the edits already written into a model, so that a new edit leaves them alone.

Measured on the small test model: six sequential ROME edits, each landing when made, kept
only 3 of 6 at the end, because each rank-one update u^T k also moves earlier edits' keys
(u.k_earlier / u.k* averaged 0.1-0.3). Adding the earlier keys to the covariance,

    u = (C + protect_weight * sum_j k_j k_j^T)^-1 k*,

makes u nearly orthogonal to them (the denominator keeps W' k* = W k* + delta exact), as
MEMIT does for the edits of one batch. Keys of the same subject are not protected: a new
edit of that person is computed on the already-edited model, and its KL term holds the
person's other answers, the earlier edit included.

The memory is the agent's own method state (`agent.state["edit_memory"]`), not a cache keyed
by the model object: a placement that materializes many agents on one scratch model hands
each edit its own agent's memory, and the memory is saved and loaded with the agent's delta
(agents/state.py). A spawned agent starts with an empty memory.
"""
from __future__ import annotations

import torch

from agents.state import register_state

KEY = "edit_memory"


def _memory(agent) -> dict[int, list[tuple[str, torch.Tensor]]]:
    return agent.state.setdefault(KEY, {})


def prior_keys(agent, layer: int, exclude_subjects=()) -> torch.Tensor | None:
    """[m, d_ff] keys of earlier edits of `layer` (other subjects), or None."""
    rows = [k for s, k in _memory(agent).get(layer, []) if s not in set(exclude_subjects)]
    return torch.stack(rows) if rows else None


def remember(agent, layer: int, entries: list[tuple[str, torch.Tensor]]) -> None:
    _memory(agent).setdefault(layer, []).extend((s, k.detach().double().cpu()) for s, k in entries)


def forget(agent) -> None:
    agent.state.pop(KEY, None)


def _to_tensors(mem) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, subjects = {}, {}
    for layer, rows in mem.items():
        if rows:
            tensors[f"{KEY}.{layer}"] = torch.stack([k for _, k in rows]).contiguous()
            subjects[str(layer)] = [s for s, _ in rows]
    return tensors, {"subjects": subjects}


def _from_tensors(tensors: dict[str, torch.Tensor], meta: dict):
    return {int(layer): list(zip(subs, tensors[f"{KEY}.{layer}"].double()))
            for layer, subs in meta["subjects"].items()}


register_state(KEY, _to_tensors, _from_tensors)


def protected(cov: torch.Tensor, keys: torch.Tensor | None, weight: float) -> torch.Tensor:
    """cov + weight * K^T K (float64)."""
    if keys is None or weight == 0:
        return cov
    k = keys.double().to(cov.device)
    return cov + weight * k.T @ k
