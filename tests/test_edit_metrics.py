"""Edit metrics: exact on an unedited agent, moved by a real edit, exact on hand-made frames,
and clear errors on bad input."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.edit_metrics import (EditBaseline, MetricsError, edit_baseline, evaluate_edits, forgetting,
                                   locality_probe, same_person_probe)
from tests.edit_helpers import known_requests


@pytest.fixture(scope="module")
def setup(small_agent, small_world):
    reqs = known_requests(small_agent, small_world, 4, seed=3, relations=["company", "major"])
    base = edit_baseline(small_agent, small_world, reqs, n_locality=30, n_bios=10, seed=0)
    return reqs, base


def test_unedited_agent_scores_no_change(small_agent, small_world, setup):
    reqs, base = setup
    m = evaluate_edits(small_agent, small_world, reqs, before=base)
    # The requests are counterfactuals on facts the agent knows: it answers none of them.
    assert m["reliability"] == 0.0
    assert m["generalization"] <= 0.25
    # Nothing changed, so everything measured against the baseline is exactly unchanged.
    assert m["locality"] == 1.0 and m["n_locality"] == 30
    assert m["locality_same_person"] == 1.0 and m["n_locality_same_person"] > 0
    assert m["bio_ppl_ratio"] == pytest.approx(1.0) and m["perplexity_before"] == pytest.approx(m["perplexity_after"])
    assert m["baseline"] == "before"
    # By generation too: the same model generates the same continuations, and not the targets.
    assert m["locality_gen"] == 1.0 and m["locality_same_person_gen"] == 1.0
    assert m["reliability_gen"] == 0.0
    assert m["fluency"] > 1.0          # n-gram entropy (bits) of generated text
    if m["n_portability"]:
        assert m["portability"] == 0.0   # the old company's city is still answered


def test_no_fluency_prompts_give_nan_not_an_error(small_agent, small_world, setup):
    """`n_fluency=0` (skip the generated-text entropy) raised ZeroDivisionError after every other
    metric was computed."""
    reqs, _ = setup
    m = evaluate_edits(small_agent, small_world, reqs, n_fluency=0)
    assert math.isnan(m["fluency"]) and m["reliability"] == 0.0 and m["reliability_gen"] == 0.0


def test_metrics_see_a_destructive_edit(small_agent, small_world, setup):
    reqs, base = setup
    agent = small_agent.spawn("edited")
    # A loose FT-L (L-inf 0.1 on layer 0's down-projection, all 40 steps): measured
    # reliability 1.0, locality .37, same person .11, bio perplexity ratio .45 on these 4 requests.
    agent.edit(reqs, method="ft_l", world=small_world, layer=0, norm_constraint=0.1, lr=1e-2, stop_loss=0.0)
    m = evaluate_edits(agent, small_world, reqs, before=base)
    assert m["reliability"] >= 0.75
    assert m["locality"] <= 0.6 and m["locality_same_person"] <= 0.5
    assert m["bio_ppl_ratio"] < 0.8
    assert m["locality_gen"] <= 0.7      # generation sees the damage too


def test_without_baseline_locality_is_accuracy(small_agent, small_world, setup):
    reqs, _ = setup
    m = evaluate_edits(small_agent, small_world, reqs, before=None, n_locality=30)
    assert m["baseline"] == "truth" and m["bio_ppl_ratio"] is None and "locality_gen" not in m
    assert m["locality"] >= 0.9   # the small model knows ~98% of taught facts (measured 1.0 here)


def test_locality_probe_is_seeded_and_avoids_edited_people(small_world, setup):
    reqs, _ = setup
    a, b = locality_probe(small_world, reqs, 25, seed=7), locality_probe(small_world, reqs, 25, seed=7)
    assert [q.prompt for q in a] == [q.prompt for q in b]
    assert not {q.subject for q in a} & {r.subject for r in reqs}
    c = locality_probe(small_world, reqs, 25, seed=8)
    assert [q.prompt for q in a] != [q.prompt for q in c]
    same = same_person_probe(small_world, reqs)
    assert {q.subject for q in same} == {r.subject for r in reqs}
    assert not {(q.subject, q.relation) for q in same} & {(r.subject, r.relation) for r in reqs}
    with pytest.raises(MetricsError, match="fewer than n"):
        locality_probe(small_world, reqs, 10_000)


def test_forgetting_on_hand_made_frames():
    key = dict(relation="company", prompt="p")
    before = pd.DataFrame([{**key, "subject": s, "correct": c} for s, c in
                           [("a", True), ("b", True), ("c", True), ("d", True), ("e", False)]])
    after = pd.DataFrame([{**key, "subject": s, "correct": c} for s, c in
                          [("a", True), ("b", False), ("c", True), ("d", False), ("e", True)]])
    assert forgetting(before, after) == pytest.approx(0.5)   # 2 of the 4 known facts lost
    assert math.isnan(forgetting(before.assign(correct=False), after))
    with pytest.raises(MetricsError, match="no row after"):
        forgetting(before, after.iloc[:2])
    with pytest.raises(MetricsError, match="missing columns"):
        forgetting(before.drop(columns="prompt"), after)


def test_bad_input_is_a_clear_error(small_agent, small_world, setup):
    reqs, _ = setup
    from evolution.editors.requests import EditRequest
    with pytest.raises(MetricsError, match="not in the world"):
        evaluate_edits(small_agent, small_world, [EditRequest("Nobody Here", "company", "Quasar")])
    with pytest.raises(MetricsError, match="not a candidate"):
        evaluate_edits(small_agent, small_world, [EditRequest(reqs[0].subject, "company", "Paris")])
    with pytest.raises(MetricsError, match="EditBaseline"):
        evaluate_edits(small_agent, small_world, reqs, before={"locality": 1})
    with pytest.raises(MetricsError, match="empty"):
        evaluate_edits(small_agent, small_world, [])
    assert isinstance(setup[1], EditBaseline)


def test_ngram_entropy_scores_repetition_low():
    from analysis.edit_metrics import ngram_entropy
    varied = "the birth city of Ann Lee is Boston and she works for Acorn Labs in Denver"
    assert ngram_entropy("Boston Boston Boston Boston Boston Boston") == 0.0
    assert ngram_entropy(varied) > 3.0

