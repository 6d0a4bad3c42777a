"""What an erasure left behind in the answers: the erased facts' accuracy (argmax and greedy
generation, asked and held-out forms) beside the same model's accuracy on people it was never
taught (the level an erased fact should sink to, not below: a model that answers "anything but
the truth" still knows the truth), and locality on other people's facts and on the erased
people's other relations, against the agent before the erasure (analysis.edit_metrics's
EditBaseline). Read through the agent's answers only; whether the fact is still inside the
model is evolution.residue's question.
"""
from __future__ import annotations

import pandas as pd

from agents.records import to_frame
from analysis.edit_metrics import (EditBaseline, MetricsError, _check_requests, _mean_correct, _mean_generated,
                                   _same_generated, _unchanged, edit_baseline, perplexity)
from envs.facts import Query
from envs.world import World


def erased_queries(world: World, requests, form: str = "question") -> list[Query]:
    """The erased facts, asked in `form`, with the world's truth."""
    return [world.query(r.subject, r.relation, form) for r in requests]


def never_taught_queries(world: World, relations) -> list[Query]:
    """Every never-taught person's fact on `relations`, question form."""
    rels = set(relations)
    return [world.query(p.name, r, "question") for p in world.people if not p.taught
            for r in world.relations_of(p.name) if r in rels]


def erasure_baseline(agent, world: World, requests, n_locality: int = 200, n_bios: int = 20,
                     seed: int = 0) -> EditBaseline:
    """The agent before the erasure, on the locality queries (edit_baseline's)."""
    _check_requests(world, list(requests))
    return edit_baseline(agent, world, requests, n_locality=n_locality, n_bios=n_bios, seed=seed)


def evaluate_erasure(agent, world: World, requests, before: EditBaseline, generation: bool = True) -> dict:
    """Keys: erased_accuracy (question form), erased_accuracy_heldout, erased_p_truth, and with
    `generation` erased_gen / erased_gen_heldout (greedy continuation starts with the truth);
    never_taught_accuracy and never_taught_p_truth on the same relations, the level to meet;
    locality, locality_same_person (and *_gen), bio_ppl_ratio; n_* counts."""
    requests = list(requests)
    _check_requests(world, requests)
    if not isinstance(before, EditBaseline):
        raise MetricsError(f"before: {type(before).__name__}; give erasure_baseline(agent, world, requests) "
                           "of the agent before the erasure")
    asked = erased_queries(world, requests)
    n_held = min(len(world.relations[r.relation].heldout) for r in requests)
    held = [q for i in range(n_held) for q in erased_queries(world, requests, f"heldout:{i}")]
    strangers = never_taught_queries(world, {r.relation for r in requests})
    if not strangers:
        raise MetricsError("the world has no never-taught person on the erased relations, so there is no level "
                           "to compare with; use a world with untaught_fraction > 0")
    asked_df = to_frame(agent.beliefs(asked, form="question"))
    strangers_df = to_frame(agent.beliefs(strangers, form="question"))
    out = {"erased_accuracy": float(asked_df.correct.mean()),
           "erased_accuracy_heldout": _mean_correct(held, agent, "heldout")[0],
           "erased_p_truth": float(asked_df.p_truth.mean()),
           "never_taught_accuracy": float(strangers_df.correct.mean()),
           "never_taught_p_truth": float(strangers_df.p_truth.mean()),
           "n_requests": len(requests), "n_heldout": len(held), "n_never_taught": len(strangers)}
    if generation:
        out["erased_gen"] = _mean_generated(asked, agent)
        out["erased_gen_heldout"] = _mean_generated(held, agent)
    loc_q = [Query(r.subject, r.relation, r.prompt, tuple(r.candidates), r.truth) for r in before.locality.itertuples()]
    out["locality"] = _unchanged(before.locality, to_frame(agent.beliefs(loc_q, form="question")))
    same_q = [Query(r.subject, r.relation, r.prompt, tuple(r.candidates), r.truth)
              for r in before.same_person.itertuples()]
    out["locality_same_person"] = _unchanged(before.same_person, to_frame(agent.beliefs(same_q, form="question"))) \
        if same_q else float("nan")
    if generation:
        out["locality_gen"] = _same_generated(loc_q, before.locality_generated, agent)
        out["locality_same_person_gen"] = _same_generated(same_q, before.same_person_generated, agent) \
            if same_q else float("nan")
    out["n_locality"], out["n_locality_same_person"] = len(loc_q), len(same_q)
    out["bio_ppl_ratio"] = before.perplexity / perplexity(agent, before.bios) if before.bios else None
    return out


def erasure_table(rows: list[dict]) -> pd.DataFrame:
    """One row per method, the columns a reader compares first."""
    cols = ["erased_accuracy", "erased_accuracy_heldout", "erased_gen", "never_taught_accuracy", "erased_p_truth",
            "never_taught_p_truth", "locality", "locality_same_person", "locality_gen", "bio_ppl_ratio"]
    df = pd.DataFrame(rows).set_index("method")
    return df[[c for c in cols if c in df.columns] + [c for c in df.columns if c not in cols]]
