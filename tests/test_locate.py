"""Causal tracing and probes on the small test model (cheap: a handful of facts)."""
from __future__ import annotations

import pytest

from evolution.editors.target import (chosen_key_tokens, critical_layers, key_tokens, mlp_effects,
                                      subject_token_effects)
from evolution.locate import POSITIONS, causal_trace, known_cases, position_category, probe_accuracy, trace_case, trace_table


def test_critical_layers_picks_the_argmax_and_its_window():
    assert critical_layers([0.1, 0.5, 0.3, 0.0]) == [1]
    assert critical_layers([0.1, 0.5, 0.3, 0.0], share=0.5) == [1, 2]
    assert critical_layers([0.4, 0.5, 0.1, 0.45], share=0.5) == [0, 1]


def test_position_categories_follow_the_subject_span(small_agent):
    c = trace_case(small_agent.tokenizer, "Ab Cd Ef", "major", "Q: What did Ab Cd Ef major in? A:", "Physics")
    cats = [position_category(c, t) for t in range(len(c.ids))]
    # <s> Q : What did | Ab Cd Ef | major in ? A :
    assert cats[:5] == [None] * 5
    assert cats[5:8] == ["first subject token", "middle subject tokens", "last subject token"]
    assert cats[8] == "first subsequent token" and cats[-1] == "last token"
    assert set(c for c in cats if c) <= set(POSITIONS)


def test_trace_finds_the_fact_at_the_subject_in_layer_0(small_agent, small_world):
    cases = known_cases(small_agent, small_world, 4, seed=0)
    assert len(cases) == 4
    df = causal_trace(small_agent, cases=cases, n_noise=2)
    t = trace_table(df)
    # Structural: block 1's output at a subject token is read by nothing downstream of the
    # answer position, so restoring it recovers exactly nothing.
    assert (t.loc["hidden"].loc[["first subject token", "last subject token"], 1] == 0).all()
    assert (t.loc["mlp"].loc[["first subject token", "last subject token"], 1] == 0).all()
    # measured (20 facts): restoring layer 0's output at the first / middle / last subject
    # token recovers 0.15 / 0.19 / 0.04 of p (clean 0.91, corrupted 0.11); here 4 facts
    subj0 = t.loc["hidden"].loc[["first subject token", "last subject token"], 0].max()
    assert subj0 > 0.03
    assert (df.groupby("case").p_clean.first() > df.groupby("case").p_corrupted.first()).mean() >= 0.75


def test_editors_take_layer_0_from_tracing(small_agent, small_world):
    effects = mlp_effects(small_agent, small_world, n_facts=6)
    # measured: whole-subject MLP restoration recovers 0.17 (6 facts) / 0.19 (16) at layer 0; layer 1: 0
    assert len(effects) == 2 and effects[1] == 0 and effects[0] > 0.02
    assert critical_layers(effects) == [0]


def test_key_token_is_the_most_traced_token_that_tells_the_subject_apart(small_agent, small_world):
    tok = small_agent.tokenizer
    # words the word-level tokenizer knows (one token each), made into names
    a, b, c, d, e, f, g, h = sorted({w for p in small_world.people for w in p.name.split()})[:8]
    names = [f"{a} {b} {c}", f"{a} {b} {d}", f"{a} {e} {c}", f"{f} {g} {h}"]
    assert all(len(tok(" " + n, add_special_tokens=False).input_ids) == 3 for n in names)
    middle = {"first subject token": 0.10, "middle subject tokens": 0.08, "last subject token": 0.01}
    got = key_tokens(tok, names, middle, names)
    # a begins three names, "a b" two: those fall back to the last token; "a e" and f are
    # unique, so the larger traced effect decides (the first token for "f g h")
    assert [got[n] for n in names] == [-1, -1, -2, -3]
    assert key_tokens(tok, names, {"last subject token": 0.2, "middle subject tokens": 0.1}, names)[names[3]] == -1
    # without other names nothing but the last token is known to tell the subject apart
    assert key_tokens(tok, names[3:], middle) == {names[3]: -1}


def test_editors_take_the_subject_token_from_tracing(small_agent, small_world):
    from evolution.editors.requests import counterfactual_requests
    effects = subject_token_effects(small_agent, small_world, (0,), n_facts=6)
    assert set(effects) <= {"first subject token", "middle subject tokens", "last subject token"}
    reqs = counterfactual_requests(small_world, 3, seed=0)
    mine, everyone, source = chosen_key_tokens(small_agent, small_world, reqs, [0], None)
    assert source == "tracing" and set(mine) == {r.subject for r in reqs}
    assert len(everyone) == len(small_world.people) and all(-3 <= t <= -1 for t in everyone.values())
    assert chosen_key_tokens(small_agent, small_world, reqs, [0], -1)[0] == {r.subject: -1 for r in reqs}
    assert chosen_key_tokens(small_agent, None, reqs, [0], None)[2] == "last (no world)"


def test_probe_separates_a_linear_code_and_reports_the_majority_floor(small_agent, small_world):
    import torch
    from evolution.locate import linear_probe_accuracy
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 3
    y = torch.arange(200) % 5
    x = centers[y] + torch.randn(200, 16, generator=g)
    assert linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:], 5) > 0.9
    assert linear_probe_accuracy(torch.randn(150, 16, generator=g), y[:150], x[150:], y[150:], 5) < 0.5
    df = probe_accuracy(small_agent, small_world, relations=["company"], folds=3)
    assert list(df.layer) == [0, 1, 2]
    # the floor is the most common company's share; 64 taught people for 22 companies is few
    # (bench/tracing.py probes the 240 of the default model), yet the name's embedding already
    # tells the company apart above it (measured: .36 at layer 0 against a floor of .11)
    assert 1 / 22 <= df.majority.iloc[0] < 0.3
    assert df.accuracy.max() > 2 * df.majority.iloc[0], df
    with pytest.raises(ValueError, match="too few"):
        probe_accuracy(small_agent, small_world, relations=["company"], folds=50)
