"""Runs as processes: a run killed with SIGKILL and rerun with the same --out ends with the
records of an uninterrupted run; the same run submitted with `ray job submit` to a Ray head on
127.0.0.1 writes the records of a local run. Every started Ray cluster is stopped here."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from evolution.run import run_experiment
from tests.test_generations import TINY
from tests.test_run import BASE

ROOT = Path(__file__).resolve().parents[1]
CFG = {**BASE, "agents": 3, "rounds": 3, "queries": {"people": 3, "relations": ["company"], "who": "untaught"},
       "knowledge": {"split": "partition", "texts_per_person": 2, "epochs": 5}}
GENERATIONS = {**TINY, "generations": 1}


def run_cmd(cfg_path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "evolution.run", str(cfg_path), "--out", str(out)]


def same_records(a: pd.DataFrame, b: pd.DataFrame, tol: float = 1e-4) -> None:
    key = ["run", "generation", "round", "agent", "subject", "relation"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    assert list(a["answer"]) == list(b["answer"]) and len(a) == len(b)
    worst = max(abs(p - q) for x, y in zip(a["probs"], b["probs"]) for p, q in zip(x, y))
    assert worst < tol, worst


@pytest.fixture(scope="module")
def reference(small_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("jobs")
    (d / "cfg.yaml").write_text(yaml.safe_dump(CFG))
    subprocess.run(run_cmd(d / "cfg.yaml", d / "ref") + ["--quiet"], check=True, cwd=ROOT, timeout=600)
    return d, pd.read_parquet(d / "ref" / "records.parquet")


def test_a_run_killed_with_sigkill_resumes_to_the_same_records(reference):
    d, ref = reference
    out = d / "killed"
    proc = subprocess.Popen(run_cmd(d / "cfg.yaml", out) + ["--quiet"], cwd=ROOT)
    deadline = time.time() + 300
    while not (out / "parts" / "000-0001.parquet").exists():     # killed after round 1 is on disk
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "records.parquet").exists() or len(pd.read_parquet(out / "records.parquet")) < len(ref)
    subprocess.run(run_cmd(d / "cfg.yaml", out) + ["--quiet"], check=True, cwd=ROOT, timeout=600)
    same_records(ref, pd.read_parquet(out / "records.parquet"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_runs_the_job_unchanged(reference, tmp_path):
    pytest.importorskip("ray")
    d, ref = reference
    ray_bin = Path(sys.executable).with_name("ray")
    # the cluster with token authentication, as the README's recipe: the token is the test's own
    # file (RAY_AUTH_TOKEN_PATH), so neither a ~/.ray/auth_token left by an earlier Ray nor its
    # absence on a fresh machine changes what happens
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    gcs, dash = _free_port(), _free_port()
    subprocess.run([str(ray_bin), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                    "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", "--disable-usage-stats"], check=True, env=env, timeout=180,
                   stdout=subprocess.DEVNULL)
    try:
        work = tmp_path / "job"                      # the job's working dir: the config alone (knowevo is installed)
        work.mkdir()
        (work / "cfg.yaml").write_text(yaml.safe_dump({**CFG, "placement": {"kind": "ray"}}))
        out = tmp_path / "out"
        done = subprocess.run([str(ray_bin), "job", "submit", f"--address=http://127.0.0.1:{dash}",
                               f"--working-dir={work}", "--", sys.executable, "-m", "evolution.run", "cfg.yaml",
                               "--out", str(out)], env=env, timeout=600, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "round 3:" in done.stdout                 # progress, one line per round, in the job's log
        same_records(ref, pd.read_parquet(out / "records.parquet"))

        # the main job (generations: learning, editing, consolidation inside the actors) the same way
        gen = {**GENERATIONS, "placement": {"kind": "ray"}}
        (work / "gen.yaml").write_text(yaml.safe_dump(gen))
        done = subprocess.run([str(ray_bin), "job", "submit", f"--address=http://127.0.0.1:{dash}",
                               f"--working-dir={work}", "--", sys.executable, "-m", "evolution.run", "gen.yaml",
                               "--out", str(tmp_path / "gen")], env=env, timeout=600, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "generation 1 round 1:" in done.stdout and "report:" in done.stdout
        local = run_experiment(GENERATIONS, tmp_path / "gen-local", progress=False)
        same_records(local, pd.read_parquet(tmp_path / "gen" / "records.parquet"), tol=1e-3)
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, timeout=120, stdout=subprocess.DEVNULL)
