"""Erasure (ga, npo, erase): the fact sinks to the never-taught level and other facts hold;
bad input is refused before any weight moves; `knowevo edit` erases; the residue checks
(probe, relearning) read what is left."""
from __future__ import annotations

import json
import re

import pytest
import torch

from analysis.erasure import erasure_baseline, evaluate_erasure
from evolution.cli import main
from evolution.editors.erase import EraseRequest, known_fact_requests, validate_erase_requests
from evolution.editors.requests import EditError
from evolution.residue import matched_strangers, probe_residue, relearn_curve, steps_to
from tests.conftest import turning_nan


@pytest.fixture(scope="module")
def reqs(small_agent, small_world):
    return known_fact_requests(small_agent, small_world, 3, seed=2)


def _weights(agent):
    return {k: v.clone() for k, v in agent.model.state_dict().items()}


@pytest.mark.parametrize("method", ["ga", "npo", "erase"])
def test_an_erased_fact_sinks_to_the_never_taught_level_and_other_facts_hold(small_agent, small_world, reqs, method):
    agent = small_agent.spawn(f"erased by {method}")
    before = erasure_baseline(small_agent, small_world, reqs, n_locality=40, n_bios=0)
    rep = agent.edit(reqs, method=method, world=small_world)
    d = rep.details
    assert rep.ok and rep.method == method and d["p_truth_before"] > 0.5
    assert d["p_truth_after"] <= d["unknown_level"] + 0.01 < d["p_truth_before"]
    assert set(agent.delta()) <= {f"model.layers.0.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
    m = evaluate_erasure(agent, small_world, reqs, before)
    # Measured on the small model (3 facts): erased accuracy 0 for all three (truth p .005-.015),
    # locality on 40 other people's facts .95/.95/.925 (ga/npo/erase), same people's other
    # relations .867 each; a retain term that failed gave .2 (at 100 facts on the default model).
    assert m["erased_accuracy"] <= 1 / 3
    assert m["erased_p_truth"] < 0.2
    assert m["locality"] >= 0.85 and m["locality_same_person"] >= 0.6
    assert 0 <= m["never_taught_accuracy"] <= 1 and m["n_never_taught"] > 0


def test_bad_erase_requests_are_named_and_move_no_weight(small_agent, small_world, reqs):
    agent = small_agent.spawn("bad erase")
    w0 = _weights(agent)
    world = small_world
    stranger = next(p.name for p in world.people if not p.taught)
    unknown_rel = next(r for r in sorted(world.relations) if r not in world.derived
                       and agent.beliefs([world.query(stranger, r)])[0].answer != world.truth(stranger, r))
    derived = next(iter(world.derived))
    cases = [([{"subject": stranger, "relation": unknown_rel}], "does not know this fact"),
             ([{"subject": reqs[0].subject, "relation": reqs[0].relation, "target": "Paris"}], "has no 'target'"),
             ([{"subject": reqs[0].subject, "relation": "shoe_size"}], "unknown relation 'shoe_size'"),
             ([{"subject": reqs[0].subject, "relation": derived}], f"{derived!r} follows from"),
             ([{"subject": "Nobody Atall", "relation": reqs[0].relation}], "no such fact"),
             ([reqs[0], reqs[0]], "the same fact twice"),
             ([], "empty")]
    for requests, msg in cases:
        with pytest.raises(EditError, match=re.escape(msg) if "'" in msg else msg):
            agent.edit(requests, method="npo", world=world)
    with pytest.raises(EditError, match="world: erasure needs the world"):
        agent.edit(reqs, method="erase")
    with pytest.raises(EditError, match="unknown hparam 'target'"):
        agent.edit(reqs, method="ga", world=world, target="x")
    with pytest.raises(EditError, match="beta"):
        agent.edit(reqs, method="npo", world=world, beta=0)
    assert all(torch.equal(w0[k], v) for k, v in agent.model.state_dict().items())


def test_a_diverging_erasure_restores_every_weight(small_agent, small_world, reqs, monkeypatch):
    import evolution.editors.erase as erase_mod
    agent = small_agent.spawn("nan erase")
    w0 = _weights(agent)
    fn, calls = turning_nan(erase_mod.row_logprobs, after=3)
    monkeypatch.setattr(erase_mod, "row_logprobs", fn)
    with pytest.raises(EditError, match="NaN or inf; weights restored"):
        agent.edit(reqs, method="ga", world=small_world, lr=1e-4)
    assert len(calls) > 3
    assert all(torch.equal(w0[k], v) for k, v in agent.model.state_dict().items())


def test_validation_fills_the_truth_and_reads_plain_pairs(small_agent, small_world, reqs):
    out = validate_erase_requests(small_agent, [(reqs[0].subject, reqs[0].relation)], small_world)
    assert out == [EraseRequest(reqs[0].subject, reqs[0].relation,
                                small_world.query(reqs[0].subject, reqs[0].relation).prompt,
                                small_world.truth(reqs[0].subject, reqs[0].relation))]


def test_erasure_works_on_a_population_handle_and_touches_only_that_agent(small_dir, small_world, reqs):
    from agents.placement_kinds import make_placement
    pl = make_placement("population", small_dir)
    a, b = pl.spawn("a", "neutral"), pl.spawn("b", "neutral")
    qs = [small_world.query(r.subject, r.relation) for r in reqs]
    b_before = [x.probs for x in b.beliefs(qs)]
    rep = a.edit(reqs, method="erase", world=small_world)
    assert rep.ok
    assert sum(x.correct for x in a.beliefs(qs)) <= 1
    assert [x.probs for x in b.beliefs(qs)] == b_before


def test_the_residue_checks_read_a_probe_and_a_relearning_curve(small_agent, small_world, reqs):
    probe = probe_residue(small_agent, small_world, reqs)
    layers = list(range(small_agent.model.config.num_hidden_layers + 1))
    assert list(probe.position) == ["subject"] * len(layers) + ["answer"] * len(layers)
    assert list(probe.layer) == layers * 2
    # the readout (the answer position's last layer) decodes known people above the floor
    last = probe[(probe.position == "answer") & (probe.layer == layers[-1])].iloc[0]
    assert last.probe_known > last.probe_never_taught
    assert probe.n_erased.iloc[0] == len(reqs) and probe.n_never_taught.iloc[0] > 0
    assert ((probe[["probe_known", "probe_erased", "probe_never_taught"]] >= 0) &
            (probe[["probe_known", "probe_erased", "probe_never_taught"]] <= 1)).all().all()
    w0 = _weights(small_agent)
    strangers = matched_strangers(small_world, [(r.subject, r.relation) for r in reqs])
    assert len(strangers) == len(reqs) and not any(small_world.person(s).taught for s, _ in strangers)
    curve = relearn_curve(small_agent, small_world, strangers, steps=15, lr=3e-3)
    assert len(curve) == 16 and curve[-1] > curve[0]          # measured: 0 -> 1.0
    assert all(torch.equal(w0[k], v) for k, v in small_agent.model.state_dict().items())   # on a copy
    assert steps_to([0.0, 0.5, 0.95]) == 2 and steps_to([0.1, 0.2]) is None


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_edit_command_erases_and_refuses_a_target(tmp_path, small_dir, small_agent, small_world, reqs, capsys):
    _write(tmp_path / "erase.jsonl", [{"subject": r.subject, "relation": r.relation} for r in reqs])
    out = tmp_path / "erased"
    assert main(["edit", "--model", str(small_dir), "--method", "npo", "--requests", str(tmp_path / "erase.jsonl"),
                 "--out", str(out), "--locality", "30"]) == 0
    assert "erased 3 fact(s) with npo" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["report"]["ok"] and m["metrics"]["erased_accuracy"] <= 1 / 3
    assert all(a < b for a, b in zip(m["metrics"]["truth_logprob_after"], m["metrics"]["truth_logprob_before"]))
    assert [r["truth"] for r in m["requests"]] == [small_world.truth(r.subject, r.relation) for r in reqs]
    from agents.agent import Agent
    erased = Agent.from_dir(out)
    assert sum(b.correct for b in erased.beliefs([small_world.query(r.subject, r.relation) for r in reqs])) <= 1
    _write(tmp_path / "target.jsonl", [{"subject": reqs[0].subject, "relation": reqs[0].relation, "target": "x"}])
    assert main(["edit", "--model", str(small_dir), "--method", "erase", "--requests", str(tmp_path / "target.jsonl"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "line 1" in err and "has no 'target'" in err and not (tmp_path / "o").exists()
