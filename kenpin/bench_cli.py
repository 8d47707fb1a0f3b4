"""``kenpin bench <what>``: each benchmark's arguments, and the call into its module.

    kenpin bench [models] --data DIR [DIR ...] [--markdown FILE]   # train, export, evaluate, time (needs torch)
    kenpin bench station --bundle B --replay DIR                    # the daemon's throughput, latency, memory
    kenpin bench store [--n 1000] [--size 224]                      # verdicts/s the record keeps up with
    kenpin bench dashboard [load] [--bundle B --replay DIR]         # 20 dashboard clients vs the line's rate
    kenpin bench dashboard cost [--seconds 10]                      # station CPU per kind of dashboard traffic
    kenpin bench durability [--bundle B --replay DIR] [--kills 50]  # kill -9 the daemon; nothing acknowledged lost
    kenpin bench products [--bundles B1 B2 --replay DIR]            # 100 product switches under load; none misjudged
    kenpin bench burst [--bundle B --replay DIR] [--burst 3]        # trigger → verdict of N frames a trigger vs one
    kenpin bench profile --bundle B --data DIR                      # where a frame's station-path time goes
    kenpin bench search --bundle B --data DIR                       # the station's search vs faiss-cpu / usearch
    kenpin bench modbus [--bundle B --replay DIR] [--parts 1000]    # PLC over Modbus TCP: handshake, fuzz, polling
    kenpin bench opcua [--bundle B --replay DIR] [--parts 1000]     # Inspect() over OPC UA, bad requests, polling

The station's benchmarks live in ``device/bench/`` and never import torch; each module is imported
only when its benchmark runs. Only the model benchmark, and the generated line and bundle that
``dashboard``, ``durability``, ``products``, ``burst`` and ``opcua`` train when given no bundle and --replay, need the
training extra.
"""
from __future__ import annotations

import argparse
from pathlib import Path

def add_bench(sub: argparse._SubParsersAction) -> None:
    """``kenpin bench``; its first word says what to measure, and without one (flags first) it is ``models``."""
    b = sub.add_parser("bench", help="benchmarks: models (the default: kenpin bench --data …), station, store, "
                                     "dashboard, durability, products, burst, profile, search, modbus, opcua",
                       description="Benchmarks. `kenpin bench --data …` is `kenpin bench models --data …`.")
    b.implied = "models"  # kenpin.cli.Parser: arguments that start with a flag go to `models`
    what = b.add_subparsers(dest="what", required=True)
    _add_models(what)
    _add_station(what)
    _add_store(what)
    _add_dashboard(what)
    _add_durability(what)
    _add_products(what)
    _add_burst(what)
    _add_profile(what)
    _add_search(what)
    _add_modbus(what)
    _add_opcua(what)


def _add_models(what: argparse._SubParsersAction) -> None:
    b = what.add_parser("models", help="train, export, evaluate and time on each dataset in one run")
    b.add_argument("--data", nargs="+", required=True, help="MVTec-layout dataset folders")
    b.add_argument("--recipe", nargs="*", default=[], help="DATASET_NAME=RECIPE.yaml per dataset")
    b.add_argument("--workdir", default="bench-run")
    b.add_argument("--markdown", help="also write the results table to this file")
    b.add_argument("--images", type=int, default=100, help="images timed per precision")
    b.add_argument("--reuse-bundles", action="store_true",
                   help="take a bundle a previous run left in --workdir if it verifies and has the same recipe")
    b.set_defaults(func=cmd_bench)


def _add_station(what: argparse._SubParsersAction) -> None:
    s = what.add_parser("station", help="the daemon's throughput vs bare ONNX Runtime, p50/p99, memory, "
                                        "triggered mode at 2x the sustainable rate")
    s.add_argument("--bundle", required=True, help="bundle to run (BENCHMARKS.md's figure: int8 at 224 px)")
    s.add_argument("--replay", required=True, help="folder of images replayed as the camera")
    s.add_argument("--workdir", default="bench-station-run", help="data dirs and logs of the runs")
    s.add_argument("--seconds", type=float, default=20.0, help="length of the throughput run")
    s.add_argument("--triggered-seconds", type=float, default=60.0, help="length of the 2x-rate triggered run")
    s.add_argument("--memory-minutes", type=float, default=0.0, help="length of the memory-growth run (0: skip)")
    s.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the station's session")
    s.add_argument("--workers", type=int, default=1, help="the station's pipeline.workers (whole-frame workers)")
    s.add_argument("--markdown", help="also write the results to this file")
    s.add_argument("--compare-bundle", help="a second bundle benched alike (e.g. the full embedding beside a reduced "
                                            "one); the per-frame CNN and search split side by side at the end")
    s.set_defaults(func=cmd_bench_station)


def _add_store(what: argparse._SubParsersAction) -> None:
    s = what.add_parser("store", help="verdicts per second the station's record keeps up with, each committed "
                                      "durably (ok parts and all defects, one by one and in groups of 8)")
    s.add_argument("--n", type=int, default=1000, help="verdicts recorded per case")
    s.add_argument("--size", type=int, default=224, help="frame size in pixels (square)")
    s.add_argument("--dir", default=".", help="the data folders go in a temporary folder here (a disk, not tmpfs)")
    s.set_defaults(func=cmd_bench_store)


def _add_dashboard(what: argparse._SubParsersAction) -> None:
    d = what.add_parser("dashboard", help="load: dashboard clients against a running station (does the line slow "
                                          "down?); cost: station CPU per kind of dashboard traffic",
                            description="`kenpin bench dashboard --seconds …` is `kenpin bench dashboard load --seconds …`.")
    d.implied = "load"
    mode = d.add_subparsers(dest="mode", required=True)
    lo = mode.add_parser("load", help="N clients (SSE + live MJPEG each) against the real station, alternating "
                                      "with no clients: throughput drop, CPU share, page latency")
    lo.add_argument("--bundle", help="bundle to run (default: trained on a generated line in the workdir)")
    lo.add_argument("--replay", help="folder of images replayed as the camera")
    lo.add_argument("--workdir", default="dashboard-load-run")
    lo.add_argument("--clients", type=int, default=20)
    lo.add_argument("--seconds", type=float, default=20.0, help="length of each measured phase")
    lo.add_argument("--rounds", type=int, default=3, help="no-clients / clients phase pairs")
    lo.add_argument("--live-fps", type=float, default=2.0,
                    help="live frames pushed per second per client at most (the page's default)")
    lo.add_argument("--port", type=int, default=18080)
    lo.add_argument("--pin-clients", action="store_true",
                    help="run the clients on the last core and the station on the others, so the clients' own CPU "
                         "(a tablet's, on the line) is not taken from the station")
    lo.set_defaults(func=cmd_bench_dashboard_load)
    co = mode.add_parser("cost", help="the real dashboard app before a stand-in station: %% of a core for no "
                                      "clients, the verdict stream, the live MJPEG stream, live polling (2 cores)")
    co.add_argument("--clients", type=int, default=20)
    co.add_argument("--rate", type=float, default=45.0, help="verdicts per second of the stand-in station")
    co.add_argument("--seconds", type=float, default=10.0)
    co.add_argument("--sse-batch", type=float, help="seconds of verdicts per SSE write (default: the dashboard's)")
    co.set_defaults(func=cmd_bench_dashboard_cost)


def _add_durability(what: argparse._SubParsersAction) -> None:
    k = what.add_parser("durability", help="kill -9 the station daemon at random moments while it inspects; "
                                           "check that no acknowledged verdict is lost")
    k.add_argument("--bundle", help="bundle directory (default: train a tiny one in --workdir)")
    k.add_argument("--replay", help="folder of images the daemon replays in a loop")
    k.add_argument("--kills", type=int, default=50)
    k.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    k.add_argument("--max-after", type=float, default=2.0, help="kill up to this many seconds after the first verdict")
    k.add_argument("--workdir", default="kill9-run")
    k.add_argument("--json", help="write every round and the summary here")
    k.set_defaults(func=cmd_bench_durability)


def _add_products(what: argparse._SubParsersAction) -> None:
    p = what.add_parser("products", help="switch products under load; every part judged with the bundle and "
                                         "threshold of the product active when its trigger came, none lost or doubled")
    p.add_argument("--bundles", nargs="+", help="one bundle per product, two or more (default: the tiny line's "
                                                "bundle and a copy of it with another id, trained in --workdir)")
    p.add_argument("--replay", help="folder of images replayed as the camera (with --bundles)")
    p.add_argument("--switches", type=int, default=100)
    p.add_argument("--parts-per-switch", type=int, default=3, help="verdicts between two switches")
    p.add_argument("--backlog", type=int, default=4, help="triggers kept pending, so parts are always in flight")
    p.add_argument("--workers", type=int, default=1, help="the station's pipeline.workers")
    p.add_argument("--workdir", default="bench-products-run")
    p.set_defaults(func=cmd_bench_products)


def _add_burst(what: argparse._SubParsersAction) -> None:
    p = what.add_parser("burst", help="trigger → verdict p50/p99 with N frames a trigger (the quality gate's best "
                                      "judged) beside one frame, on the same trigger schedule; none lost")
    p.add_argument("--bundle", help="a bundle with a quality gate (default: the tiny line's, gate trained in --workdir)")
    p.add_argument("--replay", help="folder of images the camera replays (with --bundle)")
    p.add_argument("--burst", type=int, default=3, help="frames per trigger compared with one")
    p.add_argument("--parts", type=int, default=100, help="parts triggered per run")
    p.add_argument("--rate", type=float, default=5.0, help="parts per second")
    p.add_argument("--fps", type=float, default=30.0, help="the replay camera's frame rate (a Pi camera's default)")
    p.add_argument("--rounds", type=int, default=2, help="single-frame / burst run pairs, alternated")
    p.add_argument("--workdir", default="bench-burst-run")
    p.add_argument("--json", help="also write the figures here")
    p.set_defaults(func=cmd_bench_burst)


def _add_profile(what: argparse._SubParsersAction) -> None:
    p = what.add_parser("profile", help="where a frame's station-path time goes: preprocess, bare model, search, "
                                        "judge, whole path (side by side on DATA's test images)")
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", required=True, help="MVTec-layout dataset; its test/ images are the frames")
    p.add_argument("--cv-threads", type=int, help="cv2.setNumThreads before timing (default: OpenCV's)")
    p.add_argument("--repeat", type=int, default=3)
    p.set_defaults(func=cmd_bench_profile)


def _add_search(what: argparse._SubParsersAction) -> None:
    p = what.add_parser("search", help="the station's exact nearest-neighbour search beside faiss-cpu's and usearch's "
                                       "(where installed): ms per frame on one thread, same patches and bank")
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", required=True, help="MVTec-layout dataset; its test/ images give the patches")
    p.add_argument("--repeat", type=int, default=3)
    p.set_defaults(func=cmd_bench_search)


def _add_modbus(what: argparse._SubParsersAction) -> None:
    m = what.add_parser("modbus", help="a PLC over Modbus TCP: N parts by handshake (lost, doubled, latency), "
                                       "malformed frames (largest verdict gap), polling every 10 ms (throughput)")
    m.add_argument("--bundle", help="bundle directory (default: train the tiny one in --workdir)")
    m.add_argument("--replay", help="folder of images replayed as the camera")
    m.add_argument("--parts", type=int, default=1000, help="parts triggered by the PLC's handshake")
    m.add_argument("--fuzz-frames", type=int, default=3000, help="malformed frames sent (0: skip)")
    m.add_argument("--seconds", type=float, default=8.0, help="length of each polling phase")
    m.add_argument("--rounds", type=int, default=5, help="no-PLC / PLC-polling phase pairs")
    m.add_argument("--poll-ms", type=float, default=10.0, help="the polling PLC's scan period")
    m.add_argument("--port", type=int, default=15020, help="loopback port of the station's Modbus server")
    m.add_argument("--workdir", default="modbus-bench-run")
    m.add_argument("--json", help="also write the figures here")
    m.set_defaults(func=cmd_bench_modbus)


def _add_opcua(what: argparse._SubParsersAction) -> None:
    o = what.add_parser("opcua", help="the OPC UA server against the running station: parts through Inspect() "
                                      "(none lost or doubled, latency), bad requests, a client polling every 10 ms")
    o.add_argument("--bundle", help="bundle directory (default: train a tiny one in --workdir)")
    o.add_argument("--replay", help="folder of images replayed as the camera")
    o.add_argument("--parts", type=int, default=1000, help="parts through Inspect()")
    o.add_argument("--bad", type=int, default=3000, help="bad requests sent")
    o.add_argument("--seconds", type=float, default=60.0,
                   help="length of the polling comparison (a polled and a quiet second in turn)")
    o.add_argument("--rounds", type=int, default=3, help="Inspect() / in-process alternations")
    o.add_argument("--sessions", type=int, default=2, help="OPC UA sessions calling Inspect() at once")
    o.add_argument("--depth", type=int, default=4, help="in-process PLCs keeping the station busy in the polling phases")
    o.add_argument("--port", type=int, default=14840)
    o.add_argument("--workdir", default="opcua-bench-run")
    o.set_defaults(func=cmd_bench_opcua)


def _bundle_and_replay(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """The given --bundle and --replay, None when neither is given."""
    from device.errors import KenpinError

    if (args.bundle is None) != (args.replay is None):
        raise KenpinError("give both --bundle and --replay, or neither")
    return (Path(args.bundle), Path(args.replay)) if args.bundle else None


def _given_or_tiny_mixed(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path]:
    """--bundle and --replay, else the tiny line's bundle and its good and defective test images (made in WORKDIR)."""
    given = _bundle_and_replay(args)
    if given is not None:
        return given
    from device.bench.durability import mixed_replay
    from kenpin.bench_inputs import tiny_line_and_bundle

    bundle, line = tiny_line_and_bundle(workdir)
    return bundle, mixed_replay(line, workdir / "replay")


def cmd_bench(args: argparse.Namespace) -> int:
    from kenpin.bench import run_bench

    return run_bench([Path(d) for d in args.data], Path(args.workdir), args.recipe, args.markdown, args.images,
                     args.reuse_bundles)


def cmd_bench_station(args: argparse.Namespace) -> int:
    from device.bench.station import StationBenchOptions, run_station_bench

    return run_station_bench(StationBenchOptions(
        Path(args.bundle), Path(args.replay), Path(args.workdir), args.seconds, args.triggered_seconds,
        args.memory_minutes, args.threads, Path(args.markdown) if args.markdown else None, workers=args.workers,
        compare=Path(args.compare_bundle) if args.compare_bundle else None))


def cmd_bench_store(args: argparse.Namespace) -> int:
    from device.bench.store import run_store_bench

    return run_store_bench(args.n, args.size, Path(args.dir))


def cmd_bench_dashboard_load(args: argparse.Namespace) -> int:
    from device.bench.dashboard_load import LoadOptions, run_dashboard_load

    workdir = Path(args.workdir)
    given = _bundle_and_replay(args)
    if given is None:
        from kenpin.bench_inputs import sample_line_and_bundle

        bundle, line = sample_line_and_bundle(workdir)
        given = bundle, line / "test" / "good"
    return run_dashboard_load(LoadOptions(*given, workdir, args.clients, args.seconds, args.rounds, args.live_fps,
                                          args.port, args.pin_clients))


def cmd_bench_dashboard_cost(args: argparse.Namespace) -> int:
    from device.bench.dashboard_cost import CostOptions, run_serving_cost

    return run_serving_cost(CostOptions(args.clients, args.rate, args.seconds, args.sse_batch))


def cmd_bench_durability(args: argparse.Namespace) -> int:
    from device.bench.durability import run_durability_bench

    workdir = Path(args.workdir)
    given = _given_or_tiny_mixed(args, workdir)
    return run_durability_bench(workdir, *given, args.kills, args.seed, args.max_after,
                                Path(args.json) if args.json else None)


def cmd_bench_products(args: argparse.Namespace) -> int:
    from device.bench.products import ProductsBenchOptions, product_copy, run_products_bench
    from device.errors import KenpinError

    workdir = Path(args.workdir)
    if (args.bundles is None) != (args.replay is None):
        raise KenpinError("give both --bundles and --replay, or neither")
    if args.bundles:
        if len(args.bundles) < 2:
            raise KenpinError(f"--bundles: {len(args.bundles)} given; switching needs two or more, one per product")
        bundles, replay = [Path(b) for b in args.bundles], Path(args.replay)
    else:
        from device.bench.durability import mixed_replay
        from kenpin.bench_inputs import tiny_line_and_bundle

        bundle, line = tiny_line_and_bundle(workdir)
        bundles = [bundle, product_copy(bundle, workdir / "bundle-2", "product 2")]
        replay = mixed_replay(line, workdir / "replay")
    return run_products_bench(ProductsBenchOptions(bundles, replay, workdir, args.switches, args.parts_per_switch,
                                                   args.backlog, args.workers))


def cmd_bench_burst(args: argparse.Namespace) -> int:
    from device.bench.burst import BurstBenchOptions, run_burst_bench

    workdir = Path(args.workdir)
    given = _bundle_and_replay(args)
    if given is None:  # the tiny line's bundle with a quality gate trained on it, and its test parts
        from device.bench.durability import mixed_replay
        from kenpin.bench_inputs import tiny_gated_bundle

        bundle, line = tiny_gated_bundle(workdir)
        given = bundle, mixed_replay(line, workdir / "replay")
    return run_burst_bench(BurstBenchOptions(*given, workdir, args.burst, args.parts, args.rate, args.fps, args.rounds,
                                             Path(args.json) if args.json else None))


def cmd_bench_profile(args: argparse.Namespace) -> int:
    from device.bench.profile import run_profile

    return run_profile(Path(args.bundle), Path(args.data), args.cv_threads, args.repeat)


def cmd_bench_search(args: argparse.Namespace) -> int:
    from device.bench.search_libraries import run_search_bench

    return run_search_bench(Path(args.bundle), Path(args.data), args.repeat)


def cmd_bench_modbus(args: argparse.Namespace) -> int:
    from device.bench.modbus import ModbusBenchOptions, run_modbus_bench

    workdir = Path(args.workdir)
    given = _bundle_and_replay(args)
    if given is None:  # the tiny line's good and defective test parts: every result code is read back
        from device.bench.durability import mixed_replay
        from kenpin.bench_inputs import tiny_line_and_bundle

        bundle, line = tiny_line_and_bundle(workdir)
        given = bundle, mixed_replay(line, workdir / "replay")
    return run_modbus_bench(ModbusBenchOptions(*given, workdir, args.parts, args.fuzz_frames, args.seconds,
                                               args.rounds, args.poll_ms, args.port,
                                               Path(args.json) if args.json else None))


def cmd_bench_opcua(args: argparse.Namespace) -> int:
    from device.bench.opcua import OpcUaBenchOptions, run_opcua_bench

    workdir = Path(args.workdir)
    given = _given_or_tiny_mixed(args, workdir)
    return run_opcua_bench(OpcUaBenchOptions(*given, workdir, args.parts, args.bad, args.seconds, args.rounds,
                                             args.sessions, args.depth, args.port))
