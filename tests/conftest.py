"""Shared fixtures: small pretrained models, cached by config hash (the first run trains them).

Slow checks (the issue's full-size must-shows) and GPU checks are marked and skipped unless
asked for with --runslow / --rungpu; vLLM checks run wherever vllm imports, and under CI
a missing vllm is a failure, not a skip.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from agents.pretrain import PretrainConfig, pretrained_dir

SMALL = dict(people=80, seed=0, steps=400)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run checks marked slow")
    parser.addoption("--rungpu", action="store_true", help="run checks marked gpu")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "gpu" in item.keywords and not config.getoption("--rungpu"):
            item.add_marker(pytest.mark.skip(reason="gpu: run with --rungpu on a CUDA machine"))


def turning_nan(real, after: int = 2):
    """(`real` wrapped so that its result turns NaN after `after` real calls, the calls made):
    the steps before move the weights, so a method that fails must put them back."""
    calls: list[int] = []

    def fn(*a, **kw):
        calls.append(1)
        out = real(*a, **kw)
        return out * float("nan") if len(calls) > after else out
    return fn, calls


def cached_dir(name: str, key: dict, build) -> Path:
    """A model dir trained by `build(dir)` once and kept in the model cache under `name` and a
    hash of `key` (what the training depends on), as `pretrained_dir` keeps the default's."""
    from agents.pretrain import built_once, cache_key, cache_root
    return built_once(cache_root() / f"{name}-{cache_key(key)}", build)


def small_config(**kw) -> PretrainConfig:
    return PretrainConfig.from_dict({**SMALL, **kw})


@pytest.fixture(scope="session")
def small_dir():
    return pretrained_dir(small_config(), progress=False)


@pytest.fixture(scope="session")
def small_agent(small_dir):
    from agents.agent import Agent
    return Agent.from_dir(small_dir)


@pytest.fixture(scope="session")
def small_world(small_dir):
    from envs.world import World
    return World.load(small_dir / "world.json")


def require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("vllm is not importable under CI: the test set-up must install the serve-cpu extra")
        pytest.skip("vllm not installed (pip install -e .[serve-cpu])")
