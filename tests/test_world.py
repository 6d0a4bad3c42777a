import json

import pytest

from envs.counterfact import load_counterfact
from envs.facts import Query, WorldError
from envs.world import World


def test_world_is_deterministic_from_seed():
    a, b, c = World.bios(50, seed=3), World.bios(50, seed=3), World.bios(50, seed=4)
    assert a.to_dict() == b.to_dict()
    assert a.to_dict() != c.to_dict()


def test_people_have_unique_names_and_six_relations():
    w = World.bios(300, seed=0)
    names = [p.name for p in w.people]
    assert len(set(names)) == 300
    assert set(w.relations) == {"birth_date", "birth_city", "university", "major", "company", "company_city"}
    for r in w.relations.values():
        assert len(r.templates) >= 3 and len(r.heldout) >= 2 and r.questions
        assert not set(r.heldout) & set(r.questions), "held-out prompts must not be training questions"
    assert any(len(d.split()) == 3 for d in w.relations["birth_date"].candidates), "dates are multi-token"


def test_company_city_follows_company_and_evolution_keeps_versions():
    w = World.bios(100, seed=1)
    mapping = w.derived["company_city"][1]
    for s, attrs in w.epochs[0].items():
        assert attrs["company_city"] == mapping[attrs["company"]]
    before = {s: dict(a) for s, a in w.epochs[0].items()}
    changed = w.evolve(0.2, "company")
    assert w.epoch == 1 and w.epochs[0] == before, "epoch 0 must stay as it was"
    movers = {f.subject for f in changed if f.relation == "company"}
    assert len(movers) == 20
    for s in movers:
        assert w.truth(s, "company", 1) != w.truth(s, "company", 0)
        assert w.truth(s, "company_city", 1) == mapping[w.truth(s, "company", 1)]
    w2 = World.bios(100, seed=1)
    assert [f.subject for f in w2.evolve(0.2, "company")] == [f.subject for f in changed], "evolve is seeded"


def test_query_forms_and_fact_records():
    w = World.bios(20, seed=0)
    p = w.people[0].name
    q = w.query(p, "company")
    assert q.prompt.endswith("A:") and p in q.prompt and q.truth in q.candidates
    assert w.query(p, "company", "heldout:1").prompt != q.prompt
    rows = w.fact_records()
    assert len(rows) == 20 * 6
    keys = {"subject", "relation", "object", "question", "heldout_prompts", "candidates", "qa_in_training", "taught"}
    assert keys <= set(rows[0])
    assert all(r["object"] in r["candidates"] for r in rows)


def test_save_load_roundtrip(tmp_path):
    w = World.bios(30, seed=2)
    w.evolve(0.1)
    w.save(tmp_path / "w.json")
    as_json = lambda x: json.loads(json.dumps(x.to_dict()))
    assert as_json(World.load(tmp_path / "w.json")) == as_json(w)


def test_bad_input_errors_name_the_problem():
    with pytest.raises(WorldError, match="people: .* unique names"):
        World.bios(10, seed=0, n_first=2, n_middle=2, n_last=2)
    w = World.bios(10, seed=0)
    with pytest.raises(WorldError, match="unknown relation 'spouse'"):
        w.query(w.people[0].name, "spouse")
    with pytest.raises(WorldError, match="candidates do not contain the truth"):
        Query("x", "company", "Q: ?", ("A", "B"), truth="C")
    with pytest.raises(WorldError, match="not in the world"):
        w.truth("Nobody Here Atall", "company")


COUNTERFACT = [
    {"case_id": 0, "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
     "target_new": {"str": "English"}, "target_true": {"str": "French"}, "subject": "Danielle Darrieux"},
     "paraphrase_prompts": ["Danielle Darrieux spoke the language"]},
    {"case_id": 1, "requested_rewrite": {"prompt": "{}, who is a citizen of", "relation_id": "P27",
     "target_new": {"str": "Japan"}, "target_true": {"str": "Italy"}, "subject": "Mario Rossi"}},
    {"case_id": 2, "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
     "target_new": {"str": "German"}, "target_true": {"str": "Dutch"}, "subject": "Piet Jansen"}},
]


def test_counterfact_loader(tmp_path):
    f = tmp_path / "cf.json"
    f.write_text(json.dumps(COUNTERFACT))
    w = load_counterfact(f)
    assert w.truth("Danielle Darrieux", "P103") == "French"
    q = w.query("Piet Jansen", "P103", "template:0")
    assert q.prompt == "The mother tongue of Piet Jansen is" and set(q.candidates) >= {"Dutch", "German"}
    assert w.query("Danielle Darrieux", "P103", "heldout:0").prompt == "Danielle Darrieux spoke the language"
    (tmp_path / "bad.json").write_text(json.dumps([{"requested_rewrite": {"prompt": "x {}"}}]))
    with pytest.raises(WorldError, match="lacks field"):
        load_counterfact(tmp_path / "bad.json")


def test_evidence_texts_back_each_claim_and_the_answer_follows_the_checked_claims():
    import random
    from envs.corpus import CorpusConfig, social_text, with_support
    from envs.world import RELATED
    world = World.bios(60, seed=0)
    known = next(p.name for p in world.people if p.taught)
    truth, true_city = world.truth(known, "company"), world.truth(known, "company_city")
    wrong = next(c for c in world.relations["company"].candidates if c != truth)
    rng = random.Random(0)
    ctx, checked = with_support(world, known, False, "company", RELATED["company"], truth,
                                [truth, wrong, wrong, wrong] * 5, list(range(20)), rng)
    assert ctx.count(" says : ") == 20 and ctx.count(" answers ") == 20
    assert checked.count(truth) == 5 and checked.count(wrong) in (0, 15)     # one backing per claim
    said = ctx.split(" answers ")[1:]
    backing = {truth: set(), wrong: set()}
    for s in said:                        # each claim's support follows it; a true claim's is the truth
        backing[s.split(" .")[0]].add(s.split(" says : ")[1].split(" .")[0])
    assert len(backing[wrong]) == 1 and all(true_city in b for b in backing[truth])
    agreed = [with_support(world, known, False, "company", RELATED["company"], truth, [wrong], [0],
                           random.Random(i))[1] == [wrong] for i in range(40)]
    assert 10 < sum(agreed) < 30                                             # a wrong claim's agrees half the time
    assert with_support(world, "Nobody Never Taught", True, "company", "company_city", truth,
                        [truth, wrong], [0, 1], rng)[1] == []      # a stranger's support cannot be checked
    # defaults draw no evidence; the knob on puts supports into the texts
    texts = [social_text(world, [known], random.Random(i), CorpusConfig(social_unknown_share=0)) for i in range(50)]
    assert not any(" says : " in t for t in texts)
    on = CorpusConfig(social_unknown_share=0, evidence_share=1.0, evidence_weight=1.0)
    assert any(" says : " in social_text(world, [known], random.Random(i), on) for i in range(50))


def test_a_weighing_answer_sets_aside_claims_whose_support_fails():
    import random
    from envs.corpus import CorpusConfig, majority, social_text
    world = World.bios(60, seed=0)
    known = next(p.name for p in world.people if p.taught)
    facts = set(world.epochs[-1][known].values())
    on = CorpusConfig(social_unknown_share=0, evidence_share=1.0, evidence_weight=1.0, max_peers=4)
    seen = {"some check": 0, "none checks": 0}
    for i in range(300):
        text = social_text(world, [known], random.Random(i), on)
        if " says : " not in text:
            continue
        context, answer = text.split(" A: ")
        answer = answer.removesuffix(" .")
        checked = []
        for part in context.split(" answers ")[1:]:
            said, rest = part.split(" . ", 1)
            backing = rest.split(" says : ", 1)[1].split(" .")[0]
            if any(backing.endswith(f" {f}") for f in facts):
                checked.append(said)
        if checked:
            assert answer == majority(checked), text
        else:
            assert answer in facts, text      # every claim set aside: its own knowledge
        seen["some check" if checked else "none checks"] += 1
    assert min(seen.values()) > 10, seen


def test_evidence_texts_hold_wrong_majorities_as_often_as_right_ones():
    """Rule 4: an evidence text draws its peers' reliability per text, so a wrong majority,
    which only the backing tells apart, is common there; plain social texts keep `peer_reliability`."""
    import random
    from envs.corpus import CorpusConfig, majority, social_text
    world = World.bios(60, seed=0)
    known = next(p.name for p in world.people if p.taught)
    facts = set(world.epochs[-1][known].values())

    def wrong_majorities(cfg: CorpusConfig, evidence: bool) -> float:
        wrong = total = 0
        for i in range(600):
            text = social_text(world, [known], random.Random(i), cfg)
            if " answers " not in text or (" says : " in text) != evidence:
                continue
            claims = [part.split(" . ", 1)[0] for part in text.split(" A: ")[0].split(" answers ")[1:]]
            wrong += majority(claims) not in facts
            total += 1
        assert total > 100
        return wrong / total

    plain = wrong_majorities(CorpusConfig(social_unknown_share=0), evidence=False)
    backed = wrong_majorities(CorpusConfig(social_unknown_share=0, evidence_share=1.0, evidence_weight=1.0),
                              evidence=True)
    assert plain < 0.25 < 0.4 < backed, (plain, backed)


@pytest.mark.parametrize("share, knob, unset", [("evidence_share", "evidence_weight", 0.0),
                                               ("confidence_share", "confidence_reliability", 0.5),
                                               ("confidence_share", "confidence_weight", 0.0),
                                               ("confidence_share", "confidence_self", 0.0)])
def test_later_knobs_are_checked_and_hashed_only_when_set(share, knob, unset):
    from agents.pretrain import PretrainConfig
    with pytest.raises(ValueError, match=f"corpus.{knob}"):
        PretrainConfig.from_dict({knob: 1.5})
    with pytest.raises(ValueError, match=f"corpus.{share}"):
        PretrainConfig.from_dict({"corpus": {share: -0.1}})
    default = PretrainConfig().key()
    assert PretrainConfig.from_dict({share: 0.0, knob: unset}).key() == default      # models cached before stay
    assert PretrainConfig.from_dict({share: 0.5, knob: 1.0}).key() != default
    assert PretrainConfig.from_dict({share: 1, knob: 1}).key() == PretrainConfig.from_dict({share: 1.0, knob: 1.0}).key()


def test_stated_confidence_is_off_by_default_and_as_reliable_as_the_knob_says():
    import random
    from envs.corpus import CorpusConfig, corpus_words, social_text
    world = World.bios(60, seed=0)
    known = [p.name for p in world.people if p.taught]
    texts = [social_text(world, known, random.Random(i), CorpusConfig()) for i in range(200)]
    assert not any(" is sure : " in t or " thinks : " in t for t in texts)
    assert corpus_words(CorpusConfig()) == set()       # the default model's vocabulary is the world's
    # strangers, no conformity: the answer is the text's truth, and at reliability 1 exactly the
    # sure claims say it; at 0 exactly the unsure ones
    for reliability in (1.0, 0.0):
        cfg = CorpusConfig(social_unknown_share=1.0, social_prior=0.0, confidence_share=1.0,
                           confidence_reliability=reliability)
        seen = 0
        for i in range(200):
            text = social_text(world, known, random.Random(i), cfg)
            context, answer = text.split(" A: ")
            answer = answer.removesuffix(" .")
            for part in context.split("agent ")[1:]:
                if " : " not in part:
                    continue
                said = part.split(" : ", 1)[1].split(" .")[0]
                sure = " is sure : " in f" {part}"
                assert (said == answer) == (sure == (reliability == 1.0)), text
                seen += 1
        assert seen > 100


def test_confidence_weight_sets_the_unsure_claims_aside_when_any_is_sure():
    """At reliability 1 a sure claim is the truth; weighing confidence, a text with one answers it
    however many unsure claims say otherwise. Without the weight a wrong unsure majority still pulls."""
    import random
    from envs.corpus import CorpusConfig, social_text
    world = World.bios(60, seed=0)
    known = [p.name for p in world.people if p.taught]

    def answers_against_a_sure_claim(weight: float) -> tuple[int, int]:
        cfg = CorpusConfig(social_unknown_share=1.0, social_prior=0.9, confidence_share=1.0,
                           confidence_reliability=1.0, confidence_weight=weight)
        against = seen = 0
        for i in range(400):
            context, answer = social_text(world, known, random.Random(i), cfg).split(" A: ")
            sure = [part.split(" : ", 1)[1].split(" .")[0] for part in context.split("agent ")[1:]
                    if " is sure : " in f" {part}"]
            if sure:
                seen += 1
                against += answer.removesuffix(" .") != sure[0]
        return against, seen

    against, seen = answers_against_a_sure_claim(1.0)
    assert seen > 100 and against == 0
    against, seen = answers_against_a_sure_claim(0.0)
    assert against > 10


def test_with_confidence_self_one_sure_wrong_claim_does_not_outweigh_what_the_model_knows():
    """At reliability 0 every sure claim is wrong. Weighing confidence about known people, a lone
    sure claim is followed (with the pull) unless the model's own knowledge counts as a sure
    claim too: then the tie goes to what it knows. Strangers' texts are unchanged by the knob."""
    import random
    from envs.corpus import CorpusConfig, social_text
    world = World.bios(60, seed=0)
    known = [p.name for p in world.people if p.taught]

    def taken(self_: float, unknown: float) -> tuple[int, int]:
        cfg = CorpusConfig(social_unknown_share=unknown, social_prior=0.9, confidence_share=1.0,
                           confidence_reliability=0.0, confidence_weight=1.0, confidence_self=self_)
        took = seen = 0
        for i in range(400):
            context, answer = social_text(world, known, random.Random(i), cfg).split(" A: ")
            sure = [part.split(" : ", 1)[1].split(" .")[0] for part in context.split("agent ")[1:]
                    if " is sure : " in f" {part}"]
            if len(sure) == 1:
                seen += 1
                took += answer.removesuffix(" .") == sure[0]
        return took, seen

    took, seen = taken(1.0, 0.0)
    assert seen > 30 and took == 0
    took, seen = taken(0.0, 0.0)
    assert took > seen / 2
    assert taken(1.0, 1.0) == taken(0.0, 1.0)


def test_stated_confidence_words_enter_the_vocabulary_only_when_on():
    from envs.corpus import CorpusConfig, corpus_words
    assert {"sure", "thinks"} <= set(" ".join(corpus_words(CorpusConfig(confidence_share=0.5))).split())
