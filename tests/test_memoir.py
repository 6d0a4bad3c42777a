"""MEMOIR-style routed memory: sequential edits take and stay, the base weights are untouched,
unrelated prompts read the base model alone, one person's edits share one key, the memory
travels with the agent (save/load, placements, the CLI), and bad input or a failure leaves
the model as it was."""
from __future__ import annotations

import pytest
import torch

from analysis.edit_metrics import edit_baseline, evaluate_edits, locality_probe
from evolution.editors.memoir import RoutedMemory, memory_of, uninstall
from evolution.editors.requests import EditError, EditRequest
from tests.edit_helpers import answers, known_requests


@pytest.fixture(scope="module")
def edited(small_agent, small_world):
    """Five sequential edits (one call each), then a second relation of the first person."""
    reqs = known_requests(small_agent, small_world, 5, seed=21)
    first = reqs[0]
    other = next(r for r in small_world.relations_of(first.subject)
                 if r != first.relation and r not in small_world.derived)      # not company_city
    cands = small_world.relations[other].candidates
    truth = small_world.truth(first.subject, other)
    second = EditRequest(first.subject, other, next(c for c in cands if c != truth)).resolve(small_world)
    reqs = reqs + [second]
    base = edit_baseline(small_agent, small_world, reqs, n_locality=40, n_bios=10)
    agent = small_agent.spawn("memoir")
    reports = [agent.edit([r], method="memoir", world=small_world) for r in reqs]
    return agent, reqs, base, reports


def test_sequential_edits_take_and_base_weights_are_untouched(small_world, edited):
    agent, reqs, base, reports = edited
    assert isinstance(memory_of(agent.model), RoutedMemory)
    assert agent.delta() == {}                               # every edit lives in the memory
    assert [r.details["keys"] for r in reports] == [1, 2, 3, 4, 5, 5]   # the 6th edit is the 1st person's
    assert all(r.details["routed"] == 1.0 for r in reports)
    m = evaluate_edits(agent, small_world, reqs, before=base)
    # Measured (6 edits on the 80-person model): reliability 1.0, generalization 1.0,
    # locality 1.0, same person 1.0, by generation 1.0 / .92 / 1.0.
    assert m["reliability"] >= 5 / 6 and m["reliability_gen"] >= 4 / 6
    assert m["generalization"] >= 0.5
    assert m["locality"] >= 0.95 and m["locality_gen"] >= 0.9
    assert m["bio_ppl_ratio"] == pytest.approx(1.0, abs=0.02)


def test_one_person_two_relations_share_a_key_and_both_hold(small_world, edited):
    agent, reqs, _, _ = edited
    mem = memory_of(agent.model)
    first, second = reqs[0], reqs[-1]
    facts = mem.facts[mem.subjects.index(first.subject)]
    assert {f[0] for f in facts} == {first.relation, second.relation}
    assert answers(agent, small_world, [first, second]) == [first.target, second.target]


def test_unrelated_prompts_read_the_base_model(small_agent, small_world, edited):
    agent, reqs, _, _ = edited
    mem = memory_of(agent.model)
    others = [q.prompt for q in locality_probe(small_world, reqs, 40, seed=5)]
    routed = 0
    for p in others:
        with torch.no_grad():
            agent.model(**agent.tokenizer(p, return_tensors="pt"))
        routed += bool((mem.last_routes >= 0).any())
    # Measured: 0 of 40 prompts about unedited people reach the memory at any token.
    assert routed <= 2
    enc = agent.tokenizer(others[:8], return_tensors="pt", padding=True)
    with torch.no_grad():
        ours, theirs = agent.model(**enc).logits, small_agent.model(**enc).logits
    assert (ours - theirs).abs().max() < 1e-4 or routed


def test_generate_reads_the_memory(small_agent, edited):
    """Cached generation sees the memory (it wrote the subject token's value into the cache)."""
    agent, reqs, _, _ = edited
    said = agent.generate([r.prompt for r in reqs], max_new_tokens=6)
    before = small_agent.generate([r.prompt for r in reqs], max_new_tokens=6)
    hits = [s.strip().startswith(r.target) for s, r in zip(said, reqs)]
    # Measured: 5 of 6; a birth date scored right by candidates was generated as another date
    # ('12 September 1962' for '12 October 1967'): why the metrics also score by generation.
    assert sum(hits) >= 4
    assert not any(b.strip().startswith(r.target) for b, r in zip(before, reqs))


def test_save_and_load_bring_the_memory_back(small_world, edited, tmp_path):
    from agents.agent import Agent
    agent, reqs, _, _ = edited
    probe = [r.query(small_world, f) for r in reqs for f in ("question", "heldout:0")]
    agent.save(tmp_path / "a")
    back = Agent.load(tmp_path / "a")                    # no extra call: the memory is agent state
    assert memory_of(back.model) is not None
    assert [b.probs for b in back.beliefs(probe)] == [b.probs for b in agent.beliefs(probe)]
    plain = Agent.from_dir(tmp_path / "a")               # the weights alone: the unedited model
    assert answers(plain, small_world, reqs) != [r.target for r in reqs]


def test_a_memory_saved_for_another_base_model_is_refused(small_agent, edited, tmp_path):
    from agents.agent import Agent
    agent, _, _, _ = edited
    agent.save(tmp_path / "a")
    other = small_agent.spawn("other")
    with torch.no_grad():
        for p in other.model.parameters():
            p.copy_(torch.randn_like(p) * p.std())
    other.model.save_pretrained(tmp_path / "a", safe_serialization=True)   # same shape, other weights
    with pytest.raises(EditError, match="another base model"):
        Agent.load(tmp_path / "a")


def test_population_placement_scores_the_memory_on_its_shared_model(small_dir, small_agent, small_world, edited,
                                                                     tmp_path):
    """A MEMOIR agent is no model of its own in the population placement: its memory is added
    to its rows of the shared base model, batched with other agents' rows, and it answers,
    generates and reads texts as the same agent in process does."""
    from agents.placement import Ask
    from agents.population import PopulationPlacement
    from tests.test_placement import assert_same
    _, reqs, _, _ = edited
    FEW = {"v_steps": 40}        # a shorter value search: the test compares the placements, edit for edit
    pop = PopulationPlacement.from_dir(small_dir)
    h, _, rome = pop.spawn("m"), pop.spawn("plain"), pop.spawn("rome")
    pop.edit("m", reqs[:2], "memoir", world=small_world, **FEW)
    pop.spawn("m2").edit(reqs[4:5], method="memoir", world=small_world, **FEW)
    rome.edit(reqs[2:3], method="rome", world=small_world, **FEW)
    ref = small_agent.spawn("ref")
    ref.edit(reqs[:2], method="memoir", world=small_world, **FEW)
    ref2 = small_agent.spawn("ref 2")
    ref2.edit(reqs[4:5], method="memoir", world=small_world, **FEW)
    ref_rome = small_agent.spawn("ref rome")
    ref_rome.edit(reqs[2:3], method="rome", world=small_world, **FEW)
    slot = pop.slots["m"]
    assert slot.solo is None and slot.delta == {} and list(slot.adds) == ["model.layers.0.mlp.down_proj"]
    held = slot.adds["model.layers.0.mlp.down_proj"][0].add.__self__     # only the columns its masks read
    assert held.memory.shape[1] <= 2 * held.k
    with pytest.raises(RuntimeError, match="compacted"):
        held.state()
    # the two memories' features are computed once for both agents' rows
    assert slot.adds["model.layers.0.mlp.down_proj"][0].prepare is \
        pop.slots["m2"].adds["model.layers.0.mlp.down_proj"][0].prepare
    qs = [r.query(small_world, f) for r in reqs[:5] for f in ("question", "heldout:0")] + small_world.queries()[:6]
    got = pop.beliefs_many([Ask(n, qs) for n in ("m", "plain", "rome", "m2")])      # one round, rows mixed
    assert_same(got[0], ref.beliefs(qs))
    assert_same(got[1], small_agent.beliefs(qs))
    assert_same(got[2], ref_rome.beliefs(qs))
    assert_same(got[3], ref2.beliefs(qs))
    assert got[0][0].answer == reqs[0].target != got[1][0].answer             # the memory is read there
    prompts = [r.prompt for r in reqs[:3]]
    assert pop.generate_many([("m", prompts), ("plain", prompts)], 6) == [ref.generate(prompts, 6),
                                                                            small_agent.generate(prompts, 6)]
    texts = [f"{r.prompt} {r.target}" for r in reqs[:3]]
    (nll, n), = pop.nll_many([("m", texts)])
    ref_nll, ref_n = ref.nll(texts)
    assert n == ref_n and abs(nll - ref_nll) < 1e-4 * max(1.0, abs(ref_nll))
    # a weight edit on top keeps the memory; save, load and restore bring both back
    h.edit(reqs[3:4], method="rome", world=small_world, **FEW)
    ref.edit(reqs[3:4], method="rome", world=small_world, **FEW)
    assert pop.slots["m"].solo is None and pop.slots["m"].delta and pop.slots["m"].adds
    qs = qs + [reqs[3].query(small_world)]
    assert_same(h.beliefs(qs), ref.beliefs(qs))
    pop.save("m", tmp_path / "m")
    assert_same(PopulationPlacement.from_dir(small_dir).load(tmp_path / "m").beliefs(qs), ref.beliefs(qs))
    assert_same(pop.restore(pop.snapshot("m")).beliefs(qs), ref.beliefs(qs))


def test_failed_edit_leaves_the_memory_as_it_was(small_world, edited, monkeypatch):
    import evolution.editors.memoir.editor as ed
    agent, reqs, _, _ = edited
    victim = agent.spawn("victim")
    before = memory_of(victim.model).state()
    real = ed.optimize_deltas

    def nan_value(*a, **kw):
        delta, v0, info = real(*a, **kw)
        return delta * float("nan"), v0, info

    monkeypatch.setattr(ed, "optimize_deltas", nan_value)
    new = known_requests(victim, small_world, 1, seed=22)
    with pytest.raises(EditError, match="NaN or inf"):
        victim.edit(new, method="memoir", world=small_world)
    after = memory_of(victim.model).state()
    assert all(torch.equal(before[k], after[k]) for k in ("memory", "index", "read", "values"))
    assert after["subjects"] == before["subjects"] and after["facts"] == before["facts"]
    fresh = victim.spawn("fresh")
    uninstall(fresh.model)
    with pytest.raises(EditError, match="NaN or inf"):
        fresh.edit(new, method="memoir", world=small_world)
    assert memory_of(fresh.model) is None and fresh.delta() == {}


@pytest.mark.parametrize("hp, match", [
    (dict(k=64, width=32), "k=64 .*above the memory width 32"),
    (dict(threshold=0.0), "threshold"),
    (dict(width=0), "width"),
    (dict(layer=5), "out of range"),
    (dict(mask=3), "unknown hparam 'mask'"),
])
def test_bad_hparams_are_refused_before_any_work(small_agent, small_world, hp, match):
    agent = small_agent.spawn("bad")
    r = known_requests(agent, small_world, 1, seed=23)
    with pytest.raises(EditError, match=match):
        agent.edit(r, method="memoir", world=small_world, **hp)
    assert memory_of(agent.model) is None and agent.delta() == {}


def test_structure_is_fixed_once_built(small_world, edited):
    agent, _, _, _ = edited
    victim = agent.spawn("victim2")
    r = known_requests(victim, small_world, 1, seed=24)
    with pytest.raises(EditError, match="built with width=4096"):
        victim.edit(r, method="memoir", world=small_world, width=1024)
    with pytest.raises(EditError, match="layer=1"):
        victim.edit(r, method="memoir", world=small_world, layer=1)


def test_without_a_world_the_key_statistics_need_texts(small_agent, small_world):
    agent = small_agent.spawn("noworld")
    r = known_requests(agent, small_world, 1, seed=25)
    with pytest.raises(EditError, match="stats_texts"):
        agent.edit(r, method="memoir", layer=0)
    texts = [b for p in small_world.people[:40] for b in (small_world.query(p.name, "company").prompt,)]
    agent.edit(r, method="memoir", layer=0, stats_texts=texts * 5)
    assert answers(agent, small_world, r) == [r[0].target]


def test_edit_command_writes_the_memory_beside_the_model(tmp_path, small_dir, small_agent, small_world, capsys):
    import json

    from agents.agent import Agent
    from evolution.cli import main
    # not birth dates: on this 80-person model the value search misses some (ROME's too, same cause)
    reqs = known_requests(small_agent, small_world, 2, seed=26, relations=["company", "major", "university"])
    (tmp_path / "req.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in reqs))
    base = ["edit", "--model", str(small_dir), "--method", "memoir", "--requests", str(tmp_path / "req.jsonl")]
    assert main(base + ["--out", str(tmp_path / "a"), "--adapter", str(tmp_path / "ad")]) == 2   # no weight delta
    assert not (tmp_path / "a").exists()
    assert main(base + ["--out", str(tmp_path / "m")]) == 0
    report = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert "memoir" in report["memory"] and "reliability_gen" in report["metrics"]
    back = Agent.load(tmp_path / "m")
    assert answers(back, small_world, reqs) == [r.target for r in reqs]
    assert answers(Agent.from_dir(tmp_path / "m"), small_world, reqs) != [r.target for r in reqs]
