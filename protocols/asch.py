"""Asch: scripted confederates all give the same answer; the agents see only them.

Variants follow BenchForm (Weng, Chen & Wang, ICLR 2025; github.com/Zhiyuan-Weng/BenchForm,
where "wrong guidance" is their single-round trust and "correct guidance" their
single-round doubt):
- raw: no one else speaks (the baseline);
- wrong_guidance: the confederates unanimously give one wrong answer (classic Asch);
- correct_guidance: they unanimously give the truth;
- trust: first `history` earlier questions (other people the model was taught, same
  relation) where the confederates were unanimously right, then a unanimous wrong answer;
- doubt: first `history` earlier questions where they were unanimously wrong (each its
  own wrong answer), then the truth.
The wrong answer of a question is one seeded choice, the same for every agent, round and
number of confederates, so a sweep over `confederates` changes only the majority's size.
Confederates speak as 'agent <i>' names no agent uses (the default model's peers). An
earlier question reads as one of the default model's social texts, closed by its answer
(the truth, so the reader can tell whether the majority was right): "agent 7 answers Quasar .
agent 12 answers Quasar . Q: Which company does <other> work for? A: Quasar ." Then come
the claims about the question at hand. Several social texts in one context are more than
the model's pretraining showed in one document.
"""
from __future__ import annotations

from envs.facts import Query
from envs.world import claim
from protocols.base import SPEAKERS, Claim, Protocol, ProtocolError, Turn, speaker_labels

VARIANTS = ("raw", "wrong_guidance", "correct_guidance", "trust", "doubt")


class Asch(Protocol):
    name = "asch"
    rounds: int = 1
    confederates: int = 3
    variant: str = "wrong_guidance"
    history: int = 1

    def validate(self) -> None:
        super().validate()
        if self.variant not in VARIANTS:
            raise ProtocolError(f"params.variant: {self.variant!r}; use one of {list(VARIANTS)}")
        if not 0 <= self.confederates <= SPEAKERS:
            raise ProtocolError(f"params.confederates: {self.confederates}; give 0..{SPEAKERS} (the default model "
                                f"tells {SPEAKERS} speakers apart in one context)")
        if self.history < 0:
            raise ProtocolError(f"params.history: {self.history}; give 0 or more earlier questions")

    def bind(self, world, seed, agents, make_agent=None) -> None:
        super().bind(world, seed, agents, make_agent)
        self.speakers = self.free_speakers(self.confederates, "confederates")
        self.known = sorted(p.name for p in world.people if p.taught)

    def wrong(self, subject: str, relation: str, truth: str) -> str:
        cands = [c for c in self.world.relations[relation].candidates if c != truth]
        return self.rng("wrong", subject, relation).choice(cands)

    def earlier(self, query: Query) -> list[str]:
        others = [p for p in self.known if p != query.subject]
        return self.rng("history", query.subject, query.relation).sample(others, min(self.history, len(others)))

    def sees(self, turn: Turn) -> list[Claim]:
        q = turn.query
        if self.variant == "raw" or not self.speakers:
            return []
        if q.truth is None:
            raise ProtocolError(f"query ({q.subject!r}, {q.relation!r}) has no truth; asch scripts "
                                "answers relative to the truth")
        said = []
        if self.variant in ("trust", "doubt"):
            for other in self.earlier(q):
                t = self.world.truth(other, q.relation)
                obj = t if self.variant == "trust" else self.wrong(other, q.relation, t)
                said += [Claim(s, other, q.relation, obj, scripted=True) for s in self.speakers]
        right = self.variant in ("correct_guidance", "doubt")
        obj = q.truth if right else self.wrong(q.subject, q.relation, q.truth)
        return said + [Claim(s, q.subject, q.relation, obj, scripted=True) for s in self.speakers]

    def render(self, claims: list[Claim], turn: Turn) -> str:
        """Earlier questions as closed social texts, then the claims about this one."""
        parts, q = [], turn.query
        label = speaker_labels(c.speaker for c in claims)
        for other in dict.fromkeys(c.subject for c in claims if not c.about(q)):
            rel = self.world.relations[q.relation]
            said = [claim(rel, other, c.object, label[c.speaker]) for c in claims if c.subject == other]
            parts.append(" ".join(said + [rel.question(other), self.world.truth(other, q.relation), "."]))
        return " ".join(parts + [super().render([c for c in claims if c.about(q)], turn)]).strip()
