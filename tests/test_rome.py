"""ROME on the small test model: edits land, failures leave the weights exactly as they were,
and the update is the r-ROME rank-one insertion. Bounds come from runs on this model
(numbers in the comments); each edit costs ~1-4 s on 2 shared cores."""
from __future__ import annotations

import pytest
import torch

from agents.agent import Agent
from envs.world import World
from evolution.editors.requests import EditError, EditRequest, counterfactual_requests, joint_requests, validate_requests
from evolution.editors.rome.compute_v import norm_anchored
from evolution.editors.rome.repr_tools import base_weights
from evolution.editors.rome.rome_main import rank_one_update

DOWN0 = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def fresh(small_dir):
    base = Agent.from_dir(small_dir)
    world = World.load(small_dir / "world.json")
    return base, world


def same_weights(agent, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in agent.model.state_dict().items())


def test_rank_one_update_maps_the_key_to_exactly_the_new_value():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=g)
    cov_inv = torch.linalg.inv(torch.eye(16) + 0.1 * torch.ones(16, 16))
    k = torch.randn(16, generator=g)
    delta = torch.randn(8, generator=g)
    u = cov_inv @ k
    b, a = rank_one_update(delta, u, k)
    assert b.shape == (8, 1) and a.shape == (1, 16)
    upd = b @ a
    assert torch.allclose((w + upd) @ k, w @ k + delta, atol=1e-5)   # r-ROME: W' k* = W k* + delta
    assert torch.linalg.matrix_rank(upd) == 1


def test_single_edits_land_as_rank_one_changes_of_the_traced_layer(fresh):
    base, world = fresh
    reqs = counterfactual_requests(world, 3, seed=1)
    hits = 0
    for r in reqs:
        agent = base.spawn("e")
        rep = agent.edit([r], method="rome", world=world)
        assert rep.ok and rep.layers == [0] and rep.details["layer_source"] == "tracing"
        delta = agent.delta()
        assert list(delta) == [DOWN0]          # one matrix changed: layer 0's down-projection
        s = torch.linalg.svdvals(delta[DOWN0].double())
        assert s[1] < 1e-6 * s[0]             # rank one
        hits += agent.beliefs([r.query(world)])[0].answer == r.target
    # measured: 3/3 here (24 single edits of the default model: reliability 0.92)
    assert hits >= 2


def test_sequential_edits_do_not_collapse(fresh):
    base, world = fresh
    agent = base.spawn("seq")
    reqs = counterfactual_requests(world, 6, seed=3)
    others = [q for q in world.queries() if q.subject not in {r.subject for r in reqs}][:120]
    before = [b.answer for b in agent.beliefs(others)]
    for r in reqs:
        agent.edit([r], method="rome", world=world)
    kept = sum(r.target == b.answer for r, b in zip(reqs, agent.beliefs([r.query(world) for r in reqs])))
    same = sum(a == b.answer for a, b in zip(before, agent.beliefs(others))) / len(others)
    s = torch.linalg.svdvals(agent.delta()[DOWN0].double())
    # measured: 5/6 edits kept, 0.858 of other facts unchanged, delta rank 6 with singular
    # values 4.9 ... 1.9 (without the earlier-edit protection: 4/6; with the corpus-only
    # covariance: 3/6 and 0.85)
    assert kept >= 4 and same >= 0.8
    assert int((s > 1e-6 * s[0]).sum()) == 6 and torch.isfinite(s).all() and s[0] < 10


def test_bad_input_is_refused_before_any_work(fresh):
    base, world = fresh
    agent = base.spawn("bad")
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    r = counterfactual_requests(world, 1, seed=4)[0]
    truth = world.truth(r.subject, r.relation)
    cases = [
        (EditRequest(r.subject, r.relation, r.target, "Q: Where does somebody work? A:"), "does not occur in the prompt"),
        (EditRequest(r.subject, "shoe_size", r.target), "unknown relation"),
        (EditRequest(r.subject, r.relation, "Atlantis"), "not a candidate"),
        (EditRequest(r.subject, r.relation, truth), "already answers"),
    ]
    for req, msg in cases:
        with pytest.raises(EditError, match=msg):
            agent.edit([req], method="rome", world=world)
    with pytest.raises(EditError, match="layer"):
        agent.edit([r], method="rome", world=world, layer=7)
    with pytest.raises(EditError, match="unknown hparam 'v_step'"):
        agent.edit([r], method="rome", world=world, v_step=3)
    with pytest.raises(EditError, match="statements='False' must be true or false"):
        agent.edit([r], method="rome", world=world, statements="False")   # a truthy string from a command line
    with pytest.raises(ValueError, match="unknown edit method 'rom'"):
        agent.edit([r], method="rom", world=world)
    with pytest.raises(EditError, match="requests: empty"):
        validate_requests(agent, [], world)
    assert same_weights(agent, before)


def test_nan_in_a_later_update_restores_every_earlier_edit_of_the_call(fresh, monkeypatch):
    import evolution.editors.rome.rome_main as rm
    base, world = fresh
    agent = base.spawn("nan")
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    real, calls = rm.optimize_deltas, []

    def second_goes_nan(*a, **kw):
        delta, value, info = real(*a, **kw)
        calls.append(1)
        return (delta * float("nan") if len(calls) == 2 else delta), value, info
    monkeypatch.setattr(rm, "optimize_deltas", second_goes_nan)
    reqs = counterfactual_requests(world, 2, seed=5)
    with pytest.raises(EditError, match="NaN"):
        agent.edit(reqs, method="rome", world=world, v_steps=5, n_prefixes=1)
    assert len(calls) == 2 and same_weights(agent, before)


def test_counterfactuals_avoid_the_agents_current_answer(fresh):
    base, world = fresh
    reqs = counterfactual_requests(world, 300, seed=0, distinct_subjects=False, taught_only=False, agent=base)
    now = [b.answer for b in base.beliefs([r.query(world) for r in reqs])]
    assert all(r.target != a and r.target != world.truth(r.subject, r.relation) for r, a in zip(reqs, now))
    assert validate_requests(base, reqs, world) is not None      # none is refused as already answered


def test_norm_anchoring_keeps_the_direction_and_takes_the_unedited_norm():
    g = torch.Generator().manual_seed(0)
    values, reference = torch.randn(3, 8, generator=g) * 5, torch.randn(3, 8, generator=g)
    out = norm_anchored(values, reference)
    assert torch.allclose(out.norm(dim=1), reference.norm(dim=1), atol=1e-5)
    assert torch.allclose(torch.nn.functional.cosine_similarity(out, values), torch.ones(3), atol=1e-5)


def test_a_norm_anchored_edit_searches_its_value_at_the_unedited_norm(fresh, monkeypatch):
    import evolution.editors.rome.rome_main as rm
    base, world = fresh
    real, seen = rm.optimize_deltas, []

    def recording(*a, **kw):
        out = real(*a, **kw)
        seen.append((out, kw["anchor"]))
        return out
    monkeypatch.setattr(rm, "optimize_deltas", recording)
    agent = base.spawn("anchored")
    reqs = counterfactual_requests(world, 2, seed=11)
    agent.edit(reqs, method="rome", world=world, norm_anchor=True)
    assert len(seen) == 2
    for (delta, value0, _), anchor in seen:
        assert anchor is not None
        assert torch.allclose((value0 + delta).norm(dim=1), anchor.norm(dim=1), rtol=1e-4)
        assert float(delta.norm()) > 0.1 * float(anchor.norm())      # the value moved, on the sphere
    assert [b.answer for b in agent.beliefs([r.query(world) for r in reqs])] == [r.target for r in reqs]


def test_base_weights_swaps_in_the_base_and_puts_the_edit_back(fresh):
    base, world = fresh
    agent = base.spawn("b")
    agent.edit(counterfactual_requests(world, 1, seed=5), method="rome", world=world)
    edited = {k: v.clone() for k, v in agent.model.state_dict().items()}
    with pytest.raises(RuntimeError):
        with base_weights(agent) as m:
            assert all(torch.equal(v, base.base[k]) for k, v in m.state_dict().items())
            raise RuntimeError("inside")
    assert same_weights(agent, edited)


def test_joint_requests_keep_a_persons_other_edits_and_the_latest_of_each():
    held = {"A B": [("company", "p1", "X"), ("major", "p2", "Y")], "C D": [("major", "p3", "Z")]}
    out = joint_requests(held, [EditRequest("A B", "major", "W", "p4"), EditRequest("A B", "major", "V", "p5")])
    assert [(r.subject, r.relation, r.target) for r in out] == [("A B", "company", "X"), ("A B", "major", "V")]


def test_a_person_edited_twice_keeps_both_edits_and_the_facts_travel(fresh, tmp_path):
    base, world = fresh
    person = next(p for p in world.people if p.taught)
    reqs = []
    for rel in ("company", "major"):
        now = base.beliefs([world.query(person.name, rel, "question")])[0].answer
        reqs.append(EditRequest(person.name, rel, next(c for c in world.relations[rel].candidates if c != now)))
    agent = base.spawn("twice")
    agent.edit([reqs[0]], method="rome", world=world)
    rep = agent.edit([reqs[1]], method="rome", world=world)
    assert rep.details["per_request"][0]["edits_of_person"] == 2      # the second value holds both
    answers = [b.answer for b in agent.beliefs([r.query(world) for r in reqs])]
    assert answers == [r.target for r in reqs]
    loaded = Agent.load(agent.save(tmp_path / "a"))
    assert loaded.state["edit_facts"][person.name] == agent.state["edit_facts"][person.name]
    assert [f[0] for f in loaded.state["edit_facts"][person.name]] == ["company", "major"]
