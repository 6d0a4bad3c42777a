"""The keys of the edits already written into a model, so that a new edit leaves them alone.

Measured on the small test model: six sequential ROME edits, each landing when made, kept
only 3 of 6 at the end, because each rank-one update u^T k also moves earlier edits' keys
(u.k_earlier / u.k* averaged 0.1-0.3). Adding the earlier keys to the covariance,

    u = (C + protect_weight * sum_j k_j k_j^T)^-1 k*,

makes u nearly orthogonal to them (the denominator keeps W' k* = W k* + delta exact), as
MEMIT does for the edits of one batch. Keys of the same subject are not protected: a new
edit of that person rewrites the person's one key, so its value is found for all of the
person's edits at once (`with_earlier_facts`: the facts kept beside the keys), as MEMIT does for
a subject's requests in one batch. Measured: of 100 sequential ROME edits (norm-anchored),
17 landed and were lost later, 9 of them edits of a person edited again, whose KL term alone
had not held the earlier edit.

The memory is the agent's own method state (`agent.state["edit_memory"]`), not a cache keyed
by the model object: a placement that materializes many agents on one scratch model hands
each edit its own agent's memory, and the memory is saved and loaded with the agent's delta
(agents/state.py). A spawned agent starts with an empty memory.
"""
from __future__ import annotations

import torch

from agents.state import register_state
from evolution.editors.requests import EditRequest, joint_requests

KEY = "edit_memory"
FACTS = "edit_facts"


def _memory(agent) -> dict[int, list[tuple[str, torch.Tensor]]]:
    return agent.state.setdefault(KEY, {})


def prior_keys(agent, layer: int, exclude_subjects=()) -> torch.Tensor | None:
    """[m, d_ff] keys of earlier edits of `layer` (other subjects), or None."""
    rows = [k for s, k in _memory(agent).get(layer, []) if s not in set(exclude_subjects)]
    return torch.stack(rows) if rows else None


def remember(agent, layer: int, entries: list[tuple[str, torch.Tensor]]) -> None:
    _memory(agent).setdefault(layer, []).extend((s, k.detach().double().cpu()) for s, k in entries)


def remember_facts(agent, requests) -> None:
    """Keep each edited fact of a person (a later edit of the same relation replaces it)."""
    facts = agent.state.setdefault(FACTS, {})
    for r in requests:
        held = [f for f in facts.get(r.subject, []) if f[0] != r.relation]
        facts[r.subject] = held + [(r.relation, r.prompt, r.target)]


def with_earlier_facts(agent, requests: list[EditRequest]) -> list[EditRequest]:
    """The requests' people's earlier edits that the requests leave alone, then the requests
    (requests.joint_requests): what each edited person's key must answer afterwards."""
    return joint_requests(agent.state.get(FACTS, {}), requests)


def forget(agent) -> None:
    agent.state.pop(KEY, None)
    agent.state.pop(FACTS, None)


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
register_state(FACTS, lambda facts: ({}, {s: [list(f) for f in fs] for s, fs in facts.items()}),
               lambda tensors, meta: {s: [tuple(f) for f in fs] for s, fs in meta.items()})


def protected(cov: torch.Tensor, keys: torch.Tensor | None, weight: float) -> torch.Tensor:
    """cov + weight * K^T K (float64)."""
    if keys is None or weight == 0:
        return cov
    k = keys.double().to(cov.device)
    return cov + weight * k.T @ k
