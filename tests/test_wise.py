"""WISE-style side memory: edits take, main memory stays untouched, unrelated prompts keep
the main memory, the memory survives save/load and spawn, and failures roll back."""
from __future__ import annotations

import pytest
import torch

from analysis.edit_metrics import edit_baseline, evaluate_edits, locality_probe
from evolution.editors.requests import EditError
from evolution.editors.wise import (SideMemoryLinear, load_side_memory, save_side_memory, side_memory_of, ties_merge,
                            uninstall)
from evolution.editors.wise.editor import prompt_routes, prompt_scores
from tests.edit_helpers import answers, known_requests


@pytest.fixture(scope="module")
def edited(small_agent, small_world):
    """Three sequential edits (one call each) into a fresh spawn, and the metrics' baseline."""
    reqs = known_requests(small_agent, small_world, 3, seed=11)
    base = edit_baseline(small_agent, small_world, reqs, n_locality=40, n_bios=10)
    agent = small_agent.spawn("wise")
    reports = [agent.edit([r], method="wise", world=small_world) for r in reqs]
    return agent, reqs, base, reports


def test_edits_take_and_main_memory_is_untouched(small_agent, small_world, edited):
    agent, reqs, base, reports = edited
    assert all(r.ok and r.method == "wise" and r.layers == [0] for r in reports)
    assert isinstance(agent.model.model.layers[0].mlp.down_proj, SideMemoryLinear)
    assert agent.delta() == {}                   # every edit lives in the side memory
    m = evaluate_edits(agent, small_world, reqs, before=base)
    assert [r.details["shards"] for r in reports] == [1, 2, 3]   # one shard per edit (the default)
    # Measured (3 edits): reliability 1, generalization .5 (3 of 6 held-out paraphrases),
    # locality 1 (40/40), same person 1 (15/15), bio perplexity ratio .997 (bios rarely open the gate).
    assert m["reliability"] == 1.0
    assert m["generalization"] >= 0.33
    assert m["locality"] >= 0.95 and m["locality_same_person"] >= 0.8
    assert m["bio_ppl_ratio"] == pytest.approx(1.0, abs=0.02)


def test_gate_opens_for_edits_not_for_others(small_world, edited):
    agent, reqs, _, _ = edited
    mem = side_memory_of(agent.model)
    edit_s = prompt_scores(agent, mem, [r.prompt for r in reqs])
    other = [q.prompt for q in locality_probe(small_world, reqs, 40, seed=3)]
    other_s = prompt_scores(agent, mem, other)
    opened_edits = (edit_s > mem.thresholds[:, None]).any(0).float().mean().item()
    opened_other = (other_s > mem.thresholds[:, None]).any(0).float().mean().item()
    # Measured: every edit prompt opens its shard; 0 of 40 unrelated prompts open any.
    assert opened_edits == 1.0
    assert opened_other <= 0.1


def test_each_edit_is_retrieved_from_its_own_memory(small_world, edited):
    """WISE-Retrieve: one memory per edit, the gate picks the one an edit prompt reads at its
    last token (where the answer is read); unrelated prompts read main memory."""
    agent, reqs, _, _ = edited
    mem = side_memory_of(agent.model)
    assert prompt_routes(agent, mem, [r.prompt for r in reqs]) == [0, 1, 2]
    other = prompt_routes(agent, mem, [q.prompt for q in locality_probe(small_world, reqs, 40, seed=3)])
    assert sum(r >= 0 for r in other) <= 4


def test_uninstall_gives_back_the_original_model(small_agent, small_world, edited):
    agent, reqs, _, _ = edited
    copy_ = agent.spawn("copy")
    uninstall(copy_.model)
    assert side_memory_of(copy_.model) is None
    enc = small_agent.tokenizer([r.prompt for r in reqs], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(copy_.model(**enc).logits, small_agent.model(**enc).logits)
    assert answers(copy_, small_world, reqs) == answers(small_agent, small_world, reqs)
    assert answers(agent, small_world, reqs) == [r.target for r in reqs]   # the original kept its memory


def test_save_and_load(small_world, edited, tmp_path):
    from agents.agent import Agent
    agent, reqs, _, _ = edited
    probe = [r.query(small_world, f) for r in reqs for f in ("question", "heldout:0")]
    agent.save(tmp_path / "a")                 # the side memory travels as agent state: no extra call
    back = Agent.load(tmp_path / "a")
    assert side_memory_of(back.model) is not None
    assert [b.probs for b in back.beliefs(probe)] == [b.probs for b in agent.beliefs(probe)]
    # a dir whose state was dropped is the main memory alone; the side memory files still load into it
    save_side_memory(agent, tmp_path / "a")
    for f in ("state.json", "state.safetensors"):
        (tmp_path / "a" / f).unlink()
    plain = Agent.load(tmp_path / "a")
    assert answers(plain, small_world, reqs) != [r.target for r in reqs]   # main memory only
    load_side_memory(plain, tmp_path / "a")
    assert [b.probs for b in plain.beliefs(probe)] == [b.probs for b in agent.beliefs(probe)]


def test_generate_reads_the_side_memory(edited):
    agent, reqs, _, _ = edited
    out = agent.generate([reqs[0].prompt], max_new_tokens=4)[0]
    assert out.strip().startswith(reqs[0].target)


def _routes(agent, prompts: list[str]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(each prompt's routes alone, the left-padded batch's routes, its attention mask)."""
    tok, mem = agent.tokenizer, side_memory_of(agent.model)
    alone = []
    with torch.no_grad():
        for p in prompts:
            agent.model(**tok([p], return_tensors="pt"))
            alone.append(mem.last_routes[0])
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = side
        agent.model(**enc)
    return alone, mem.last_routes, enc.attention_mask.bool()


def test_left_padded_rows_route_as_they_do_alone(small_world, edited):
    """Batched generation left-pads its prompts: padding and each row's first token are not
    scored, so a row routes (and generates) as it does alone. With every threshold near 0
    (any scored token opens the gate) a scored pad or <s> would open it early."""
    agent, reqs, _, _ = edited
    others = [small_world.query(p.name, "major").prompt for p in small_world.people[:3]]
    prompts = [r.prompt for r in reqs] + others + ["agent 1 says : " + reqs[0].prompt]
    mem = side_memory_of(agent.model)
    kept = mem.thresholds.clone()
    for thresholds in (kept, torch.full_like(kept, 1e-6)):
        mem.thresholds = thresholds
        try:
            alone, batch, mask = _routes(agent, prompts)
        finally:
            mem.thresholds = kept
        assert batch.shape[1] > min(len(r) for r in alone)              # some rows are padded
        for row, (routes, m) in enumerate(zip(batch, mask)):
            assert (routes[~m] == -1).all()
            assert torch.equal(routes[m], alone[row])
        assert any((r >= 0).any() for r in alone)                      # some rows do read a side memory
    assert agent.generate(prompts, max_new_tokens=4) == [agent.generate([p], max_new_tokens=4)[0] for p in prompts]


def test_failed_edit_rolls_back_the_side_memory(small_world, edited, monkeypatch):
    import evolution.editors.wise.editor as ed
    agent, reqs, _, _ = edited
    victim = agent.spawn("victim")
    mem = side_memory_of(victim.model)
    before = mem.state()
    real = ed.row_nll

    def nan_nll(*a, **kw):
        return real(*a, **kw) * float("nan")

    monkeypatch.setattr(ed, "row_nll", nan_nll)
    new = known_requests(victim, small_world, 1, seed=12)
    with pytest.raises(EditError, match="NaN or inf"):
        victim.edit(new, method="wise", world=small_world)
    after = mem.state()
    assert all(torch.equal(before[k], after[k]) for k in ("deltas", "masks", "thresholds", "center", "whiten"))
    assert after["shard_prompts"] == before["shard_prompts"]


def test_failed_first_edit_uninstalls(small_agent, small_world, monkeypatch):
    import evolution.editors.wise.editor as ed
    real = ed.row_nll
    monkeypatch.setattr(ed, "row_nll", lambda *a, **kw: real(*a, **kw) * float("nan"))
    agent = small_agent.spawn("fresh")
    with pytest.raises(EditError, match="NaN or inf"):
        agent.edit(known_requests(agent, small_world, 1, seed=13), method="wise", world=small_world)
    assert side_memory_of(agent.model) is None and agent.delta() == {}


@pytest.mark.parametrize("hp, match", [
    (dict(mask_ratio=0.0), "mask_ratio"),
    (dict(merge="average"), "merge"),
    (dict(beta=0.05, alpha=0.1), "beta"),
    (dict(layer=5), "out of range"),
    (dict(negatives=32, negative_pool=16), "negative_pool"),
    (dict(shard_sise=3), "unknown hparam 'shard_sise'"),
])
def test_bad_hparams(small_agent, small_world, hp, match):
    agent = small_agent.spawn("bad")
    r = known_requests(agent, small_world, 1, seed=14)
    with pytest.raises(EditError, match=match):
        agent.edit(r, method="wise", world=small_world, **hp)
    assert side_memory_of(agent.model) is None


def test_structure_is_fixed_once_built(small_world, edited):
    agent, _, _, _ = edited
    victim = agent.spawn("victim2")
    r = known_requests(victim, small_world, 1, seed=15)
    with pytest.raises(EditError, match="built with layer=0"):
        victim.edit(r, method="wise", world=small_world, layer=1)
    with pytest.raises(EditError, match="no world and no negative_prompts"):
        victim.edit(r, method="wise")


def test_ties_merge():
    a = torch.tensor([[1.0, 0.0], [0.0, -2.0]])
    b = torch.tensor([[0.0, 3.0], [0.0, 4.0]])
    # Disjoint entries merge to their sum; on a conflict the larger total mass's sign wins
    # and only the agreeing entries are averaged.
    assert torch.equal(ties_merge(torch.stack([a, b])), torch.tensor([[1.0, 3.0], [0.0, 4.0]]))
    c = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    assert torch.equal(ties_merge(torch.stack([a, c])), torch.tensor([[2.0, 0.0], [0.0, -2.0]]))
    # density 0.5 keeps each delta's larger half of its non-zero entries
    d = torch.tensor([[1.0, 5.0], [0.0, 0.0]])
    assert torch.equal(ties_merge(torch.stack([d, torch.zeros(2, 2)]), density=0.5),
                       torch.tensor([[0.0, 5.0], [0.0, 0.0]]))


def test_merging_adds_new_shards_to_the_merged_memory(monkeypatch):
    """Shard 0 stands for every edit merged so far: a new shard is added to it, not averaged
    with it (averaging halved the earlier edits at each merge: reliability .20 after 10)."""
    import evolution.editors.wise.editor as ed
    from evolution.editors.wise.memory import SideMemoryLinear
    monkeypatch.setattr(ed, "refresh_threshold", lambda *a, **kw: 0.0)
    mem = SideMemoryLinear(torch.nn.Linear(3, 2, bias=False), layer=0)
    old, new = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), torch.tensor([[2.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    for d in (old, new):
        mem.add_shard(d != 0)
        mem.deltas[-1] = d
        mem.shard_prompts[-1] = [("p", "t", "s", True)]
    ed.merge_closed(None, mem, ed.WISEHyperParams(merge="ties"))
    assert mem.n_shards == 1 and torch.equal(mem.deltas[0], old + new)
    assert len(mem.shard_prompts[0]) == 2


def test_merged_memory_keeps_every_edit(small_agent, small_world):
    reqs = known_requests(small_agent, small_world, 3, seed=11)
    agent = small_agent.spawn("wise-ties")
    reports = [agent.edit([r], method="wise", world=small_world, merge="ties") for r in reqs]
    assert [r.details["shards"] for r in reports] == [1, 1, 1]
    assert answers(agent, small_world, reqs) == [r.target for r in reqs]


def test_lora_refuses_the_wrapped_projection(edited):
    from evolution.learners.finetune import LearnError
    agent = edited[0].spawn("lora-after-wise")
    with pytest.raises(LearnError, match="wrapped"):
        agent.learn(["Q: Who is this? A: Law ."], "lora")
    assert side_memory_of(agent.model) is not None and agent.delta() == {}
