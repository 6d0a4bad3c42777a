"""Users' own checkpoints and facts: the tokenizer a directory was saved with is the one that
reads it, and a query the model cannot read is an error naming the words (issue 15)."""
from __future__ import annotations

import dataclasses

import pytest

from agents.agent import Agent
from agents.checkpoint import load_model_dir
from agents.scoring import ScoringError


def _saved_as(family: str, small_dir, tmp_path):
    """A tiny random model of `family` saved with the default model's word-level tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM
    _, tok = load_model_dir(small_dir)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                             max_position_embeddings=128))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128))
    d = tmp_path / family
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d, tok


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_the_tokenizer_a_dir_was_saved_with_reads_it(family, small_dir, small_world, tmp_path):
    """Before: a Qwen2 dir's config made transformers read it with a Qwen2Tokenizer, which split
    " Acorn Labs" into ['A', 'a'] and scored garbage without a word."""
    d, tok = _saved_as(family, small_dir, tmp_path)
    agent = Agent.from_dir(d)
    text = small_world.queries()[0].prompt + " " + small_world.relations["company"].candidates[0]
    assert agent.tokenizer(text).input_ids == tok(text).input_ids
    assert len(agent.beliefs(small_world.queries()[:4])) == 4


def test_a_query_the_model_cannot_read_is_an_error_naming_the_words(small_agent, small_dir, small_world):
    from agents.placement import Ask
    from agents.placement_kinds import make_placement
    q = small_world.queries(relations=["company"])[0]
    cases = [
        (dataclasses.replace(q, truth=None, candidates=q.candidates[:3] + ("",)), "candidate '' .*tokenizes to no tokens"),
        (dataclasses.replace(q, truth=None, candidates=q.candidates[:3] + ("Zorblax Quuxcorp",)),
         r"candidates \['Zorblax Quuxcorp'\] .*unknown words"),
        (dataclasses.replace(q, truth=None, candidates=q.candidates[:3] + ("Zorblax Labs", "Quuxcorp Labs")),
         r"candidates \['Zorblax Labs', 'Quuxcorp Labs'\] .*read as the same tokens"),
        (dataclasses.replace(q, subject="Jeff Kent"), r"subject 'Jeff Kent': the words \['Jeff', 'Kent'\]"),
    ]
    pop = make_placement("population", small_dir)
    h = pop.spawn("reader")
    for bad, match in cases:
        with pytest.raises(ScoringError, match=match):
            small_agent.beliefs([q, bad])
        with pytest.raises(ScoringError, match=match):
            pop.beliefs_many([Ask(h.name, [bad])])
    # a subject with one unknown word of three is still read (a new first name, a known family)
    known = q.subject.split()
    fine = dataclasses.replace(q, subject=" ".join(["Zorblax"] + known[1:]))
    assert small_agent.beliefs([fine])[0].answer in q.candidates
