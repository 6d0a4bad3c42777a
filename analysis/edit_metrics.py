"""Edit metrics with EasyEdit's names, computed from belief records only.

Every number here comes from `agent.beliefs(...)` rows (argmax over a relation's closed set of
candidates) or from the perplexity of plain text, never from model internals, so any editor,
learner or backend is measured the same way:

- reliability: the edit prompt is answered with the target;
- generalization: the world's held-out question paraphrases are answered with the target;
- locality: other people's facts keep the answer the unedited agent gave (in a CounterFact
  world whose requested facts all have `neighborhood_prompts`: those prompts);
- locality_same_person: the edited people's other relations keep their answer;
- portability: a fact that follows from the edit follows it (company -> company_city);
- bio_ppl_ratio: perplexity of bios of people the edits leave alone, before / after (1 =
  unchanged; this was called `fluency` before 2026-12-03);
- fluency: EasyEdit's, the n-gram entropy of greedy text generated from the edit prompts;
- forgetting (`forgetting`): the share of facts known before that are no longer known.

Each of reliability, generalization, portability, locality and locality_same_person is also
measured by greedy generation (`*_gen`): the continuation begins with the target's words,
and for locality its first words (as many as the longest candidate has) are the unedited
model's. A closed-set argmax can flatter an edit: the
target only has to beat the other candidates, not be what the model says ("The Mirage of
Model Editing", ACL 2025: teacher-forced 96.8% read 38.5% by generation).

Locality needs the unedited agent's answers on the same queries. `edit_baseline` records them
once (with the perplexity of the same bios), so a sequential run can compare every checkpoint
with one baseline; `locality_probe` is the seeded choice of those queries.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pandas as pd

from agents.records import to_frame
from envs.facts import Query
from envs.world import World


class MetricsError(ValueError):
    """Bad input to an edit metric; the message names the field and the fix."""


@dataclass
class EditBaseline:
    """What the unedited agent answered (and how well it modelled text) on the probe queries."""
    locality: pd.DataFrame           # belief records on other people's facts
    same_person: pd.DataFrame        # belief records on the edited people's other relations
    bios: list[str] = field(default_factory=list)
    perplexity: float | None = None  # on `bios`
    locality_generated: list[str] | None = None     # greedy continuations of `locality`'s prompts
    same_person_generated: list[str] | None = None  # and of `same_person`'s


# -- choosing the queries ----------------------------------------------------------------------
def _edited(world: World, requests) -> tuple[set[str], set[tuple[str, str]]]:
    """Edited subjects, and every (subject, relation) an edit changes directly or by derivation."""
    subjects, pairs = set(), set()
    for r in requests:
        subjects.add(r.subject)
        pairs.add((r.subject, r.relation))
        for drel, (src, _) in world.derived.items():
            if src == r.relation:
                pairs.add((r.subject, drel))
    return subjects, pairs


def _check_requests(world: World, requests) -> None:
    """Subjects and relations of the world, and targets among the candidates (an erase
    request has none)."""
    if not requests:
        raise MetricsError("requests: empty; give the edit requests that were applied")
    names = {p.name for p in world.people}
    for i, r in enumerate(requests):
        if r.subject not in names:
            raise MetricsError(f"request {i}: subject {r.subject!r} is not in the world; edit metrics ask the "
                               "world's questions, so edit people of the world")
        if r.relation not in world.relations:
            raise MetricsError(f"request {i}: unknown relation {r.relation!r}; known: {sorted(world.relations)}")
        if getattr(r, "target", None) is not None and r.target not in world.relations[r.relation].candidates:
            raise MetricsError(f"request {i}: target {r.target!r} is not a candidate of {r.relation!r}")


def _neighbourhood(world: World, requests) -> list[Query]:
    """The requested facts' neighbourhood prompts, when every requested fact has some."""
    near = [world.neighbour_queries(r.subject, r.relation) for r in requests]
    if not near or not all(near):
        return []
    return list({q.prompt: q for qs in near for q in qs}.values())


def locality_pool(world: World, requests, epoch: int = -1) -> list[Query]:
    """What `locality_probe` samples from. Where the world keeps neighbourhood prompts for every
    requested fact (CounterFact's `neighborhood_prompts`: other subjects with the same true
    answer), those prompts, as ROME's evaluation uses them; otherwise the question form of
    every fact of a taught person no request edits."""
    if near := _neighbourhood(world, requests):
        return near
    subjects, _ = _edited(world, requests)
    return [world.query(p.name, r, "question", epoch) for p in world.people if p.taught and p.name not in subjects
            for r in world.relations_of(p.name, epoch)]


def locality_probe(world: World, requests, n: int = 200, seed: int = 0, epoch: int = -1) -> list[Query]:
    """`n` queries of `locality_pool`, seeded (the same requests and seed give the same
    queries). Taught people only: locality asks whether knowledge the agent had survives.
    Raises when the pool holds fewer than `n`."""
    _check_requests(world, requests)
    if n < 1:
        raise MetricsError(f"n: {n}; give at least 1 locality query")
    pool = locality_pool(world, requests, epoch)
    if len(pool) < n:
        what = ("neighbourhood prompts of the requested facts" if _neighbourhood(world, requests)
                else "facts of unedited taught people")
        raise MetricsError(f"locality_probe: the requests leave {len(pool)} {what}, fewer than n={n}; lower n, "
                           "edit fewer distinct people, or use a larger world")
    return random.Random(seed).sample(pool, n)


def same_person_probe(world: World, requests, epoch: int = -1) -> list[Query]:
    """The edited people's relations that no request changes (directly or by derivation)."""
    subjects, pairs = _edited(world, requests)
    return [world.query(s, r, "question", epoch) for s in sorted(subjects)
            for r in sorted(world.epochs[epoch][s]) if (s, r) not in pairs]


def heldout_bios(world: World, requests, n: int = 50, seed: int = 0) -> list[str]:
    """Bios (the pretraining format, `bio_text`) of `n` taught people the requests leave alone,
    rendered with a seeded template choice and sentence order: text the edit should not touch."""
    from envs.corpus import CorpusConfig, bio_text
    subjects, _ = _edited(world, requests)
    names = sorted(p.name for p in world.people if p.taught and p.name not in subjects)
    rng = random.Random(seed)
    names = rng.sample(names, min(n, len(names)))
    return [bio_text(world, s, rng, CorpusConfig()) for s in names]


# -- measurements ----------------------------------------------------------------------------
def perplexity(agent, texts: list[str], batch_size: int = 32) -> float:
    """exp(mean next-token NLL) over every token of `texts` (each opens with <s>)."""
    if not texts:
        raise MetricsError("perplexity: no texts")
    total, count = agent.nll(texts, batch_size)
    return math.exp(total / count)


def edit_baseline(agent, world: World, requests, n_locality: int = 200, n_bios: int = 50,
                  seed: int = 0, epoch: int = -1) -> EditBaseline:
    """Record the UNEDITED agent on the probe queries. Give the whole request list a run will
    apply (a sequential run: all of it), so every checkpoint is compared on the same queries."""
    loc = locality_probe(world, requests, n_locality, seed, epoch)
    same = same_person_probe(world, requests, epoch)
    bios = heldout_bios(world, requests, n_bios, seed) if n_bios else []
    return EditBaseline(to_frame(agent.beliefs(loc, form="question")),
                        to_frame(agent.beliefs(same, form="question")) if same else _empty_frame(),
                        bios, perplexity(agent, bios) if bios else None,
                        generated(agent, [q.prompt for q in loc], window(loc)),
                        generated(agent, [q.prompt for q in same], window(same)) if same else [])


def _empty_frame() -> pd.DataFrame:
    return to_frame([])


def _target_queries(world: World, requests, form: str) -> list[Query]:
    out = []
    for r in requests:
        q = world.query(r.subject, r.relation, "question" if form == "edit" else form)
        prompt = r.prompt if (form == "edit" and r.prompt) else q.prompt
        out.append(Query(r.subject, r.relation, prompt, q.candidates, r.target))
    return out


def _portability_queries(world: World, requests) -> list[Query]:
    """For each request on a relation that others follow (company), the follower's question
    with the value the target implies; only where that value differs from the current truth
    (a city that does not change cannot show that it followed)."""
    out = []
    for r in requests:
        for drel, (src, mapping) in world.derived.items():
            if src != r.relation or r.target not in mapping:
                continue
            new = mapping[r.target]
            q = world.query(r.subject, drel, "question")
            if new != q.truth:
                out.append(Query(r.subject, drel, q.prompt, q.candidates, new))
    return out


def _unchanged(before: pd.DataFrame, after: pd.DataFrame) -> float:
    """Share of rows whose argmax answer is the same before and after (matched by prompt)."""
    if before.empty:
        return float("nan")
    key = ["subject", "relation", "prompt"]
    m = before[key + ["answer"]].merge(after[key + ["answer"]], on=key, suffixes=("_before", "_after"))
    if len(m) != len(before):
        raise MetricsError("locality: the records after the edit do not cover the baseline's queries")
    return float((m.answer_before == m.answer_after).mean())


# -- by generation ------------------------------------------------------------------------------
def window(queries: list[Query]) -> int:
    """Tokens generated per prompt: room for the longest candidate (up to 4 tokens a word, as
    a BPE tokenizer may split a name) and two more. Counted without a tokenizer: an agent is
    a handle on a placement, and the metrics see only what it answers."""
    return 4 * max((len(c.split()) for q in queries for c in q.candidates), default=1) + 2


def answer_words(text: str, n: int) -> str:
    """The first `n` words of a continuation: where its answer is."""
    return " ".join(text.split()[:n])


def generated(agent, prompts: list[str], max_new_tokens: int) -> list[str]:
    return agent.generate(prompts, max_new_tokens=max_new_tokens) if prompts else []


def _mean_generated(queries: list[Query], agent) -> float:
    """Share of queries whose greedy continuation begins with the query's truth (the target)."""
    if not queries:
        return float("nan")
    outs = generated(agent, [q.prompt for q in queries], window(queries))
    return float(sum(answer_words(o, len(q.truth.split())) == q.truth for q, o in zip(queries, outs)) / len(queries))


def _same_generated(queries: list[Query], before: list[str], agent) -> float:
    """Share of queries whose continuation's answer (its first words, as many as the longest
    candidate has) is what the unedited model generated."""
    if not queries:
        return float("nan")
    after = generated(agent, [q.prompt for q in queries], window(queries))
    n = max(len(c.split()) for q in queries for c in q.candidates)
    return float(sum(answer_words(a, n) == answer_words(b, n) for a, b in zip(after, before)) / len(queries))


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """EasyEdit's fluency of one text: the weighted mean over n of the entropy (bits) of its
    word n-gram frequencies. Repetitive text (a collapsed model) scores low."""
    words = text.split()
    out = []
    for n in ns:
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if not grams:
            out.append(0.0)
            continue
        counts = pd.Series(grams).value_counts().to_numpy(dtype=float)
        p = counts / counts.sum()
        out.append(float(-(p * [math.log2(x) for x in p]).sum()))
    return sum(w * e for w, e in zip(weights, out)) / sum(weights)


def generation_fluency(agent, prompts: list[str], max_new_tokens: int = 40) -> float:
    """EasyEdit's fluency: the mean n-gram entropy of greedy text generated from `prompts`
    (nan without prompts, as every metric with no queries behind it: `n_fluency=0`)."""
    if not prompts:
        return float("nan")
    return float(sum(ngram_entropy(t) for t in generated(agent, prompts, max_new_tokens)) / len(prompts))


def _mean_correct(queries: list[Query], agent, form: str) -> tuple[float, int]:
    if not queries:
        return float("nan"), 0
    df = to_frame(agent.beliefs(queries, form=form))
    return float(df.correct.mean()), len(df)


def evaluate_edits(agent, world: World, requests, before: EditBaseline | pd.DataFrame | list | None = None,
                   n_locality: int = 200, seed: int = 0, generation: bool = True, n_fluency: int = 20) -> dict:
    """EasyEdit-named metrics of `agent` after `requests` were applied.

    `before`: an `EditBaseline` of the unedited agent (best: locality, same-person locality
    and fluency compare with it), or the unedited agent's belief records (list or frame) on
    `locality_probe` queries (then same-person locality is measured against the truth and
    fluency has no reference), or None: locality is then accuracy against the world's truth
    on the same seeded probe, and the report says `baseline: 'truth'`.
    Keys: reliability, generalization, locality, locality_same_person, portability,
    perplexity_before/after, bio_ppl_ratio (before/after perplexity; 1 = unchanged), and the
    number of queries behind each (n_*). With `generation`: the same five by greedy
    generation (`*_gen`; the locality ones need an EditBaseline) and `fluency` (EasyEdit's
    n-gram entropy of text generated from `n_fluency` edit prompts)."""
    requests = list(requests)
    _check_requests(world, requests)
    targets = _target_queries(world, requests, "edit")
    rel, n_rel = _mean_correct(targets, agent, "edit")
    n_held = {r.relation: len(world.relations[r.relation].heldout) for r in requests}   # per relation (CounterFact)
    held = [q for i in range(max(n_held.values(), default=0))
            for q in _target_queries(world, [r for r in requests if n_held[r.relation] > i], f"heldout:{i}")]
    gen, n_gen = _mean_correct(held, agent, "heldout")
    ported = _portability_queries(world, requests)
    port, n_port = _mean_correct(ported, agent, "question")
    out = {"reliability": rel, "generalization": gen, "portability": port,
           "n_requests": len(requests), "n_reliability": n_rel, "n_generalization": n_gen,
           "n_portability": n_port}
    if generation:
        out.update(reliability_gen=_mean_generated(targets, agent), generalization_gen=_mean_generated(held, agent),
                   portability_gen=_mean_generated(ported, agent),
                   fluency=generation_fluency(agent, [q.prompt for q in targets[:n_fluency]]))

    if isinstance(before, list):
        before = to_frame(before)
    if isinstance(before, EditBaseline):
        loc_before, same_before, bios, ppl_before = before.locality, before.same_person, before.bios, before.perplexity
        baseline = "before"
    elif isinstance(before, pd.DataFrame):
        loc_before, same_before, bios, ppl_before = before, None, [], None
        baseline = "before"
    elif before is None:
        loc_before, same_before, bios, ppl_before = None, None, [], None
        baseline = "truth"
    else:
        raise MetricsError(f"before: {type(before).__name__}; give an EditBaseline (edit_baseline), the "
                           "unedited agent's belief records, or None")

    if loc_before is not None:
        loc_q = [Query(r.subject, r.relation, r.prompt, tuple(r.candidates), r.truth)
                 for r in loc_before.itertuples()]
        out["locality"] = _unchanged(loc_before, to_frame(agent.beliefs(loc_q, form="question")))
        out["n_locality"] = len(loc_q)
        if generation and isinstance(before, EditBaseline) and before.locality_generated is not None:
            out["locality_gen"] = _same_generated(loc_q, before.locality_generated, agent)
    else:
        out["locality"], out["n_locality"] = _mean_correct(locality_probe(world, requests, n_locality, seed),
                                                           agent, "question")
    if same_before is not None and not same_before.empty:
        # The baseline may cover more requests (a sequential run): keep this checkpoint's people.
        subjects, pairs = _edited(world, requests)
        keep = same_before[[s in subjects and (s, r) not in pairs
                            for s, r in zip(same_before.subject, same_before.relation)]]
        same_q = [Query(r.subject, r.relation, r.prompt, tuple(r.candidates), r.truth) for r in keep.itertuples()]
        out["locality_same_person"] = _unchanged(keep, to_frame(agent.beliefs(same_q, form="question"))) \
            if same_q else float("nan")
        if generation and before.same_person_generated is not None:
            prior = dict(zip(same_before.prompt, before.same_person_generated))
            out["locality_same_person_gen"] = _same_generated(same_q, [prior[q.prompt] for q in same_q], agent) \
                if same_q else float("nan")
    else:
        same_q = same_person_probe(world, requests)
        out["locality_same_person"], _ = _mean_correct(same_q, agent, "question")
    out["n_locality_same_person"] = len(same_q)

    out["perplexity_before"] = ppl_before
    out["perplexity_after"] = perplexity(agent, bios) if bios else None
    out["bio_ppl_ratio"] = (ppl_before / out["perplexity_after"]) if bios and ppl_before else None
    out["baseline"] = baseline
    return out


def forgetting(before_df: pd.DataFrame, after_df: pd.DataFrame) -> float:
    """Share of the facts answered correctly in `before_df` that `after_df` answers wrongly
    (rows matched by subject, relation and prompt; each frame's `correct` is against its own
    truth, so pass frames on the same epoch's facts). NaN when nothing was known before."""
    for nm, df in (("before_df", before_df), ("after_df", after_df)):
        missing = {"subject", "relation", "prompt", "correct"} - set(df.columns)
        if missing:
            raise MetricsError(f"{nm}: missing columns {sorted(missing)}; give frames from agents.records.to_frame")
    key = ["subject", "relation", "prompt"]
    known = before_df[before_df.correct][key]
    if known.empty:
        return float("nan")
    m = known.merge(after_df[key + ["correct"]], on=key, how="left")
    if m.correct.isna().any():
        raise MetricsError(f"after_df: {int(m.correct.isna().sum())} facts known before have no row after; "
                           "ask the same queries before and after")
    return float(1.0 - m.correct.astype(bool).mean())
