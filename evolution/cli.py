"""The `knowevo` command line. Subcommands stay stable; options may grow."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _pretrain_config(args):
    from agents.pretrain import PretrainConfig
    from evolution.overrides import apply_sets
    return PretrainConfig.from_dict(apply_sets({"people": args.people, "seed": args.seed}, args.set))


def cmd_world(args) -> int:
    from envs.world import World
    w = World.bios(args.people, args.seed, args.qa_fraction, args.untaught_fraction)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in w.fact_records():
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(w.people)} people, {len(w.people) * len(w.relations)} facts to {out}")
    return 0


def cmd_pretrain(args) -> int:
    from agents.pretrain import pretrained_dir
    cfg = _pretrain_config(args)
    t0 = time.time()
    out = pretrained_dir(cfg, args.out)
    meta = json.loads((out / "knowevo.json").read_text())
    print(f"model dir {out} ready in {time.time() - t0:.1f}s "
          f"(trained in {meta['report']['seconds']}s, {meta['report']['parameters']:,} parameters)")
    return 0


def cmd_demo(args) -> int:
    """The main job on the embedded default: pretrain (cached), then configs/default.yaml."""
    from evolution.run import run_experiment
    config = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    sets = [f"pretrain.{s}" for s in args.set or []]
    if args.people != 300 or args.seed != 0:
        sets += [f"pretrain.people={args.people}", f"pretrain.seed={args.seed}"]
    t0 = time.time()
    run_experiment(config, args.out, sets + [f"{k}" for k in args.run_set or []])
    print(f"done in {time.time() - t0:.0f}s; rerun the same command to resume, `knowevo report {args.out}` to redraw")
    return 0


def cmd_report(args) -> int:
    from evolution.report import build_report, summary_of
    path = build_report(args.run_dir)
    print("\n".join(summary_of(args.run_dir)) + f"\nreport: {path}")
    return 0


def cmd_run(args) -> int:
    from evolution.run import main as run_main
    sets = [x for s in args.set or [] for x in ("--set", s)]
    return run_main([args.config, "--out", args.out, *sets])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="knowevo", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("world", help="write the synthetic world's facts as JSON lines")
    w.add_argument("--people", type=int, default=300)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--qa-fraction", type=float, default=0.5)
    w.add_argument("--untaught-fraction", type=float, default=0.2)
    w.add_argument("--out", required=True)
    w.set_defaults(fn=cmd_world)
    for name, fn, helptext in (("pretrain", cmd_pretrain, "pretrain (or fetch from cache) the default model"),
                               ("demo", cmd_demo, "the main job: pretrain the default model (cached) and run "
                                                  "configs/default.yaml, knowledge evolving over generations")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--people", type=int, default=300)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a pretraining setting, e.g. --set social_prior=0.5 --set shape.n_layer=4")
        if name == "pretrain":
            s.add_argument("--out", required=True)
        else:
            s.add_argument("--out", default="runs/default", help="run dir (resumed if it holds this run)")
            s.add_argument("--run-set", action="append", metavar="KEY=VALUE",
                           help="override a key of configs/default.yaml, e.g. --run-set generations=3")
        s.set_defaults(fn=fn)
    r = sub.add_parser("run", help="run a protocol experiment from a YAML config (python -m evolution.run)")
    r.add_argument("config")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    r.add_argument("--out", required=True, help="run dir (resumed if it holds this config's run)")
    r.set_defaults(fn=cmd_run)
    rp = sub.add_parser("report", help="rebuild a generation run's report.html, metrics.csv and plots")
    rp.add_argument("run_dir")
    rp.set_defaults(fn=cmd_report)
    from evolution.edit_cmd import add_edit_parser
    add_edit_parser(sub)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:  # our input errors: one clear line, no traceback
        print(f"knowevo {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
