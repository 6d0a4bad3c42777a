"""What a protocol is: who is shown which claims in a round, how they read, when talk stops.

A protocol never touches a model. In each round the session asks it, for every agent and
query, which claims the agent sees (`sees`), renders them as context (`render`, by default
in the claim format the default model was pretrained on, "agent 3 answers Y ." followed by
the question; debate's supporting facts read "agent 3 says : X works in Z ."; with
`confidence` on, each claim states how sure its speaker is, "agent 3 is sure : Y ." when the
speaker's probability of Y is at least `sure_at`, else "agent 3 thinks : Y ."), and after
the round asks whether to stop (`done`). Everything random draws from `self.rng(...)`,
keyed by the run's seed and by what it is for, so a rerun (or a resumed run) makes the
same choices. A new protocol is one small subclass:

    from protocols.base import Claim, Protocol, Turn

    class LoudestOnly(Protocol):
        name = "loudest"
        rounds: int = 2                      # parameters: annotated class attributes

        def sees(self, turn: Turn) -> list[Claim]:
            said = [c for n in turn.neighbours if (c := turn.board.latest(n, turn.query))]
            return said[:1]

Register it with `@register_protocol`, the entry-point group `knowevo.protocols`, or give
`package.module:LoudestOnly` as the protocol in a run config; `check_protocol` tests it.
"""
from __future__ import annotations

import itertools
import random
import re
import zlib
from dataclasses import dataclass
from typing import ClassVar

from agents.records import Belief
from envs.facts import Fact, Query
from envs.world import World, claim, stated, support


SPEAKERS = 50   # the default model's pretraining named peers 'agent 0'..'agent 49'
_LABEL = re.compile(r"agent (\d+)")


class ProtocolError(ValueError):
    """Bad protocol input: the message names the parameter and the fix."""


def keyed_rng(seed: int, *keys) -> random.Random:
    """A generator fixed by (seed, keys): the same choice every time it is asked for, in
    whatever order choices are made (which is what makes runs resumable)."""
    return random.Random(zlib.crc32("/".join(map(str, (seed, *keys))).encode()))


def speaker_labels(speakers) -> dict[str, str]:
    """How the model reads each speaker of one context. The default model was pretrained on
    peers named 'agent 0'..'agent 49': those names are shown as they are; any other speaker
    (agent 50 of a population of 1,000, a confederate) is shown as the lowest of those names no
    speaker of this context uses. Records keep the real names; only the text changes, so a
    population of any size talks in the format its model knows, as long as one agent is shown
    at most 50 speakers at once."""
    names = list(dict.fromkeys(speakers))
    kept = {n for n in names if (m := _LABEL.fullmatch(n)) and int(m.group(1)) < SPEAKERS}
    free = (f"agent {j}" for j in range(SPEAKERS) if f"agent {j}" not in kept)
    out = {}
    for n in names:
        label = n if n in kept else next(free, None)
        if label is None:
            raise ProtocolError(f"one context shows {len(names)} speakers; the default model tells at most "
                                f"{SPEAKERS} apart ('agent 0'..'agent {SPEAKERS - 1}'); use a sparser graph or "
                                "show fewer claims")
        out[n] = label
    return out


@dataclass(frozen=True)
class Claim:
    """One thing an agent is shown: `speaker` says `subject`'s `relation` is `object`,
    optionally backed by a related fact the speaker believes. `scripted` marks claims
    nobody's model made (Asch confederates)."""
    speaker: str
    subject: str
    relation: str
    object: str
    support: Fact | None = None
    scripted: bool = False
    p: float | None = None          # the speaker's probability of `object` (stated with `confidence`)

    def about(self, query: Query) -> bool:
        return self.subject == query.subject and self.relation == query.relation


@dataclass
class Said:
    """One speaker's answer to one query in one round: its belief, the claim it made, and
    the claims it was shown."""
    belief: Belief
    claim: Claim
    shown: list[Claim]


class Board:
    """Every claim made so far, by round. `until(r)` is the view of rounds before r: what
    everyone sees in a synchronous round (Du et al.); an asynchronous round sees the board
    itself, so later speakers see earlier speakers' answers of the same round."""

    def __init__(self, _said: dict | None = None, limit: int | None = None):
        self._said: dict[tuple[str, str, str], list[tuple[int, Claim]]] = {} if _said is None else _said
        self.limit = limit

    def post(self, round: int, c: Claim) -> None:
        said = self._said.setdefault((c.speaker, c.subject, c.relation), [])
        said[:] = [(r, x) for r, x in said if r != round] + [(round, c)]
        said.sort(key=lambda rc: rc[0])

    def until(self, round: int) -> "Board":
        return Board(self._said, round)

    def _visible(self, speaker: str, query: Query) -> list[tuple[int, Claim]]:
        said = self._said.get((speaker, query.subject, query.relation), [])
        return [(r, c) for r, c in said if self.limit is None or r < self.limit]

    def latest(self, speaker: str, query: Query) -> Claim | None:
        """The last claim `speaker` made about `query` that this view shows."""
        said = self._visible(speaker, query)
        return said[-1][1] if said else None

    def said(self, round: int, speaker: str, query: Query) -> Claim | None:
        return next((c for r, c in self._visible(speaker, query) if r == round), None)

    def answers(self, round: int, speakers, query: Query) -> list[str]:
        return [c.object for s in speakers if (c := self.said(round, s, query))]


@dataclass(frozen=True)
class Turn:
    """One agent about to answer one query in one round."""
    round: int
    agent: str
    query: Query
    neighbours: tuple[str, ...]     # from the run's graph
    board: Board                    # what may be seen (see Board)


def _params(cls) -> dict[str, object]:
    out: dict[str, object] = {}
    for k in reversed(cls.__mro__):
        for name, ann in getattr(k, "__annotations__", {}).items():
            if not str(ann).startswith("ClassVar") and not name.startswith("_") and hasattr(cls, name):
                out[name] = getattr(cls, name)
    return out


def _same_kind(default, v) -> bool:
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(v, bool):
        return isinstance(v, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(v, (int, float))
    return isinstance(v, type(default))


class Protocol:
    name: ClassVar[str] = ""
    rounds: int = 3                 # rounds after round 0 (independent answers)
    synchronous: bool = True        # False: agents answer in order and see the latest answers
    until_consensus: bool = False   # stop early once all agents agree on every query
    confidence: bool = False        # claims state their speaker's confidence (sure / thinks)
    sure_at: float = 0.5            # the probability from which a speaker says it is sure

    def __init__(self, **params):
        known = self.parameters()
        for k, v in params.items():
            if k not in known:
                raise ProtocolError(f"params.{k}: protocol {self.name!r} has no parameter {k!r}; "
                                    f"its parameters: {sorted(known)}")
            default = known[k]
            if not _same_kind(default, v):
                raise ProtocolError(f"params.{k}: {v!r} is not a {type(default).__name__} "
                                    f"(protocol {self.name!r}, default {default!r})")
            setattr(self, k, v)
        self.validate()
        self.world: World | None = None
        self.seed = 0
        self.agents: list[str] = []

    @classmethod
    def parameters(cls) -> dict[str, object]:
        """Parameter name -> default: the class's annotated attributes."""
        return _params(cls)

    def validate(self) -> None:
        if self.rounds < 1:
            raise ProtocolError(f"rounds: {self.rounds}; a protocol needs at least 1 round after round 0")
        if not 0.0 < self.sure_at <= 1.0:
            raise ProtocolError(f"params.sure_at: {self.sure_at}; give a probability in (0, 1]")

    def bind(self, world: World, seed: int, agents: list[str], make_agent=None) -> None:
        """Called once before round 0 with the run's world, seed and agent names.
        `make_agent(name)` gives a fresh agent on the base weights (for judges)."""
        self.world, self.seed, self.agents, self.make_agent = world, seed, list(agents), make_agent

    def rng(self, *keys) -> random.Random:
        return keyed_rng(self.seed, self.name, *keys)

    def free_speakers(self, k: int, *keys) -> list[str]:
        """k speaker names that no agent of the run uses, drawn from the seed: 'agent <i>' with
        i < 50 (the speakers the default model was pretrained on) while enough are free, then
        further 'agent <i>' (shown under a free trained name, see `speaker_labels`)."""
        free = [f"agent {i}" for i in range(SPEAKERS) if f"agent {i}" not in self.agents]
        if k > len(free):
            taken = set(self.agents)
            more = (n for i in itertools.count(SPEAKERS) if (n := f"agent {i}") not in taken)
            free += list(itertools.islice(more, k - len(free)))
        return self.rng("speakers", *keys).sample(free, k)

    # -- what a subclass writes ----------------------------------------------------------
    def sees(self, turn: Turn) -> list[Claim]:
        """The claims `turn.agent` is shown before answering `turn.query` in rounds >= 1
        (round 0 is always everyone answering alone)."""
        raise NotImplementedError(f"{type(self).__name__}.sees")

    def render(self, claims: list[Claim], turn: Turn) -> str:
        """Context text placed before the question: each claim, then its support (speakers as
        `speaker_labels` shows them)."""
        rel, label = self.world.relations, speaker_labels(c.speaker for c in claims)
        parts = []
        for c in claims:
            if self.confidence and c.p is not None:     # scripted claims carry none: plain
                parts.append(stated(c.object, label[c.speaker], c.p >= self.sure_at))
            else:
                parts.append(claim(rel[c.relation], c.subject, c.object, label[c.speaker]))
            if c.support is not None:
                parts.append(support(rel[c.support.relation], c.support.subject, c.support.object,
                                     label[c.speaker]))
        return " ".join(parts)

    def support_relation(self, relation: str, round: int) -> str | None:
        """For a claim about `relation` made in `round`: the relation of the fact that backs
        it (debate), or None. The session asks the speaker's model for it."""
        return None

    def after_round(self, round: int, board: Board, queries: list[Query]) -> list:
        """Extra speakers after everyone answered (a judge): returns `Said` items, whose
        claims the protocol has posted on `board` if others are to see them."""
        return []

    def done(self, round: int, board: Board, queries: list[Query]) -> bool:
        if round >= self.rounds:
            return True
        if self.until_consensus and round >= 0:
            return all(len(set(board.answers(round, self.agents, q))) <= 1 for q in queries)
        return False

    def pattern(self, round: int) -> str:
        """Which pattern runs `round` (a strategy mixes several)."""
        return self.name

    def describe(self) -> dict:
        return {"protocol": self.name, **{k: getattr(self, k) for k in self.parameters()}}
