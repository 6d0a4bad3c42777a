"""Every method on every supported architecture family (agents/architectures.py), without a
download: a tiny model of the family is instantiated from its config with the default world's
word-level tokenizer and pretrained on that world for a few hundred steps (~60 s; cached by
family and world like the other test models), then every
editor and learner runs on it, a ROME edit reaches its target, the population placement scores
it as the local agent does, and its exported adapter loads with peft. Qwen2 (Llama's layout),
GPT-2 (Conv1D weights, learned positions) and GPT-NeoX (biases, other names) run by default;
the other families with --runslow."""
from __future__ import annotations

import pytest
import torch

FAST = ["qwen2", "gpt2", "gpt_neox"]
SLOW = ["llama", "mistral", "gptj", "phi"]
# the value search of ROME, MEMIT and MEMOIR for 80 Adam steps, not 150: on these tiny models
# the target NLL stalls at the norm clamp before 80 (ROME's three edits on gpt2: .90 / .22 / .19
# after 80, .90 / .21 / .20 after 150; every editor on the three default families landed as
# many edits at 80 as at 150, MEMIT on gpt2 2 of 3 both times, but 1 of 3 at 50; the four
# --runslow families pass at 80 too), and the search was two thirds of this test's time
VALUE_STEPS = {"v_steps": 80}


def make_family(family: str):
    """`make_model` for `agents.pretrain.train`: a tiny model of `family`."""
    from functools import partial

    from agents.architectures import tiny_model
    return partial(tiny_model, family)


def family_dir(family: str, world):
    """The tiny `family` model pretrained on `world` (400 steps), cached like the other test
    models (tests/conftest.cached_dir)."""
    import transformers

    from agents.pretrain import PretrainConfig, save_model_dir, train
    from tests.conftest import cached_dir

    def build(d):
        model, tok, _, _ = train(PretrainConfig.from_dict({"people": len(world.people), "steps": 400}), world=world,
                                 progress=False, make_model=make_family(family))
        save_model_dir(d, model, tok, world)
    return cached_dir(f"family-{family}", {"world": world.to_dict(), "steps": 400,
                                           "transformers": transformers.__version__}, build)


def _check_family(family: str, small_world, tmp_path, monkeypatch):
    from agents.adapters import export_adapter
    from agents.agent import Agent
    from agents.delta import mismatch
    from agents import population
    from agents.placement import Ask
    from agents.placement_kinds import make_placement
    from evolution.editors.requests import counterfactual_requests
    world = small_world
    d = family_dir(family, world)
    agent = Agent.from_dir(d)
    assert agent.model.config.model_type == family
    known = world.queries(subjects=[p.name for p in world.people if p.taught][:20])
    assert sum(b.correct for b in agent.beliefs(known)) / len(known) >= 0.8
    # batched generation (left-padded; GPT-2's learned positions from the mask) is each prompt alone
    prompts = [q.prompt for q in known[:4]] + ["agent 2 says : " + known[5].prompt]
    assert agent.generate(prompts, 5) == [agent.generate([p], 5)[0] for p in prompts]
    reqs = [r for r in counterfactual_requests(world, 12, seed=0, agent=agent)
            if agent.beliefs([world.query(r.subject, r.relation)])[0].correct][:3]
    assert len(reqs) == 3
    landed = {}
    for method in ("rome", "memit", "ft_l", "wise", "memoir"):
        a = agent.spawn(method)
        a.edit(reqs, method=method, world=world, **({} if method in ("ft_l", "wise") else VALUE_STEPS))
        if method in ("rome", "memit", "ft_l"):      # the update they return is the change they made
            assert mismatch(a.model.state_dict(), a.base, a.last_update) is None
        landed[method] = sum(a.beliefs([r.query(world)])[0].answer == r.target for r in reqs)
        if method == "wise":
            # the side memory (beside GPT-2's transposed Conv1D too) comes back with a plain load,
            # and uninstalling it gives the family's own projection back, its weights untouched
            from evolution.editors.rome.repr_tools import down_proj
            from evolution.editors.wise.memory import uninstall
            back = Agent.load(a.save(tmp_path / f"{family}-wise"))
            qs = [r.query(world) for r in reqs]
            assert [b.answer for b in back.beliefs(qs)] == [b.answer for b in a.beliefs(qs)]
            kind = type(down_proj(agent.model, 0))
            uninstall(back.model)
            assert type(down_proj(back.model, 0)) is kind
            assert [b.answer for b in back.beliefs(known)] == [b.answer for b in agent.beliefs(known)]
    assert all(n >= 2 for n in landed.values()), landed        # measured: 3 of 3, but MEMIT 2 of 3 on gpt2
    for method in ("finetune", "lora"):
        a = agent.spawn(method)
        a.learn(world.facts()[:5], method, world=world, epochs=2)
        assert a.delta() and mismatch(a.model.state_dict(), a.base, a.last_update) is None
    # the population placement scores an edited agent as the local agent does
    local = agent.spawn("edited")
    local.edit(reqs[:2], method="rome", world=world, **VALUE_STEPS)
    pop = make_placement("population", d)
    h = pop.spawn("edited")
    pop.edit("edited", reqs[:2], "rome", world=world, **VALUE_STEPS)
    qs = [r.query(world) for r in reqs] + known[:6]
    # held as two rank-one factors (GPT-2's Conv1D too), added by merged weights or gathered
    assert [v[0].shape[1] for v in pop.slots["edited"].delta.values()] == [2]
    ours = local.beliefs(qs)
    for merge_at in (0, float("inf")):
        monkeypatch.setattr(population, "MERGE_TOKENS_PER_RANK", merge_at)
        theirs = pop.beliefs_many([Ask(h.name, qs)])[0]
        assert [b.answer for b in ours] == [b.answer for b in theirs]
        assert max(abs(x - y) for b, c in zip(ours, theirs) for x, y in zip(b.probs, c.probs)) < 1e-4
    # its change exported as a peft adapter loads onto the base and gives the edited model
    from peft import PeftModel
    export_adapter(local, tmp_path / f"{family}-adapter", rank=2)
    served = PeftModel.from_pretrained(Agent.from_dir(d).model, tmp_path / f"{family}-adapter").eval()
    ids = local.tokenizer([q.prompt for q in qs[:4]], return_tensors="pt", padding=True)
    with torch.no_grad():
        want, got = local.model(**ids).logits, served(**ids).logits
    assert torch.allclose(want, got, atol=1e-4, rtol=0)
    return landed


@pytest.mark.parametrize("family", FAST)
def test_every_method_on_a_family(family, small_world, tmp_path, monkeypatch):
    _check_family(family, small_world, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("family", SLOW)
def test_every_method_on_a_family_slow(family, small_world, tmp_path, monkeypatch):
    _check_family(family, small_world, tmp_path, monkeypatch)


def test_an_unknown_family_is_refused_with_the_known_ones(small_agent, small_world):
    import transformers as T

    from agents.agent import Agent
    from agents.architectures import ArchitectureError, layout_of
    from evolution.editors.requests import EditError
    tok = small_agent.tokenizer
    m = T.AutoModelForCausalLM.from_config(T.BloomConfig(vocab_size=len(tok), hidden_size=16, n_layer=1, n_head=2))
    with pytest.raises(ArchitectureError, match=r"model_type 'bloom'.*known: \['gpt2'.*register_layout"):
        layout_of(m)
    agent = Agent(m, tok)
    with pytest.raises(EditError, match="model_type 'bloom'"):
        agent.edit([("Kara", "company", "Acorn Labs", "Kara works at")], method="rome", check_current=False)
    # LoRA with targets named by the user needs no layout
    agent.learn(small_world.facts()[:2], "lora", world=small_world, epochs=1, targets=["query_key_value"])
    assert agent.delta()
