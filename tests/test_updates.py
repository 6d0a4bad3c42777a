"""Methods return the change they made (ROME's design: the editor computes the update, the
placement keeps it): factored where the method knows the factors (ROME rank one per request,
MEMIT rank n, LoRA rank r), dense where it is dense (FT-L, full fine-tuning). The placements
keep it without an SVD, a wrong update is caught and the change factored instead, and a method
that returns none is factored as before."""
from __future__ import annotations

import json

import pytest
import torch

import agents.delta as delta_mod
from agents.agent import Agent
from agents.delta import compose, dense, fit, mismatch, plus
from agents.methods import EDITORS, register_editor
from agents.placement import Ask, LocalPlacement
from agents.population import PopulationPlacement
from evolution.editors.requests import EditReport, counterfactual_requests
from evolution.editors.rome.repr_tools import down_proj

DOWN0 = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def reqs(small_world):
    return counterfactual_requests(small_world, 3, seed=5)


def _changed(small_dir, small_world, reqs, method):
    a = Agent.from_dir(small_dir)
    if method in ("finetune", "lora"):
        report = a.learn(small_world.facts()[:4], method, world=small_world, epochs=2, lr=5e-3)
        assert "update" not in report
        json.dumps(report)
    else:
        report = a.edit(reqs, method=method, world=small_world)
        assert report.update is None                        # the agent took it
        json.dumps(report.to_dict())
    return a


@pytest.mark.parametrize("method", ["rome", "memit", "ft_l", "finetune", "lora"])
def test_each_method_returns_exactly_the_change_it_made(small_dir, small_world, reqs, method):
    a = _changed(small_dir, small_world, reqs, method)
    upd = a.last_update
    assert upd and mismatch(a.model.state_dict(), a.base, upd) is None
    kinds = {k: (v[0].shape[1] if isinstance(v, tuple) else "dense") for k, v in upd.items()}
    if method == "rome":
        assert list(kinds.values()) == [3]                  # one down-projection, rank one per request
    elif method == "memit":
        assert kinds and all(r != "dense" and r <= 3 for r in kinds.values())   # rank <= the subjects
    elif method == "lora":
        assert len(kinds) > 1 and set(kinds.values()) == {8}                    # the adapter's rank, per module
    else:
        assert set(kinds.values()) == {"dense"}
    # a wrong update is noticed
    k = next(iter(upd))
    wrong = {**upd, k: dense({k: upd[k]})[k] * 1.5}
    assert k in mismatch(a.model.state_dict(), a.base, wrong)


def _no_svd(monkeypatch):
    calls = []
    real = delta_mod.low_rank

    def spy(*args, **kw):
        calls.append(args[0].shape)
        return real(*args, **kw)
    monkeypatch.setattr(delta_mod, "low_rank", spy)
    return calls


def test_placements_keep_the_returned_update_without_an_svd(small_dir, small_world, reqs, monkeypatch):
    calls = _no_svd(monkeypatch)
    local, pop = LocalPlacement.from_dir(small_dir), PopulationPlacement.from_dir(small_dir)
    for p in (local, pop):
        p.spawn("a")
        for r in reqs:                                       # sequential: rank grows one per edit
            p.edit("a", [r], "rome", world=small_world)
        p.learn("a", small_world.facts()[:4], "lora", world=small_world, epochs=2, lr=5e-3)
    assert pop.slots["a"].delta[DOWN0][0].shape[1] == 3 + 8   # three edits and the LoRA's rank 8, side by side
    snap = local.snapshot("a")
    assert calls == []
    assert set(snap.delta) == set(pop.slots["a"].delta)
    for k, v in snap.delta.items():         # the same edits, found on weights equal to float rounding
        x, y = dense({k: v})[k], dense({k: pop.slots["a"].delta[k]})[k]
        assert (x - y).abs().max() < 1e-3 * x.abs().max()
    qs = small_world.queries()[:40] + [r.query(small_world) for r in reqs]
    mine, theirs = local.beliefs_many([Ask("a", qs)])[0], pop.beliefs_many([Ask("a", qs)])[0]
    assert [b.answer for b in mine] == [b.answer for b in theirs]
    assert max(abs(x - y) for b, c in zip(mine, theirs) for x, y in zip(b.probs, c.probs)) < 1e-4
    assert sum(b.answer == r.target for b, r in zip(theirs[-3:], reqs)) >= 2


@pytest.fixture
def plugins():
    """Two editors a user could write: one returns a wrong update, one returns none."""
    def bump(agent, requests, world=None, claim: float = 1.0, **_):
        g, w = torch.Generator().manual_seed(0), down_proj(agent.model, 0).weight
        b, a = torch.randn(w.shape[0], 1, generator=g), torch.randn(1, w.shape[1], generator=g)
        with torch.no_grad():
            w += 0.05 * b @ a
        return EditReport("bump", len(requests), 0.0, [0], True, {},
                          None if claim is None else {DOWN0: (0.05 * claim * b, a)})
    register_editor("test_bump")(bump)
    yield
    EDITORS.pop("test_bump")


def test_a_wrong_update_is_caught_and_the_change_factored_instead(small_dir, plugins, monkeypatch):
    calls = _no_svd(monkeypatch)
    pop = PopulationPlacement.from_dir(small_dir)
    for name, claim in (("right", 1.0), ("wrong", 2.0), ("none", None)):
        pop.spawn(name)
        if claim == 2.0:
            with pytest.warns(UserWarning, match=f"agent 'wrong'.*does not match.*{DOWN0}"):
                pop.edit(name, [], "test_bump", claim=claim)
        else:
            pop.edit(name, [], "test_bump", claim=claim)
    assert len(calls) == 2                                 # the wrong one and the one without an update
    want = dense(pop.slots["right"].delta)[DOWN0]
    for name in ("wrong", "none"):                         # both kept what the method really did
        assert pop.slots[name].delta[DOWN0][0].shape[1] == 1
        assert torch.allclose(dense(pop.slots[name].delta)[DOWN0], want, atol=1e-6)


def test_factors_sit_side_by_side_until_the_matrix_is_smaller():
    g = torch.Generator().manual_seed(0)
    one = lambda: (torch.randn(16, 1, generator=g), torch.randn(1, 12, generator=g))
    x, y = one(), one()
    s = plus(x, y)
    assert s[0].shape == (16, 2) and torch.allclose(s[0] @ s[1], x[0] @ x[1] + y[0] @ y[1], atol=1e-6)
    many = {"w": x}
    for _ in range(6):                                     # rank 7 x (16 + 12) >= 16 x 12: dense
        many = compose(many, {"w": one()})
    assert not isinstance(many["w"], tuple) and many["w"].shape == (16, 12)
    base = {"w": torch.randn(16, 12, generator=g)}
    four = compose({"w": x}, {"w": (torch.cat([y[0]] * 3, 1), torch.cat([y[1]] * 3, 0))})
    assert fit(four, base, max_rank=8)["w"][0].shape[1] == 4      # kept as given
    kept = fit(four, base, max_rank=2)["w"]                         # above the rank: re-factored, numerical rank 2
    assert kept[0].shape[1] == 2 and torch.allclose(kept[0] @ kept[1], dense(four)["w"], atol=1e-5)
    assert not isinstance(fit({"w": one()}, base, max_rank=8, linear=set())["w"], tuple)   # not a linear weight


def test_gpt2_conv1d_changes_are_held_low_rank_and_score_as_the_local_agent(small_dir, small_world, monkeypatch):
    """GPT-2 stores its projections as Conv1D ([in, out]): a LoRA's change of them is held as
    factors and added by merged weights or gathered, as for nn.Linear (it used to be dense)."""
    import copy

    from agents import population
    from agents.architectures import tiny_model
    tok = Agent.from_dir(small_dir).tokenizer
    torch.manual_seed(0)
    model = tiny_model("gpt2", len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    plain = Agent(copy.deepcopy(model), tok)
    local, pop = LocalPlacement(Agent(copy.deepcopy(model), tok)), PopulationPlacement(model, tok)
    for p in (local, pop):
        p.spawn("a").learn(small_world.facts()[:4], "lora", world=small_world, epochs=2, lr=5e-2)
    held = pop.slots["a"].delta
    assert {k.rsplit(".", 2)[-2] for k in held} == {"c_attn", "c_proj", "c_fc"}
    assert all(isinstance(v, tuple) and v[0].shape[1] == 8 for v in held.values())
    qs = small_world.queries()[:30]
    mine = local.beliefs_many([Ask("a", qs)])[0]
    assert max(abs(x - y) for b, c in zip(mine, plain.beliefs(qs))
               for x, y in zip(b.probs, c.probs)) > 1e-3                 # the change matters
    for merge_at in (0, float("inf")):
        monkeypatch.setattr(population, "MERGE_TOKENS_PER_RANK", merge_at)
        theirs = pop.beliefs_many([Ask("a", qs)])[0]
        assert [b.answer for b in mine] == [b.answer for b in theirs]
        assert max(abs(x - y) for b, c in zip(mine, theirs) for x, y in zip(b.probs, c.probs)) < 1e-4


def test_the_check_allows_the_weights_own_rounding_and_no_more():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        base = {"w": torch.randn(64, 32, generator=g).to(dtype)}
        change = 0.1 * torch.randn(64, 32, generator=g)
        state = {"w": (base["w"].float() + change).to(dtype)}
        assert mismatch(state, base, {"w": change}) is None, dtype
        assert "w is off by" in mismatch(state, base, {"w": 2 * change}), dtype
        assert "does not name it" in mismatch(state, base, {}), dtype


def test_a_method_that_fails_leaves_the_agent_as_it_was(small_dir, plugins):
    from evolution.editors.requests import EditError, weights_restored_on_error

    def fails(agent, requests, world=None, **_):
        with weights_restored_on_error(agent.model):
            with torch.no_grad():
                down_proj(agent.model, 0).weight += 1.0
            agent.state["half-written"] = True
            raise EditError("failed half way")
    register_editor("test_fails")(fails)
    try:
        for p in (PopulationPlacement.from_dir(small_dir), LocalPlacement.from_dir(small_dir)):
            p.spawn("a")
            p.edit("a", [], "test_bump")
            before, version = p.snapshot("a"), p.version("a")
            with pytest.raises(EditError, match="half way"):
                p.edit("a", [], "test_fails")
            after = p.snapshot("a")
            assert set(after.delta) == set(before.delta) == {DOWN0}
            assert torch.equal(dense(after.delta)[DOWN0], dense(before.delta)[DOWN0])
            assert p.version("a") == version
            if isinstance(p, PopulationPlacement):   # the local agent is its model: a method's own state is its care
                assert "half-written" not in after.state
    finally:
        EDITORS.pop("test_fails")
