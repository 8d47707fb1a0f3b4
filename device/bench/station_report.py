"""``kenpin bench station``'s results as the Markdown recorded in BENCHMARKS.md."""
from __future__ import annotations

from typing import Any


def side_by_side(results: list[dict[str, Any]]) -> str:
    """The bundles' per-frame split and pipeline figures in one table."""
    lines = ["| bundle | embedding dim | CNN ms (1 thread) | search + decision ms | ÷ CNN | pipeline ÷ bare ORT | "
             "p99 / p50 |", "|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["cnn_and_search"]
        lines.append(f"| {r['bundle']} | {r['embedding_dim']} | {c['cnn_ms']:.2f} | {c['search_decision_ms']:.2f} | "
                     f"{c['ratio']:.3f} | {r['ratio_vs_ort']:.2f} | {r['p99_over_p50']:.2f} |")
    return "\n".join(lines) + "\n"


def to_markdown(res: dict[str, Any]) -> str:
    """The results as the Markdown recorded in BENCHMARKS.md."""
    p = res["pipeline"]
    by_layout = res["rounds"]["bare"][0]["ort_fps_by_layout"]
    bare = ", ".join(k if not k.isdigit() else f"one session of {k} thread{'s' * (k != '1')}" for k in by_layout)
    layout = f"{res['workers']} worker(s) x {res['threads']} thread(s)"
    lines = [f"Bundle {res['bundle']} (int8, {res['input'][0]} px), station: {res['workers']} worker(s) x "
             f"{res['threads']} ORT thread(s), replay source.", "",
             "| figure | measured | target |", "|---|---|---|",
             f"| bare ONNX Runtime (session.run only, best of: {bare}) | {res['ort_fps']:.1f} frames/s | — |",
             f"| bare inspector (preprocess + model + search, no pipeline; {layout}) | {res['inspector_fps']:.1f} frames/s | — |",
             f"| whole pipeline (capture → verdict → record) | {p['fps']:.1f} verdicts/s | — |",
             f"| pipeline / bare ORT | {res['ratio_vs_ort']:.2f} | ≥ 0.80 |",
             f"| pipeline / bare inspector | {res['ratio_vs_inspector']:.2f} | — |",
             f"| search + decision ÷ CNN, per frame on one thread ({res['embedding_dim']}-d) | "
             f"{res['cnn_and_search']['search_decision_ms']:.2f} / {res['cnn_and_search']['cnn_ms']:.2f} ms = "
             f"{res['cnn_and_search']['ratio']:.3f} | ≤ 0.15 |",
             f"| latency p50 / p99 (capture → verdict) | {p['p50_ms']:.1f} / {p['p99_ms']:.1f} ms "
             f"(p99/p50 {res['p99_over_p50']:.2f}) | p99 ≤ 2× p50 |"]
    if "triggered" in res:
        t = res["triggered"]
        lines.append(f"| triggered at {t['rate_hz']:.0f}/s (2× pipeline) for {t['seconds']:.0f} s | {t['sent']} sent, "
                     f"{t['recorded']} recorded, {t['lost']} lost, {t['doubled']} doubled, max backlog "
                     f"{t['max_backlog']}, drained in {t['drain_s']:.0f} s, DB {t['integrity']} | 0 lost, 0 doubled |")
    if "memory" in res:
        m = res["memory"]
        lines.append(f"| daemon RSS over {m['minutes']:g} min ({len(m['samples'])} samples) | peak {m['peak_mb']:.0f} MB, "
                     f"growth {m['growth_mb']:+.1f} MB after warm-up | ≤ 300 MB, no growth |")
    if "pi_estimate" in res:
        lines += ["", f"Pi estimate (an ESTIMATE, not a measurement): model {res['gmacs']:.2f} GMAC per frame; model "
                  "time = MACs at the published reference's MAC rate; other work (preprocess + search) = this "
                  "CPU's, scaled by the same factor; parts/s = 1000 / (model + other), the serial sum.", "",
                  "| board | published reference | est. model ms | est. other ms | est. parts/s |", "|---|---|---|---|---|"]
        for board, e in res["pi_estimate"].items():
            lines.append(f"| {board} | {e['reference']} | {e['model_ms']} | {e['other_ms']} | {e['parts_per_s']} |")
    return "\n".join(lines) + "\n"

