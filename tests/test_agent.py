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


def test_batched_generation_is_each_prompt_generated_alone(small_agent, small_world):
    """Prompts of different lengths share left-padded batches; each continuation is the one
    the prompt gets alone (no padding)."""
    people = [x for x in small_world.people if x.taught][:6]
    prompts = [small_world.query(p.name, r).prompt for p in people for r in ("company", "birth_date")]
    prompts += ["agent 3 says : " + prompts[0], prompts[1] + " " + prompts[2]]
    enc = small_agent.tokenizer(prompts, padding=True)
    assert len({sum(m) for m in enc["attention_mask"]}) >= 3          # the batches are padded
    small_agent.batch_size = 5
    try:
        batched = small_agent.generate(prompts, max_new_tokens=6)
    finally:
        small_agent.batch_size = 32
    assert batched == [small_agent.generate([p], max_new_tokens=6)[0] for p in prompts]


def test_generate_returns_text(small_agent, small_world):
    p = next(x for x in small_world.people if x.taught and x.qa_in_training)
    q = small_world.query(p.name, "company")
    out = small_agent.generate([q.prompt], max_new_tokens=4)
    # the model was trained on this person's QA: greedy decoding says the company (measured: 20 of
    # 20 such people), then the QA format's ' .'
    assert out[0].strip().startswith(q.truth), (out[0], q.truth)


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
    installed = {k: methods._entry_points(k) for k in methods.ENTRY_POINT_GROUPS}   # the built-ins
    monkeypatch.setattr(methods, "_entry_points",
                        lambda kind: {**installed[kind], "counter": ep} if kind == "edit" else installed[kind])
    assert small_agent.edit([1], method="counter") == {"agent": small_agent.name, "requests": 1}
    with pytest.raises(ValueError, match="unknown learning method 'counter'"):
        small_agent.learn([], method="counter")


def _peer_contexts(world, queries):
    out = []
    for i, q in enumerate(queries):
        wrong = [c for c in q.candidates if c != q.truth]
        out.append(" ".join(claim(world.relations[q.relation], q.subject, wrong[(i + k) % len(wrong)], f"agent {k}")
                            for k in range(3)))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_prompts_score_as_one_sequence_per_candidate(small_dir, small_world, attn):
    """One row per prompt with a block mask gives the log-probs of one sequence per candidate."""
    from agents.records import prompts_with_context
    from agents.scoring import candidate_logprobs, pair_logprobs
    model = AutoModelForCausalLM.from_pretrained(small_dir, attn_implementation=attn).eval()
    tok = AutoTokenizer.from_pretrained(small_dir)
    qs = small_world.queries()[::37][:30]
    _, alone = prompts_with_context(qs, None)
    _, social = prompts_with_context(qs, _peer_contexts(small_world, qs))
    prompts = alone + social + alone[:3]          # repeated asks are scored once, answered each time
    cands = [q.candidates for q in qs] * 2 + [q.candidates for q in qs[:3]]
    packed = candidate_logprobs(model, tok, prompts, cands, batch_size=7)
    pairs = pair_logprobs(model, tok, prompts, cands, batch_size=64)
    worst = max((a - b).abs().max().item() for a, b in zip(packed, pairs))
    assert worst < 1e-5, worst
    assert any(len(tok(" " + c, add_special_tokens=False).input_ids) > 1 for q in qs for c in q.candidates)


def test_packed_scoring_on_a_gpt2_architecture(small_dir, small_world):
    """Absolute position embeddings (GPT-2) follow the packed rows' position ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from agents.scoring import candidate_logprobs, pair_logprobs
    tok = AutoTokenizer.from_pretrained(small_dir)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).eval()
    qs = small_world.queries()[::41][:12]
    prompts, cands = [q.prompt for q in qs], [q.candidates for q in qs]
    packed = candidate_logprobs(model, tok, prompts, cands)
    pairs = pair_logprobs(model, tok, prompts, cands)
    assert max((a - b).abs().max().item() for a, b in zip(packed, pairs)) < 1e-5


def test_token_ids_equal_the_tokenizers_own_call(small_dir, small_world):
    """The scorer reads a fast tokenizer's backend directly: same ids as the wrapper's call, for
    the default word-level tokenizer and a byte-level BPE that adds a BOS (GPT-2/Qwen2-like),
    also after a padded call left padding on in the backend."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from agents.scoring import token_ids
    texts = [q.prompt for q in small_world.queries()[:40]] + ["  odd  spacing, Ünïcode é", ""]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    fast_bpe = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", pad_token="<pad>")
    for tok in (AutoTokenizer.from_pretrained(small_dir), fast_bpe):
        assert tok.is_fast
        tok(texts[:3], padding=True)                  # leaves padding set in the backend
        for special in (True, False):
            want = tok(texts, add_special_tokens=special).input_ids
            assert token_ids(tok, texts, special) == want
    assert token_ids(fast_bpe, ["a b"], True)[0][0] == 0      # the BOS the template adds

    class Slow:                                         # no backend: the wrapper's call is used
        is_fast = False

        def __call__(self, texts, add_special_tokens):
            return type("Enc", (), {"input_ids": [[len(t), int(add_special_tokens)] for t in texts]})()
    assert token_ids(Slow(), ["ab", "c"], True) == [[2, 1], [1, 1]]
