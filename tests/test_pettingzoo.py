"""Protocols as PettingZoo environments: the official API tests, and two policies (random,
and the language model through an Agent) driving the same envs."""
from __future__ import annotations

import pytest
from pettingzoo.test import api_test, parallel_api_test

from protocols.pettingzoo_env import (AgentPolicy, ProtocolAECEnv, ProtocolParallelEnv, observation_text,
                                 random_policy)
from protocols.base import ProtocolError
from protocols.check import scripted_setting
from protocols.registry import make_protocol

SPECS = [("discussion", {}), ("debate", {}), ("reflection", {}), ("asch", {"confederates": 4}),
         ("debate,reflection,debate", {})]


@pytest.fixture(scope="module")
def setting():
    world, _, queries, _ = scripted_setting(people=6)
    return world, [q for q in queries if q.relation == "company"]


@pytest.mark.parametrize("spec,params", SPECS, ids=[s for s, _ in SPECS])
def test_parallel_env_passes_parallel_api_test(setting, spec, params):
    world, queries = setting
    parallel_api_test(ProtocolParallelEnv(make_protocol(spec, params), world, queries, agents=4, graph="ring"),
                      num_cycles=50)


@pytest.mark.parametrize("spec,params", SPECS, ids=[s for s, _ in SPECS])
def test_aec_env_passes_api_test(setting, spec, params):
    world, queries = setting
    env = ProtocolAECEnv(make_protocol(spec, {**params, "synchronous": False}), world, queries, agents=3)
    api_test(env, num_cycles=50)


def test_observation_is_the_text_the_protocol_shows(setting):
    world, queries = setting
    env = ProtocolParallelEnv(make_protocol("discussion"), world, queries, agents=3, graph="ring")
    obs, infos = env.reset(seed=5, options={"query": 2})
    q = queries[2]
    for a in env.agents:
        assert observation_text(obs[a]) == infos[a]["text"] == q.prompt and infos[a]["query"] == q
    answers = {a: i for i, a in enumerate(env.agents)}
    obs, rew, term, trunc, infos = env.step(answers)
    assert rew == {a: float(q.candidates[i] == q.truth) for a, i in answers.items()}
    text = observation_text(obs["agent_0"])
    assert text == infos["agent_0"]["text"] and text.endswith(q.prompt)
    assert text == f"agent 1 answers {q.candidates[1]} . agent 2 answers {q.candidates[2]} . {q.prompt}"
    assert infos["agent_0"]["peer_answers"] == [q.candidates[1], q.candidates[2]]


def test_env_input_errors(setting):
    world, queries = setting
    mixed = queries[:1] + world.queries(subjects=[queries[0].subject], relations=["major"])
    with pytest.raises(ProtocolError, match="one candidate set"):
        ProtocolParallelEnv(make_protocol("discussion"), world, mixed)
    env = ProtocolParallelEnv(make_protocol("discussion"), world, queries, agents=2)
    env.reset(seed=0)
    with pytest.raises(ProtocolError, match=r"no action for \['agent_1'\]"):
        env.step({"agent_0": 0})
    with pytest.raises(ProtocolError, match="options\\['query'\\]: 99"):
        env.reset(options={"query": 99})
    tiny = ProtocolParallelEnv(make_protocol("asch", {"confederates": 6}), world, queries, agents=2, max_bytes=64)
    tiny.reset()
    with pytest.raises(ProtocolError, match="max_bytes"):
        tiny.step({"agent_0": 0, "agent_1": 1})    # round 1 shows 6 claims: more than 64 bytes


def _play_parallel(env, policy, seed):
    obs, infos = env.reset(seed=seed, options={"query": 0})
    history = []
    while env.agents:
        actions = {a: policy(env, a, obs[a], infos[a]) for a in env.agents}
        history.append(actions)
        obs, rew, term, trunc, infos = env.step(actions)
    return history


def test_random_and_agent_policies_drive_both_envs(setting, small_agent, small_world):
    queries = small_world.queries(subjects=[p.name for p in small_world.people[:3]], relations=["company"])
    par = ProtocolParallelEnv(make_protocol("debate", {"rounds": 1}), small_world, queries, agents=3)
    rand = _play_parallel(par, random_policy, seed=1)
    policy = AgentPolicy(small_agent)
    lm = _play_parallel(par, policy, seed=1)
    assert len(rand) == len(lm) == 2
    q = queries[0]
    first = small_agent.beliefs([q])[0].answer          # round 0: the question alone
    for a, act in lm[0].items():
        assert act.shape == (2,)                         # answer + a supporting company_city
        assert q.candidates[act[0]] == first
    seen = par.game.stage.board.said(0, "agent 1", q)
    assert seen.object == first and seen.support.relation == "company_city"
    aec = ProtocolAECEnv(make_protocol("debate", {"rounds": 1, "synchronous": False}), small_world, queries, agents=3)
    aec.reset(seed=1, options={"query": 0})
    steps = 0
    for agent in aec.agent_iter():
        obs, rew, term, trunc, info = aec.last()
        assert observation_text(obs) == info["text"]
        if agent == "agent_1" and info["round"] == 1:      # sees agent 0's round-1 answer already
            assert f"agent 0 answers {aec.game.stage.board.said(1, 'agent 0', q).object} ." in info["text"]
        aec.step(None if term or trunc else policy(aec, agent, obs, info))
        steps += 1
    assert steps == 2 * 3 + 3      # two rounds of three turns, then each agent leaves


def test_render_names_the_round_played(setting):
    world, queries = setting
    env = ProtocolParallelEnv(make_protocol("discussion", {"rounds": 2}), world, queries, agents=2,
                              render_mode="ansi")
    env.reset(seed=0, options={"query": 0})
    assert env.render().startswith("round 0:")
    steps = 0
    while env.agents:
        env.step({a: 0 for a in env.agents})
        steps += 1
    q = queries[0]
    assert steps == 3     # round 0, then the protocol's 2 rounds
    assert env.render().splitlines() == [f"finished after round 2: {q.prompt} (truth: {q.truth})",
                                         f"  agent 0: {q.candidates[0]}", f"  agent 1: {q.candidates[0]}"]


def test_a_policy_on_a_population_handle_plays_like_the_local_agent(small_dir, small_agent, small_world):
    from agents.population import PopulationPlacement
    queries = small_world.queries(subjects=[p.name for p in small_world.people[:3]], relations=["company"])
    par = ProtocolParallelEnv(make_protocol("debate", {"rounds": 2}), small_world, queries, agents=3)
    handle = PopulationPlacement.from_dir(small_dir).spawn("policy")
    local = _play_parallel(par, AgentPolicy(small_agent), seed=2)
    pop = _play_parallel(par, AgentPolicy(handle), seed=2)
    assert [{a: act.tolist() for a, act in r.items()} for r in local] == \
        [{a: act.tolist() for a, act in r.items()} for r in pop]


def test_a_judge_runs_in_the_env_and_its_records_are_plays(setting):
    """The env is an adapter over the session's round step: debate's judge and moderator run
    (the old env never called after_round and refused a judge), and the env's records are the
    rows `play` writes but for probabilities."""
    from agents.records import to_frame
    from protocols.check import ScriptedAgent, _env_differences
    from protocols.session import play
    from protocols.topology import build_graph
    world, queries = setting
    agents = [ScriptedAgent(f"agent {i}", persona=p) for i, p in enumerate(["neutral", "stubborn", "easy-going"])]
    judge = lambda name: ScriptedAgent(name, knows=0.9)
    make = lambda: make_protocol("debate", {"rounds": 2, "moderator": True})
    env = ProtocolParallelEnv(make(), world, queries, agents=agents, make_agent=judge)
    obs, infos = env.reset(seed=0, options={"query": 1})
    while env.agents:
        obs, *_ , infos = env.step({a: AgentPolicy(ag)(env, a, obs[a], infos[a])
                                    for a, ag in zip(env.agents, agents)})
    df = to_frame(env.records)
    assert (df.agent == "judge").sum() == 3 and set(df.persona[df.agent != "judge"]) == {"neutral", "stubborn",
                                                                                           "easy-going"}
    verdict = df[(df.agent == "judge") & (df["round"] == 1)].answer.item()
    second = df[(df.agent == "agent 0") & (df["round"] == 2)]
    assert verdict in second.peer_answers.item() and len(second.peer_answers.item()) == 3
    graph = build_graph("complete", [a.name for a in agents], 0)
    played = to_frame(play(make(), agents, world, [queries[1]], graph, 0, make_agent=judge))
    assert df.drop(columns=["probs", "confidence", "p_truth"]).equals(
        played.drop(columns=["probs", "confidence", "p_truth"]))
    assert _env_differences(make, world, agents, queries, graph, 0, judge) == []


def test_parallel_env_refuses_an_asynchronous_protocol(setting):
    world, queries = setting
    with pytest.raises(ProtocolError, match="asynchronous.*ProtocolAECEnv"):
        ProtocolParallelEnv(make_protocol("discussion", {"synchronous": False}), world, queries)
