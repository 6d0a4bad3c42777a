"""Experiment runs end to end on the small model: files, determinism under the seed,
resume, partial knowledge, and bad input refused before any work."""
from __future__ import annotations

import dataclasses
import re
import shutil

import pandas as pd
import pytest
import yaml

import evolution.run as run_mod
from evolution.cli import main as cli_main
from evolution.run import knowledge_shares, main, run_experiment, sample_queries
from evolution.run_config import assign_personas
from evolution.run_config import ConfigError, load
from protocols.registry import make_protocol
from tests.conftest import SMALL

SMALL_PRETRAIN = {"people": SMALL["people"], "seed": SMALL["seed"], "steps": SMALL["steps"]}
BASE = {"name": "t", "seed": 0, "pretrain": SMALL_PRETRAIN, "agents": 3,
        "personas": ["neutral", "overconfident", "easy-going"], "protocol": "debate", "rounds": 2,
        "graph": "ring", "queries": {"people": 2, "relations": ["company"]}}
COLUMNS = ["generation", "round", "agent", "protocol", "subject", "relation", "answer", "truth", "confidence",
           "p_truth", "peer_answers", "n_confederates", "run", "persona", "context"]


@pytest.fixture(scope="module")
def first_run(small_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "a"
    return out, run_experiment(BASE, out, progress=False)


def test_run_writes_records_and_config(first_run):
    out, df = first_run
    assert (out / "records.parquet").exists() and (out / "config.yaml").exists()
    on_disk = pd.read_parquet(out / "records.parquet")
    assert len(on_disk) == len(df) == 3 * 2 * 3          # agents x queries x rounds 0..2
    assert set(COLUMNS) <= set(on_disk.columns)
    assert sorted(on_disk["round"].unique()) == [0, 1, 2] and set(on_disk["protocol"]) == {"debate"}
    assert (on_disk[on_disk["round"] == 1]["peer_answers"].map(len) == 2).all()   # ring: two neighbours
    assert dict(zip(on_disk["agent"], on_disk["persona"])) == {
        "agent 0": "neutral", "agent 1": "overconfident", "agent 2": "easy-going"}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["protocol"] == "debate" and saved["queries"]["people"] == 2


def test_same_seed_same_records_other_seed_differs(first_run, tmp_path):
    _, df = first_run
    again = run_experiment(BASE, tmp_path / "b", progress=False)
    pd.testing.assert_frame_equal(df, again)
    # what the seed draws in a run: the people asked, and who gets which persona of a mix; a run
    # under another seed must carry both draws (not only different questions)
    mix = {**BASE, "personas": {"neutral": 1, "overconfident": 1, "easy-going": 1}}
    cfg = load(mix)[1]
    seed = next(s for s in range(1, 50)
                if assign_personas(dataclasses.replace(cfg, seed=s)) != assign_personas(cfg))
    a = run_experiment(mix, tmp_path / "c", progress=False)
    b = run_experiment({**mix, "seed": seed}, tmp_path / "d", progress=False)
    assert set(a.subject) != set(b.subject)
    persona_of = lambda d: [d[d.agent == n].persona.iloc[0] for n in sorted(set(d.agent))]
    assert persona_of(a) == assign_personas(cfg)
    assert persona_of(b) == assign_personas(dataclasses.replace(cfg, seed=seed)) != persona_of(a)


def test_rerun_resumes_instead_of_redoing(first_run, tmp_path):
    src, df = first_run
    out = tmp_path / "resume"
    shutil.copytree(src, out)
    parts = sorted((out / "parts").glob("*.parquet"))
    assert len(parts) == 3                          # one part per finished round
    kept = {p.name: p.stat().st_mtime_ns for p in parts[:-1]}
    parts[-1].unlink()                              # as if the run died during round 2
    (out / "records.parquet").unlink()
    resumed = run_experiment(BASE, out, progress=False)
    pd.testing.assert_frame_equal(resumed, df)
    assert {p: (out / "parts" / p).stat().st_mtime_ns for p in kept} == kept   # rounds 0, 1 not redone
    with pytest.raises(ConfigError, match=r"holds a run of another config \(differs in \['rounds'\]\)"):
        run_experiment({**BASE, "rounds": 3}, out, progress=False)


def test_partial_knowledge_each_agent_learns_its_own_people(small_dir, tmp_path):
    cfg = {**BASE, "protocol": "discussion", "rounds": 1, "personas": "neutral", "agents": 2,
           "queries": {"people": 2, "relations": ["company"], "who": "untaught"},
           "knowledge": {"split": "partition", "texts_per_person": 3, "epochs": 10}}
    df = run_experiment(cfg, tmp_path / "k", progress=False)
    assert len(list((tmp_path / "k" / "agents").glob("*/agent_*/delta.safetensors"))) == 2   # deltas, not models
    _, parsed, _, world = load(cfg)
    shares = knowledge_shares(parsed, sample_queries(parsed, world))
    assert sorted(sum(shares, [])) == sorted(df["subject"].unique()) and all(len(s) == 1 for s in shares)
    r0 = df[df["round"] == 0].set_index(["agent", "subject"])["p_truth"]
    own = [r0[(f"agent {i}", s)] for i, share in enumerate(shares) for s in share]
    other = [r0[(f"agent {1 - i}", s)] for i, share in enumerate(shares) for s in share]
    # measured: p(truth) 0.96 and 0.97 for the learner, 0.008 and 0.001 for the other agent
    assert min(own) > 0.5 > 0.2 > max(other)


def test_random_choices_draw_from_the_seed():
    _, cfg, _, world = load({**BASE, "agents": 6, "personas": {"neutral": 1, "easy-going": 1}})
    seeds = [dataclasses.replace(cfg, seed=s) for s in range(4)]
    assert sorted(assign_personas(cfg)) == ["easy-going"] * 3 + ["neutral"] * 3
    assert assign_personas(cfg) == assign_personas(dataclasses.replace(cfg, seed=0))
    assert len({tuple(assign_personas(c)) for c in seeds}) > 1
    assert len({tuple(q.subject for q in sample_queries(c, world)) for c in seeds}) == 4
    confederates = set()
    for c in seeds:
        asch = make_protocol("asch", {"confederates": 3})
        asch.bind(world, c.seed, c.agent_names)
        confederates.add(tuple(asch.speakers))
    assert len(confederates) == 4


BAD = [
    ({"rounds": 0}, "rounds: 0; give at least 1 round"),
    ({"agents": 0}, "agents: 0; a run needs at least 1 agent"),
    ({"protocol": "gossip"}, "protocol: unknown protocol 'gossip'; known: "),
    ({"protocol": "debate,reflexion"}, "strategy 'debate,reflexion' has an unknown pattern 'reflexion'"),
    ({"graph": {"edges": [[0, 1], [1, 7]]}}, "graph.edges: node 7 is not an agent"),
    ({"colour": "red"}, "colour: unknown key; known keys:"),
    ({"queries": {"people": 2, "size": 3}}, "queries.size: unknown key"),
    ({"agents": "three"}, "agents: 'three' has the wrong type; expected int"),
    ({"params": {"judges": True}}, "params.judges: protocol 'debate' has no parameter 'judges'"),
    ({"personas": ["neutral"]}, "personas: 1 given for 3 agents"),
    ({"personas": "shy"}, "personas: persona 'shy': unknown"),
    ({"queries": {"people": 2, "relations": ["salary"]}}, "queries.relations: unknown relation 'salary'"),
    ({"queries": {"people": 999}}, "queries.people: 999; the world has 80 people"),
    ({"pretrain": {**SMALL_PRETRAIN, "layers": 4}}, "pretrain.layers: unknown pretraining setting"),
    ({"model": "/nonexistent/model", "pretrain": {}}, "is not a model dir with a world.json"),
    ({"protocol": "asch", "params": {"confederates": 51}}, "params.confederates: 51"),
    ({"sweep": {"params.confederates": [1, -2]}, "protocol": "asch"},
     "sweep (confederates=-2): params.confederates: -2"),
    ({"sweep": {"rounds": []}}, "sweep.rounds: give a non-empty list"),
    ({"knowledge": {"split": "random"}}, "knowledge.split: 'random'"),
    ({"knowledge": {"split": "partition", "replay": -1}}, "replay >= 0"),
    ({"placement": {"max_cpu_loras": 2}}, "placement.max_cpu_loras: 2; give at least max_loras (4)"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_input_is_refused_before_any_work(change, message, tmp_path, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("the model was touched before the config was checked")
    monkeypatch.setattr(run_mod, "pretrained_dir", no_work)
    monkeypatch.setattr(run_mod, "build_agents", no_work)
    with pytest.raises(ConfigError) as e:
        run_experiment({**BASE, **change}, tmp_path / "out", progress=False)
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_command_lines_report_errors_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "rounds": 0}))
    assert main([str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "evolution.run: error: rounds: 0" in capsys.readouterr().err
    assert main([str(cfg), "--set", "rounds=1", "--set", "graph={kind: lattice}", "--out", str(tmp_path / "o")]) == 2
    assert "unknown graph 'lattice'" in capsys.readouterr().err
    assert main([str(cfg), "--set", "rounds=1", "--set", "graph.kind=ring", "--out", str(tmp_path / "o")]) == 2
    assert "'graph' is 'ring', not a mapping" in capsys.readouterr().err
    assert cli_main(["run", str(cfg), "--set", "agents=0", "--out", str(tmp_path / "o")]) == 2
    assert "agents: 0" in capsys.readouterr().err


def test_shipped_configs_are_valid():
    for name, points in (("configs/asch.yaml", 7), ("configs/debate.yaml", 3)):
        _, cfg, pts, _ = load(name)
        assert len(pts) == points and cfg.model == "default"
    _, _, pts, _ = load("configs/asch.yaml")
    assert [p.params["confederates"] for _, p in pts] == list(range(7))


def test_resume_refuses_missing_or_damaged_rounds_and_says_how_to_recover(first_run, tmp_path):
    from evolution.outputs import OutputError
    src, _ = first_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    parts = sorted((out / "parts").glob("*.parquet"))
    parts[1].unlink()                                   # a middle round's part deleted
    with pytest.raises(OutputError, match=r"round 1's part \(000-0001.parquet\) is missing.*delete 000-0002.parquet"):
        run_experiment(BASE, out, progress=False)
    parts[2].unlink()                                   # as told: rounds 1 and 2 are redone
    pd.testing.assert_frame_equal(run_experiment(BASE, out, progress=False), first_run[1])
    parts[1].write_bytes(parts[1].read_bytes()[:100])   # a truncated part
    with pytest.raises(OutputError, match=r"000-0001.parquet' cannot be read.*delete 000-0001.parquet, 000-0002.parquet"):
        run_experiment(BASE, out, progress=False)


def test_unwritable_out_and_invalid_keys_under_a_sweep_fail_before_any_work(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["configs/debate.yaml", "--out", str(tmp_path / "afile" / "run"), "--quiet"]) == 2
    assert "out: " in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"graph.kind: unknown graph .rnig.*as written"):
        run_experiment({**BASE, "graph": "rnig", "sweep": {"graph": ["ring", "star"]}}, tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "config.yaml").exists()


def test_speaker_labels_keep_trained_names_and_alias_the_rest():
    from protocols.base import ProtocolError, speaker_labels
    got = speaker_labels(["agent 3", "agent 120", "agent 0", "agent 77", "agent 3"])
    assert got == {"agent 3": "agent 3", "agent 120": "agent 1", "agent 0": "agent 0", "agent 77": "agent 2"}
    with pytest.raises(ProtocolError, match="tells at most 50 apart"):
        speaker_labels([f"agent {i}" for i in range(100, 151)])


@pytest.mark.parametrize("protocol, params", [("discussion", {}), ("asch", {"confederates": 2})])
def test_a_population_of_more_than_fifty_talks_in_the_names_its_model_knows(protocol, params, small_dir, tmp_path):
    cfg = {**BASE, "agents": 60, "personas": "neutral", "protocol": protocol, "params": params, "rounds": 1,
           "graph": {"kind": "small_world", "k": 4, "p": 0.1}, "queries": {"people": 1, "relations": ["company"]}}
    df = run_experiment(cfg, tmp_path / protocol, progress=False)
    assert len(df) == 60 * 2 and df["agent"].nunique() == 60
    shown = " ".join(df[df["round"] == 1]["context"])
    labels = {int(x) for x in re.findall(r"agent (\d+)", shown)}
    assert labels and max(labels) < 50          # every speaker is shown under a name the model was trained on
    if protocol == "discussion":                # each agent heard all its neighbours, however many
        from protocols.topology import build_graph
        g = build_graph(cfg["graph"], [f"agent {i}" for i in range(60)], 0)
        r1 = df[df["round"] == 1]
        assert [len(p) for p in r1["peer_answers"]] == [g.degree(a) for a in r1["agent"]]


def test_support_the_debate_cannot_render_is_refused(tmp_path):
    """Supporting facts asked for where no queried relation has a related fact (a CounterFact
    world) are an error naming the key; the default (supported unless said) stays quiet."""
    import json
    from envs.counterfact import load_counterfact
    from evolution.run_config import check, parse
    from tests.test_world import COUNTERFACT
    (tmp_path / "cf.json").write_text(json.dumps(COUNTERFACT))
    world = load_counterfact(tmp_path / "cf.json")
    raw = {**BASE, "queries": {"people": 2, "relations": ["P103"], "who": "any"}}
    check(parse(raw), world)
    with pytest.raises(ConfigError, match=r"params.supported: debate backs a claim .* \['P103'\] .* "
                                          r"set params.supported=false"):
        check(parse({**raw, "params": {"supported": True}}), world)
    with pytest.raises(ConfigError, match=r"params.debate.supported: .*none"):
        check(parse({**raw, "protocol": "debate,reflection", "params": {"debate": {"supported": True}}}), world)
    bios = load(BASE)[3]
    check(parse({**BASE, "params": {"supported": True}}), bios)      # company -> company_city renders
