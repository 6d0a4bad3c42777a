"""Knowledge circuits: the graph, the exact ends of the circuit run (all edges = the clean
model, none = the corrupted one), a faithful circuit smaller than the model, and bad input."""
from __future__ import annotations

import pytest
import torch

from evolution.circuits import (CircuitError, attribution_scores, circuit_metric, draw_circuit, faithfulness,
                                find_circuit, model_graph, path_patching, relation_cases, shared_components)


def test_the_graph_has_every_sender_before_every_receiver(small_agent):
    g = model_graph(small_agent.model)
    L, H = small_agent.model.config.num_hidden_layers, small_agent.model.config.num_attention_heads
    assert g.senders == ["emb"] + [n for l in range(L) for n in [f"a{l}.h{h}" for h in range(H)] + [f"m{l}"]]
    assert g.receivers == [n for l in range(L) for n in (f"a{l}", f"m{l}")] + ["logits"]
    assert ("emb", "a0") in g.edges and ("a0.h0", "a0") not in g.edges and ("m1", "logits") in g.edges
    assert ("m0", "m0") not in g.edges and ("a1.h0", "a0") not in g.edges
    # each sender feeds every receiver after it: emb 2L + 1, a head of layer l 2(L - l), m{l} 2(L - l) - 1
    assert len(g.edges) == 2 * L + 1 + sum(H * 2 * (L - l) + 2 * (L - l) - 1 for l in range(L))


def test_the_circuit_run_is_the_clean_model_with_every_edge_and_the_corrupted_with_none(small_agent, small_world):
    cases = relation_cases(small_agent, small_world, "company", n=8)
    scores, runs = attribution_scores(small_agent.model, cases)
    g = model_graph(small_agent.model)
    every = circuit_metric(small_agent.model, cases, runs, set(g.edges), g)
    none = circuit_metric(small_agent.model, cases, runs, set(), g)
    assert torch.allclose(every, runs["m_clean"], atol=1e-4)
    assert torch.allclose(none, runs["m_corrupt"], atol=1e-4)
    assert faithfulness(every, runs) == pytest.approx(1.0, abs=1e-4)
    assert faithfulness(none, runs) == pytest.approx(0.0, abs=1e-4)
    assert float((runs["m_clean"] - runs["m_corrupt"]).mean()) > 1.0      # the twin changes the answer
    # one edge patched alone: its exact effect is what the circuit run without only that edge loses
    effects = path_patching(small_agent.model, cases, runs, [("m1", "logits")])
    without = circuit_metric(small_agent.model, cases, runs, set(g.edges) - {("m1", "logits")}, g)
    assert effects.effect.iloc[0] == pytest.approx(float((runs["m_clean"] - without).mean()), abs=1e-4)
    assert len(scores) == len(g.edges) and scores.attribution.abs().sum() > 0


def test_a_relation_circuit_is_faithful_and_smaller_than_the_model(small_agent, small_world, tmp_path):
    c = find_circuit(small_agent, small_world, "university", n=16)
    total = len(model_graph(small_agent.model).edges)
    # measured on the small model: faithfulness >= .9 with well under half the edges
    assert c.faithfulness >= 0.9 and len(c.edges) < total
    assert c.agreement > 0.3                     # attribution agrees with the exact effects (measured ~.8)
    assert "emb" in c.nodes and "logits" in c.nodes
    draw_circuit(c, small_agent.model, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
    shared = shared_components([c])
    assert shared["university"].all()


def test_bad_circuit_requests_are_named(small_agent, small_world):
    with pytest.raises(CircuitError, match="no such relation"):
        find_circuit(small_agent, small_world, "shoe_size")
    with pytest.raises(CircuitError, match="rank_by"):
        find_circuit(small_agent, small_world, "company", n=4, rank_by="size")
    from transformers import GPT2Config, GPT2LMHeadModel
    from evolution.circuits import Tap
    with pytest.raises(CircuitError, match="model family 'gpt2'"):
        Tap(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)))
