"""The main job on the small model: generations of world change, news, talk and
consolidation; its artefacts, its metrics, resuming after a crash in any phase, and bad input
refused before any work."""
from __future__ import annotations

import copy

import pandas as pd
import pytest
import yaml

import evolution.generations as gen_mod
from analysis.generation_metrics import annotate, load_run
from evolution.cli import main as cli_main
from evolution.run import run_experiment
from evolution.run_config import ConfigError, UpdateConfig
from tests.conftest import SMALL

TINY = {"name": "tiny", "seed": 0, "pretrain": {"people": SMALL["people"], "seed": SMALL["seed"], "steps": SMALL["steps"]},
        "agents": 4, "protocol": "discussion", "rounds": 1, "graph": "ring", "generations": 2,
        "world_change": {"share": 0.05, "relations": ["company"]}, "news": {"agents": 1},
        "individual": {"method": "lora", "hparams": {"epochs": 4, "lr": 0.003, "rank": 4}, "replay": 0.5},
        "misinformation": {"agents": 1, "method": "rome"},
        "consolidation": {"method": "lora", "hparams": {"epochs": 4, "lr": 0.003, "rank": 4}, "replay": 0.5},
        "queries": {"people": 3, "relations": ["birth_city", "university"], "who": "taught"}}


@pytest.fixture(scope="module")
def tiny_run(small_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "run"
    return out, run_experiment(TINY, out, progress=False)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = ["generation", "round", "agent", "subject", "relation"]
    return df.sort_values(keys).reset_index(drop=True)


def test_a_run_writes_every_artefact(tiny_run):
    out, df = tiny_run
    for f in ("config.yaml", "records.parquet", "metrics.csv", "report.html", "summary.txt", "facts/000.csv"):
        assert (out / f).exists(), f
    assert sorted(df["generation"].unique()) == [0, 1, 2]
    assert set(df[df["generation"] == 0]["round"]) == {0} and set(df[df["generation"] > 0]["round"]) == {0, 1}
    for g in (1, 2):      # every agent's delta after each generation, as safetensors
        assert all((out / "checkpoints/000" / f"g{g:02d}-consolidate" / f"agent_{i}" / "delta.safetensors").exists()
                   for i in range(4))
    assert {p.stem.split("-", 1)[1] for p in (out / "plots").glob("*.png")} >= {
        "accuracy", "consensus", "conformity", "spread", "paths", "graph"}
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 6                    # images inline
    assert "src=\"http" not in page and "<script" not in page and "<link" not in page   # nothing fetched
    assert len((out / "summary.txt").read_text().strip().splitlines()) == 5


def test_metrics_move_across_generations(tiny_run):
    out, _ = tiny_run
    m = pd.read_csv(out / "metrics.csv")
    assert list(zip(m["generation"], m["round"])) == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)]
    # generation 0 is the pretrained group: everyone agrees; then the world moves away from it
    assert m.loc[0, "consensus"] == 1.0 and m["consensus"].iloc[1:].min() < 1.0
    assert m["accuracy"].nunique() > 1 and m["records"].nunique() > 1     # more facts asked as the world changes
    assert m["accuracy_changed"].iloc[1:].notna().all() and m["stale_changed"].iloc[1:].max() > 0
    records, facts = load_run(out)
    g1, g2 = (facts[facts["generation"] == g] for g in (1, 2))
    assert set(zip(g1["subject"], g1["relation"])) < set(zip(g2["subject"], g2["relation"]))   # changes accumulate
    changed = facts[facts["kind"] == "changed"]
    assert (changed["previous"] != changed["truth"]).all() and (changed["previous"] != "").all()


def test_a_false_fact_is_recorded_held_and_its_spread_measured(tiny_run):
    out, _ = tiny_run
    records, facts = load_run(out)
    told = facts[facts["kind"] == "misinformation"].drop_duplicates(["subject", "relation"])
    assert len(told) == 1 and (told["false_object"] != told["truth"]).all()
    d = annotate(records, facts)
    mi = d[(d["kind"] == "misinformation") & (d["round"] == 0)]
    who = told["misinformed_agent"].iloc[0]
    mine = mi[mi["agent"] == who].set_index("generation")["holds_false"]
    assert not mine[0] and mine[1]          # not before the edit, held alone right after it
    assert mine[2]                          # and still in its weights at the next generation's round 0
    m = pd.read_csv(out / "metrics.csv").set_index(["generation", "round"])
    others = mi[mi["agent"] != who].groupby("generation")["holds_false"].mean()
    assert m.loc[(2, 0), "holds_false_others"] == pytest.approx(others[2])


def test_a_run_killed_in_any_phase_resumes_to_the_same_records(tiny_run, tmp_path, monkeypatch):
    _, full = tiny_run
    for where in ("news", "talk", "consolidate"):
        out = tmp_path / where
        calls: dict = {}
        real_update, real_write, real_facts = gen_mod.update, gen_mod.write_part, gen_mod.consolidation_facts

        def crash_update(handle, u, *a, **k):       # news: generation 2's individual update
            if where == "news" and type(u) is UpdateConfig:
                calls["news"] = calls.get("news", 0) + 1
                if calls["news"] == 2:
                    raise KeyboardInterrupt("killed")
            return real_update(handle, u, *a, **k)

        def crash_consolidation(records, agent, min_confidence):   # the last agent of generation 2
            if where == "consolidate" and agent == "agent 3" and records[0].generation == 2:
                raise KeyboardInterrupt("killed")
            return real_facts(records, agent, min_confidence)

        def crash_write(o, stem, rnd, records):
            real_write(o, stem, rnd, records)
            if where == "talk" and stem.endswith("g02") and rnd == 0:
                raise KeyboardInterrupt("killed")

        monkeypatch.setattr(gen_mod, "update", crash_update)
        monkeypatch.setattr(gen_mod, "write_part", crash_write)
        monkeypatch.setattr(gen_mod, "consolidation_facts", crash_consolidation)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(TINY, out, progress=False)
        if where == "consolidate":      # killed mid-phase: some agents saved, the phase not done
            open_ = [p for p in (out / "checkpoints/000").glob("g*-consolidate") if not (p / "DONE").exists()]
            assert len(open_) == 1 and len(list(open_[0].iterdir())) == 3
        monkeypatch.setattr(gen_mod, "update", real_update)
        monkeypatch.setattr(gen_mod, "write_part", real_write)
        monkeypatch.setattr(gen_mod, "consolidation_facts", real_facts)
        resumed = run_experiment(TINY, out, progress=False)
        a, b = _sorted(full), _sorted(resumed)
        assert (a["answer"] == b["answer"]).all(), where
        assert max(abs(x - y) for p, q in zip(a["probs"], b["probs"]) for x, y in zip(p, q)) < 1e-4, where


@pytest.mark.parametrize("change, message", [
    ({"protocol": "shouting"}, "protocol"),
    ({"individual": {"method": "telepathy"}}, "individual.method"),
    ({"consolidation": {"method": "lora", "hparams": {"epoch": 3}}}, "consolidation.method / consolidation.hparams"),
    ({"generations": 0}, "generations: 0"),
    ({"news": {"agents": 9}}, "news.agents: 9"),
    ({"news": {"source": "agent 7"}}, "news.source: 'agent 7' is not a node"),
    ({"misinformation": {"agents": 1, "generation": 5}}, "misinformation.generation"),
    ({"world_change": {"relations": ["company_city"]}}, "follows 'company'"),
    ({"individual": {"method": "rome", "replay": 0.5}}, "replay applies to learners"),
    ({"generations": None}, "applies to generation runs only"),
    ({"world_change": {"share": 1.0, "relations": ["company"]}}, "keep their facts through the run"),
])
def test_bad_input_is_refused_before_any_work(change, message, tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg.update(change)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_experiment(cfg, out, progress=False)
    assert not out.exists() or not any(out.iterdir())


def test_a_run_dir_of_another_config_is_left_alone(tiny_run, tmp_path):
    out, _ = tiny_run
    before = {p: p.stat().st_mtime for p in out.rglob("*") if p.is_file()}
    other = {**TINY, "generations": 3}
    with pytest.raises(ConfigError, match="holds a run of another config"):
        run_experiment(other, out, progress=False)
    assert {p: p.stat().st_mtime for p in out.rglob("*") if p.is_file()} == before


def test_report_command_rebuilds_the_report(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    copy_dir = tmp_path / "copy"
    import shutil
    shutil.copytree(out, copy_dir)
    (copy_dir / "report.html").unlink()
    assert cli_main(["report", str(copy_dir)]) == 0
    said = capsys.readouterr().out
    assert (copy_dir / "report.html").exists() and "report:" in said and "false fact" in said
    assert cli_main(["report", str(tmp_path)]) == 2          # not a run dir: one clear line
    assert "records.parquet" in capsys.readouterr().err


def test_shipped_default_config_is_a_valid_generation_run():
    from evolution.run_config import load
    raw = yaml.safe_load(open("configs/default.yaml"))
    _, cfg, points, _ = load(raw)
    assert cfg.generations == 5 and cfg.agents == 8 and cfg.misinformation.agents == 1


def test_metrics_of_a_run_without_misinformation_or_talk_changes(tiny_run):
    out, _ = tiny_run
    from analysis.generation_metrics import by_round
    records, facts = load_run(out)
    d = annotate(records, facts)
    t = by_round(d[d["kind"] != "misinformation"])
    assert list(t.columns[:3]) == ["run", "trial", "generation"] and t["holds_false"].isna().all()
    assert t["accuracy_untouched"].notna().all()


def test_the_loop_does_not_know_its_placement(tiny_run, tmp_path):
    _, population = tiny_run
    local = run_experiment({**TINY, "placement": {"kind": "local"}}, tmp_path / "local", progress=False)
    a, b = _sorted(population), _sorted(local)
    assert (a["answer"] == b["answer"]).all()
    assert max(abs(x - y) for p, q in zip(a["probs"], b["probs"]) for x, y in zip(p, q)) < 1e-3


def test_an_edit_to_what_the_agent_already_answers_reinforces_instead_of_stopping(small_dir, small_world):
    from agents.placement_kinds import make_placement
    from envs.facts import Fact
    from evolution.run_config import UpdateConfig
    p = make_placement("population", small_dir)
    h = p.spawn("agent 0")
    person = next(x for x in small_world.people if x.taught)
    q = small_world.query(person.name, "company")
    held = h.beliefs([q])[0].answer                     # the target is the agent's own answer
    for method in ("rome", "ft_l"):            # check_current as a keyword and as an hparam
        gen_mod.update(h, UpdateConfig(method=method), [Fact(person.name, "company", held)], small_world, [], 0)
    assert h.beliefs([q])[0].answer == held and h.version == 2
