"""The ``kenpin`` command: one tool, a subcommand per job.

    kenpin demo                                     # synthetic line → train → bundle → inspect
    kenpin train --data DIR --out BUNDLE [--recipe R.yaml: else chosen on validation] [--embedder RUN/embedder.pt]
    kenpin train-embedding --data DIR --out RUN [--recipe R] [--resume]   # metric learning
    kenpin eval  --bundle BUNDLE --data DIR --json FILE --report DIR
    kenpin verify --bundle BUNDLE                   # prove the bundle on this CPU (what the station does)
    kenpin bench --data DIR [DIR ...] [--markdown FILE]   # = kenpin bench models: train, export, evaluate, time
    kenpin compare --data DIR --recipe R [--train-images 16]   # frozen vs trained embedder
    kenpin tune  --data DIR --recipe A.yaml B.yaml   # choose recipes without test/
    kenpin split-defects --data DIR --per-type K --out NEW   # K real defects per type into train/
    kenpin run   --config configs/station.yaml     # the station daemon (systemd service)
    kenpin bench station|store|dashboard|durability|profile|modbus|opcua ...   # the station's benchmarks (kenpin/bench_cli.py)
    kenpin hash-token                              # dashboard.token_hash for the station config
    kenpin modbus-map                              # the Modbus register map the station serves (Markdown)

Heavy imports (torch, sklearn) happen inside the subcommand that needs them, so ``--help`` is
instant and the station's commands never load torch.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from device.errors import KenpinError
from kenpin.bench_cli import add_bench
from kenpin.dataset_cli import add_recipes_and_datasets


def _threads(n: int) -> None:
    # BLAS and torch default to every core; the benchmark contract is 2 threads.
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(n))
    # OpenBLAS workers otherwise spin ~ms after each reference search and slow the next frame's
    # ONNX Runtime run on a small CPU (measured: station path 15-18 ms → 13 ms at 384 px).
    # Read when numpy loads, hence set here before any numpy import.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def cmd_train(args: argparse.Namespace) -> int:
    from kenpin.pipeline import recipe_for, train_and_report

    embedder = Path(args.embedder) if args.embedder else None
    recipe = recipe_for(args.recipe, embedder)
    if recipe is not None and args.max_pi4_ms is not None:
        raise KenpinError("--max-pi4-ms limits the recipe chosen on validation: leave it out with --recipe or --embedder")
    train_and_report(Path(args.data), Path(args.out), recipe, embedder, args.max_pi4_ms)
    return 0


def cmd_train_embedding(args: argparse.Namespace) -> int:
    from kenpin.pipeline import train_embedding_and_report
    from training.recipe import load_recipe

    train_embedding_and_report(Path(args.data), Path(args.out), load_recipe(args.recipe), args.resume)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from kenpin.retrain import retrain
    from training.recipe import load_recipe

    retrain(Path(args.bundle), Path(args.feedback), Path(args.data), Path(args.out),
            Path(args.eval) if args.eval else None, load_recipe(args.recipe) if args.recipe else None, args.precision)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from kenpin.pipeline import evaluate_and_report

    m = evaluate_and_report(Path(args.bundle), Path(args.data), args.precision,
                            Path(args.json) if args.json else None, Path(args.report) if args.report else None,
                            Path(args.compare) if args.compare else None)
    return 0 if m["image_auroc"] is not None else 1


def cmd_verify(args: argparse.Namespace) -> int:
    import json

    from device.bundle import load_bundle
    from device.selfcheck import self_check, startup_estimate, table

    bundle = load_bundle(Path(args.bundle))
    full = self_check(bundle, args.threads, full=True)
    start = self_check(bundle, args.threads, args.precision)  # what `kenpin run` does at start-up
    print(f"bundle {bundle.bundle_id} on this CPU ({full.cpu}):")
    print(table(full) if full.verified else "  not verifiable: no probe set (exported before the station's own check)")
    est = startup_estimate(bundle, start)
    print(f"start-up check (bundle.precision {args.precision}): runs {start.chosen}; {start.model_runs} model runs "
          f"in {start.seconds:.2f} s here" + (f", ESTIMATE {est:.1f} s on a Raspberry Pi 4" if est else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"bundle": bundle.bundle_id, "full": full.to_dict(),
                                               "startup": {**start.to_dict(), "pi4_estimate_s": est}}, indent=2) + "\n")
    passed = [c.variant for c in full.checks if c.status == "passed"]
    if full.verified and not passed:
        print("no int8 variant passes on this CPU: the station would run fp32")
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.feedback_loop:
        from kenpin.feedback_demo import run_feedback_loop

        run_feedback_loop(Path(args.workdir), args.seed)
        return 0
    from kenpin.demo import run_demo

    return run_demo(Path(args.workdir), args.seed)


def cmd_compare(args: argparse.Namespace) -> int:
    if args.per_type is not None:
        if args.train_images is not None or args.resume:
            raise KenpinError("--per-type runs the curve from scratch on all train/good: leave out --train-images "
                              "and --resume")
        from kenpin.curve import run_curve

        run_curve(Path(args.data), args.recipe, Path(args.workdir), args.per_type, args.seed)
        return 0
    from kenpin.compare import run_compare

    return run_compare(Path(args.data), args.recipe, Path(args.workdir), args.train_images, args.resume)


def cmd_run(args: argparse.Namespace) -> int:
    from device.station.service import RunOptions, run_service

    return run_service(Path(args.config), RunOptions(args.duration, not args.no_dashboard))


def cmd_modbus_map(args: argparse.Namespace) -> int:
    from device.station.modbus_map import Layout

    print(Layout().markdown(), end="")
    return 0


def cmd_hash_token(args: argparse.Namespace) -> int:
    from device.dashboard.auth import hash_token

    if args.stdin:
        token = sys.stdin.readline().rstrip("\n")
    else:  # prompted, never on the command line (it would sit in the shell history and `ps`)
        import getpass

        token = getpass.getpass("token: ")
        if getpass.getpass("again: ") != token:
            raise KenpinError("the two tokens differ; run `kenpin hash-token` again")
    print(hash_token(token))
    return 0


def cmd_train_ranker(args: argparse.Namespace) -> int:
    from training.rank.recipe import load_ranker_recipe
    from training.rank.train import train_grade, train_quality

    recipe = load_ranker_recipe(args.recipe)
    if args.role == "grade":
        if not args.ratings:
            raise KenpinError("--role grade needs --ratings FILE (a CSV of image,rating or better,worse)")
        train_grade(Path(args.ratings), Path(args.bundle), recipe)
    else:
        if not args.data:
            raise KenpinError("--role quality needs --data DIR (good images in DIR/train/good)")
        train_quality(Path(args.data), Path(args.bundle), recipe)
    print(f"{args.role} ranker added to {args.bundle}")
    print(f"next: kenpin eval-ranker --bundle {args.bundle} --role {args.role} "
          + ("--ratings HELDOUT.csv" if args.role == "grade" else f"--data {args.data} --report {args.bundle}-quality"))
    return 0


def cmd_eval_ranker(args: argparse.Namespace) -> int:
    from training.rank.evaluate import eval_grade, eval_quality

    json_path = Path(args.json) if args.json else None
    if args.role == "grade":
        if not args.ratings:
            raise KenpinError("--role grade needs --ratings FILE (image,rating of images not trained on)")
        eval_grade(Path(args.bundle), Path(args.ratings), args.precision, args.k, json_path)
    else:
        if not args.data:
            raise KenpinError("--role quality needs --data DIR (held-out good images in DIR/test/good)")
        eval_quality(Path(args.bundle), Path(args.data), args.precision, args.seed, json_path,
                     Path(args.report) if args.report else None, not args.no_flips)
    return 0


def cmd_mask_ratings(args: argparse.Namespace) -> int:
    from training.rank.mask_ratings import mask_ratings

    mask_ratings(Path(args.data), Path(args.out), args.seed)
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with an implied subcommand: a parser whose ``implied`` names one of its subcommands hands
    it arguments that start with a flag (or none), so ``kenpin bench --data …`` is ``kenpin bench models --data …``."""

    implied: str | None = None

    def parse_known_args(self, args=None, namespace=None):
        if self.implied and args is not None and (not args or (args[0].startswith("-")
                                                               and args[0] not in ("-h", "--help"))):
            args = [self.implied, *args]
        return super().parse_known_args(args, namespace)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="kenpin", description="kenpin (検品): visual inspection at the line.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    _add_training(sub)
    _add_evaluation(sub)
    _add_whole_runs(sub)
    add_bench(sub)
    add_recipes_and_datasets(sub)
    _add_station(sub)
    _add_ranker(sub)
    return p


def _add_training(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="fit on DATA/train/good and write an int8 + fp32 bundle")
    t.add_argument("--data", required=True, help="dataset folder in the MVTec AD layout")
    t.add_argument("--out", required=True, help="bundle directory to write (replaced atomically)")
    t.add_argument("--recipe", help="recipe YAML (default: chosen on validation among the default recipe at the "
                                    "frames' aspect, 224² or 384² pixels, with or without the texture score — "
                                    "never on test/; with --embedder: the recipe it was trained with)")
    t.add_argument("--max-pi4-ms", type=float, help="with the recipe chosen on validation: leave out candidates "
                                                     "whose model alone is estimated slower than this per frame on a "
                                                     "Raspberry Pi 4 (ESTIMATE from MACs; the line's pace, e.g. 100 "
                                                     "for 10 parts/s)")
    t.add_argument("--embedder", help="trained embedder (kenpin train-embedding's embedder.pt) instead of the frozen one")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("train-embedding", help="metric-learn the patch embedder (triplet/contrastive); "
                                               "GPU when present; under torchrun, one process per GPU")
    m.add_argument("--data", required=True, help="dataset folder in the MVTec AD layout (train/good, optional train/<defect>)")
    m.add_argument("--out", required=True, help="run folder: embedder.pt (selected), checkpoint_last.pt, history, curve")
    m.add_argument("--recipe", help="recipe YAML; its metric: section drives training")
    m.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    m.set_defaults(func=cmd_train_embedding)

    rt = sub.add_parser("retrain", help="the feedback loop: the verdicts operators marked wrong join the running "
                                        "bundle's dataset; a new bundle, judged beside the running one")
    rt.add_argument("--bundle", required=True, help="the bundle the station runs (its recipe is reused)")
    rt.add_argument("--feedback", required=True, help="the station's feedback folder (<station.data_dir>/feedback, or "
                                                      "feedback/product-<n>): train/good/ and train/defect/")
    rt.add_argument("--data", required=True, help="the dataset the running bundle was trained on (MVTec layout)")
    rt.add_argument("--out", required=True, help="new bundle folder (must not exist)")
    rt.add_argument("--eval", help="an MVTec-layout test set neither bundle trained on: both scored on it, side by side")
    rt.add_argument("--recipe", help="recipe YAML instead of the running bundle's own")
    rt.add_argument("--precision", default="auto", help="variant both bundles are judged with (as kenpin eval)")
    rt.set_defaults(func=cmd_retrain)


def _add_evaluation(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="score DATA/test with a bundle; metrics JSON and plots")
    e.add_argument("--bundle", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--json", help="write the metrics here")
    e.add_argument("--report", help="write the plots into this folder")
    e.add_argument("--precision", default="auto",
                   help="auto (default: what the station would run on this CPU, after its self-check), int8 "
                        "(the best int8 variant that passes here), fp32, or a variant name (int8-w8, int8-w7)")
    e.add_argument("--compare", help="a second bundle (e.g. the frozen one) scored on the same images: "
                                     "both figures, and the embedding map before and after")
    e.set_defaults(func=cmd_eval)

    vf = sub.add_parser("verify", help="prove a bundle on this CPU: each variant's parity with fp32 on the bundle's "
                                       "probes, thresholds recalibrated here, the variant the station would run")
    vf.add_argument("--bundle", required=True)
    vf.add_argument("--precision", default="auto", choices=["auto", "int8", "fp32"],
                    help="the station's bundle.precision for the start-up check (default auto)")
    vf.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (the station's bundle.threads)")
    vf.add_argument("--json", help="also write the figures here")
    vf.set_defaults(func=cmd_verify)


def _add_whole_runs(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="the whole path on a generated sample line (no camera, no GPU, no data)")
    d.add_argument("--workdir", default="demo-run", help="where the line, bundle and report go")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--feedback-loop", action="store_true",
                   help="instead: the feedback loop — the station judges a production shift, its wrong verdicts "
                        "are marked, kenpin retrain, and both bundles on a later shift (minutes of CPU)")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("compare", help="frozen vs metric-learned embedder on one dataset, in one run")
    c.add_argument("--data", required=True)
    c.add_argument("--recipe", help="recipe YAML (its metric: section drives the training)")
    c.add_argument("--workdir", default="compare-run")
    c.add_argument("--train-images", type=int, help="use only this many train/good images (few-shot)")
    c.add_argument("--resume", action="store_true", help="resume the embedding training in WORKDIR/embedding")
    c.add_argument("--per-type", type=int, nargs="+", metavar="K",
                   help="instead: the curve — K real defects per type moved to train/ (kenpin split-defects), "
                        "trained per K, frozen once, all scored on the test images left at the largest K")
    c.add_argument("--seed", type=int, default=0, help="with --per-type: seed of the defects' pick")
    c.set_defaults(func=cmd_compare)


def _add_station(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="the station daemon: camera → verdict → reject signal → record")
    r.add_argument("--config", required=True, help="station YAML (every key documented in configs/station.yaml)")
    r.add_argument("--duration", type=float, help="stop after this many seconds (default: until SIGTERM)")
    r.add_argument("--no-dashboard", action="store_true", help="do not serve the dashboard even if configured")
    r.set_defaults(func=cmd_run)

    h = sub.add_parser("hash-token", help="hash a dashboard token for dashboard.token_hash in the station config")
    h.add_argument("--stdin", action="store_true", help="read the token from the first line of stdin instead of prompting")
    h.set_defaults(func=cmd_hash_token)

    mm = sub.add_parser("modbus-map", help="print the Modbus register map, codes and handshake the station serves "
                                           "(Markdown, generated from the table in device/station/modbus_map.py)")
    mm.set_defaults(func=cmd_modbus_map)


def _add_ranker(sub: argparse._SubParsersAction) -> None:
    """RankNet scorers: the capture-quality gate and a grade learnt from operator judgements."""
    k = sub.add_parser("train-ranker", help="train a RankNet scorer and add it to a bundle: the capture-quality "
                                            "gate (from degraded good images) or a grade (from --ratings)")
    k.add_argument("--bundle", required=True, help="existing bundle (kenpin train) to add the model to, atomically")
    k.add_argument("--role", default="quality", choices=["quality", "grade"])
    k.add_argument("--data", help="quality: dataset folder (MVTec layout); good images from DATA/train/good")
    k.add_argument("--ratings", help="grade: CSV of image,rating or better,worse (paths relative to the CSV)")
    k.add_argument("--recipe", help="ranker recipe YAML (default: configs/recipe_ranker.yaml's values)")
    k.set_defaults(func=cmd_train_ranker)
    ke = sub.add_parser("eval-ranker", help="quality: pairwise accuracy on held-out degradations of DATA/test/good; "
                                            "grade: Kendall τ and NDCG@k on a held-out ratings file")
    ke.add_argument("--bundle", required=True)
    ke.add_argument("--role", default="quality", choices=["quality", "grade"])
    ke.add_argument("--data", help="quality: dataset folder; DATA/test/good is degraded at held-out strengths")
    ke.add_argument("--ratings", help="grade: image,rating CSV of images the grade was not trained on")
    ke.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    ke.add_argument("--seed", type=int, default=1234, help="seed of the evaluation degradations")
    ke.add_argument("--k", type=int, default=10, help="NDCG@k")
    ke.add_argument("--json", help="write the figures here")
    ke.add_argument("--report", help="quality: folder for the score-vs-strength plot")
    ke.add_argument("--no-flips", action="store_true", help="quality: skip the verdict flips (every test image, clean "
                                                            "and degraded, judged by the anomaly model: the slow part)")
    ke.set_defaults(func=cmd_eval_ranker)
    km = sub.add_parser("mask-ratings", help="rate DATA's defective test images by ground-truth mask area "
                                             "(severity), split into OUT/train.csv and OUT/heldout.csv")
    km.add_argument("--data", required=True)
    km.add_argument("--out", required=True)
    km.add_argument("--seed", type=int, default=0)
    km.set_defaults(func=cmd_mask_ratings)


def main(argv: list[str] | None = None) -> int:
    """Entry point: expected failures print one sentence and exit 2; no traceback."""
    _threads(2)
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except KenpinError as e:
        print(f"kenpin: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kenpin: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
