"""Load users' own facts from CounterFact-style JSON (the ROME/MEMIT data format).

Each record's `requested_rewrite` gives a prompt with '{}' for the subject, the subject,
a relation id, `target_true` and `target_new` ({"str": ...} or a plain string). From them:
- the world (`load_counterfact`): a relation's candidates are every true and new target seen
  for it; a subject has the relations its records give (often one); `paraphrase_prompts` (when
  they contain the subject) become held-out prompts; `neighborhood_prompts` (other subjects
  whose truth is the same `target_true`) are kept per fact as its locality set
  (`World.neighbours`), as ROME's evaluation uses them;
- the requests (`counterfact_rewrites`): each record's rewrite to `target_new` on its prompt.
Anything that would fail later (an empty subject, two truths for one fact, a brace other than
the subject's '{}', a neighbourhood prompt that is not text) is an error here naming the record.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from envs.facts import Person, Relation, WorldError
from envs.world import World


@dataclass(frozen=True)
class Record:
    """One CounterFact record, checked."""
    subject: str
    relation: str
    form: str                         # the prompt as a form: '{subject} ... {object}'
    true: str
    new: str
    paraphrases: tuple[str, ...]      # as given (those naming the subject become held-out forms)
    neighbours: tuple[str, ...]       # prompts about other subjects whose truth is `true`

    @property
    def prompt(self) -> str:
        return self.form.split(" {object}")[0].format(subject=self.subject)


def _target(rw: dict, key: str, where: str) -> str:
    """`target_true` / `target_new`: {"str": ...} as in CounterFact, or a plain string."""
    t = rw[key]
    t = t.get("str") if isinstance(t, dict) else t
    if not isinstance(t, str) or not t.strip():
        raise WorldError(f"{where}: requested_rewrite.{key} is {rw[key]!r}; give {{\"str\": \"...\"}} or a non-empty "
                         "string")
    return t.strip()


def _form(text: str, where: str, what: str) -> str:
    """`text` with '{}' for the subject as a form ending in '{object}'; any other brace is an
    error here, not a KeyError when the form is used."""
    if text.count("{}") != 1 or text.count("{") != 1 or text.count("}") != 1:
        raise WorldError(f"{where}: {what} {text!r} must hold '{{}}' once, for the subject, and no other braces")
    return text.replace("{}", "{subject}") + " {object}"


def _texts(rec: dict, key: str, where: str) -> tuple[str, ...]:
    """A record's list of prompts (`paraphrase_prompts`, `neighborhood_prompts`), or ()."""
    got = rec.get(key, [])
    if not isinstance(got, list) or not all(isinstance(t, str) and t.strip() for t in got):
        raise WorldError(f"{where}: {key} must be a list of non-empty texts; got {got!r}")
    return tuple(t.strip() for t in got)


def read_counterfact(path: str | Path) -> list[Record]:
    """Every record of a CounterFact-style JSON list, checked, in file order."""
    path = Path(path)
    if not path.is_file():
        raise WorldError(f"{path}: no such file; give the path of a CounterFact-style JSON list")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorldError(f"{path}: not valid JSON ({e}); give a list of CounterFact records") from None
    if not isinstance(records, list) or not records:
        raise WorldError(f"{path}: expected a non-empty JSON list of CounterFact records")
    out: list[Record] = []
    first: dict[tuple[str, str], int] = {}          # (subject, relation) -> the record that gave its truth
    for i, rec in enumerate(records):
        where = f"{path}: record {i}"
        try:
            rw = rec["requested_rewrite"]
            prompt, subject, rel = rw["prompt"], rw["subject"], str(rw["relation_id"])
            true, new = _target(rw, "target_true", where), _target(rw, "target_new", where)
        except (KeyError, TypeError) as e:
            raise WorldError(f"{where} lacks field {e}; each record needs requested_rewrite."
                             "{prompt, subject, relation_id, target_true.str, target_new.str}") from None
        if not isinstance(subject, str) or not subject.strip():
            raise WorldError(f"{where}: requested_rewrite.subject is {subject!r}; give the subject's name")
        if not isinstance(prompt, str):
            raise WorldError(f"{where}: requested_rewrite.prompt is {prompt!r}; give a text with '{{}}' for the subject")
        subject = subject.strip()
        if (subject, rel) in first and out[first[subject, rel]].true != true:
            raise WorldError(f"{where}: {subject!r} has {rel} {true!r} here but {out[first[subject, rel]].true!r} in "
                             f"record {first[subject, rel]}; a subject has one truth per relation")
        first.setdefault((subject, rel), i)
        out.append(Record(subject, rel, _form(prompt, where, "prompt"), true, new,
                          _texts(rec, "paraphrase_prompts", where), _texts(rec, "neighborhood_prompts", where)))
    return out


def counterfact_rewrites(path: str | Path) -> list[dict]:
    """Each record's requested rewrite as an edit request {subject, relation, target, prompt}:
    the record's own prompt, rewritten to its `target_new`."""
    return [{"subject": r.subject, "relation": r.relation, "target": r.new, "prompt": r.prompt}
            for r in read_counterfact(path)]


def neighbour_subject(prompt: str, forms) -> str:
    """The subject a neighbourhood prompt names, read by matching the relation's forms (its
    records' prompts); the whole prompt where none matches (CounterFact gives the prompt only)."""
    for f in forms:
        before, _, after = f.split(" {object}")[0].partition("{subject}")
        m = re.fullmatch(re.escape(before) + r"(.+?)" + re.escape(after), prompt)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return prompt


def load_counterfact(path: str | Path, seed: int = 0) -> World:
    records = read_counterfact(path)
    templates: dict[str, list[str]] = {}
    heldout: dict[str, list[str]] = {}
    candidates: dict[str, list[str]] = {}
    attrs: dict[str, dict[str, str]] = {}
    for rec in records:
        rel, subject = rec.relation, rec.subject
        if rec.form not in templates.setdefault(rel, []):
            templates[rel].append(rec.form)
        for para in rec.paraphrases:
            if subject in para and "{" not in para and "}" not in para:
                f = para.replace(subject, "{subject}") + " {object}"
                if f not in heldout.setdefault(rel, []) and f not in templates[rel]:
                    heldout[rel].append(f)
        for c in (rec.true, rec.new):
            if c not in candidates.setdefault(rel, []):
                candidates[rel].append(c)
        attrs.setdefault(subject, {})[rel] = rec.true
    relations = {}
    for rel, forms in templates.items():
        if len(candidates[rel]) < 2:
            raise WorldError(f"{path}: relation {rel!r} has fewer than 2 distinct targets; "
                             "a belief needs at least 2 candidates")
        relations[rel] = Relation(rel, tuple(forms), tuple(f.rsplit(" {object}", 1)[0] for f in forms[:1]),
                                  tuple(heldout.get(rel, ())[:4]), tuple(candidates[rel]))
    neighbours: dict[tuple[str, str], tuple[str, tuple[tuple[str, str], ...]]] = {}
    for rec in records:
        if rec.neighbours:
            named = [(neighbour_subject(p, templates[rec.relation]), p) for p in rec.neighbours]
            old = neighbours.get((rec.subject, rec.relation), (rec.true, ()))[1]
            neighbours[rec.subject, rec.relation] = (rec.true, tuple(dict.fromkeys(old + tuple(named))))
    people = [Person(s, a, qa_in_training=False, taught=True) for s, a in attrs.items()]
    return World(relations, people, seed, kind="counterfact", neighbours=neighbours)
