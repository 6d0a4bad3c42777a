"""Shared by the editing and learning tests: requests the small model can be edited on."""
from __future__ import annotations

from evolution.editors.requests import EditRequest, counterfactual_requests


def known_requests(agent, world, n: int, seed: int = 1, relations=None) -> list[EditRequest]:
    """`n` counterfactual requests on facts the agent answers correctly now (so an edit is a
    change, and the request is not refused as already answered)."""
    reqs = counterfactual_requests(world, 3 * n, seed=seed, relations=relations)
    beliefs = agent.beliefs([world.query(r.subject, r.relation) for r in reqs])
    out = [r for r, b in zip(reqs, beliefs) if b.correct][:n]
    assert len(out) == n, f"only {len(out)} of {3 * n} requests are on facts the small model knows"
    return out


def answers(agent, world, requests, form: str = "question") -> list[str]:
    return [b.answer for b in agent.beliefs([r.query(world, form) for r in requests])]
