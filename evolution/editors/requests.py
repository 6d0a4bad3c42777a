"""Edit requests and reports: the contract every editor (ROME, MEMIT, FT-L, WISE-style) shares.

An editor is registered with `agents.methods.register_editor(name)` and has the signature

    fn(agent, requests: list[EditRequest], world=None, **hparams) -> EditReport

and is called as `agent.edit(requests, method=name, world=world, **hparams)`. It must leave
the weights exactly as they were when it fails (use `weights_restored_on_error`), and it must
reject bad input (`validate_requests`) before any work. It returns the change it made in
`EditReport.update` ({param: dense | (B, A)}, factored where it knows the factors: ROME's
rank one per request, MEMIT's rank k), which the placement keeps (agents/delta.py); an editor
that returns none is factored by SVD after it ran.

A request's `prompt` is the text after which `target` should follow (" " + target is the
continuation, as the scorer tokenizes it). With a world, the default prompt is the relation's
question form, the one the default model answers; without a world, give the prompt.
"""
from __future__ import annotations

import contextlib
import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable

import torch

from envs.facts import Query


class EditError(ValueError):
    """Bad edit input or a failed edit; the message names the field and the fix. When raised
    by an editor the weights are as they were before the call."""


@dataclass
class EditRequest:
    subject: str
    relation: str
    target: str
    prompt: str | None = None

    def resolve(self, world) -> "EditRequest":
        """This request with `prompt` filled from the world's question form (if missing)."""
        if self.prompt is not None:
            return self
        return replace(self, prompt=world.query(self.subject, self.relation, "question").prompt)

    def query(self, world, form: str = "question") -> Query:
        """The world's query for this request, with the edit's target as the truth: the
        question an edit metric asks (reliability: 'question'; generalization: 'heldout:i')."""
        q = world.query(self.subject, self.relation, form)
        return Query(q.subject, q.relation, q.prompt, q.candidates, self.target)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def joint_requests(held: dict[str, list], requests: list[EditRequest]) -> list[EditRequest]:
    """Every fact the requests' people must answer after an edit: their earlier edits (`held`:
    subject -> [(relation, prompt, target)]) on relations the requests leave alone, then the
    requests (a later one of the same person and relation wins). For the editors that write
    one value per person: ROME and MEMIT edit after edit, MEMOIR."""
    latest = {(r.subject, r.relation): r for r in requests}
    earlier = [EditRequest(s, rel, target, prompt) for s in dict.fromkeys(r.subject for r in requests)
               for rel, prompt, target in held.get(s, []) if (s, rel) not in latest]
    return earlier + list(latest.values())


@dataclass
class EditReport:
    method: str
    requests: int
    seconds: float
    layers: list[int]
    ok: bool = True
    details: dict = field(default_factory=dict)
    # the change the edit made, {param: dense | (B, A)} (agents/delta.py); the agent takes it
    # for its placement to keep, so a report the caller sees holds None here
    update: dict | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        out = asdict(replace(self, update=None))
        del out["update"]
        return out


# -- building requests ------------------------------------------------------------------------
def as_request(row) -> EditRequest:
    """An EditRequest from a request, a dict {subject, relation, target[, prompt]}, a Fact
    (its object is the target) or a (subject, relation, target) tuple."""
    if isinstance(row, EditRequest):
        return row
    if isinstance(row, dict):
        missing = [k for k in ("subject", "relation", "target") if k not in row or row[k] in (None, "")]
        if missing:
            raise EditError(f"edit request {row!r}: missing field {missing[0]!r}; each request needs "
                            "'subject', 'relation' and 'target' (and optionally 'prompt')")
        extra = set(row) - {"subject", "relation", "target", "prompt"}
        if extra:
            raise EditError(f"edit request {row!r}: unknown field {sorted(extra)[0]!r}; allowed: "
                            "subject, relation, target, prompt")
        return EditRequest(str(row["subject"]), str(row["relation"]), str(row["target"]), row.get("prompt"))
    if hasattr(row, "subject") and hasattr(row, "relation") and hasattr(row, "object"):
        return EditRequest(row.subject, row.relation, row.object)
    if isinstance(row, (tuple, list)) and len(row) in (3, 4):
        return EditRequest(*row)
    raise EditError(f"edit request {row!r}: give an EditRequest, a dict with subject/relation/target, "
                    "a Fact, or a (subject, relation, target) tuple")


def counterfactual_requests(world, n: int, seed: int = 0, relations: Iterable[str] | None = None,
                            subjects: Iterable[str] | None = None, taught_only: bool = True,
                            distinct_subjects: bool = True, seen_targets: bool = True,
                            agent=None) -> list[EditRequest]:
    """`n` random counterfactuals: (person, relation, a candidate that is not the truth).
    With `seen_targets`, the target is an object some taught person has for that relation:
    a tiny model never trained to say an object cannot be edited into saying it (in the
    80-person test world "Linguistics" is nobody's major; ROME reached NLL 3.7 there).
    With `distinct_subjects` every edit names a different person (single-edit benchmarks);
    without, every edit a different (person, relation) fact (long sequential runs need more
    edits than there are people). Derived relations (company_city follows company) are left
    out by default: portability checks that they follow. With `agent`, the target also
    differs from what the agent answers now (where it is wrong, a random wrong target can be
    its current answer, and an editor refuses that request). Deterministic from `seed`."""
    rng = random.Random(seed)
    rels = sorted(relations) if relations is not None else sorted(r for r in world.relations
                                                                  if r not in world.derived)
    people = sorted(subjects) if subjects is not None else sorted(
        p.name for p in world.people if p.taught or not taught_only)
    has = lambda s: [r for r in rels if world.has(s, r)]    # a CounterFact subject has some
    people = [s for s in people if has(s)]
    if distinct_subjects:
        if n > len(people):
            raise EditError(f"n: {n} edits on distinct subjects but only {len(people)} people; lower n or "
                            "pass distinct_subjects=False")
        pairs = [(s, rng.choice(has(s))) for s in rng.sample(people, n)]
    else:
        facts = [(s, r) for s in people for r in has(s)]
        if n > len(facts):
            raise EditError(f"n: {n} edits on distinct facts but only {len(facts)} (person, relation) pairs")
        pairs = rng.sample(facts, n)
    seen = {r: {world.truth(p.name, r) for p in world.people if p.taught and world.has(p.name, r)} for r in rels}
    current = [b.answer for b in agent.beliefs([world.query(s, r) for s, r in pairs])] if agent is not None \
        else [None] * len(pairs)
    out = []
    for (s, r), now in zip(pairs, current):
        truth = world.truth(s, r)
        pool = [c for c in world.relations[r].candidates
                if c not in (truth, now) and (not seen_targets or c in seen[r])]
        if not pool:
            raise EditError(f"relation {r!r}: no candidate other than the truth was ever taught; "
                            "pass seen_targets=False")
        target = rng.choice(pool)
        out.append(EditRequest(s, r, target).resolve(world))
    return out


def read_requests(path: str | Path, parse=None) -> list[EditRequest]:
    """Requests from a JSON-lines file, one {subject, relation, target[, prompt]} per line
    (`parse`: another request reader, such as erasure's, which takes no target), or from a
    CounterFact-style `.json` list: each record's rewrite to its `target_new`, on its prompt."""
    parse = parse or as_request
    path = Path(path)
    if not path.is_file():
        raise EditError(f"requests file {str(path)!r} does not exist; give a .jsonl file with one "
                        '{"subject", "relation", "target"} object per line, or a CounterFact .json list')
    if path.suffix == ".json" and parse is as_request:
        from envs.counterfact import counterfact_rewrites
        from envs.facts import WorldError
        try:
            return [as_request(r) for r in counterfact_rewrites(path)]
        except WorldError as e:
            raise EditError(f"requests file {str(path)!r} (CounterFact records): {e}") from None
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EditError(f"requests file {str(path)!r} line {i}: not JSON ({e.msg})") from None
        try:
            out.append(parse(row))
        except EditError as e:
            raise EditError(f"requests file {str(path)!r} line {i}: {e}") from None
    if not out:
        raise EditError(f"requests file {str(path)!r} holds no requests")
    return out


# -- validation -------------------------------------------------------------------------------
def validate_requests(agent, requests, world=None, check_current: bool = True) -> list[EditRequest]:
    """Resolved requests, or an EditError naming the first bad one. Checks, before any work:
    a known relation and a target among its candidates (with a world), a prompt that contains
    the subject, a target that tokenizes to known words, and (with `check_current`) that the
    agent does not already answer the target (an edit that changes nothing is a mistake)."""
    if isinstance(requests, (EditRequest, dict)):
        requests = [requests]
    reqs = [as_request(r) for r in requests]
    if not reqs:
        raise EditError("requests: empty; give at least one edit request")
    out = []
    for i, r in enumerate(reqs):
        where = f"request {i} ({r.subject!r}, {r.relation!r} -> {r.target!r})"
        if world is not None:
            if r.relation not in world.relations:
                raise EditError(f"{where}: unknown relation {r.relation!r}; known: {sorted(world.relations)}")
            cands = world.relations[r.relation].candidates
            if r.target not in cands:
                raise EditError(f"{where}: target {r.target!r} is not a candidate of {r.relation!r}; "
                                f"choose one of {list(cands)[:8]}...")
            if r.prompt is None:
                if r.subject not in {p.name for p in world.people}:
                    raise EditError(f"{where}: subject {r.subject!r} is not in the world; give the request "
                                    "a `prompt` that contains the subject")
                r = r.resolve(world)
        if r.prompt is None:
            raise EditError(f"{where}: no prompt and no world; give `prompt` (text the target follows) or world=")
        if r.subject not in r.prompt:
            raise EditError(f"{where}: subject {r.subject!r} does not occur in the prompt {r.prompt!r}; "
                            "the edit is keyed on the subject's tokens in the prompt")
        unk = agent.tokenizer.unk_token_id
        for nm in ("subject", "target"):
            ids = agent.tokenizer(" " + getattr(r, nm), add_special_tokens=False).input_ids
            if not ids or (unk is not None and unk in ids):
                raise EditError(f"{where}: {nm} {getattr(r, nm)!r} has words the tokenizer does not know; "
                                "use the model's vocabulary")
        out.append(r)
    if check_current and world is not None:
        qs = [Query(r.subject, r.relation, r.prompt, world.relations[r.relation].candidates, r.target) for r in out]
        for i, (r, b) in enumerate(zip(out, agent.beliefs(qs))):
            if b.answer == r.target:
                raise EditError(f"request {i} ({r.subject!r}, {r.relation!r}): the agent already answers "
                                f"{r.target!r}; drop the request or pass check_current=False")
    return out


# -- safety -----------------------------------------------------------------------------------
def weights_snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def weights_restored_on_error(model):
    """Any exception inside the block puts every weight back as it was, then re-raises. Wrap
    an editor's whole update in it; check for non-finite updates inside and raise EditError."""
    before = weights_snapshot(model)
    try:
        yield before
    except BaseException:
        with torch.no_grad():
            model.load_state_dict(before)
        raise


def check_finite(name: str, t: torch.Tensor, hint: str = "lower the learning rate or clamp") -> None:
    if not torch.isfinite(t).all():
        raise EditError(f"{name}: the update holds NaN or inf; weights restored ({hint})")
