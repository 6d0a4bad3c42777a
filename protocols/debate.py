"""Debate: each agent sees its neighbours' answers, each backed by a related fact the
speaker believes, with an optional judge.

The support of a claim about (person, relation) is the speaker's belief about the same
person's related relation (company -> company_city, birth_city -> birth_date, university
-> major, and back), asked of the speaker's own model with its own answer as context
("agent 2 says : X works at Acorn Labs ." then the question of X's work city). It is shown
right after the claim, as a full sentence by the same speaker (`envs.world.support`).
Claims of the last round are shown to nobody, so they get no support (no calls).

`judge`: after each round a separate agent on the base weights reads every agent's claim
and answers (records with agent "judge"); `moderator` also shows its verdict to everyone
in the next round (under a speaker name no agent uses).
"""
from __future__ import annotations

from envs.world import RELATED
from protocols.base import Board, Claim, Protocol, ProtocolError, Said, Turn


class Debate(Protocol):
    name = "debate"
    supported: bool = True      # back each claim with a related fact
    judge: bool = False
    moderator: bool = False     # the judge's verdict is shown to all in the next round

    def bind(self, world, seed, agents, make_agent=None) -> None:
        super().bind(world, seed, agents, make_agent)
        self.related = {r: s for r, s in RELATED.items() if r in world.relations and s in world.relations}
        self.judge_agent = None
        if self.judge or self.moderator:
            if make_agent is None:
                raise ProtocolError("params.judge: a judge needs a fresh agent but this session gives no "
                                 "make_agent; run through evolution.run or pass make_agent to play()")
            self.judge_agent = make_agent("judge")
            self.judge_speaker = self.free_speakers(1, "judge")[0]

    def support_relation(self, relation: str, round: int) -> str | None:
        return self.related.get(relation) if self.supported and round < self.rounds else None

    def sees(self, turn: Turn) -> list[Claim]:
        said = [c for n in turn.neighbours if (c := turn.board.latest(n, turn.query)) is not None]
        if self.moderator and (v := turn.board.latest(self.judge_speaker, turn.query)) is not None:
            said.append(v)
        return said

    def after_round(self, round: int, board: Board, queries) -> list[Said]:
        if self.judge_agent is None:
            return []
        shown = [[c for a in self.agents if (c := board.said(round, a, q)) is not None] for q in queries]
        contexts = [self.render(s, Turn(round, "judge", q, (), board)) for s, q in zip(shown, queries)]
        out = []
        for q, s, b in zip(queries, shown, self.judge_agent.beliefs(queries, context=contexts)):
            c = Claim(self.judge_speaker, q.subject, q.relation, b.answer, p=b.confidence)
            board.post(round, c)
            out.append(Said(b, c, s))
        return out
