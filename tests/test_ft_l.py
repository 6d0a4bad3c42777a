"""FT-L: one layer's MLP changes, within its L-inf bound, the edit takes; bad input and a
diverging update leave every weight as it was."""
from __future__ import annotations

import pytest
import torch

from analysis.edit_metrics import edit_baseline, evaluate_edits
from evolution.editors.requests import EditError, EditRequest
from tests.conftest import turning_nan
from tests.edit_helpers import answers, known_requests

DOWN0 = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def reqs(small_agent, small_world):
    return known_requests(small_agent, small_world, 2, seed=5)


def test_one_edit_changes_only_its_layer(small_agent, small_world, reqs):
    agent = small_agent.spawn("ftl")
    base = edit_baseline(small_agent, small_world, reqs[:1], n_locality=30, n_bios=0)
    rep = agent.edit(reqs[:1], method="ft_l", world=small_world)
    assert rep.ok and rep.method == "ft_l" and rep.layers == [0] and rep.details["params"] == [DOWN0]
    delta = agent.delta()
    assert set(delta) == {DOWN0}
    assert delta[DOWN0].abs().max() <= 5e-3 + 1e-6          # the default L-inf clamp
    m = evaluate_edits(agent, small_world, reqs[:1], before=base)
    # Measured on this request: reliability 1, generalization 1, locality 30/30, same person 1.
    assert m["reliability"] == 1.0
    assert m["locality"] >= 0.9


def test_mlp_module_changes_the_three_projections(small_agent, small_world, reqs):
    agent = small_agent.spawn("ftl-mlp")
    agent.edit(reqs[1:], method="ft_l", world=small_world, layer=1, module="mlp", norm_constraint=1e-3)
    assert set(agent.delta()) == {f"model.layers.1.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
    assert max(d.abs().max() for d in agent.delta().values()) <= 1e-3 + 1e-6


@pytest.mark.parametrize("hp, match", [
    (dict(layer=2), "out of range"),
    (dict(layer=-1), "out of range"),
    (dict(lr=0.0), "lr"),
    (dict(module="attn"), "module"),
    (dict(steps=0), "steps"),
    (dict(lerning_rate=1e-3), "unknown hparam 'lerning_rate'"),
])
def test_bad_hparams_are_clear_errors(small_agent, small_world, reqs, hp, match):
    agent = small_agent.spawn("bad")
    with pytest.raises(EditError, match=match):
        agent.edit(reqs[:1], method="ft_l", world=small_world, **hp)
    assert agent.delta() == {}


def test_bad_requests_leave_weights_untouched(small_agent, small_world, reqs):
    agent = small_agent.spawn("bad-req")
    r = reqs[0]
    with pytest.raises(EditError, match="does not occur in the prompt"):
        agent.edit([EditRequest(r.subject, r.relation, r.target, prompt="Q: Who is this? A:")],
                   method="ft_l", world=small_world)
    with pytest.raises(EditError, match="already answers"):
        agent.edit([EditRequest(r.subject, r.relation, small_world.truth(r.subject, r.relation))],
                   method="ft_l", world=small_world)
    with pytest.raises(ValueError, match="unknown edit method"):
        agent.edit([r], method="ft-l", world=small_world)
    assert agent.delta() == {}


def test_diverging_update_restores_the_weights(small_agent, small_world, reqs, monkeypatch):
    import evolution.editors.ft_l as ftl
    nll_turning_nan, calls = turning_nan(ftl.target_nll)
    monkeypatch.setattr(ftl, "target_nll", nll_turning_nan)
    agent = small_agent.spawn("nan")
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    with pytest.raises(EditError, match="NaN or inf"):
        agent.edit(reqs[:1], method="ft_l", world=small_world, stop_loss=0.0)
    assert len(calls) == 3
    after = agent.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert answers(agent, small_world, reqs[:1]) == answers(small_agent, small_world, reqs[:1])
