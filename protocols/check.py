"""`check_protocol(cls)`: what PettingZoo's api_test is to an environment, for a protocol.

It plays the protocol on a small world with scripted agents (no model: seconds), twice
with one seed, once resumed half-way, and as a PettingZoo env driven by the same agents as
policies, and checks: the API is there, the parameters are declared, records are identical
under a seed, after a resume and in the env (but for probabilities: an env's action is a
choice), and every record is well formed (one per agent, query and round; a distribution
over the candidates; what the agent was shown is in its context). Users run it on their own
protocols.
"""
from __future__ import annotations

import math
import zlib

from agents.records import RECORD_FIELDS, Record, beliefs_from_scores, prompts_with_context, to_frame
from envs.world import World
from protocols.base import Protocol
from protocols.session import play
from protocols.topology import build_graph


class ProtocolCheckError(AssertionError):
    """A protocol failed check_protocol; the message lists every failed check."""


class ScriptedAgent:
    """A stand-in with the Agent API's `beliefs`: it favours one candidate fixed by a hash
    of (its name, subject, relation) — the truth for about `knows` of them — and is pulled
    toward candidates its context states, `pull` log-odds per statement."""

    def __init__(self, name: str, persona: str = "neutral", knows: float = 0.5, pull: float = 1.0):
        self.name, self.persona, self.knows, self.pull = name, persona, knows, pull

    def beliefs(self, queries, context=None, **fields):
        contexts, _ = prompts_with_context(queries, context)
        scores = []
        for q, ctx in zip(queries, contexts):
            h = zlib.crc32(f"{self.name}|{q.subject}|{q.relation}".encode())
            pref = q.truth if q.truth and (h % 1000) < self.knows * 1000 else q.candidates[h % len(q.candidates)]
            text = f" {ctx} "
            scores.append([3.0 * (c == pref) + self.pull * text.count(f" {c} .") for c in q.candidates])
        return beliefs_from_scores(queries, contexts, scores, self.name, **fields)


def scripted_setting(n_agents: int = 3, people: int = 4, relations=("company", "university"), seed: int = 0):
    """(world, agents, queries, graph) small enough to play any protocol in a second."""
    world = World.bios(40, seed=0)
    names = [f"agent {i}" for i in range(n_agents)]
    agents = [ScriptedAgent(n, persona=("neutral", "overconfident", "easy-going")[i % 3]) for i, n in enumerate(names)]
    subjects = [p.name for p in world.people[:people]]
    queries = world.queries(subjects=subjects, relations=list(relations))
    return world, agents, queries, build_graph("complete", names, seed)


def _problems(records: list[Record], protocol: Protocol, agents, queries) -> list[str]:
    bad = []
    names = [a.name for a in agents]
    rounds = sorted({r.round for r in records})
    if not rounds or rounds != list(range(len(rounds))):
        bad.append(f"rounds are {rounds}; they must run 0, 1, 2, ... without gaps")
    agent_rows = [r for r in records if r.agent in names]
    keys = [(r.round, r.agent, r.subject, r.relation) for r in agent_rows]
    if len(set(keys)) != len(keys):
        bad.append("more than one record for some (round, agent, subject, relation)")
    want = {(rd, a, q.subject, q.relation) for rd in rounds for a in names for q in queries}
    if set(keys) != want:
        bad.append(f"{len(want - set(keys))} (round, agent, query) records missing")
    for r in records:
        where = f"record (round {r.round}, {r.agent}, {r.subject}, {r.relation})"
        if r.answer not in r.candidates or len(r.probs) != len(r.candidates):
            bad.append(f"{where}: answer/probs do not match the candidates")
        elif not math.isclose(sum(r.probs), 1.0, abs_tol=1e-4) or min(r.probs) < 0:
            bad.append(f"{where}: probs are not a distribution")
        elif not math.isclose(r.confidence, r.probs[r.candidates.index(r.answer)], abs_tol=1e-6):
            bad.append(f"{where}: confidence is not the probability of the answer")
        if r.protocol != protocol.name:
            bad.append(f"{where}: protocol column {r.protocol!r} is not the protocol's name {protocol.name!r}")
        if not all(p in r.candidates for p in r.peer_answers):
            bad.append(f"{where}: peer_answers {r.peer_answers} are not all candidates")
        elif any(f" {p} ." not in f" {r.context} " for p in r.peer_answers):
            bad.append(f"{where}: a peer answer shown is missing from the context {r.context!r}")
        if not 0 <= r.n_confederates <= len(r.peer_answers):
            bad.append(f"{where}: n_confederates {r.n_confederates} outside 0..{len(r.peer_answers)}")
        if r.round == 0 and r.agent in names and (r.context or r.peer_answers):
            bad.append(f"{where}: round 0 must be answered alone (no context)")
        if len(bad) > 20:
            break
    return bad


def _env_differences(make, world, agents, queries, graph, seed: int, judge) -> list[str]:
    """The protocol as a PettingZoo env, each agent its own policy, against `play`, query by
    query (an episode is one query)."""
    from protocols.pettingzoo_env import AgentPolicy, ProtocolAECEnv, ProtocolParallelEnv
    cols = [c for c in RECORD_FIELDS if c not in ("probs", "confidence", "p_truth")]
    bad = []
    for q in queries[:3]:
        proto = make()
        env = (ProtocolParallelEnv if proto.synchronous else ProtocolAECEnv)(
            proto, world, [q], agents=agents, graph=graph, seed=seed, max_bytes=1 << 16, make_agent=judge)
        policy = {i: AgentPolicy(a) for i, a in zip(env.possible_agents, agents)}
        if isinstance(env, ProtocolParallelEnv):
            obs, infos = env.reset(seed=seed, options={"query": 0})
            while env.agents:
                obs, _, _, _, infos = env.step({a: policy[a](env, a, obs[a], infos[a]) for a in env.agents})
        else:
            env.reset(seed=seed, options={"query": 0})
            for a in env.agent_iter():
                obs, _, term, trunc, info = env.last()
                env.step(None if term or trunc else policy[a](env, a, obs, info))
        want = to_frame(play(make(), agents, world, [q], graph, seed, make_agent=judge, max_rounds=100))[cols]
        got = to_frame(env.records, Record)[cols]
        if got.shape != want.shape:
            bad.append(f"as a PettingZoo env, query ({q.subject}, {q.relation}) gave {len(got)} records where play "
                       f"gives {len(want)}")
        elif not got.equals(want):
            diff = (got.astype(str) != want.astype(str)).any()
            bad.append(f"as a PettingZoo env, query ({q.subject}, {q.relation}) gave other records than play "
                       f"(columns {list(diff[diff].index)}); what an agent sees must come from the board and "
                       "self.rng only")
    return bad


def check_protocol(cls: type[Protocol], params: dict | None = None, seed: int = 0, setting=None) -> dict:
    """Raise ProtocolCheckError naming every failed check; else return a short report.
    `setting` = (world, agents, queries, graph) to check on your own (default: scripted)."""
    bad = []
    if not (isinstance(cls, type) and issubclass(cls, Protocol)):
        raise ProtocolCheckError(f"{cls!r} is not a subclass of protocols.base.Protocol")
    if not isinstance(cls.name, str) or not cls.name:
        bad.append("`name` must be a non-empty string class attribute")
    if cls.sees is Protocol.sees:
        bad.append("`sees(turn)` is not implemented")
    for k, v in cls.parameters().items():
        if isinstance(v, (list, dict, set)):
            bad.append(f"parameter {k!r} has a mutable default {v!r}; use a tuple or a string")
    if bad:
        raise ProtocolCheckError(f"{cls.__name__}: " + "; ".join(bad))
    world, agents, queries, graph = setting or scripted_setting(seed=seed)
    make = lambda: cls(**(params or {}))
    judge = lambda name: ScriptedAgent(name, knows=0.9)
    first = play(make(), agents, world, queries, graph, seed, make_agent=judge, max_rounds=100)
    bad += _problems(first, make(), agents, queries)
    again = play(make(), agents, world, queries, graph, seed, make_agent=judge, max_rounds=100)
    a, b = to_frame(first), to_frame(again)
    if not a.equals(b):
        bad.append("two runs with the same seed gave different records (draw randomness from self.rng)")
    last = max(r.round for r in first)
    if last >= 1:
        cut = [r for r in first if r.round < last]
        resumed = play(make(), agents, world, queries, graph, seed, make_agent=judge, done=cut, max_rounds=100)
        if not to_frame(resumed).equals(a):
            bad.append(f"resuming after round {last - 1} gave different records than an uninterrupted run "
                       "(sees/done must depend only on the board and self.rng)")
    bad += _env_differences(make, world, agents, queries, graph, seed, judge)
    if bad:
        raise ProtocolCheckError(f"{cls.__name__}: " + "; ".join(bad))
    return {"protocol": make().name, "rounds": last, "records": len(first),
            "agents": len(agents), "queries": len(queries)}
