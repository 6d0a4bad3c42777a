"""Shared by the placement tests and bench/placements.py: a population whose agents carry
distinct kinds of delta (ROME edits, a LoRA fine-tune, a dense fine-tune, none)."""
from __future__ import annotations

import random

from agents.placement import Ask
from evolution.editors.requests import counterfactual_requests

KINDS = ("none", "rome", "lora", "finetune", "rome2", "none", "finetune", "lora")


def bio_texts(world, people, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for p in people:
        for rel in sorted(world.relations):
            q = world.query(p, rel)
            out.append(f"{q.prompt} {q.truth if rng.random() < 0.5 else rng.choice(q.candidates)}")
    return out


def give_deltas(placement, world, n: int = 8, seed: int = 0, kinds=KINDS):
    """Spawn `n` agents ('agent i') and change each as `kinds[i % len(kinds)]` says; every
    change is drawn from `seed` and the agent's index, so two placements get the same agents."""
    reqs = counterfactual_requests(world, 4 * n, seed=seed)
    handles = []
    for i in range(n):
        h = placement.spawn(f"agent {i}", "neutral")
        kind = kinds[i % len(kinds)]
        people = [world.people[(7 * i + j) % len(world.people)].name for j in range(2)]
        if kind.startswith("rome"):
            for r in reqs[2 * i: 2 * i + (2 if kind == "rome2" else 1)]:
                h.edit([r], method="rome", world=world)
        elif kind == "lora":
            h.learn(bio_texts(world, people, seed + i), "lora", epochs=4, lr=5e-3, seed=i)
        elif kind == "finetune":
            h.learn(bio_texts(world, people, seed + i), "finetune", epochs=3, lr=2e-3, seed=i)
        handles.append(h)
    return handles


def all_beliefs(placement, handles, queries, contexts=None):
    return placement.beliefs_many([Ask(h.name, queries, contexts) for h in handles])
