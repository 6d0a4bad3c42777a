"""Load users' own facts from CounterFact-style JSON (the ROME/MEMIT data format).

Each record's `requested_rewrite` gives a prompt with '{}' for the subject, the subject,
a relation id and `target_true` ({"str": ...} or a plain string); `paraphrase_prompts` (when
they contain the subject) become held-out prompts. A relation's candidates are every true and
new target seen for it. A subject has the relations its records give (often one). Anything
that would fail later (an empty subject, two truths for one fact, a brace other than the
subject's '{}') is an error here naming the record.
"""
from __future__ import annotations

import json
from pathlib import Path

from envs.facts import Person, Relation, WorldError
from envs.world import World


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


def load_counterfact(path: str | Path, seed: int = 0) -> World:
    path = Path(path)
    if not path.is_file():
        raise WorldError(f"{path}: no such file; give the path of a CounterFact-style JSON list")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WorldError(f"{path}: not valid JSON ({e}); give a list of CounterFact records") from None
    if not isinstance(records, list) or not records:
        raise WorldError(f"{path}: expected a non-empty JSON list of CounterFact records")
    templates: dict[str, list[str]] = {}
    heldout: dict[str, list[str]] = {}
    candidates: dict[str, list[str]] = {}
    attrs: dict[str, dict[str, str]] = {}
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
        form = _form(prompt, where, "prompt")
        if (subject, rel) in first and attrs[subject][rel] != true:
            raise WorldError(f"{where}: {subject!r} has {rel} {true!r} here but {attrs[subject][rel]!r} in record "
                             f"{first[subject, rel]}; a subject has one truth per relation")
        first.setdefault((subject, rel), i)
        if form not in templates.setdefault(rel, []):
            templates[rel].append(form)
        for para in rec.get("paraphrase_prompts", []):
            if isinstance(para, str) and subject in para and "{" not in para and "}" not in para:
                f = para.replace(subject, "{subject}") + " {object}"
                if f not in heldout.setdefault(rel, []) and f not in templates[rel]:
                    heldout[rel].append(f)
        for c in (true, new):
            if c not in candidates.setdefault(rel, []):
                candidates[rel].append(c)
        attrs.setdefault(subject, {})[rel] = true
    relations = {}
    for rel, forms in templates.items():
        if len(candidates[rel]) < 2:
            raise WorldError(f"{path}: relation {rel!r} has fewer than 2 distinct targets; "
                             "a belief needs at least 2 candidates")
        relations[rel] = Relation(rel, tuple(forms), tuple(f.rsplit(" {object}", 1)[0] for f in forms[:1]),
                                  tuple(heldout.get(rel, ())[:4]), tuple(candidates[rel]))
    people = [Person(s, a, qa_in_training=False, taught=True) for s, a in attrs.items()]
    return World(relations, people, seed, kind="counterfact")
