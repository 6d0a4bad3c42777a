import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agents.agent import Agent
from agents.checkpoint import CheckpointError
from agents.records import to_frame
from envs.world import claim


def test_saved_dir_loads_with_plain_transformers_and_tokenizer_convention(small_dir, small_world):
    model = AutoModelForCausalLM.from_pretrained(small_dir)
    tok = AutoTokenizer.from_pretrained(small_dir)
    p = small_world.people[0]
    q = small_world.query(p.name, "birth_city")
    ids = tok(q.prompt).input_ids
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    cand = tok(" " + q.truth, add_special_tokens=False).input_ids
    assert tok.bos_token_id not in cand and tok.unk_token_id not in cand
    # the summed log-prob of the candidate after the question, computed by hand
    full = torch.tensor([ids + cand])
    with torch.no_grad():
        lp = model(full).logits.log_softmax(-1)[0]
    by_hand = sum(lp[len(ids) - 1 + i, t].item() for i, t in enumerate(cand))
    from agents.scoring import candidate_logprobs
    ours = candidate_logprobs(model, tok, [q.prompt], [q.candidates])[0]
    assert ours[q.candidates.index(q.truth)].item() == pytest.approx(by_hand, abs=1e-4)


def test_beliefs_are_distributions_and_batching_does_not_change_them(small_agent, small_world):
    qs = small_world.queries(relations=["company", "birth_date"])[:40]
    batched = small_agent.beliefs(qs)
    single = [small_agent.beliefs([q])[0] for q in qs[:8]]
    for b in batched:
        assert abs(sum(b.probs) - 1) < 1e-4 and b.answer in b.candidates
        assert b.confidence == max(b.probs)
    for a, b in zip(batched, single):
        assert a.answer == b.answer
        assert a.probs == pytest.approx(b.probs, abs=1e-4)
    df = to_frame(batched)
    assert {"agent", "subject", "relation", "answer", "truth", "confidence", "p_truth", "correct"} <= set(df.columns)


def test_context_is_placed_before_the_question(small_agent, small_world):
    p = next(x for x in small_world.people if x.taught)
    q = small_world.query(p.name, "company")
    wrong = next(c for c in q.candidates if c != q.truth)
    ctx = " ".join(claim(small_world.relations["company"], p.name, wrong, f"agent {i}") for i in range(3))
    b = small_agent.beliefs([q], context=ctx, round=2)[0]
    assert b.context == ctx and b.round == 2 and b.prompt == q.prompt
    with pytest.raises(ValueError, match="context: 2 texts for 1 queries"):
        small_agent.beliefs([q], context=["a", "b"])


def test_generate_returns_text(small_agent, small_world):
    p = next(x for x in small_world.people if x.taught and x.qa_in_training)
    q = small_world.query(p.name, "company")
    out = small_agent.generate([q.prompt], max_new_tokens=4)
    assert isinstance(out[0], str) and out[0].strip()


def test_save_load_roundtrip_and_spawn_shares_base(small_agent, small_world, tmp_path):
    qs = small_world.queries(relations=["major"])[:10]
    small_agent.save(tmp_path / "a")
    assert (tmp_path / "a" / "model.safetensors").exists()
    again = Agent.load(tmp_path / "a")
    assert [b.probs for b in again.beliefs(qs)] == [b.probs for b in small_agent.beliefs(qs)]
    child = small_agent.spawn("agent 7", persona="overconfident")
    assert child.base is small_agent.base and child.delta() == {}
    with torch.no_grad():
        child.model.model.layers[0].mlp.down_proj.weight[0, 0] += 1.0
    assert list(child.delta()) == ["model.layers.0.mlp.down_proj.weight"]
    assert small_agent.delta() == {}, "a child's change must not touch its parent"


def test_bad_model_dirs_get_clear_errors(small_dir, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Agent.from_dir(tmp_path / "nope")
    empty = tmp_path / "bin_only"
    empty.mkdir()
    (empty / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no .safetensors weights.*PyTorch .bin"):
        Agent.from_dir(empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in small_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer could not be read"):
        Agent.from_dir(broken)


def test_unknown_edit_method_is_named(small_agent):
    with pytest.raises(ValueError, match="unknown edit method 'teleport'"):
        small_agent.edit([], method="teleport")
    with pytest.raises(ValueError, match="edit method 'tests.test_agent:nothing': cannot import"):
        small_agent.edit([], method="tests.test_agent:nothing")
    with pytest.raises(ValueError, match="is a int, not a function"):
        small_agent.edit([], method="tests.test_agent:NOT_A_FUNCTION")


NOT_A_FUNCTION = 3


def count_requests(agent, requests, **hparams):
    """A user's editor: what it was called with, so the test sees it ran."""
    return {"agent": agent.name, "requests": len(requests), **hparams}


def test_users_editors_by_dotted_path_and_entry_point(small_agent, monkeypatch):
    from importlib.metadata import EntryPoint

    from agents import methods
    assert small_agent.edit([1, 2], method="tests.test_agent:count_requests", k=1) == \
        {"agent": small_agent.name, "requests": 2, "k": 1}
    ep = EntryPoint(name="counter", value="tests.test_agent:count_requests", group="knowevo.editors")
    monkeypatch.setattr(methods, "_entry_points", lambda kind: {"counter": ep} if kind == "edit" else {})
    assert small_agent.edit([1], method="counter") == {"agent": small_agent.name, "requests": 1}
    with pytest.raises(ValueError, match="unknown learning method 'counter'"):
        small_agent.learn([], method="counter")
