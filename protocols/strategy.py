"""A strategy: patterns mixed by round, as in MachineSoM (Zhang et al., "Exploring
Collaboration Mechanisms for LLM Agents"): "debate,reflection,debate" runs round 1 as a
debate, round 2 as a reflection, round 3 as a debate (round 0 is everyone alone).

A claim's support is asked for by the pattern of the round that shows it (the next one).
Records carry the strategy string as `protocol` and the round's pattern as `pattern`.
A strategy holds its patterns' instances; strategy strings are parsed where protocols are made
(`protocols.registry.make_protocol`), so this module does not know the registry.
"""
from __future__ import annotations

from protocols.base import Board, Claim, Protocol, ProtocolError, Turn


class Strategy(Protocol):
    """Patterns (protocol instances), one per round; `make_protocol("debate,reflection,debate")`
    builds one from a strategy string."""
    name = "strategy"

    def __init__(self, patterns, **params):
        parts = list(patterns)
        if not parts or not all(isinstance(p, Protocol) for p in parts):
            raise ProtocolError(f"patterns: {patterns!r}; give protocol instances, one per round (or a strategy "
                                "string such as 'debate,reflection,debate' to protocols.registry.make_protocol)")
        self.name = ",".join(p.name for p in parts)
        if "rounds" in params and params["rounds"] != len(parts):
            raise ProtocolError(f"rounds: {params['rounds']} but strategy {self.name!r} names {len(parts)} rounds; "
                                "drop `rounds` or make them match")
        params["rounds"] = len(parts)
        self.parts = parts
        super().__init__(**params)
        for k in ("confidence", "sure_at"):     # how claims read holds for every pattern
            if k in params:
                for p in parts:
                    setattr(p, k, params[k])

    def bind(self, world, seed, agents, make_agent=None) -> None:
        super().bind(world, seed, agents, make_agent)
        for p in self.parts:
            p.bind(world, seed, agents, make_agent)

    def part(self, round: int) -> Protocol | None:
        return self.parts[round - 1] if 1 <= round <= len(self.parts) else None

    def pattern(self, round: int) -> str:
        p = self.part(round)
        return p.name if p is not None else "initial"

    def sees(self, turn: Turn) -> list[Claim]:
        return self.part(turn.round).sees(turn)

    def render(self, claims: list[Claim], turn: Turn) -> str:
        return self.part(turn.round).render(claims, turn)

    def support_relation(self, relation: str, round: int) -> str | None:
        nxt = self.part(round + 1)
        return nxt.support_relation(relation, 0) if nxt is not None else None

    def after_round(self, round: int, board: Board, queries) -> list:
        p = self.part(round)
        return p.after_round(round, board, queries) if p is not None else []
