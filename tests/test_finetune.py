"""Continual fine-tuning: full and LoRA learn changed facts; LoRA is merged (a plain model
with a low-rank delta); replay is checked; failures restore the weights."""
from __future__ import annotations

import copy

import pytest
import torch

from agents.records import to_frame
from evolution.learners.finetune import LearnError, fact_texts
from tests.conftest import turning_nan


@pytest.fixture(scope="module")
def news(small_world):
    """A world one epoch on: 10% of people moved company (their company city follows)."""
    world = copy.deepcopy(small_world)
    changed = world.evolve(0.1, "company", seed=5)
    return world, changed


def accuracy(agent, world, facts, epoch=-1) -> float:
    return float(to_frame(agent.beliefs([world.query(f.subject, f.relation, "question", epoch)
                                          for f in facts])).correct.mean())


def test_texts_keep_the_original_behaviour(small_agent):
    """`learn(texts)` (plain texts, no world) fine-tunes on them: the agent now finds the text
    likelier, the agent it was spawned from does not change."""
    agent = small_agent.spawn("texts")
    text = "Q: What is the major of Nobody? A: Law ."
    before, base_before = agent.nll([text]), small_agent.nll([text])
    rep = agent.learn([text] * 4, epochs=2, batch_size=2)
    assert rep["method"] == "finetune" and rep["steps"] == 4 and rep["texts"] == 4
    assert rep["loss_last"] < rep["loss_first"] and rep["seconds"] > 0
    assert agent.nll([text])[0] < 0.8 * before[0], (agent.nll([text]), before)
    assert small_agent.nll([text]) == base_before and agent.delta()


@pytest.mark.parametrize("method, hp", [("finetune", dict(lr=1e-3)), ("lora", dict(lr=3e-3))])
def test_learns_changed_facts(small_agent, news, method, hp):
    world, changed = news
    agent = small_agent.spawn(method)
    # Before: the moved people's new company and city are answered at .06 (measured).
    assert accuracy(agent, world, changed) <= 0.2
    rep = agent.learn(changed, method, world=world, epochs=8, **hp)
    # Measured: 1.0 for both (16 facts, 96 texts, 48 steps).
    assert accuracy(agent, world, changed) >= 0.9
    assert rep["texts"] == len(fact_texts(world, changed)) == 6 * len(changed)


def test_lora_is_merged_and_low_rank(small_agent, news):
    world, changed = news
    agent = small_agent.spawn("lora")
    rep = agent.learn(changed, "lora", world=world, epochs=2, lr=3e-3, rank=4, targets=["down_proj", "q_proj"])
    assert type(agent.model).__name__ == "LlamaForCausalLM"
    assert not any("lora" in k for k in agent.model.state_dict())
    delta = agent.delta()
    assert set(delta) == {f"model.layers.{i}.{m}.weight" for i in (0, 1) for m in ("mlp.down_proj", "self_attn.q_proj")}
    assert all(torch.linalg.matrix_rank(d.double(), rtol=1e-6) <= 4 for d in delta.values())
    assert rep["rank"] == 4 and rep["trainable_parameters"] > 0
    agent.beliefs([world.query(changed[0].subject, "company")])   # still usable through the API


def test_replay_mixes_old_facts_into_each_batch(small_agent, news, small_world):
    world, changed = news
    moved = {f.subject for f in changed}
    old = [f for f in small_world.facts(0) if f.subject not in moved][:60]
    agent = small_agent.spawn("replay")
    rep = agent.learn(changed, "finetune", world=world, replay=old, replay_share=0.5, epochs=1, batch_size=16)
    # Replay adds rows, not steps: 96 texts in batches of 16 are 6 steps with or without it.
    assert rep["steps"] == 6 and rep["replay_texts"] == len(fact_texts(world, old))
    with pytest.raises(LearnError, match="no replay data"):
        agent.learn(changed, "finetune", world=world, replay_share=0.5)


@pytest.mark.parametrize("kw, match", [
    (dict(replay_share=1.0), "replay_share"),
    (dict(forms="bios"), "forms"),
    (dict(epochs=0), "epochs"),
    (dict(lr=-1.0), "lr"),
    (dict(learning_rate=1e-3), "unknown hparam 'learning_rate'"),
])
def test_bad_hparams(small_agent, news, kw, match):
    world, changed = news
    agent = small_agent.spawn("bad")
    with pytest.raises(LearnError, match=match):
        agent.learn(changed, "finetune", world=world, **kw)
    assert agent.delta() == {}


def test_bad_data(small_agent, news):
    world, changed = news
    agent = small_agent.spawn("bad-data")
    with pytest.raises(LearnError, match="need world="):
        agent.learn(changed, "finetune")
    with pytest.raises(LearnError, match="not a mix"):
        agent.learn(changed[:1] + ["a text ."], "finetune", world=world)
    with pytest.raises(LearnError, match="empty"):
        agent.learn([], "lora")
    with pytest.raises(LearnError, match="not a Linear"):
        agent.learn(changed, "lora", world=world, targets=["c_attn"])
    assert agent.delta() == {}


@pytest.mark.parametrize("method", ["finetune", "lora"])
def test_non_finite_loss_restores_the_weights(small_agent, news, method, monkeypatch):
    import evolution.learners.finetune as ft
    world, changed = news
    loss_turning_nan, calls = turning_nan(ft.padded_lm_loss)
    monkeypatch.setattr(ft, "padded_lm_loss", loss_turning_nan)
    agent = small_agent.spawn("nan")
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="weights restored"):
        agent.learn(changed, method, world=world, epochs=1)
    after = agent.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert type(agent.model).__name__ == "LlamaForCausalLM"
