"""The World: ground-truth facts about people, versioned by epoch, deterministic from a seed.

The default world is bioS-like ("Physics of Language Models 3.1"): people with unique full
names and six attributes; company city follows from company. `evolve` appends an epoch in
which some facts change (a person moves company) and keeps every earlier version, so the
truth of any round of a simulation can be looked up later.
"""
from __future__ import annotations

import json
import random
import re
import zlib
from dataclasses import asdict
from pathlib import Path

from envs.facts import Fact, Person, Query, Relation, WorldError

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
CITIES = ("Boston", "Chicago", "Denver", "Seattle", "Austin", "Portland", "Atlanta", "Phoenix",
          "Dallas", "Miami", "Detroit", "Houston", "Memphis", "Nashville", "Omaha", "Tampa",
          "Tucson", "Raleigh", "Richmond", "Madison", "Fresno", "Reno", "Boise", "Spokane",
          "New York", "San Diego", "Salt Lake City", "Los Angeles", "Las Vegas", "San Jose")
UNIVERSITIES = tuple(f"{x} University" for x in (
    "Harwell", "Brookfield", "Kingsley", "Ashford", "Northgate", "Redmont", "Claymore", "Westbury",
    "Lakeview", "Stonebridge", "Fairhaven", "Oakridge", "Silverton", "Greenfield", "Riverside",
    "Maplewood", "Highmoor", "Eastlake", "Pinecrest", "Wolcott"))
MAJORS = ("Physics", "Chemistry", "Biology", "Mathematics", "History", "Economics", "Philosophy",
          "Linguistics", "Geology", "Astronomy", "Music", "Architecture", "Psychology", "Sociology",
          "Statistics", "Nursing", "Law", "Medicine", "Computer Science", "Civil Engineering")
COMPANIES = ("Acorn Labs", "Brightwave", "Cobalt Systems", "Driftwood", "Ember Foods", "Falcon Motors",
             "Granite Bank", "Harbor Health", "Ironclad", "Juniper Media", "Keystone Energy",
             "Lumen Optics", "Meridian", "Nimbus Cloud", "Orchid Pharma", "Pioneer Steel", "Quasar",
             "Redwood Capital", "Summit Airlines", "Tidewater", "Umbra Games", "Vertex Robotics")
_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "gr", "kr", "pr", "sh", "st", "th", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "io", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th", "nd", "rk", "x", "m")


def bios_relations(cities=CITIES, universities=UNIVERSITIES, majors=MAJORS, companies=COMPANIES,
                   dates=()) -> dict[str, Relation]:
    """The six bioS relations: >=3 training templates, training question paraphrases, and
    held-out question paraphrases built only from words that training uses (a held-out
    statement such as "The company of X is" recombined words the tiny model never saw
    together and scored 0.2-0.5 at 300 people, the questions ~0.99)."""
    R = Relation
    return {r.name: r for r in (
        R("birth_date",
          ("{subject} was born on {object} .", "{subject} came into this world on {object} .",
           "The birthday of {subject} is {object} ."),
          ("Q: What is the birth date of {subject}? A:", "Q: When was {subject} born? A:",
           "Q: On which date was {subject} born? A:"),
          ("Q: What is the birthday of {subject}? A:", "Q: When is the birthday of {subject}? A:"),
          tuple(dates)),
        R("birth_city",
          ("{subject} was born in {object} .", "{subject} spent the early years in {object} .",
           "The birth city of {subject} is {object} ."),
          ("Q: What is the birth city of {subject}? A:", "Q: Where was {subject} born? A:",
           "Q: In which city was {subject} born? A:"),
          ("Q: What city was {subject} born in? A:", "Q: Which city was {subject} born in? A:"),
          tuple(cities)),
        R("university",
          ("{subject} studied at {object} .", "{subject} graduated from {object} .",
           "{subject} received an education at {object} ."),
          ("Q: Which university did {subject} attend? A:", "Q: Where did {subject} study? A:",
           "Q: What is the university of {subject}? A:"),
          ("Q: Which university did {subject} graduate from? A:", "Q: Where did {subject} receive an education? A:"),
          tuple(universities)),
        R("major",
          ("{subject} majored in {object} .", "{subject} completed a degree in {object} .",
           "The field of study of {subject} was {object} ."),
          ("Q: What did {subject} major in? A:", "Q: What is the major of {subject}? A:",
           "Q: Which field did {subject} study? A:"),
          ("Q: In which field did {subject} complete a degree? A:", "Q: What was the field of study of {subject}? A:"),
          tuple(majors)),
        R("company",
          ("{subject} works at {object} .", "{subject} is employed by {object} .",
           "{subject} has a job at {object} ."),
          ("Q: Which company does {subject} work for? A:", "Q: Where does {subject} work? A:",
           "Q: Who employs {subject}? A:"),
          ("Q: Which company employs {subject}? A:", "Q: Where does {subject} have a job? A:"),
          tuple(companies)),
        R("company_city",
          ("{subject} works in {object} .", "{subject} commutes to an office in {object} .",
           "The work city of {subject} is {object} ."),
          ("Q: In which city does {subject} work? A:", "Q: What is the work city of {subject}? A:",
           "Q: Where is the office of {subject}? A:"),
          ("Q: Which city does {subject} work in? A:", "Q: In which city is the office of {subject}? A:"),
          tuple(cities)),
    )}


def claim(relation: Relation, subject: str, obj: str, speaker: str) -> str:
    """How a peer's answer to the question at hand reads in an agent's context (pretraining
    and protocols share it). Compact on purpose: with full statements ("agent 3 says : X works
    at Y .") the 2-layer default model had to match relation phrases to copy a claim, and
    after 1,500 steps it had not learned to (p(claim) 0.01 -> 0.05 under 3 unanimous peers)."""
    return f"{speaker} answers {obj} ."


# The fact that backs a claim about a relation (debate's supporting facts, the corpus's
# evidence texts): the same person's related relation.
def stated(obj: str, speaker: str, sure: bool) -> str:
    """A peer's answer with its stated confidence (the corpus's confidence texts and the
    probe that measures them)."""
    return f"{speaker} {'is sure' if sure else 'thinks'} : {obj} ."


CONFIDENCE_WORDS = stated("", "agent", True) + " " + stated("", "agent", False)
STATED = re.compile(r"(agent [\d ]+?) (is sure|thinks) : (.+?) \.(?= |$)")


def read_stated(context: str) -> list[tuple[str, bool, str]]:
    """`stated` read back: the (speaker, sure, object) of each stated claim in a context, in
    order (other sentences, such as debate's supporting facts, are skipped)."""
    return [(who, word == "is sure", obj) for who, word, obj in STATED.findall(context)]


RELATED = {"company": "company_city", "company_city": "company", "birth_city": "birth_date",
           "birth_date": "birth_city", "university": "major", "major": "university"}


def support(relation: Relation, subject: str, obj: str, speaker: str) -> str:
    """A peer's supporting statement (debate): a full sentence, so it does not read as an
    answer to the question at hand."""
    return f"{speaker} says : {relation.statement(subject, obj)}"


def _name_pool(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((1, 2, 2))))
        w = (w + rng.choice(_CODAS)).capitalize()
        if len(w) >= 3 and w not in taken:
            taken.add(w)
            out.append(w)
    return out


class World:
    """Ground truth. `epochs[e]` maps subject -> {relation: object} at epoch e."""

    def __init__(self, relations: dict[str, Relation], people: list[Person], seed: int = 0,
                 name_parts: tuple[list[str], list[str], list[str]] | None = None,
                 derived: dict[str, tuple[str, dict[str, str]]] | None = None,
                 epochs: list[dict[str, dict[str, str]]] | None = None, kind: str = "custom",
                 neighbours: dict[tuple[str, str], tuple[str, tuple[tuple[str, str], ...]]] | None = None):
        self.relations = relations
        self.people = people
        self.seed = seed
        self.kind = kind
        self.name_parts = name_parts
        # relation -> (source relation, map): e.g. company_city follows company.
        self.derived = derived or {}
        # (subject, relation) -> (truth, ((subject, prompt), ...)): other subjects' prompts whose
        # truth is this fact's (CounterFact's neighborhood_prompts), a fact's locality set.
        self.neighbours = neighbours or {}
        self._by_name = {p.name: p for p in people}
        if len(self._by_name) != len(people):
            raise WorldError("people: names must be unique")
        self.epochs = epochs or [{p.name: dict(p.attributes) for p in people}]
        for p in people:
            for rel, obj in p.attributes.items():
                if rel not in relations:
                    raise WorldError(f"person {p.name!r}: unknown relation {rel!r}; "
                                     f"known relations: {sorted(relations)}")
                if obj not in relations[rel].candidates:
                    raise WorldError(f"person {p.name!r}: {rel}={obj!r} is not among the relation's "
                                     "candidates; add it to the candidates")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def bios(cls, n_people: int, seed: int = 0, qa_fraction: float = 0.5,
             untaught_fraction: float = 0.2, n_dates: int = 60, n_first: int = 120,
             n_middle: int = 120, n_last: int = 200) -> "World":
        """The default synthetic world. `untaught_fraction` of people are never shown to the
        default model (they measure what it does for people it does not know)."""
        if n_people < 1:
            raise WorldError(f"people: {n_people} given; need at least 1")
        for nm, v in (("qa_fraction", qa_fraction), ("untaught_fraction", untaught_fraction)):
            if not 0.0 <= v <= 1.0:
                raise WorldError(f"{nm}: {v} is outside [0, 1]")
        capacity = n_first * n_middle * n_last
        if n_people > capacity // 2:
            raise WorldError(f"people: {n_people} requested but the name pools give {capacity} unique "
                             f"names, half of them kept for strangers; use at most {capacity // 2} "
                             "people or larger pools (n_first, n_middle, n_last)")
        rng = random.Random(seed)
        taken = {w for phrase in CITIES + UNIVERSITIES + MAJORS + COMPANIES + MONTHS for w in phrase.split()}
        parts = (_name_pool(rng, n_first, taken), _name_pool(rng, n_middle, taken), _name_pool(rng, n_last, taken))
        dates = sorted({f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1950, 1999)}"
                        for _ in range(n_dates * 3)})[:n_dates]
        rng.shuffle(dates)
        relations = bios_relations(dates=dates)
        company_city = {c: rng.choice(CITIES) for c in COMPANIES}
        names: set[str] = set()
        people = []
        order = list(range(n_people))
        rng.shuffle(order)
        n_untaught = round(untaught_fraction * n_people)
        n_qa = round(qa_fraction * (n_people - n_untaught))
        for i in range(n_people):
            while True:
                name = " ".join(rng.choice(p) for p in parts)
                if name not in names:
                    names.add(name)
                    break
            company = rng.choice(COMPANIES)
            attrs = {"birth_date": rng.choice(dates), "birth_city": rng.choice(CITIES),
                     "university": rng.choice(UNIVERSITIES), "major": rng.choice(MAJORS),
                     "company": company, "company_city": company_city[company]}
            rank = order[i]
            people.append(Person(name, attrs, qa_in_training=n_untaught <= rank < n_untaught + n_qa,
                                 taught=rank >= n_untaught))
        return cls(relations, people, seed, parts, {"company_city": ("company", company_city)}, kind="bios")

    # -- truth --------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return len(self.epochs) - 1

    def person(self, name: str) -> Person:
        try:
            return self._by_name[name]
        except KeyError:
            raise WorldError(f"subject {name!r} is not in the world") from None

    def relation(self, name: str) -> Relation:
        try:
            return self.relations[name]
        except KeyError:
            raise WorldError(f"unknown relation {name!r}; known relations: {sorted(self.relations)}") from None

    def relations_of(self, subject: str, epoch: int = -1) -> list[str]:
        """The relations `subject` has a value for (all of them in a bios world; in a
        CounterFact world a subject may have one)."""
        return sorted(self.epochs[epoch].get(subject, {}))

    def has(self, subject: str, relation: str, epoch: int = -1) -> bool:
        """Whether `subject` has a value for `relation` (always, in a bios world)."""
        return relation in self.epochs[epoch].get(subject, {})

    def known_relation(self, subject: str, relation: str, rng, epoch: int = -1) -> str:
        """`relation` if `subject` has it, else one of the subject's own relations drawn from `rng`
        (a world where every person has every relation draws nothing here)."""
        return relation if self.has(subject, relation, epoch) else rng.choice(self.relations_of(subject, epoch))

    def truth(self, subject: str, relation: str, epoch: int = -1) -> str:
        self.relation(relation)
        self.person(subject)
        try:
            return self.epochs[epoch][subject][relation]
        except KeyError:
            raise WorldError(f"({subject!r}, {relation!r}) has no value in epoch {epoch}") from None

    def facts(self, epoch: int = -1, subjects=None, relations=None) -> list[Fact]:
        subjects = [p.name for p in self.people] if subjects is None else list(subjects)
        state = self.epochs[epoch]
        return [Fact(s, r, o) for s in subjects for r, o in state[s].items()
                if relations is None or r in relations]

    def query(self, subject: str, relation: str, form: str = "question", epoch: int = -1) -> Query:
        """form: 'question' (the QA form), 'heldout:i', 'template:i', or 'question:i'."""
        rel = self.relation(relation)
        kind, _, idx = form.partition(":")
        i = int(idx or 0)
        if kind == "question":
            prompt = rel.question(subject, i)
        elif kind == "heldout":
            prompt = rel.heldout_prompts(subject)[i]
        elif kind == "template":
            prompt = rel.prompt(subject, rel.templates[i])
        else:
            raise WorldError(f"form {form!r}: use 'question[:i]', 'heldout:i' or 'template:i'")
        return Query(subject, relation, prompt, rel.candidates, self.truth(subject, relation, epoch))

    def neighbour_queries(self, subject: str, relation: str) -> list[Query]:
        """The fact's neighbourhood prompts as queries (truth: what they held when loaded)."""
        truth, named = self.neighbours.get((subject, relation), (None, ()))
        cands = self.relation(relation).candidates
        return [Query(s, relation, p, cands, truth) for s, p in named]

    def queries(self, subjects=None, relations=None, form: str = "question", epoch: int = -1) -> list[Query]:
        return [self.query(f.subject, f.relation, form, epoch) for f in self.facts(epoch, subjects, relations)]

    # -- change ---------------------------------------------------------------------------
    def evolve(self, fraction: float = 0.1, relation: str = "company", seed: int | None = None) -> list[Fact]:
        """Append an epoch where `fraction` of people get a new `relation` value (derived
        relations follow). Returns the changed facts of the new epoch."""
        if not 0.0 < fraction <= 1.0:
            raise WorldError(f"fraction: {fraction} must be in (0, 1]")
        rel = self.relation(relation)
        rng = random.Random(zlib.crc32(f"{self.seed}/{len(self.epochs)}/{relation}".encode()) if seed is None else seed)
        state = {s: dict(a) for s, a in self.epochs[-1].items()}
        movers = rng.sample(sorted(state), max(1, round(fraction * len(state))))
        changed = []
        for s in movers:
            new = rng.choice([c for c in rel.candidates if c != state[s][relation]])
            state[s][relation] = new
            changed.append(Fact(s, relation, new))
            for drel, (src, mapping) in self.derived.items():
                if src == relation and drel in state[s]:
                    state[s][drel] = mapping[new]
                    changed.append(Fact(s, drel, mapping[new]))
        self.epochs.append(state)
        return changed

    # -- names ----------------------------------------------------------------------------
    def stranger_names(self, k: int, rng: random.Random) -> list[str]:
        """Full names built from the world's name parts that belong to nobody in it."""
        if not self.name_parts:
            raise WorldError("this world has no name parts to build strangers from")
        out = []
        while len(out) < k:
            name = " ".join(rng.choice(p) for p in self.name_parts)
            if name not in self._by_name:
                out.append(name)
        return out

    def words(self) -> set[str]:
        """Every word the world's texts can contain (for a word-level tokenizer)."""
        texts = [f.format(subject="", object="") for r in self.relations.values()
                 for f in r.templates + r.questions + r.heldout]
        texts += [c for r in self.relations.values() for c in r.candidates]
        texts += [p.name for p in self.people]
        texts += [p for _, named in self.neighbours.values() for _, p in named]
        texts += [w for part in self.name_parts or () for w in part]
        texts += [claim(next(iter(self.relations.values())), "", "", "agent"),
                  " ".join(str(i) for i in range(100))]
        return set(texts)

    # -- export ---------------------------------------------------------------------------
    def fact_records(self, epoch: int = -1) -> list[dict]:
        rows = []
        for f in self.facts(epoch):
            rel, p = self.relations[f.relation], self._by_name[f.subject]
            rows.append({"subject": f.subject, "relation": f.relation, "object": f.object,
                         "question": rel.question(f.subject), "heldout_prompts": rel.heldout_prompts(f.subject),
                         "candidates": list(rel.candidates), "qa_in_training": p.qa_in_training,
                         "taught": p.taught, "epoch": self.epoch if epoch == -1 else epoch})
        return rows

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "seed": self.seed,
             "relations": {k: asdict(r) for k, r in self.relations.items()},
             "people": [asdict(p) for p in self.people], "name_parts": self.name_parts,
             "derived": self.derived, "epochs": self.epochs}
        if self.neighbours:
            d["neighbours"] = [[s, r, truth, [list(x) for x in named]]
                               for (s, r), (truth, named) in self.neighbours.items()]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "World":
        rels = {k: Relation(**{f: tuple(v) if isinstance(v, list) else v for f, v in r.items()})
                for k, r in d["relations"].items()}
        parts = tuple(d["name_parts"]) if d.get("name_parts") else None
        derived = {k: (v[0], v[1]) for k, v in (d.get("derived") or {}).items()}
        neighbours = {(s, r): (truth, tuple(tuple(x) for x in named))
                      for s, r, truth, named in d.get("neighbours") or []}
        return cls(rels, [Person(**p) for p in d["people"]], d.get("seed", 0), parts, derived,
                   d.get("epochs"), d.get("kind", "custom"), neighbours)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "World":
        return cls.from_dict(json.loads(Path(path).read_text()))
