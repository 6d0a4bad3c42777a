"""Belief records: the one currency every part of knowevo exchanges.

One row per (run, generation, round, agent, subject, relation). Protocols, editors, the loop
and the analysis all read and write these rows; every metric is a pandas computation on them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd


@dataclass
class Belief:
    subject: str
    relation: str
    prompt: str
    candidates: list[str]
    probs: list[float]
    answer: str
    truth: str | None
    confidence: float            # probability of `answer`
    p_truth: float | None        # probability of `truth`
    agent: str = ""
    context: str = ""            # text placed before the question
    run: str = ""
    generation: int = 0
    round: int = 0
    protocol: str = ""
    peer_answers: list[str] = field(default_factory=list)   # what the agent was shown
    n_confederates: int = 0
    form: str = ""               # which prompt form was asked ('question', 'heldout:0', ...)

    @property
    def correct(self) -> bool:
        return self.truth is not None and self.answer == self.truth

    def prob(self, candidate: str) -> float:
        return self.probs[self.candidates.index(candidate)]


RECORD_COLUMNS = [f for f in Belief.__dataclass_fields__]


def to_frame(beliefs: list[Belief]) -> pd.DataFrame:
    df = pd.DataFrame([asdict(b) for b in beliefs], columns=RECORD_COLUMNS)
    df["correct"] = df["answer"] == df["truth"]
    return df


def beliefs_from_scores(queries, contexts: list[str], scores, agent: str = "", **fields) -> list[Belief]:
    """Belief records from summed candidate log-probs (any backend's)."""
    import torch
    scores = [torch.as_tensor(s, dtype=torch.float64) for s in scores]
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(scores):
        by_len.setdefault(len(s), []).append(i)
    probs_of: list = [None] * len(scores)
    for idx in by_len.values():            # one softmax per candidate count, not per query
        for i, p in zip(idx, torch.softmax(torch.stack([scores[i] for i in idx]), 1).tolist()):
            probs_of[i] = [round(x, 6) for x in p]
    out = []
    for q, c, s, probs in zip(queries, contexts, scores, probs_of):
        a = int(s.argmax())
        out.append(Belief(q.subject, q.relation, q.prompt, list(q.candidates), probs, q.candidates[a], q.truth,
                          probs[a], probs[q.candidates.index(q.truth)] if q.truth else None,
                          agent=agent, context=c, **fields))
    return out


def prompts_with_context(queries, context) -> tuple[list[str], list[str]]:
    """(contexts, full prompts): `context` is one text for all queries or one per query."""
    if isinstance(context, (list, tuple)):
        if len(context) != len(queries):
            raise ValueError(f"context: {len(context)} texts for {len(queries)} queries; give one "
                             "text per query or a single text")
        contexts = [c or "" for c in context]
    else:
        contexts = [context or ""] * len(queries)
    return contexts, [f"{c.strip()} {q.prompt}".strip() for c, q in zip(contexts, queries)]
