import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evolution.cli import main


def test_world_command_writes_the_fields_other_tools_read(tmp_path, capsys):
    out = tmp_path / "w.jsonl"
    assert main(["world", "--people", "40", "--seed", "0", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40 * 6
    for r in rows:
        assert r["object"] in r["candidates"] and r["question"].endswith("A:")
        assert len(r["heldout_prompts"]) >= 2 and isinstance(r["taught"], bool)
    assert any(r["qa_in_training"] for r in rows) and not all(r["qa_in_training"] for r in rows)
    assert not all(r["taught"] for r in rows)


def test_pretrain_command_writes_the_cached_dir_and_world_matches(tmp_path, small_dir):
    # --steps/people match the small fixture, so this reuses its cache and stays fast
    out = tmp_path / "m"
    assert main(["pretrain", "--people", "80", "--seed", "0", "--set", "steps=400", "--out", str(out)]) == 0
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    main(["world", "--people", "80", "--seed", "0", "--out", str(tmp_path / "w.jsonl")])
    from envs.world import World
    facts = {(r["subject"], r["relation"]): r["object"] for r in map(json.loads, (tmp_path / "w.jsonl").open())}
    world = World.load(out / "world.json")
    assert {(f.subject, f.relation): f.object for f in world.facts()} == facts


def test_bad_settings_are_named(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "x"), "--set", "sociall_prior=0.2"]) == 2
    assert "sociall_prior: unknown pretraining setting" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "x"), "--set", "shape.n_layers=4"]) == 2
    assert "shape.n_layers: unknown setting; known: ['n_layer'" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "x"), "--set", "social_prior=1.5"]) == 2
    assert "social_prior" in capsys.readouterr().err
    assert main(["world", "--people", "2000000", "--out", str(tmp_path / "w.jsonl")]) == 2
    assert "unique names" in capsys.readouterr().err


def test_console_script_is_installed():
    """The `knowevo` command the README names, as pip installed it beside this Python."""
    exe = Path(sys.executable).with_name("knowevo")
    assert exe.is_file(), f"{exe} is missing: the package's console script is not installed (pip install -e .)"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "pretrain" in r.stdout and "demo" in r.stdout, r.stdout + r.stderr


def _write_requests(path, requests) -> None:
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in requests))


def test_edit_command_writes_a_loadable_model_metrics_and_an_exact_adapter(tmp_path, small_dir, small_agent,
                                                                           small_world, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from tests.edit_helpers import known_requests
    reqs = known_requests(small_agent, small_world, 2, seed=1)
    _write_requests(tmp_path / "req.jsonl", reqs)
    out, ad = tmp_path / "edited", tmp_path / "adapter"
    argv = ["edit", "--model", str(small_dir), "--method", "rome", "--requests", str(tmp_path / "req.jsonl"),
            "--out", str(out), "--adapter", str(ad), "--rank", "4", "--locality", "30", "--set", "v_steps=10"]
    assert main(argv) == 0
    assert "edited 2 fact(s) with rome" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.json"))
    assert m["method"] == "rome" and m["hparams"] == {"v_steps": 10} and m["report"]["layers"] == [0]
    for k in ("reliability", "generalization", "locality", "locality_same_person"):
        assert 0 <= m["metrics"][k] <= 1, k
    # portability asks a company edit's derived city where it changes: null when none does
    port = m["metrics"]["portability"]
    assert (0 <= port <= 1) if m["metrics"]["n_portability"] else port is None
    # measured (v_steps=10): reliability 1.0, generalization 1.0, locality 1.0 on 30 other people,
    # .89 on the edited people's other relations; target log-prob -6.2/-4.3 before, -0.46/-0.08 after
    assert m["metrics"]["reliability"] >= 0.5 and m["metrics"]["generalization"] >= 0.5
    assert m["metrics"]["locality"] >= 0.9 and m["metrics"]["locality_same_person"] >= 0.6
    assert all(a > b for a, b in zip(m["metrics"]["target_logprob_after"], m["metrics"]["target_logprob_before"]))
    assert m["adapter"]["exact"] and list(m["adapter"]["modules"]) == ["model.layers.0.mlp.down_proj"]
    assert (out / "world.json").is_file() and (out / "tokenizer.json").is_file()
    edited = AutoModelForCausalLM.from_pretrained(out).eval()
    served = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(small_dir), ad).eval()
    enc = small_agent.tokenizer([r.prompt for r in reqs], return_tensors="pt", padding=True)
    with torch.no_grad():
        want, got = edited(**enc).logits, served(**enc).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=0)     # the written model = base + adapter


def test_edit_command_refuses_bad_input_and_writes_nothing(tmp_path, small_dir, small_agent, small_world, capsys):
    from dataclasses import replace
    from tests.edit_helpers import known_requests
    reqs = known_requests(small_agent, small_world, 2, seed=1)
    _write_requests(tmp_path / "ok.jsonl", reqs)
    current = small_agent.beliefs([small_world.query(reqs[1].subject, reqs[1].relation)])[0].answer
    _write_requests(tmp_path / "current.jsonl", [reqs[0], replace(reqs[1], target=current)])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    (tmp_path / "afile").write_text("x")
    cases = [(["--requests", "ok.jsonl", "--out", "o", "--adapter", "afile/ad"], "--adapter: .*afile.* cannot be written"),
             (["--requests", "ok.jsonl", "--out", "afile/o"], "--out: .*afile.* cannot be written"),
(["--method", "rom", "--requests", "ok.jsonl", "--out", "o"], "unknown edit method 'rom'"),
             (["--requests", "current.jsonl", "--out", "o"], f"request 1 .*already answers '{current}'"),
             (["--requests", "ok.jsonl", "--out", "full"], "--out: .*full.* exists and is not empty"),
             (["--requests", "missing.jsonl", "--out", "o"], "missing.jsonl.* does not exist")]
    for extra, msg in cases:
        args = [a if a.startswith("-") or a == "rom" else str(tmp_path / a) for a in extra]
        assert main(["edit", "--model", str(small_dir), "--adapter", str(tmp_path / "ad"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]    # after transformers' loading bar
        assert err.startswith("knowevo edit: error: ") and re.search(msg, err), (msg, err)
        assert not (tmp_path / "o").exists() and not (tmp_path / "ad").exists()
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_edit_command_keeps_a_wise_side_memory_and_refuses_its_adapter(tmp_path, small_dir, small_agent,
                                                                       small_world, capsys):
    from agents.agent import Agent
    from evolution.editors.wise.persist import load_side_memory
    from tests.edit_helpers import answers, known_requests
    reqs = known_requests(small_agent, small_world, 1, seed=2, relations=["company"])
    _write_requests(tmp_path / "req.jsonl", reqs)
    base = ["edit", "--model", str(small_dir), "--method", "wise", "--requests", str(tmp_path / "req.jsonl")]
    # a side memory is no weight delta: asking for an adapter is refused, and nothing is written
    assert main(base + ["--out", str(tmp_path / "a"), "--adapter", str(tmp_path / "ad")]) == 2
    assert "no delta" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["req.jsonl"]     # no half-written dir left
    assert main(base + ["--out", str(tmp_path / "w")]) == 0
    out = tmp_path / "w"
    assert (out / "wise.safetensors").is_file() and "side_memory" in json.loads((out / "metrics.json").read_text())
    agent = Agent.from_dir(out)
    assert answers(agent, small_world, reqs) != [reqs[0].target]    # the weights alone: unedited
    load_side_memory(agent, out)
    assert answers(agent, small_world, reqs) == [reqs[0].target]


def test_demo_runs_the_main_job_and_prints_its_summary(tmp_path, small_dir, capsys):
    # the small fixture's pretraining (cached) and a shortened default config: the same code path
    out = tmp_path / "demo"
    args = ["demo", "--people", "80", "--set", "steps=400", "--out", str(out), "--run-set", "generations=1",
            "--run-set", "agents=6", "--run-set", "queries.people=3", "--run-set", "rounds=1"]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert (out / "report.html").exists() and f"report: {out / 'report.html'}" in said
    summary = (out / "summary.txt").read_text().splitlines()
    assert len(summary) == 5 and all(line in said for line in summary)
    assert "generation 1 round 1:" in said
    assert main(args) == 0
    again = capsys.readouterr().out            # a rerun resumes: no round is played again
    assert "round" not in again.replace("rounds", "") and summary[0] in again
    assert main(["demo", "--out", str(out), "--run-set", "generations=0"]) == 2
    assert "generations: 0" in capsys.readouterr().err


def test_one_set_parser_for_every_command():
    """Run configs, pretraining settings and editors' hparams read `--set` the same way: YAML
    values, and a number in exponent form is a number (YAML 1.1 alone leaves `1e-3` a string)."""
    from agents.pretrain import PretrainConfig
    from evolution.overrides import flat_sets
    from evolution.run_config import ConfigError, apply_sets
    assert flat_sets(["lr=1e-3", "layers=[0, 1]", "merge=true", "target=Acorn Labs", "k=null"]) == {
        "lr": 0.001, "layers": [0, 1], "merge": True, "target": "Acorn Labs", "k": None}
    assert apply_sets({"rounds": 2}, ["individual.hparams.lr=1e-3", "placement={kind: ray}"]) == {
        "rounds": 2, "individual": {"hparams": {"lr": 0.001}}, "placement": {"kind": "ray"}}
    pre = lambda pairs: PretrainConfig.from_dict(apply_sets({}, pairs))
    assert pre(["lr=1e-3"]).lr == 0.001
    # the corpus knobs, flat as before or under corpus., are one setting and one cached model
    flat, nested = pre(["social_prior=0.5"]), pre(["corpus.social_prior=0.5"])
    assert flat == nested and flat.corpus.social_prior == 0.5 and flat.key() != PretrainConfig().key()
    with pytest.raises(ConfigError, match="write KEY=VALUE"):
        apply_sets({}, ["rounds"])
    with pytest.raises(ValueError, match="write KEY=VALUE"):
        flat_sets(["=3"])
    with pytest.raises(ValueError, match="lrr: unknown pretraining setting"):
        pre(["lrr=1"])
    # a named shape: the small one is the default model itself (same cached model), shape keys override
    assert pre(["preset=small"]).key() == PretrainConfig().key()
    wide = pre(["preset=wide", "shape.n_layer=3"]).shape
    assert (wide.n_layer, wide.d_ff, wide.d_model) == (3, 1024, 128)
    with pytest.raises(ValueError, match="preset: unknown 'huge'"):
        pre(["preset=huge"])
