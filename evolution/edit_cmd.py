"""`knowevo edit`: apply knowledge edits to a model directory and write the edited model.

    knowevo edit --model DIR --method rome --requests FILE.jsonl --out DIR2 [--set v_steps=40]
                 [--world world.json] [--adapter DIR3 --rank 8]

Requests are JSON lines {"subject", "relation", "target"[, "prompt"]}. DIR2 receives the
edited model (transformers/vLLM loadable safetensors + tokenizer; the source's world.json
is copied, since the world's truth did not change; a WISE edit adds its side memory,
wise.safetensors, which `evolution.editors.wise.persist.load_side_memory` puts back) and metrics.json: the edit report and
EasyEdit-named metrics (analysis.edit_metrics) when the subjects belong to the world,
else each request's target log-probability before and after. Every input is checked
before any work; nothing is written when the edit fails.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from evolution.overrides import flat_sets


def target_logprobs(agent, requests, field: str = "target") -> list[float]:
    """Each request's `field` (the target; an erasure's truth) log-probability after its prompt."""
    from agents.scoring import candidate_logprobs
    scores = candidate_logprobs(agent.model, agent.tokenizer, [r.prompt for r in requests],
                                [(getattr(r, field),) for r in requests])
    return [round(float(s[0]), 4) for s in scores]


def json_safe(x):
    """NaN/inf -> None (null): a metric with nothing to measure (portability without a company
    edit) must not make metrics.json unreadable to strict JSON readers (jq, JSON.parse)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def _write_outputs(agent, args, result, src: Path, out: Path, adapter_tmp: Path | None) -> None:
    if adapter_tmp is not None:   # first: an adapter that cannot be written (a WISE edit has no delta) stops here
        from agents.adapters import export_adapter
        result["adapter"] = export_adapter(agent, adapter_tmp, rank=args.rank).to_dict()
        result["adapter"]["path"] = str(args.adapter)
    agent.save(out)
    from evolution.editors.wise.memory import side_memory_of
    if side_memory_of(agent.model) is not None:   # WISE edits live in the side memory, not the weights
        from evolution.editors.wise.persist import save_side_memory
        save_side_memory(agent, out)
        result["side_memory"] = "wise.safetensors (load with evolution.editors.wise.persist.load_side_memory)"
    from evolution.editors.memoir.memory import memory_of
    if memory_of(agent.model) is not None:        # MEMOIR edits live in its memory, saved as agent state
        result["memory"] = "memoir: in state.safetensors beside the model; Agent.load(dir) brings it back"
    for extra in ("world.json", "knowevo.json"):
        if (src / extra).is_file():
            shutil.copyfile(src / extra, out / extra)
    (out / "metrics.json").write_text(json.dumps(json_safe(result), indent=2, default=str, allow_nan=False))


def cmd_edit(args) -> int:
    from agents.agent import Agent
    from agents.methods import editor
    from envs.world import World
    from evolution.editors.requests import read_requests, validate_requests
    erasing = getattr(editor(args.method), "request_kind", "edit") == "erase"   # unknown method: error here
    hp = flat_sets(args.set)
    if erasing:
        from evolution.editors.erase import read_erase_requests
        requests = read_erase_requests(args.requests)
    else:
        requests = read_requests(args.requests)
    from evolution.outputs import check_new_dir
    src, out = Path(args.model), check_new_dir(args.out, "--out")
    if args.adapter:
        check_new_dir(args.adapter, "--adapter")
    agent = Agent.from_dir(src)
    world_file = Path(args.world) if args.world else src / "world.json"
    if args.world and not world_file.is_file():
        raise ValueError(f"--world {args.world!r} does not exist")
    world = World.load(world_file) if world_file.is_file() else None
    if erasing:
        return _erase(agent, args, requests, world, hp, src, out)
    requests = validate_requests(agent, requests, world, check_current=not args.allow_current)
    in_world = world is not None and all(r.subject in {p.name for p in world.people} for r in requests)
    if in_world:
        from analysis.edit_metrics import MetricsError, edit_baseline, evaluate_edits, locality_pool
        others = len(locality_pool(world, requests))
        n_loc = min(args.locality, others)
        try:
            baseline = edit_baseline(agent, world, requests, n_locality=n_loc, n_bios=20)
        except MetricsError as e:
            raise ValueError(f"--locality {args.locality}: {e} ({others} locality queries to draw from)") from None
    lp_before = target_logprobs(agent, requests)
    report = agent.edit(requests, method=args.method, world=world, check_current=not args.allow_current, **hp)
    metrics = {"target_logprob_before": lp_before, "target_logprob_after": target_logprobs(agent, requests)}
    if in_world:
        metrics.update(evaluate_edits(agent, world, requests, before=baseline))
    result = {"method": args.method, "model": str(src), "hparams": hp, "report": report.to_dict(),
              "metrics": metrics, "requests": [r.to_dict() for r in requests]}
    _publish(agent, args, result, src, out)
    shown = {k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}
    print(f"edited {len(requests)} fact(s) with {args.method} in {report.seconds:.1f}s "
          f"(layers {report.layers}); model written to {out}\n{json.dumps(shown)}")
    return 0


def _erase(agent, args, requests, world, hp: dict, src: Path, out: Path) -> int:
    """`knowevo edit --method npo|ga|erase`: requests name facts without a target; the metrics
    are analysis.erasure's (erased accuracy beside the never-taught level, locality)."""
    from analysis.erasure import erasure_baseline, evaluate_erasure
    from evolution.editors.erase import validate_erase_requests
    requests = validate_erase_requests(agent, requests, world)
    baseline = erasure_baseline(agent, world, requests, n_locality=min(args.locality, _others(world, requests)))
    lp_before = target_logprobs(agent, requests, "truth")
    report = agent.edit(requests, method=args.method, world=world, **hp)
    metrics = {"truth_logprob_before": lp_before, "truth_logprob_after": target_logprobs(agent, requests, "truth"),
               **evaluate_erasure(agent, world, requests, baseline)}
    result = {"method": args.method, "model": str(src), "hparams": hp, "report": report.to_dict(),
              "metrics": metrics, "requests": [r.to_dict() for r in requests]}
    _publish(agent, args, result, src, out)
    shown = {k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}
    print(f"erased {len(requests)} fact(s) with {args.method} in {report.seconds:.1f}s "
          f"({report.details['steps']} steps, truth at the never-taught level: {report.ok}); model written to "
          f"{out}\n{json.dumps(shown)}")
    return 0


def _others(world, requests) -> int:
    from analysis.edit_metrics import locality_pool
    return len(locality_pool(world, requests))


def _publish(agent, args, result: dict, src: Path, out: Path) -> None:
    """Fill the output dirs aside and rename them into place: all of them or none."""
    from evolution.outputs import publish, staging
    final, out = out, staging(out)
    adapter_tmp = staging(args.adapter) if args.adapter else None
    try:
        _write_outputs(agent, args, result, src, out, adapter_tmp)
    except BaseException:
        for tmp in (out, adapter_tmp):
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(out, final)
    if args.adapter:
        publish(adapter_tmp, args.adapter)


def add_edit_parser(sub) -> None:
    e = sub.add_parser("edit", help="edit facts in a model dir (ROME, MEMIT, ...) and write the edited model")
    e.add_argument("--model", required=True, help="model dir (knowevo pretrain output or a HF checkpoint)")
    e.add_argument("--method", default="rome", help="editor: rome, memit, ft_l, wise, memoir; eraser: ga, npo, erase; an entry point of knowevo.editors, or package.module:function")
    e.add_argument("--requests", required=True, help='JSON lines: {"subject", "relation", "target"[, "prompt"]}, or a CounterFact '
                   '.json list (each record rewritten to its target_new); for ga, npo and erase '
                   '{"subject", "relation"} (the fact to erase)')
    e.add_argument("--out", required=True, help="new directory for the edited model and metrics.json")
    e.add_argument("--world", default=None, help="world.json (default: the one in --model)")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="editor hparam, e.g. --set layer=0")
    e.add_argument("--adapter", default=None, help="also export the change as a peft LoRA adapter here")
    e.add_argument("--rank", type=int, default=8, help="adapter rank (ROME is exact at rank >= edits)")
    e.add_argument("--locality", type=int, default=200, help="locality queries (other people's facts)")
    e.add_argument("--allow-current", action="store_true",
                   help="accept targets the model already answers (by default that is an error)")
    e.set_defaults(fn=cmd_edit)
