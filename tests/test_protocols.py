"""Protocols on scripted agents (no model: fast): the plugin API, every built-in under
check_protocol, what each protocol shows, personas, topologies, and their errors."""
from __future__ import annotations

import random
import re
from importlib.metadata import EntryPoint

import networkx as nx
import pytest

from agents.records import Belief
from protocols import registry
from protocols.base import Claim, Protocol, ProtocolError, Turn
from protocols.debate import Debate
from protocols.check import ProtocolCheckError, ScriptedAgent, check_protocol, scripted_setting
from protocols.personas import blend, social_weight
from protocols.reflection import Reflection
from protocols.registry import get_protocol, known_protocols, make_protocol, register_protocol
from agents.records import to_frame
from protocols.session import play
from protocols.strategy import Strategy
from protocols.topology import GraphError, build_graph, neighbours


# -- a user's protocol, as a user writes it (one small class) ------------------------------
class LoudestOnly(Protocol):
    """Sees only the first neighbour who spoke, and its support."""
    name = "loudest"
    rounds: int = 2
    listen: int = 1

    def sees(self, turn: Turn) -> list[Claim]:
        said = [c for n in turn.neighbours if (c := turn.board.latest(n, turn.query)) is not None]
        return said[:self.listen]


class Unseeded(LoudestOnly):
    name = "unseeded"

    def sees(self, turn):
        said = super().sees(turn)
        return said if random.random() < 0.5 else []


class Mute(LoudestOnly):
    name = "mute"

    def render(self, claims, turn):
        return "Q:"   # hides what the agent was shown


BUILTIN_CASES = [("discussion", {}), ("discussion", {"synchronous": False}), ("reflection", {}),
                 ("debate", {}), ("debate", {"judge": True}), ("debate", {"moderator": True, "synchronous": False}),
                 ("asch", {}), ("asch", {"variant": "raw"}), ("asch", {"variant": "correct_guidance"}),
                 ("asch", {"variant": "trust", "confederates": 4}), ("asch", {"variant": "doubt", "history": 2}),
                 ("discussion", {"until_consensus": True, "rounds": 8})]


@pytest.mark.parametrize("name,params", BUILTIN_CASES, ids=[f"{n}-{p}" for n, p in BUILTIN_CASES])
def test_every_builtin_passes_check_protocol(name, params):
    report = check_protocol(get_protocol(name), params)
    assert report["records"] >= 2 * report["agents"] * report["queries"]


def test_strategy_passes_check_protocol_and_records_patterns():
    report = check_protocol(Strategy, {"patterns": (Debate(), Reflection(), Debate())})
    assert report["rounds"] == 3
    world, agents, queries, graph = scripted_setting()
    df = to_frame(play(make_protocol("debate,reflection,debate"), agents, world, queries, graph, 0))
    assert set(df["protocol"]) == {"debate,reflection,debate"}
    assert df.groupby("round")["pattern"].first().tolist() == ["initial", "debate", "reflection", "debate"]
    # claims shown in a debate round carry support; a reflection round shows the own answer only
    r2 = df[(df["round"] == 2)]
    assert (r2["peer_answers"].map(len) == 1).all()
    assert r2.apply(lambda r: r["peer_answers"][0] == df[(df["round"] == 1) & (df["agent"] == r["agent"]) &
                                                        (df["subject"] == r["subject"]) &
                                                        (df["relation"] == r["relation"])]["answer"].iloc[0],
                    axis=1).all()


def test_user_protocol_by_dotted_path_registration_and_entry_point(monkeypatch):
    cls = get_protocol("tests.test_protocols:LoudestOnly")
    assert cls is LoudestOnly
    assert check_protocol(cls, {"listen": 2})["rounds"] == 2
    register_protocol(LoudestOnly)
    assert get_protocol("loudest") is LoudestOnly and "loudest" in known_protocols()
    ep = EntryPoint(name="mute-plugin", value="tests.test_protocols:Mute", group=registry.ENTRY_POINT_GROUP)
    installed = registry._entry_points()       # the built-ins are entry points too
    monkeypatch.setattr(registry, "_entry_points", lambda: {**installed, "mute-plugin": ep})
    assert get_protocol("mute-plugin") is Mute
    assert "mute-plugin" in known_protocols()
    # a strategy may mix built-ins with users' patterns
    assert make_protocol("loudest,reflection").rounds == 2


def test_check_protocol_catches_broken_protocols():
    with pytest.raises(ProtocolCheckError, match="same seed gave different records"):
        check_protocol(Unseeded)
    with pytest.raises(ProtocolCheckError, match="missing from the context"):
        check_protocol(Mute)

    class NoSees(Protocol):
        name = "nosees"
    with pytest.raises(ProtocolCheckError, match="not implemented"):
        check_protocol(NoSees)

    class Endless(LoudestOnly):
        name = "endless"

        def done(self, round, board, queries):
            return False
    with pytest.raises(ProtocolError, match="did not stop within"):
        check_protocol(Endless)


def test_registry_and_parameter_errors_name_the_fix():
    with pytest.raises(ProtocolError, match=r"unknown protocol 'gossip'; known: \['asch', 'debate'"):
        get_protocol("gossip")
    with pytest.raises(ProtocolError, match="unknown pattern 'reflexion'"):
        make_protocol("debate,reflexion,debate")
    with pytest.raises(ProtocolError, match="empty pattern"):
        make_protocol("debate,,debate")
    with pytest.raises(ProtocolError, match="rounds: 2 but strategy 'debate,reflection,debate' names 3"):
        make_protocol("debate,reflection,debate", {"rounds": 2})
    with pytest.raises(ProtocolError, match="params.judges: protocol 'debate' has no parameter"):
        make_protocol("debate", {"judges": True})
    with pytest.raises(ProtocolError, match="params.confederates: 'three' is not a int"):
        make_protocol("asch", {"confederates": "three"})
    with pytest.raises(ProtocolError, match="params.variant: 'wrong'"):
        make_protocol("asch", {"variant": "wrong"})
    with pytest.raises(ProtocolError, match="rounds: 0"):
        make_protocol("discussion", {"rounds": 0})
    with pytest.raises(ProtocolError, match="cannot load class"):
        get_protocol("tests.test_protocols:Nothing")


# -- what each protocol shows ----------------------------------------------------------------
def _frame(spec, params=None, graph="complete", n=3, **kw):
    world, agents, queries, _ = scripted_setting(n_agents=n)
    g = build_graph(graph, [a.name for a in agents], 0)
    return world, queries, to_frame(play(make_protocol(spec, params), agents, world, queries, g, 0, **kw))


def test_discussion_shows_only_neighbours_last_answers_synchronously():
    world, queries, df = _frame("discussion", graph="ring", n=5)
    prev = df.set_index(["round", "agent", "subject", "relation"])["answer"]
    g = build_graph("ring", [f"agent {i}" for i in range(5)], 0)
    nb = neighbours(g, [f"agent {i}" for i in range(5)])
    for _, r in df[df["round"] == 2].iterrows():
        want = [prev[(1, a, r["subject"], r["relation"])] for a in nb[r["agent"]]]
        assert list(r["peer_answers"]) == want and len(want) == 2


def test_asynchronous_rounds_show_the_latest_answers():
    world, _, queries, graph = scripted_setting()
    agents = [ScriptedAgent(f"agent {i}", knows=0.3, pull=4.0) for i in range(3)]   # one claim moves them
    frames = {s: to_frame(play(make_protocol("discussion", {"synchronous": s}), agents, world, queries, graph, 0))
              for s in (True, False)}
    for sync, df in frames.items():
        ans = df.set_index(["round", "agent", "subject", "relation"])["answer"]
        for _, r in df[(df["round"] == 1) & (df["agent"] == "agent 2")].iterrows():
            # agent 2 answers last: asynchronously it sees agents 0 and 1's round-1 answers
            seen = [ans[(0 if sync else 1, f"agent {i}", r["subject"], r["relation"])] for i in (0, 1)]
            assert list(r["peer_answers"]) == seen
    shown = {s: df[df["round"] == 1]["peer_answers"].map(tuple) for s, df in frames.items()}
    assert (shown[True] != shown[False]).any()


def test_debate_backs_each_claim_with_a_related_fact_of_the_speaker():
    world, queries, df = _frame("debate")
    r0 = df[df["round"] == 0]
    assert set(r0[r0["relation"] == "company"]["support_relation"]) == {"company_city"}
    assert set(r0[r0["relation"] == "university"]["support_relation"]) == {"major"}
    row = df[(df["round"] == 1) & (df["agent"] == "agent 0") & (df["relation"] == "company")].iloc[0]
    said = r0[(r0["agent"] == "agent 1") & (r0["subject"] == row["subject"]) & (r0["relation"] == "company")].iloc[0]
    assert (f"agent 1 answers {said['answer']} . "
            f"agent 1 says : {row['subject']} works in {said['support_object']} .") in row["context"]
    assert (df[df["round"] == 3]["support_relation"] == "").all()   # last round: shown to nobody


def test_debate_judge_and_moderator():
    _, _, df = _frame("debate", {"moderator": True}, make_agent=lambda name: ScriptedAgent(name, knows=0.9))
    judge = df[df["agent"] == "judge"]
    assert len(judge) == 4 * 8 and judge["speaker"].nunique() == 1
    jname = judge["speaker"].iloc[0]
    assert jname.startswith("agent ") and jname not in {"agent 0", "agent 1", "agent 2"}
    r1 = df[(df["round"] == 1) & (df["agent"] == "agent 0")]
    assert r1["context"].str.contains(f"{jname} answers ").all()
    assert (r1["peer_answers"].map(len) == 3).all()    # two peers + the moderator


def test_claims_state_their_speakers_confidence_when_asked():
    """With `confidence`, a claim reads "agent 1 is sure : Y ." when its speaker's probability
    of Y is at least `sure_at`, else "agent 1 thinks : Y ."; off (the default), as before."""
    _, _, df = _frame("discussion", {"confidence": True, "sure_at": 0.5})
    said = df.set_index(["round", "agent", "subject", "relation"])
    kinds = set()
    for _, r in df[(df["round"] == 1) & (df["agent"] == "agent 0")].iterrows():
        for other in ("agent 1", "agent 2"):
            prev = said.loc[(0, other, r["subject"], r["relation"])]
            sure = prev["confidence"] >= 0.5
            kinds.add(sure)
            assert f"{other} {'is sure' if sure else 'thinks'} : {prev['answer']} ." in r["context"], r["context"]
    assert kinds == {True, False}                     # both statings occur in this setting
    _, _, plain = _frame("discussion")
    assert not plain["context"].str.contains(" is sure : | thinks : ").any()
    with pytest.raises(ProtocolError, match="params.sure_at"):
        make_protocol("discussion", {"confidence": True, "sure_at": 0.0})


def test_reflection_shows_only_the_own_previous_answer():
    _, _, df = _frame("reflection")
    prev = df.set_index(["round", "agent", "subject", "relation"])["answer"]
    for _, r in df[df["round"] >= 1].iterrows():
        assert list(r["peer_answers"]) == [prev[(r["round"] - 1, r["agent"], r["subject"], r["relation"])]]
        assert r["context"] == f"{r['agent']} answers {r['peer_answers'][0]} ."


def test_asch_confederates_and_variants():
    world, queries, wrong = _frame("asch", {"confederates": 5})
    r1 = wrong[wrong["round"] == 1]
    assert (r1["n_confederates"] == 5).all()
    for _, r in r1.iterrows():
        assert len(set(r["peer_answers"])) == 1 and r["peer_answers"][0] != r["truth"]
        assert r["context"].count(" answers ") == 5
    # the wrong answer is the same for every agent and for any number of confederates
    _, _, two = _frame("asch", {"confederates": 2})
    w5 = r1.groupby(["subject", "relation"])["peer_answers"].first().map(lambda x: x[0])
    w2 = two[two["round"] == 1].groupby(["subject", "relation"])["peer_answers"].first().map(lambda x: x[0])
    assert w5.equals(w2)
    _, _, right = _frame("asch", {"variant": "correct_guidance"})
    assert right[right["round"] == 1].apply(lambda r: set(r["peer_answers"]) == {r["truth"]}, axis=1).all()
    _, _, raw = _frame("asch", {"variant": "raw"})
    assert (raw["context"] == "").all() and (raw["n_confederates"] == 0).all()
    # trust: an earlier question where the confederates were unanimously right (its answer
    # closes it), then their unanimous wrong answer; doubt: wrong before, right now
    for variant in ("trust", "doubt"):
        _, _, df = _frame("asch", {"variant": variant, "confederates": 2, "history": 1})
        r = df[df["round"] == 1].iloc[0]
        rel = world.relations[r["relation"]]
        other = next(p for p in world.people if rel.question(p.name) in r["context"])
        before, after = r["context"].split(rel.question(other.name))
        truth = other.attributes[r["relation"]]
        earlier = {x.split(" answers ")[1] for x in before.strip(" .").split(" . ")}
        assert len(earlier) == 1 and (earlier == {truth}) == (variant == "trust")
        assert after.startswith(f" {truth} . ") and after.count(" answers ") == 2
        assert len(set(r["peer_answers"])) == 1 and (r["peer_answers"][0] == r["truth"]) == (variant == "doubt")


def test_asch_confederates_beyond_the_free_names_are_shown_under_trained_ones():
    world, agents, queries, graph = scripted_setting()
    records = play(make_protocol("asch", {"confederates": 48}), agents, world, queries, graph, 0)
    shown = [r.context for r in records if r.round == 1]
    labels = [set(re.findall(r"agent (\d+)", c)) for c in shown]
    assert all(len(x) == 48 and max(map(int, x)) < 50 for x in labels)   # 48 distinct speakers, all trained names
    with pytest.raises(ProtocolError, match="params.confederates: 51"):
        make_protocol("asch", {"confederates": 51})


def test_until_consensus_stops_early():
    world, _, _, _ = scripted_setting()
    agents = [ScriptedAgent(f"agent {i}", pull=3.0) for i in range(3)]
    queries = world.queries(subjects=[world.people[0].name], relations=["company"])
    g = build_graph("complete", [a.name for a in agents], 0)
    recs = play(make_protocol("discussion", {"until_consensus": True, "rounds": 20}), agents, world, queries, g, 0)
    last = max(r.round for r in recs)
    assert last < 20 and len({r.answer for r in recs if r.round == last}) == 1


# -- personas --------------------------------------------------------------------------------
def _belief(probs):
    c = ["a", "b", "c"]
    i = max(range(3), key=probs.__getitem__)
    return Belief("s", "r", "p", c, probs, c[i], "a", probs[i], probs[0])


def test_personas_move_between_prior_and_social_belief():
    prior, social = _belief([0.7, 0.2, 0.1]), _belief([0.3, 0.6, 0.1])
    assert blend(prior, social, social_weight("neutral")) is social
    over, easy = blend(prior, social, social_weight("overconfident")), blend(prior, social, social_weight("easy-going"))
    stub = blend(prior, social, social_weight("stubborn"))
    assert stub.probs == pytest.approx(prior.probs, abs=1e-6)
    assert over.answer == "a" and prior.probs[1] < over.probs[1] < social.probs[1]
    assert easy.answer == "b" and easy.probs[1] > social.probs[1] and sum(easy.probs) == pytest.approx(1, abs=1e-5)
    assert easy.p_truth == easy.probs[0] and easy.confidence == max(easy.probs)
    assert social_weight("social:0.5") == 0.5
    # a candidate ruled out alone and with peers (1e-10 -> 1e-4) is no answer however easy-going
    # (unsmoothed, its ratio 1e6 made it the easy-going answer)
    claim = blend(_belief([0.9, 0.1, 1e-10]), _belief([0.5, 0.5, 1e-4]), social_weight("easy-going"))
    assert claim.answer == "b" and claim.probs[2] < 0.01
    with pytest.raises(ValueError, match="persona 'shy': unknown"):
        social_weight("shy")


def test_personas_change_what_scripted_agents_do_under_asch():
    world, _, queries, graph = scripted_setting()
    rates = {}
    for persona in ("overconfident", "neutral", "easy-going"):
        agents = [ScriptedAgent(f"agent {i}", persona, knows=1.0, pull=0.6) for i in range(3)]
        df = to_frame(play(make_protocol("asch", {"confederates": 4}), agents, world, queries, graph, 0))
        rates[persona] = (df[df["round"] == 1]["answer"] != df[df["round"] == 1]["truth"]).mean()
    # 4 claims x 0.6 = 2.4 log-odds against a 3.0 preference: the plain model holds, twice the pull flips
    assert rates["overconfident"] == rates["neutral"] == 0.0 and rates["easy-going"] == 1.0


# -- topologies --------------------------------------------------------------------------------
NAMES = [f"agent {i}" for i in range(6)]


GRAPHS = [("complete", 15), ("ring", 6), ("star", 5), ({"kind": "small_world", "k": 2}, 6),
          ({"kind": "scale_free", "m": 2}, 8), ({"edges": [[0, 1], ["agent 1", "agent 5"]]}, 2)]


@pytest.mark.parametrize("spec,edges", GRAPHS)
def test_graphs_are_over_the_agents_and_seeded(spec, edges):
    g = build_graph(spec, NAMES, seed=3)
    assert isinstance(g, nx.Graph) and sorted(g.nodes) == NAMES and g.number_of_edges() == edges
    assert nx.utils.graphs_equal(g, build_graph(spec, NAMES, seed=3))


def test_random_graphs_depend_on_the_seed():
    spec = {"kind": "small_world", "k": 2, "p": 0.5}
    graphs = {tuple(sorted(build_graph(spec, NAMES, seed=s).edges)) for s in range(6)}
    assert len(graphs) > 1
    assert neighbours(build_graph("star", NAMES, 0), NAMES)["agent 0"] == tuple(NAMES[1:])


def test_graph_errors_name_the_problem():
    with pytest.raises(GraphError, match=r"node 'agent 9' is not an agent; agents are 'agent 0'..'agent 5'"):
        build_graph({"edges": [["agent 0", "agent 9"]]}, NAMES, 0)
    with pytest.raises(GraphError, match="node 7 is not an agent"):
        build_graph([[0, 7]], NAMES, 0)
    with pytest.raises(GraphError, match="unknown graph 'lattice'"):
        build_graph("lattice", NAMES, 0)
    with pytest.raises(GraphError, match="graph.k: 8"):
        build_graph({"kind": "small_world", "k": 8}, NAMES, 0)
    with pytest.raises(GraphError, match="graph 'ring' has no parameter 'k'"):
        build_graph({"kind": "ring", "k": 2}, NAMES, 0)
    world, agents, queries, _ = scripted_setting()
    with pytest.raises(ProtocolError, match="not exactly the agents"):
        play(make_protocol("discussion"), agents, world, queries, build_graph("ring", NAMES, 0), 0)


def test_builtins_are_found_as_entry_points_only(monkeypatch):
    """One way to find a protocol: the built-ins are declared in pyproject.toml's entry points,
    as a user's plugin is; without them there is no hidden table to fall back on."""
    assert {"asch", "debate", "discussion", "reflection"} <= set(registry._entry_points())
    monkeypatch.setattr(registry, "_entry_points", lambda: {})
    with pytest.raises(ProtocolError, match="unknown protocol 'debate'"):
        get_protocol("debate")
