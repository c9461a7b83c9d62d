"""Markdown tables from `par bench --json` files, ready for docs/benchmarks.md, and where GPT-3B
stands against the bench issue's targets (bf16, batch 1, guidance on, seconds of generation per
image: n = 16 at most 0.15, n = 4 at most 0.40, n = 1 at most 1.5).

`make gpu-check` writes DIR/tables.md with it. Reads JSON only (no torch), so it takes no time;
a file that is missing or cut short (a bench stopped by its time limit writes none) is named
and skipped.
Usage: python measure/bench_tables.py FILE.json [FILE.json ...]
"""

import json
import sys
from pathlib import Path

TARGETS_S = {16: 0.15, 4: 0.40, 1: 1.5}  # GPT-3B, bf16, batch 1, guided: s per image
ENGINE_ORDER = ("ours", "plain")


def seconds(value: float) -> str:
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.3g} s"


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def table(document: dict) -> list[str]:
    machine, settings = document["machine"], document["settings"]
    device = machine.get("gpu") or f"{machine['cpu']}, {machine['threads']} threads"
    guidance = f"guidance {settings['cfg_scale']}" if settings["guided"] else "no guidance"
    lines = [
        f"### {document['model']}",
        "",
        f"{device} · torch {machine['torch']} · {settings['dtype']} · {guidance} · "
        f"speed-ups: {', '.join(settings['speedups']) or 'none'}"
        + (" · the reference's kernels" if settings.get("reference_kernels") else ""),
        "",
        f"`{document['command']}`",
        "",
        "| n | batch | engine | passes | generation per image (min–max) | images/s | vs n = 1 "
        "| ours over plain | ours over this | same tokens as ours | memory added |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rank = {name: k for k, name in enumerate(ENGINE_ORDER)}
    rows = sorted(
        document["rows"],
        key=lambda r: (r["regions"], r["batch"], rank.get(r["engine"], len(rank)), r["engine"]),
    )
    if not document.get("complete", True):
        lines.insert(4, f"Cut short: {len(rows)} of {document['cases_planned']} cases measured.\n")
    for r in rows:
        spread = f"{seconds(r['gen_s_per_image_min'])}–{seconds(r['gen_s_per_image_max'])}"
        noisy = " ⚠ noisy" if r["noisy"] else ""
        lines.append(
            f"| {r['regions']} | {r['batch']} | {r['engine']} | {r['passes']} | "
            f"{seconds(r['gen_s_per_image'])} ({spread}){noisy} | {r['images_per_s']:.3g} | "
            f"{ratio(r['speedup_vs_1'])} | {ratio(r['speedup_vs_plain'])} | "
            f"{ratio(r['speedup_vs_first'])} | "
            f"{share(r['tokens_same_as_ours'])} | "
            f"{r['peak_memory_added_bytes'] / 2**20:.0f} MiB |"
        )
    return lines + [""] + targets(document)


def targets(document: dict) -> list[str]:
    """Where GPT-3B's own engine stands against the targets, where this run can say."""
    settings = document["settings"]
    if not document["model"].startswith("GPT-3B") or settings["dtype"] != "bfloat16":
        return []
    if not settings["guided"]:
        return []
    lines = []
    for row in sorted(document["rows"], key=lambda r: r["regions"]):
        goal = TARGETS_S.get(row["regions"])
        if row["engine"] != "ours" or row["batch"] != 1 or goal is None:
            continue
        took = row["gen_s_per_image"]
        verdict = "met" if took <= goal else f"missed by {took / goal:.2f}x"
        lines.append(
            f"* target n = {row['regions']}: {seconds(took)} per image against "
            f"{seconds(goal)}: {verdict}"
        )
    return lines + ([""] if lines else [])


def main() -> None:
    for name in sys.argv[1:]:
        path = Path(name)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            lines = table(document)
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"{path}: no table ({type(error).__name__}: {error})\n")
            continue
        print("\n".join(lines))


if __name__ == "__main__":
    main()
