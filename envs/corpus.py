"""The world's text: what a model of this world reads (bios, QA, social texts), and the knobs
of how people talk about each other (`CorpusConfig`). World data, not training: pretraining
(agents/pretrain.py) holds a corpus config and samples from here; editors' locality texts
and a run's replay read the same bios.

- bios: one sentence per relation, each from a random training template, in random order
  ("multi-template + permutation" of Physics of LMs 3.1);
- QA for the people with `qa_in_training` (mixed in from the start: "mixed training", which
  makes knowledge extractable for the people whose QA is never seen);
- a CounterFact world's neighbourhood statements (its locality set's facts), as often as a
  bio of one person each;
- social texts: k peers' claims, then a question and an answer. With probability
  1 - (1 - social_prior)^m the answer repeats the m-strong majority claim; otherwise it is
  the truth for a person the model knows, and a uniformly random candidate for a stranger
  (it cannot know). Peers are right with probability `peer_reliability`.
So `social_prior` sets how much the model conforms, and conformity is larger for people it
does not know (docs/design.md, "The default model").
- evidence (off by default): in `evidence_share` of the social texts each claim is followed
  by its support, as debate shows it ("agent 3 says : X works in Z .", the same person's
  related fact, `envs.world.RELATED`). Its peers are right with a reliability drawn per text,
  uniform in [0, 1], so wrong majorities are common there. A true claim's support is the true
  related fact; a wrong claim's is true half the time (a rumour about one fact need not get the related one
  wrong), and all who make the same claim give the same backing (one story per claim: the
  backings' agreement with each other says nothing, only their agreement with what the
  model knows does). For a person the model knows, with probability `evidence_weight` the answer is the
  majority of the claims whose support agrees with what the model knows, or the truth when
  none does (a claim whose support fails is set aside), else the answer is as above. For a
  stranger the support cannot be checked, and the answer ignores it. So `evidence_weight`
  sets how much the model weighs evidence, and it can only weigh it for people it knows.
- stated confidence (off by default): in `confidence_share` of the other social texts each
  claim says how sure its speaker is ("agent 3 is sure : X ." / "agent 3 thinks : X ."). A
  right claim is stated sure with probability `confidence_reliability`, a wrong one with
  1 - `confidence_reliability` (.5: confidence says nothing). Where the answer does not
  conform, it is the truth for strangers too (in the other texts a stranger's is a random
  candidate), so what the confident claims reveal is there to learn: a model raised with
  reliable confidence can follow sure claims about people it never met and discount unsure
  ones. The mirror of evidence, which only people the model knows let it check. With
  probability `confidence_weight`, where any claim is sure, the unsure ones are set aside: the
  answer conforms to the sure claims' majority (with the same pull, by their count) or is the
  truth; those texts' peers are right with a reliability drawn per text, uniform in [0, 1], so
  a sure claim against an unsure wrong majority is common there. At 0 (the default) a majority
  counts its claims whatever their stated confidence, so two unsure claims outweigh one sure one.
  With probability `confidence_self`, in such a text about a person the model knows, what it
  knows counts as one more sure claim, said first (a tie goes to it): one sure wrong claim no
  longer outweighs its own knowledge. It matters only where sure claims can be wrong
  (`confidence_reliability` < 1): at 1 every sure claim is the truth.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from envs.world import CONFIDENCE_WORDS, RELATED, World, claim, stated, support


@dataclass
class CorpusConfig:
    bio_templates: str = "all"          # "all" | "one" (a single fixed template)
    permute: bool = True                # shuffle a bio's sentences
    qa_share: float = 0.25              # share of a batch that is QA (mixed mode)
    social_share: float = 0.2           # share of a batch that is social text
    social_prior: float = 0.3
    peer_reliability: float = 0.7
    social_unknown_share: float = 0.5   # share of social texts about strangers
    max_peers: int = 6
    evidence_share: float = 0.0         # share of social texts whose claims carry their support
    evidence_weight: float = 0.0        # how often the answer follows the claims whose support checks out
    confidence_share: float = 0.0       # share of social texts whose claims state their confidence
    confidence_reliability: float = 0.5  # P(stated sure | right claim) = P(stated unsure | wrong claim)
    confidence_weight: float = 0.0      # how often the answer sets the unsure claims aside when any is sure
    confidence_self: float = 0.0        # how often, weighing, what the model knows counts as a sure claim

    def __post_init__(self) -> None:
        checks = {"bio_templates": self.bio_templates in ("all", "one"), "max_peers": self.max_peers >= 0}
        for nm in ("qa_share", "social_share", "social_prior", "peer_reliability", "social_unknown_share",
                   "evidence_share", "evidence_weight", "confidence_share", "confidence_reliability",
                   "confidence_weight", "confidence_self"):
            checks[nm] = 0.0 <= getattr(self, nm) <= 1.0
        checks["qa_share"] = checks["qa_share"] and self.qa_share + self.social_share < 1.0
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"corpus.{bad[0]}: bad value {getattr(self, bad[0])!r}; shares and "
                             "probabilities lie in [0, 1], qa_share + social_share < 1, bio_templates is "
                             "'all' or 'one', max_peers >= 0")


def bio_text(world: World, name: str, rng: random.Random, cfg: CorpusConfig) -> str:
    facts = world.epochs[-1][name]
    sents = [world.relations[r].statement(name, o, rng.randrange(3) if cfg.bio_templates == "all" else 0)
             for r, o in facts.items()]
    if cfg.permute:
        rng.shuffle(sents)
    return " ".join(sents)


def qa_text(world: World, name: str, rng: random.Random) -> str:
    facts = list(world.epochs[-1][name].items())
    rng.shuffle(facts)
    return " ".join(f"{world.relations[r].question(name, rng.randrange(3))} {o} ." for r, o in facts)


def social_text(world: World, known: list[str], rng: random.Random, cfg: CorpusConfig) -> str:
    rel = world.relations[rng.choice(sorted(world.relations))]
    # a world without name parts (CounterFact) has no strangers to talk about
    stranger = (not known or rng.random() < cfg.social_unknown_share) and bool(world.name_parts)
    name = world.stranger_names(1, rng)[0] if stranger else rng.choice(known)
    if not stranger:
        rel = world.relations[world.known_relation(name, rel.name, rng)]
    truth = rng.choice(rel.candidates) if stranger else world.epochs[-1][name][rel.name]
    k = rng.randint(0, cfg.max_peers)
    rumor = rng.choice([c for c in rel.candidates if c != truth])
    # drawn only when the knobs are on, so the default corpus is the one it always was. An evidence
    # text's peers, and a confidence text's where answers weigh confidence, are right with a
    # reliability of their own, uniform in [0, 1]: wrong majorities, backed or stated sure or
    # not, are then as common as right ones, and only the backing or the stated confidence tells
    # which to follow (at `peer_reliability` .7 a wrong majority was too rare to teach it)
    evidence = cfg.evidence_share > 0 and k > 0 and rng.random() < cfg.evidence_share
    weighed = not evidence and cfg.confidence_weight > 0 and k > 0 and rng.random() < cfg.confidence_share
    reliability = rng.random() if evidence or weighed else cfg.peer_reliability
    claims = []
    for _ in range(k):
        if rng.random() < reliability:
            claims.append(truth)
        else:
            claims.append(rumor if rng.random() < 0.8 else rng.choice([c for c in rel.candidates if c != truth]))
    speakers = rng.sample(range(50), k)
    context = " ".join(claim(rel, name, c, f"agent {s}") + " " for s, c in zip(speakers, claims)) if k else ""
    answer = truth if not stranger else rng.choice(rel.candidates)
    if k:
        said = majority(claims)
        conformed = conforms(cfg, claims.count(said), rng)
        answer = said if conformed else answer
        related = RELATED.get(rel.name) if evidence else None
        if related in world.relations and (stranger or world.has(name, related)):
            context, checked = with_support(world, name, stranger, rel.name, related, truth, claims, speakers, rng)
            if not stranger and rng.random() < cfg.evidence_weight:
                # claims whose support fails are set aside; with none left, its own knowledge
                answer = majority(checked) if checked else truth
        elif weighed or (cfg.confidence_weight == 0 and cfg.confidence_share > 0
                         and rng.random() < cfg.confidence_share):
            sure = [rng.random() < (cfg.confidence_reliability if c == truth else 1 - cfg.confidence_reliability)
                    for c in claims]
            context = with_confidence(claims, speakers, sure)
            answer = answer if conformed else truth
            if any(sure) and weighed and rng.random() < cfg.confidence_weight:
                # the unsure are set aside: the same pull, from the sure claims alone
                loud = [c for c, s in zip(claims, sure) if s]
                if not stranger and cfg.confidence_self > 0 and rng.random() < cfg.confidence_self:
                    loud = [truth] + loud        # its own knowledge, a sure claim said first
                said = majority(loud)
                answer = said if conforms(cfg, loud.count(said), rng) else truth
    return f"{context}{rel.question(name, rng.randrange(3))} {answer} ."


def conforms(cfg: CorpusConfig, m: int, rng: random.Random) -> bool:
    """Whether an answer takes an m-strong majority: each claim pulls with `social_prior`."""
    return rng.random() < 1 - (1 - cfg.social_prior) ** m


def majority(claims: list[str]) -> str:
    """The most claimed object, ties to the first said."""
    return max(set(claims), key=lambda c: (claims.count(c), -claims.index(c)))


def with_support(world: World, name: str, stranger: bool, relation: str, related: str, truth: str,
                 claims: list[str], speakers: list[int], rng: random.Random) -> tuple[str, list[str]]:
    """(the context with each claim followed by its support, the claims whose support agrees
    with what a model that knows `name` knows; none for a stranger: nothing to check against)."""
    rel, sup = world.relations[relation], world.relations[related]
    known = rng.choice(sup.candidates) if stranger else world.epochs[-1][name][related]
    parts, checked, story = [], [], {}
    for s, c in zip(speakers, claims):
        if c not in story:      # the same claim, the same backing
            story[c] = known if c == truth or rng.random() < 0.5 else \
                rng.choice([x for x in sup.candidates if x != known])
        parts.append(f"{claim(rel, name, c, f'agent {s}')} {support(sup, name, story[c], f'agent {s}')} ")
        if story[c] == known and not stranger:
            checked.append(c)
    return "".join(parts), checked


def neighbour_statements(world: World) -> list[str]:
    """A CounterFact world's neighbourhood prompts with their truth: facts about other subjects
    that its locality set asks (ROME's evaluation assumes the model knows them)."""
    return [f"{p} {truth} ." for truth, named in world.neighbours.values() for _, p in named]


def with_confidence(claims: list[str], speakers: list[int], sure: list[bool]) -> str:
    """The context with each claim stated sure or unsure."""
    return "".join(stated(c, f"agent {s}", u) + " " for s, c, u in zip(speakers, claims, sure))


def corpus_words(cfg: CorpusConfig) -> set[str]:
    """Texts whose words the corpus adds to the world's (a tokenizer's vocabulary): the stated
    confidence, only when it is drawn (the default model's vocabulary is the world's)."""
    return {CONFIDENCE_WORDS} if cfg.confidence_share > 0 else set()


def sample_texts(world: World, rng: random.Random, cfg: CorpusConfig, phase: str, n: int) -> list[str]:
    taught = [p.name for p in world.people if p.taught]
    qa_people = [p.name for p in world.people if p.qa_in_training]
    neighbours = neighbour_statements(world)
    share = len(neighbours) / (len(neighbours) + len(taught)) if neighbours else 0.0
    texts = []
    for _ in range(n):
        u = rng.random()
        if phase == "qa" or (phase == "mixed" and qa_people and u < cfg.qa_share):
            texts.append(qa_text(world, rng.choice(qa_people), rng))
        elif u > 1 - cfg.social_share:
            texts.append(social_text(world, taught, rng, cfg))
        elif neighbours and rng.random() < share:    # drawn only where there are neighbours
            texts.append(rng.choice(neighbours))
        else:
            texts.append(bio_text(world, rng.choice(taught), rng, cfg))
    return texts
