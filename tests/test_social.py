"""The social knob: what a model learned about peers' claims in pretraining decides how far
unanimous wrong claims move it, more for people it never learned than for people it knows.
Bounds come from the measurements quoted beside them (80 people, 800 steps, seed 0)."""
import pytest

from agents.agent import Agent
from agents.pretrain import pretrained_dir
from analysis.social import unanimous_wrong_probe
from envs.world import World
from tests.conftest import small_config


def probe(social_prior: float):
    path = pretrained_dir(small_config(steps=800, social_prior=social_prior), progress=False)
    agent, world = Agent.from_dir(path), World.load(path / "world.json")
    df = unanimous_wrong_probe(agent, world, ks=(0, 1, 3), per_group=40)
    return df.groupby(["group", "k"]).p_claim.mean(), df.groupby(["group", "k"]).follows.mean()


@pytest.fixture(scope="module")
def high():
    return probe(0.6)


@pytest.fixture(scope="module")
def zero():
    return probe(0.0)


# Measured (seed 0): social_prior 0.6 -> mean p(claim) at k=0/1/3: known .01/.21/.77,
# never taught .05/.54/.76; share following: known 0/.28/.95, never taught .12/.88/.88.
# social_prior 0.0 -> known .00/.01/.04, never taught .03/.06/.12.
MIN_SHIFT_HIGH = {"known": 0.4, "never taught": 0.4}
MAX_SHIFT_ZERO = {"known": 0.15, "never taught": 0.2}


def test_high_social_prior_moves_belief_toward_unanimous_wrong_claims(high):
    p, follows = high
    for group in ("known", "never taught"):
        assert p[group, 3] > p[group, 0] + MIN_SHIFT_HIGH[group], (group, p[group, 3], p[group, 0])


def test_strangers_move_more_than_known_people(high):
    p, follows = high
    # one peer: strangers' belief moves .49, known people's .20 (measured)
    assert p["never taught", 1] - p["never taught", 0] > p["known", 1] - p["known", 0] + 0.1
    assert follows["never taught", 1] > follows["known", 1] + 0.2


def test_zero_social_prior_moves_little(high, zero):
    p0, _ = zero
    p, _ = high
    for group in ("known", "never taught"):
        shift0 = p0[group, 3] - p0[group, 0]
        assert shift0 < MAX_SHIFT_ZERO[group], (group, shift0)
        assert shift0 < (p[group, 3] - p[group, 0]) / 2


def test_the_supported_probe_changes_only_the_support(small_dir):
    from analysis.social import follow_table, supported_wrong_probe
    agent, world = Agent.from_dir(small_dir), World.load(small_dir / "world.json")
    df = supported_wrong_probe(agent, world, ks=(1, 3), per_group=8)
    table = follow_table(df)
    assert len(table) == 2 * 2 * 2 and set(table.n) == {8}
    assert ((table.follows >= table.follows_lo) & (table.follows <= table.follows_hi)).all()
    for (_, k), rows in df.groupby(["subject", "k"]):
        con, inc = rows[rows.support == "consistent"].iloc[0], rows[rows.support == "inconsistent"].iloc[0]
        assert con.claim == inc.claim and con.context != inc.context
        # the same claims in the same order; only the supporting facts' objects differ
        assert [c.split(" says : ")[0] for c in con.context.split(" answers ")] == \
               [c.split(" says : ")[0] for c in inc.context.split(" answers ")]
        assert con.context.count(" says : ") == k


def sure_unsure_pairs(small_dir, probe):
    """(k, sure row, unsure row) per subject and k of a stated-confidence probe, after checking
    its table has every group x k x stating, 8 people each."""
    from analysis.social import follow_table
    agent, world = Agent.from_dir(small_dir), World.load(small_dir / "world.json")
    df = probe(agent, world, ks=(1, 3), per_group=8)
    table = follow_table(df, by=("group", "k", "stated"))
    assert len(table) == 2 * 2 * 2 and set(table.n) == {8}
    for (_, k), rows in df.groupby(["subject", "k"]):
        yield k, rows[rows.stated == "sure"].iloc[0], rows[rows.stated == "unsure"].iloc[0]


def test_the_stated_probe_changes_only_the_stated_confidence(small_dir):
    from analysis.social import stated_wrong_probe
    for k, sure, unsure in sure_unsure_pairs(small_dir, stated_wrong_probe):
        assert sure.claim == unsure.claim
        assert sure.context.replace(" is sure : ", " thinks : ") == unsure.context
        assert sure.context.count(f" is sure : {sure.claim} .") == k


def test_the_lone_sure_probe_changes_only_the_right_claims_stating(small_dir):
    from analysis.social import lone_sure_probe
    for k, sure, unsure in sure_unsure_pairs(small_dir, lone_sure_probe):
        assert sure.claim == unsure.claim == sure.truth          # the lone claim is the truth
        assert sure.context.replace(" is sure : ", " thinks : ") == unsure.context
        assert sure.context.count(" is sure : ") == 1 and sure.context.count(f" : {sure.claim} .") == 1
        assert sure.context.count(" thinks : ") == k             # k unsure wrong claims beside it


def test_what_the_knower_heard_is_read_from_the_records():
    """`heard_claims` counts a context's stated claims by confidence and rightness (supporting
    facts skipped) and marks the knower and its answer of the round before; `knower_turns`
    splits the knower's right answers by what it then heard."""
    import pandas as pd

    from analysis.social import heard_claims, knower_turns
    from envs.world import read_stated, stated

    said = stated("Lumen Optics", "agent 12", True) + " agent 12 says : Ann works in Fresno . " + \
        stated("Umbra Games", "agent 2", False)
    assert read_stated(said) == [("agent 12", True, "Lumen Optics"), ("agent 2", False, "Umbra Games")]
    rec = lambda agent, rnd, answer, context="": {"subject": "Ann", "relation": "company", "agent": agent,
                                                  "round": rnd, "answer": answer, "truth": "Umbra Games",
                                                  "context": context}
    records = pd.DataFrame([rec("agent 0", 0, "Umbra Games"), rec("agent 1", 0, "Lumen Optics"),
                            rec("agent 0", 1, "Lumen Optics", stated("Lumen Optics", "agent 1", True)),
                            rec("agent 1", 1, "Lumen Optics", stated("Umbra Games", "agent 0", False)),
                            rec("agent 0", 2, "Lumen Optics", stated("Lumen Optics", "agent 1", True))])
    heard = heard_claims(records, {"Ann": "agent 0"})
    assert heard["knower"].tolist() == [True, False, True]
    assert heard["right before"].tolist() == [True, False, False]
    assert heard[["sure wrong", "sure right", "unsure wrong", "unsure right"]].values.tolist() == \
        [[1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]]
    turns = knower_turns(heard)
    assert turns.loc[(True, False), "answers"] == 1 and turns.loc[(True, False), "stays right"] == 0.0
    assert len(turns) == 1          # the knower's round-2 answer was wrong before: not a turn
    with pytest.raises(ValueError, match="one run and one trial"):
        heard_claims(pd.concat([records, records]), {"Ann": "agent 0"})
