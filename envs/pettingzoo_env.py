"""Any protocol as a PettingZoo environment: `ProtocolParallelEnv` (everyone answers at once,
one step per round) and `ProtocolAECEnv` (agents answer in turn; with a protocol built
`synchronous=False`, a turn-based debate where each sees the latest answers).

An episode is one query. An observation is the text the agent sees (the protocol's
rendered context, then the question) as its UTF-8 bytes, zero-padded, in an integer `Box`
(uint8, `max_bytes` long): `api_test` needs observations with a numpy dtype, which a
gymnasium `Text` observation (a Python str) does not have. The text itself, the query and
the context are in `infos[agent]`; `observation_text(obs)` decodes the bytes. An action is
the index of the answer among the query's candidates (`Discrete`), or, when the protocol
backs claims with a related fact (debate), `MultiDiscrete([answers, supports])`. The reward
is 1 for the true answer, else 0. The language model is a policy outside `step()`:
`AgentPolicy` (an `agents.agent.Agent`, persona included) and `random_policy` plug into
the same env, as would a scripted or opinion-dynamics rule.
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv, ParallelEnv
from pettingzoo.utils import AgentSelector

from envs.facts import Fact, Query
from envs.world import World, support
from protocols.base import Board, Claim, Protocol, ProtocolError, Turn, keyed_rng, speaker_labels
from protocols.personas import blend, social_weight
from protocols.topology import build_graph, neighbours


def observation_text(obs: np.ndarray) -> str:
    return bytes(np.asarray(obs, dtype=np.uint8)).rstrip(b"\0").decode("utf-8")


class _ProtocolGame:
    """What both envs share: the query, the board, and each agent's view of it."""

    def __init__(self, protocol: Protocol, world: World, queries: list[Query], agents=3,
                 graph="complete", seed: int = 0, max_bytes: int = 2048):
        self.names = [f"agent {i}" for i in range(agents)] if isinstance(agents, int) else list(agents)
        if not self.names:
            raise ProtocolError("agents: no agents; give at least 1")
        if not queries:
            raise ProtocolError("queries: none given; an episode asks one of them")
        cands = {q.candidates for q in queries}
        if len(cands) != 1:
            raise ProtocolError("queries: an env needs queries with one candidate set (one relation), so "
                                "the action space is fixed; make one env per relation")
        self.protocol, self.world, self.queries, self.max_bytes = protocol, world, list(queries), max_bytes
        self.seed = seed
        self.graph = build_graph(graph, self.names, seed)
        self.nbrs = neighbours(self.graph, self.names)
        self.ids = [n.replace(" ", "_") for n in self.names]
        self.name_of = dict(zip(self.ids, self.names))
        protocol.bind(world, seed, self.names)
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

    def start(self, seed: int | None, options: dict | None) -> None:
        if seed is not None:
            self.seed = seed
            self.episodes = keyed_rng(seed, "episodes")
            self.protocol.bind(self.world, seed, self.names)
            for sp in list(self.action_spaces.values()) + list(self.observation_spaces.values()):
                sp.seed(seed)
        i = (options or {}).get("query")
        if i is None:
            i = self.episodes.randrange(len(self.queries))
        if not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.queries):
            raise ProtocolError(f"options['query']: {i!r}; give an index in 0..{len(self.queries) - 1}")
        self.query = self.queries[int(i)]
        self.board, self.round, self.finished = Board(), 0, False

    def view(self, name: str) -> tuple[Turn, list[Claim], str]:
        board = self.board.until(self.round) if self.protocol.synchronous else self.board
        turn = Turn(self.round, name, self.query, self.nbrs[name], board)
        claims = list(self.protocol.sees(turn)) if self.round > 0 and not self.finished else []
        return turn, claims, self.protocol.render(claims, turn) if claims else ""

    def info(self, aid: str) -> dict:
        _, claims, context = self.view(self.name_of[aid])
        text = f"{context} {self.query.prompt}".strip()
        sq = self.world.query(self.query.subject, self.support) if self.support else None
        return {"text": text, "context": context, "query": self.query, "round": self.round,
                "peer_answers": [c.object for c in claims if c.about(self.query)], "support_query": sq}

    def observe(self, aid: str) -> np.ndarray:
        raw = self.info(aid)["text"].encode("utf-8")
        if len(raw) > self.max_bytes:
            raise ProtocolError(f"max_bytes: the observation of {aid} is {len(raw)} bytes; build the env "
                                f"with max_bytes >= {len(raw)}")
        out = np.zeros(self.max_bytes, np.uint8)
        out[:len(raw)] = np.frombuffer(raw, np.uint8)
        return out

    def act(self, aid: str, action) -> float:
        """Post `aid`'s answer for this round; its reward."""
        a = np.asarray(action).reshape(-1)
        space = self.action_spaces[aid]
        if not space.contains(np.asarray(action, dtype=space.dtype)):
            raise ProtocolError(f"action of {aid}: {action!r} is outside {space}")
        obj = self.query.candidates[int(a[0])]
        sup = None
        if self.support:
            sup = Fact(self.query.subject, self.support, self.world.relations[self.support].candidates[int(a[1])])
            if self.protocol.support_relation(self.query.relation, self.round) is None:
                sup = None
        self.board.post(self.round, Claim(self.name_of[aid], self.query.subject, self.query.relation, obj, sup))
        return float(obj == self.query.truth)

    def over(self) -> bool:
        """After a round: whether the protocol stops (the terminal observation is then the
        bare question: nothing more is shown)."""
        self.finished = self.protocol.done(self.round, self.board, [self.query])
        return self.finished

    def render(self) -> str:
        # after the last step `round` already points past the end: name the round last played
        head = f"finished after round {self.round - 1}" if self.finished else f"round {self.round}"
        lines = [f"{head}: {self.query.prompt} (truth: {self.query.truth})"]
        for n in self.names:
            c = self.board.latest(n, self.query)
            lines.append(f"  {n}: {c.object if c else '-'}")
        return "\n".join(lines)


class ProtocolParallelEnv(ParallelEnv):
    """Simultaneous rounds: one `step` is one round of every agent answering."""
    metadata = {"name": "knowevo_protocol_parallel_v0", "render_modes": ["ansi"]}

    def __init__(self, protocol: Protocol, world: World, queries: list[Query], agents=3, graph="complete",
                 seed: int = 0, max_bytes: int = 2048, render_mode: str | None = None):
        self.game = _ProtocolGame(protocol, world, queries, agents, graph, seed, max_bytes)
        self.possible_agents = list(self.game.ids)
        self.agents: list[str] = []
        self.render_mode = render_mode

    def observation_space(self, agent):
        return self.game.observation_spaces[agent]

    def action_space(self, agent):
        return self.game.action_spaces[agent]

    def reset(self, seed=None, options=None):
        self.game.start(seed, options)
        self.agents = list(self.possible_agents)
        return {a: self.game.observe(a) for a in self.agents}, {a: self.game.info(a) for a in self.agents}

    def step(self, actions):
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ProtocolError(f"actions: no action for {missing}; every live agent answers each round")
        rewards = {a: self.game.act(a, actions[a]) for a in self.agents}
        end = self.game.over()
        self.game.round += 1
        live = list(self.agents)
        obs = {a: self.game.observe(a) for a in live}
        infos = {a: self.game.info(a) for a in live}
        terms = {a: end for a in live}
        truncs = {a: False for a in live}
        if end:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def render(self):
        return self.game.render()

    def close(self):
        pass


class ProtocolAECEnv(AECEnv):
    """Turns: agents answer one at a time, in order; a round ends when all have answered."""
    metadata = {"name": "knowevo_protocol_aec_v0", "render_modes": ["ansi"]}

    def __init__(self, protocol: Protocol, world: World, queries: list[Query], agents=3, graph="complete",
                 seed: int = 0, max_bytes: int = 2048, render_mode: str | None = None):
        super().__init__()
        self.game = _ProtocolGame(protocol, world, queries, agents, graph, seed, max_bytes)
        self.possible_agents = list(self.game.ids)
        self.agents = []
        self.render_mode = render_mode

    def observation_space(self, agent):
        return self.game.observation_spaces[agent]

    def action_space(self, agent):
        return self.game.action_spaces[agent]

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
        if self._selector.is_last():
            if self.game.over():
                self.terminations = {a: True for a in self.agents}
            self.game.round += 1
        self.agent_selection = self._selector.next()
        self.infos = {a: self.game.info(a) for a in self.agents}
        self._accumulate_rewards()

    def render(self):
        return self.game.render()

    def close(self):
        pass


# -- policies (outside step) -----------------------------------------------------------------
def random_policy(env, agent: str, obs=None, info=None):
    return env.action_space(agent).sample()


class AgentPolicy:
    """An Agent as a policy: the argmax of its beliefs given the text the env shows it, its
    persona applied as in protocols.session (against its belief without context), and in a
    debate env its belief about the related fact given its own answer."""

    def __init__(self, agent):
        self.agent = agent
        self.weight = social_weight(agent.persona)
        self._priors: dict[Query, object] = {}

    def __call__(self, env, agent_id: str, obs=None, info=None):
        info = info if info is not None else env.infos[agent_id]
        q: Query = info["query"]
        b = self.agent.beliefs([q], context=info["context"])[0]
        if info["context"] and self.weight != 1.0:
            if q not in self._priors:
                self._priors[q] = self.agent.beliefs([q])[0]
            b = blend(self._priors[q], b, self.weight)
        ans = q.candidates.index(b.answer)
        sq: Query | None = info.get("support_query")
        if sq is None:
            return ans
        me = env.game.name_of[agent_id]
        own = support(env.game.world.relations[q.relation], q.subject, b.answer, speaker_labels([me])[me])
        s = self.agent.beliefs([sq], context=own)[0]
        return np.array([ans, sq.candidates.index(s.answer)], dtype=np.int64)
