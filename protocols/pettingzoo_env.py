"""Any protocol as a PettingZoo environment: `ProtocolParallelEnv` (everyone answers at once,
one step per round) and `ProtocolAECEnv` (agents answer in turn; with a protocol built
`synchronous=False`, a turn-based debate where each sees the latest answers).

The envs are an adapter over the session's `Stage` (protocols/session.py): the stage decides
what an agent is shown and records what it said, as in `play`; the env only turns that into
observations and actions. So judges and moderators run here too (give `make_agent`), and
`env.records` are the rows `play` writes, with one difference: an action is a choice, so an
agent's record holds it as a certain belief (probability 1 on the chosen candidate).

An episode is one query. An observation is the text the agent sees (the protocol's
rendered context, then the question) as its UTF-8 bytes, zero-padded, in an integer `Box`
(uint8, `max_bytes` long): `api_test` needs observations with a numpy dtype, which a
gymnasium `Text` observation (a Python str) does not have. The text itself, the query and
the context are in `infos[agent]`; `observation_text(obs)` decodes the bytes. An action is
the index of the answer among the query's candidates (`Discrete`), or, when the protocol
backs claims with a related fact (debate), `MultiDiscrete([answers, supports])`. The reward
is 1 for the true answer, else 0. The language model is a policy outside `step()`:
`AgentPolicy` (an `agents.agent.Agent` or a handle, answering as `play` would) and
`random_policy` plug into the same env, as would a scripted or opinion-dynamics rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv, ParallelEnv
from pettingzoo.utils import AgentSelector

from agents.records import Record, beliefs_from_scores
from envs.facts import Fact, Query
from envs.world import World
from protocols.base import Protocol, ProtocolError, keyed_rng
from protocols.session import Plan, Stage, believe, supports
from protocols.topology import build_graph


def observation_text(obs: np.ndarray) -> str:
    return bytes(np.asarray(obs, dtype=np.uint8)).rstrip(b"\0").decode("utf-8")


@dataclass(frozen=True)
class Seat:
    """An agent of the env: its name in the conversation and the persona its records carry."""
    name: str
    persona: str = "neutral"


def _seats(agents) -> list[Seat]:
    if isinstance(agents, int):
        return [Seat(f"agent {i}") for i in range(agents)]
    return [Seat(a) if isinstance(a, str) else Seat(a.name, getattr(a, "persona", "neutral")) for a in agents]


class _ProtocolGame:
    """What both envs share: the episode's stage, the round, and the spaces."""

    def __init__(self, protocol: Protocol, world: World, queries: list[Query], agents=3,
                 graph="complete", seed: int = 0, max_bytes: int = 2048, make_agent=None):
        self.seats = _seats(agents)
        self.names = [s.name for s in self.seats]
        if not self.names:
            raise ProtocolError("agents: no agents; give at least 1")
        if len(set(self.names)) != len(self.names):
            raise ProtocolError(f"agents: names must be unique, got {self.names}")
        if not queries:
            raise ProtocolError("queries: none given; an episode asks one of them")
        cands = {q.candidates for q in queries}
        if len(cands) != 1:
            raise ProtocolError("queries: an env needs queries with one candidate set (one relation), so "
                                "the action space is fixed; make one env per relation")
        self.protocol, self.world, self.queries, self.max_bytes = protocol, world, list(queries), max_bytes
        self.seed, self.make_agent = seed, make_agent
        self.graph = graph if isinstance(graph, nx.Graph) else build_graph(graph, self.names, seed)
        self.ids = [n.replace(" ", "_") for n in self.names]
        self.seat_of = dict(zip(self.ids, self.seats))
        self.name_of = {i: s.name for i, s in self.seat_of.items()}
        protocol.bind(world, seed, self.names, make_agent)
        rel = queries[0].relation
        sup = {protocol.support_relation(rel, r) for r in range(protocol.rounds)} - {None}
        if len(sup) > 1:
            raise ProtocolError(f"protocol {protocol.name!r} backs {rel!r} with several relations {sorted(sup)}; "
                                "an env supports one")
        self.support = sup.pop() if sup else None
        n = len(queries[0].candidates)
        act = (spaces.MultiDiscrete([n, len(world.relations[self.support].candidates)]) if self.support
               else spaces.Discrete(n))
        self.action_spaces = {a: act for a in self.ids}
        self.observation_spaces = {a: spaces.Box(0, 255, (max_bytes,), np.uint8) for a in self.ids}
        self.episodes = keyed_rng(seed, "episodes")
        self.records: list[Record] = []

    def start(self, seed: int | None, options: dict | None) -> None:
        if seed is not None:
            self.seed = seed
            self.episodes = keyed_rng(seed, "episodes")
            for sp in list(self.action_spaces.values()) + list(self.observation_spaces.values()):
                sp.seed(seed)
        i = (options or {}).get("query")
        if i is None:
            i = self.episodes.randrange(len(self.queries))
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.queries):
            raise ProtocolError(f"options['query']: {i!r}; give an index in 0..{len(self.queries) - 1}")
        self.query = self.queries[int(i)]
        self.stage = Stage(self.protocol, self.world, [self.query], self.graph, self.seed, self.names,
                           self.make_agent, form="question")
        self.round, self.finished, self.records = 0, False, []

    def plan(self, aid: str, agent=None) -> Plan:
        """What `aid` is shown now (nothing once the talk is over: the terminal observation is
        the bare question); `agent` answers for it (a policy's model)."""
        seat = self.seat_of[aid]
        if self.finished:
            return Plan(agent or seat, seat.name, seat.persona, [[]], [""])
        return self.stage.plan(agent or seat, self.round, seat.name, seat.persona)

    def info(self, aid: str) -> dict:
        plan = self.plan(aid)
        context = plan.contexts[0]
        sq = self.world.query(self.query.subject, self.support) if self.support else None
        return {"text": f"{context} {self.query.prompt}".strip(), "context": context, "query": self.query,
                "round": self.round, "peer_answers": [c.object for c in plan.shown[0] if c.about(self.query)],
                "support_query": sq}

    def observe(self, aid: str, info: dict | None = None) -> np.ndarray:
        """`info`'s text (by default `aid`'s info now) as the observation's bytes."""
        raw = (info or self.info(aid))["text"].encode("utf-8")
        if len(raw) > self.max_bytes:
            raise ProtocolError(f"max_bytes: the observation of {aid} is {len(raw)} bytes; build the env "
                                f"with max_bytes >= {len(raw)}")
        out = np.zeros(self.max_bytes, np.uint8)
        out[:len(raw)] = np.frombuffer(raw, np.uint8)
        return out

    def act(self, aid: str, action) -> float:
        """Post `aid`'s answer for this round and record it; its reward."""
        space = self.action_spaces[aid]
        if not space.contains(np.asarray(action, dtype=space.dtype)):
            raise ProtocolError(f"action of {aid}: {action!r} is outside {space}")
        a = np.asarray(action).reshape(-1)
        q, plan = self.query, self.plan(aid)
        scores = [[0.0 if i == int(a[0]) else float("-inf") for i in range(len(q.candidates))]]
        chosen = beliefs_from_scores([q], plan.contexts, scores, plan.speaker, run="", form="question")
        rel = self.protocol.support_relation(q.relation, self.round)
        sup = Fact(q.subject, rel, self.world.relations[rel].candidates[int(a[1])]) if rel and self.support else None
        self.records += self.stage.post(self.round, plan, chosen, [sup])
        return float(chosen[0].answer == q.truth)

    def end_round(self) -> bool:
        """After everyone answered: the protocol's extra speakers (a judge), then whether the
        talk stops; the next round begins."""
        extra, self.finished = self.stage.close(self.round)
        self.records += extra
        self.round += 1
        return self.finished

    def render(self) -> str:
        # after the last step `round` already points past the end: name the round last played
        head = f"finished after round {self.round - 1}" if self.finished else f"round {self.round}"
        lines = [f"{head}: {self.query.prompt} (truth: {self.query.truth})"]
        for n in self.names:
            c = self.stage.board.latest(n, self.query)
            lines.append(f"  {n}: {c.object if c else '-'}")
        return "\n".join(lines)


class _GameEnv:
    """What both envs forward to their game."""
    game: _ProtocolGame

    @property
    def records(self) -> list[Record]:
        """The episode's belief records, as `play` writes them."""
        return self.game.records

    def observation_space(self, agent):
        return self.game.observation_spaces[agent]

    def action_space(self, agent):
        return self.game.action_spaces[agent]

    def render(self):
        return self.game.render()

    def close(self):
        pass


class ProtocolParallelEnv(_GameEnv, ParallelEnv):
    """Simultaneous rounds: one `step` is one round of every agent answering. Only for
    synchronous protocols (everyone sees the board as it was before the round); a protocol
    built `synchronous=False` runs in `ProtocolAECEnv`."""
    metadata = {"name": "knowevo_protocol_parallel_v0", "render_modes": ["ansi"]}

    def __init__(self, protocol: Protocol, world: World, queries: list[Query], agents=3, graph="complete",
                 seed: int = 0, max_bytes: int = 2048, render_mode: str | None = None, make_agent=None):
        if not protocol.synchronous:
            raise ProtocolError(f"protocol {protocol.name!r} is asynchronous (each agent sees this round's earlier "
                                "answers), which one simultaneous step cannot show; use ProtocolAECEnv")
        self.game = _ProtocolGame(protocol, world, queries, agents, graph, seed, max_bytes, make_agent)
        self.possible_agents = list(self.game.ids)
        self.agents: list[str] = []
        self.render_mode = render_mode

    def reset(self, seed=None, options=None):
        self.game.start(seed, options)
        self.agents = list(self.possible_agents)
        infos = {a: self.game.info(a) for a in self.agents}
        return {a: self.game.observe(a, infos[a]) for a in self.agents}, infos

    def step(self, actions):
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ProtocolError(f"actions: no action for {missing}; every live agent answers each round")
        rewards = {a: self.game.act(a, actions[a]) for a in self.agents}
        end = self.game.end_round()
        live = list(self.agents)
        infos = {a: self.game.info(a) for a in live}
        obs = {a: self.game.observe(a, infos[a]) for a in live}
        terms = {a: end for a in live}
        truncs = {a: False for a in live}
        if end:
            self.agents = []
        return obs, rewards, terms, truncs, infos


class ProtocolAECEnv(_GameEnv, AECEnv):
    """Turns: agents answer one at a time, in order; a round ends when all have answered."""
    metadata = {"name": "knowevo_protocol_aec_v0", "render_modes": ["ansi"]}

    def __init__(self, protocol: Protocol, world: World, queries: list[Query], agents=3, graph="complete",
                 seed: int = 0, max_bytes: int = 2048, render_mode: str | None = None, make_agent=None):
        super().__init__()
        self.game = _ProtocolGame(protocol, world, queries, agents, graph, seed, max_bytes, make_agent)
        self.possible_agents = list(self.game.ids)
        self.agents = []
        self.render_mode = render_mode

    def observe(self, agent):
        return self.game.observe(agent)

    def reset(self, seed=None, options=None):
        self.game.start(seed, options)
        self.agents = list(self.possible_agents)
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self._selector = AgentSelector(self.agents)
        self.agent_selection = self._selector.reset()
        self.infos = {a: self.game.info(a) for a in self.agents}

    def step(self, action):
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        self._cumulative_rewards[agent] = 0.0
        self._clear_rewards()
        self.rewards[agent] = self.game.act(agent, action)
        if self._selector.is_last() and self.game.end_round():
            self.terminations = {a: True for a in self.agents}
        self.agent_selection = self._selector.next()
        self.infos = {a: self.game.info(a) for a in self.agents}
        self._accumulate_rewards()


# -- policies (outside step) -----------------------------------------------------------------
def random_policy(env, agent: str, obs=None, info=None):
    return env.action_space(agent).sample()


class AgentPolicy:
    """An agent (an Agent or a placement's handle) as a policy: it answers what the env shows
    it as it would in `play` (its belief given the context, blended with its prior by its own
    persona; in a debate env the related fact it believes given its own answer). The env's
    records carry the seat's persona: give the env the same agents (`agents=[...]`)."""

    def __init__(self, agent):
        self.agent = agent
        self.priors: dict = {}

    def __call__(self, env, agent_id: str, obs=None, info=None):
        game = env.unwrapped.game
        plan = game.plan(agent_id, self.agent)
        plan.persona = getattr(self.agent, "persona", plan.persona)
        beliefs = believe([plan], game.stage.queries, self.priors)
        q, b = game.query, beliefs[0][0]
        ans = q.candidates.index(b.answer)
        if game.support is None:
            return ans
        sup = supports(game.stage, [plan], beliefs, game.round)[0][0]
        cands = game.world.relations[game.support].candidates
        return np.array([ans, cands.index(sup.object) if sup is not None else 0], dtype=np.int64)
