"""Users' own checkpoints and facts: the tokenizer a directory was saved with is the one that
reads it, and a query the model cannot read is an error naming the words (issue 15)."""
from __future__ import annotations

import dataclasses

import pytest

from agents.agent import Agent
from agents.checkpoint import load_model_dir
from agents.scoring import ScoringError
from envs.world import World


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


# -- CounterFact-style worlds end to end ----------------------------------------------------------
LANGS = ["French", "English", "Dutch", "German", "Italian", "Spanish"]
COUNTRIES = ["France", "Japan", "Italy", "Spain", "Canada", "Brazil"]
NAMES = ["Danielle Darrieux", "Mario Rossi", "Piet Jansen", "Anna Berg", "Kenji Tanaka", "Lucia Garcia",
         "Pierre Dubois", "Hans Muller", "Sofia Silva", "Marco Bianchi", "Yuki Sato", "Elena Costa"]


NEIGHBOURS = ["Claire Petit", "Luca Ferri", "Jan Visser", "Eva Lind", "Taro Mori", "Rosa Diaz", "Paul Blanc",
              "Karl Vogel"]


def counterfact_records() -> list[dict]:
    """CounterFact's schema (ROME/MEMIT's data): each subject has one relation, as there. The
    first four records carry `neighborhood_prompts` (other people with the same true answer):
    two in the relation's form, one in a form of no record (its subject cannot be read off)."""
    out = []
    for i, s in enumerate(NAMES):
        objs, rel, prompt = ((LANGS, "P103", "The mother tongue of {} is") if i % 2 == 0
                             else (COUNTRIES, "P27", "{}, who is a citizen of"))
        rec = {"case_id": i, "requested_rewrite": {"prompt": prompt, "relation_id": rel, "subject": s,
               "target_true": {"str": objs[i % 6]}, "target_new": {"str": objs[(i + 1) % 6]}},
               "paraphrase_prompts": [f"Some text. {s} is a native speaker of" if rel == "P103"
                                      else f"Some text. {s} holds a passport of"]}
        if i < 4:
            rec["neighborhood_prompts"] = [prompt.format(n) for n in NEIGHBOURS[2 * i:2 * i + 2]] + \
                [f"People say {NEIGHBOURS[2 * i]} grew up with"]
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def counterfact(tmp_path_factory):
    """(world, dir): the CounterFact world and a tiny model pretrained on it (its words are its
    vocabulary; the default model reads them as <unk>), saved as a model dir."""
    import json

    from agents.pretrain import PretrainConfig, save_model_dir, train
    from envs.counterfact import load_counterfact
    from tests.conftest import cached_dir
    d = tmp_path_factory.mktemp("cf")
    (d / "cf.json").write_text(json.dumps(counterfact_records()))
    world = load_counterfact(d / "cf.json")
    cfg = PretrainConfig.from_dict(dict(people=len(world.people), steps=300, qa_mode="none"))

    def build(out):
        model, tok, trained, _ = train(cfg, world=world, progress=False)
        save_model_dir(out, model, tok, trained)
    model_dir = cached_dir("counterfact", {"records": counterfact_records(), "config": cfg.key()}, build)
    return World.load(model_dir / "world.json"), model_dir


def test_a_counterfact_world_loads_with_subjects_of_one_relation(counterfact):
    world, model_dir = counterfact
    assert world.relations_of("Danielle Darrieux") == ["P103"] and world.relations_of("Mario Rossi") == ["P27"]
    agent = Agent.from_dir(model_dir)
    beliefs = agent.beliefs(world.queries())
    assert len(beliefs) == len(NAMES) and sum(b.correct for b in beliefs) / len(beliefs) >= 0.9


@pytest.mark.parametrize("method", ["rome", "memit", "ft_l", "wise", "memoir"])
def test_every_editor_and_the_metrics_run_on_a_counterfact_world(method, counterfact):
    """Before: requests, ROME, MEMIT and WISE failed with "('Jeff Kent', 'P103') has no value in
    epoch -1" (the code assumed every subject has every relation)."""
    from analysis.edit_metrics import edit_baseline, evaluate_edits
    from evolution.editors.requests import counterfactual_requests
    world, model_dir = counterfact
    agent = Agent.from_dir(model_dir)
    reqs = counterfactual_requests(world, 4, seed=0, agent=agent)
    assert all(r.relation in world.relations_of(r.subject) for r in reqs)
    before = edit_baseline(agent, world, reqs, n_locality=6, n_bios=4)
    agent.edit(reqs[:2], method=method, world=world)
    m = evaluate_edits(agent, world, reqs[:2], before=before)
    assert m["n_reliability"] == 2 and m["n_generalization"] == 2 and m["n_locality"] == 6
    assert 0 <= m["reliability"] <= 1 and 0 <= m["locality"] <= 1


def test_rome_without_a_world_takes_its_covariance_texts(counterfact):
    from evolution.editors.requests import EditRequest
    world, model_dir = counterfact
    agent = Agent.from_dir(model_dir)
    r = EditRequest("Mario Rossi", "P27", "Italy", "Mario Rossi, who is a citizen of")
    texts = [world.relations[f.relation].statement(f.subject, f.object) for f in world.facts()] * 40
    report = agent.edit([r], method="rome", stats_texts=texts)
    assert report.layers and agent.delta()
    with pytest.raises(ValueError, match="stats_texts"):
        Agent.from_dir(model_dir).edit([r], method="rome", stats_texts=[])


def test_knowevo_edit_on_a_counterfact_world_names_the_flag_to_change(counterfact, tmp_path, capsys):
    import json

    from evolution.cli import main
    world, model_dir = counterfact
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"subject": "Mario Rossi", "relation": "P27", "target": "Italy"}) + "\n")
    assert main(["edit", "--model", str(model_dir), "--requests", str(one), "--method", "wise",
                 "--out", str(tmp_path / "out")]) == 0
    # Mario Rossi's record carries 3 neighbourhood prompts: they are its locality set
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]["n_locality"] == 3
    # without them, locality asks the other people's facts; editing everyone leaves none
    plain = World.load(model_dir / "world.json")
    plain.neighbours = {}
    plain.save(tmp_path / "plain.json")
    everyone = tmp_path / "all.jsonl"
    everyone.write_text("".join(json.dumps({"subject": p.name, "relation": world.relations_of(p.name)[0],
                                            "target": next(c for c in world.relations[world.relations_of(p.name)[0]]
                                                           .candidates if c != world.truth(p.name, world.relations_of(p.name)[0]))})
                                + "\n" for p in world.people))
    assert main(["edit", "--model", str(model_dir), "--requests", str(everyone), "--method", "wise",
                 "--world", str(tmp_path / "plain.json"), "--out", str(tmp_path / "out2"), "--allow-current"]) == 2
    assert "--locality" in capsys.readouterr().err


def test_counterfact_neighbourhood_prompts_are_the_locality_set(counterfact):
    """ROME's evaluation: a rewrite's locality is asked on its record's neighbourhood prompts
    (other people with the same true answer); the pretrained model was taught them."""
    from analysis.edit_metrics import edit_baseline, evaluate_edits, locality_probe
    from evolution.editors.requests import EditRequest
    world, model_dir = counterfact
    again = World.from_dict(world.to_dict())
    assert again.neighbours == world.neighbours
    named = world.neighbours["Danielle Darrieux", "P103"]
    assert named[0] == "French" and [s for s, _ in named[1]] == \
        ["Claire Petit", "Luca Ferri", "People say Claire Petit grew up with"]   # no form matches the last
    reqs = [EditRequest("Danielle Darrieux", "P103", "English"), EditRequest("Mario Rossi", "P27", "Italy")]
    probe = locality_probe(world, reqs, n=6, seed=0)
    assert {q.prompt for q in probe} == {p for r in reqs for _, p in world.neighbours[r.subject, r.relation][1]}
    assert {q.truth for q in probe} == {"French", "Japan"}
    agent = Agent.from_dir(model_dir)
    near = [q for r in reqs for q in world.neighbour_queries(r.subject, r.relation)]
    assert sum(b.correct for b in agent.beliefs(near)) >= 5          # the neighbours' facts were taught
    before = edit_baseline(agent, world, reqs, n_locality=6, n_bios=0)
    agent.edit(reqs, method="rome", world=world)
    m = evaluate_edits(agent, world, reqs, before=before)
    assert m["n_locality"] == 6 and 0 <= m["locality"] <= 1
    with pytest.raises(ValueError, match="3 neighbourhood prompts of the requested facts, fewer than n=4"):
        locality_probe(world, reqs[:1], n=4)


def test_counterfact_rewrites_are_edit_requests(counterfact, tmp_path):
    """`--requests` takes a CounterFact file: each record rewritten to its target_new."""
    import json

    from evolution.cli import main
    from evolution.editors.requests import read_requests
    world, model_dir = counterfact
    (tmp_path / "cf.json").write_text(json.dumps(counterfact_records()))
    reqs = read_requests(tmp_path / "cf.json")
    assert len(reqs) == len(NAMES)
    assert (reqs[1].subject, reqs[1].relation, reqs[1].target, reqs[1].prompt) == \
        ("Mario Rossi", "P27", "Italy", "Mario Rossi, who is a citizen of")
    (tmp_path / "two.json").write_text(json.dumps(counterfact_records()[:2]))
    assert main(["edit", "--model", str(model_dir), "--requests", str(tmp_path / "two.json"), "--method", "rome",
                 "--out", str(tmp_path / "out")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert metrics["n_reliability"] == 2 and metrics["n_locality"] == 6
    bad = counterfact_records()[:2]
    bad[1]["neighborhood_prompts"] = "Claire Petit speaks"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="record 1: neighborhood_prompts must be a list"):
        read_requests(tmp_path / "bad.json")


@pytest.mark.parametrize("change, match", [
    (lambda r: r[0]["requested_rewrite"].update(subject="  "), "record 0: requested_rewrite.subject"),
    (lambda r: r[2]["requested_rewrite"].update(subject="Danielle Darrieux"), "record 2: 'Danielle Darrieux' has P103"),
    (lambda r: r[1]["requested_rewrite"].update(prompt="{}, who is a {citizen} of"), "record 1: prompt .* no other braces"),
    (lambda r: r[1]["requested_rewrite"].update(target_new=["Japan"]), "record 1: requested_rewrite.target_new"),
])
def test_counterfact_loader_refuses_what_would_fail_later(change, match, tmp_path):
    import json

    from envs.counterfact import load_counterfact
    from envs.facts import WorldError
    recs = counterfact_records()
    change(recs)
    (tmp_path / "cf.json").write_text(json.dumps(recs))
    with pytest.raises(WorldError, match=match):
        load_counterfact(tmp_path / "cf.json")


def test_counterfact_loader_takes_plain_string_targets_and_names_a_missing_file(tmp_path):
    import json

    from envs.counterfact import load_counterfact
    from envs.facts import WorldError
    recs = counterfact_records()
    recs[1]["requested_rewrite"]["target_new"] = "Mexico"
    (tmp_path / "cf.json").write_text(json.dumps(recs))
    assert "Mexico" in load_counterfact(tmp_path / "cf.json").relations["P27"].candidates
    with pytest.raises(WorldError, match="no such file"):
        load_counterfact(tmp_path / "missing.json")
