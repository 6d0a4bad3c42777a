"""Belief records: the one currency every part of knowevo exchanges.

One row per (run, generation, round, agent, subject, relation). Protocols, editors, the loop
and the analysis all read and write these rows; every metric is a pandas computation on them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

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


@dataclass
class Record(Belief):
    """A belief record with what a protocol run adds: who spoke (a judge's speaker label
    differs from its agent name), the agent's persona, the round's pattern (strategies),
    the sweep point, and the fact offered in support (debate)."""
    speaker: str = ""
    persona: str = ""
    pattern: str = ""
    trial: str = ""
    support_relation: str = ""
    support_object: str = ""


RECORD_FIELDS = [f.name for f in fields(Record)]


def to_frame(records: list[Belief], kind: type | None = None) -> pd.DataFrame:
    """One row per record, one column per field of its class (`kind`, else the first record's,
    else Belief), and `correct`. The one way records become a table (and a Parquet part)."""
    kind = kind or (type(records[0]) if records else Belief)
    df = pd.DataFrame([asdict(b) for b in records], columns=[f.name for f in fields(kind)])
    df["correct"] = df["answer"] == df["truth"]
    return df


def records_from_frame(df: pd.DataFrame) -> list[Record]:
    """The Records of a table written by `to_frame` (a run's parts), with Python types back."""
    out = []
    for row in df[RECORD_FIELDS].to_dict("records"):
        for k in ("candidates", "probs", "peer_answers"):
            row[k] = [x.item() if hasattr(x, "item") else x for x in row[k]]
        for k in ("generation", "round", "n_confederates"):
            row[k] = int(row[k])
        for k in ("confidence", "p_truth"):
            row[k] = None if row[k] is None or pd.isna(row[k]) else float(row[k])
        out.append(Record(**row))
    return out


def beliefs_from_scores(queries, contexts: list[str], scores, agent: str = "", **fields) -> list[Belief]:
    """Belief records from summed candidate log-probs (any backend's). One softmax, rounding
    and argmax per candidate count, not per query: at 16,000 queries a round, per-query
    Python here cost as much as a tenth of the forward."""
    import torch
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(scores):
        by_len.setdefault(len(s), []).append(i)
    probs_of: list = [None] * len(scores)
    best: list = [0] * len(scores)
    for idx in by_len.values():
        stacked = torch.stack([torch.as_tensor(scores[i], dtype=torch.float64) for i in idx])
        probs = (torch.softmax(stacked, 1).mul_(1e6).round_().div_(1e6)).tolist()   # 6 decimals
        for i, p, a in zip(idx, probs, stacked.argmax(1).tolist()):
            probs_of[i], best[i] = p, a
    out = []
    for q, c, probs, a in zip(queries, contexts, probs_of, best):
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
