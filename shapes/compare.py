"""Side-by-side tables of several Shapes models: ``python -m shapes.compare NAME=REPORT[,SWEEP] ...``.

Reads each model's report card (``python -m shapes.report --out``) and, when given, its
drop-layer sweep (``python -m benchmarks.sweep --out``), and prints the markdown tables of
docs/teaching.md: unpruned accuracy per question type, the drawn set per condition, the answers
that were not one word, the per-layer variation of object against background patches, and the
sweep (accuracy relative to unpruned and object-patch recall at the first drop).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import drawn, scenes


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def accuracy_table(cards: dict[str, dict]) -> str:
    """Unpruned accuracy, overall and per type, on the benchmark and the drawn set."""
    head = "| model | set | all | " + " | ".join(scenes.QTYPES) + " | not one word |"
    lines = [head, "|" + "---|" * (4 + len(scenes.QTYPES))]
    for name, card in cards.items():
        for part in ("benchmark", "drawn"):
            acc = card[part]["accuracy"]
            cells = [_pct(acc.get(f"type={t}")) for t in scenes.QTYPES]
            lines.append(f"| {name} | {part} ({card[part]['n']}) | {_pct(acc['all'])} | " + " | ".join(cells)
                         + f" | {card[part]['not_one_word']} |")
    return "\n".join(lines)


def drawn_table(cards: dict[str, dict]) -> str:
    """Drawn-set accuracy per background, aspect ratio and anti-aliasing."""
    groups = ([f"background={b}" for b in drawn.BACKGROUNDS] + [f"aspect={a}" for a in drawn.ASPECTS]
              + ["antialias=True", "antialias=False"])
    label = {"antialias=True": "anti-aliased", "antialias=False": "aliased"}
    lines = ["| model | " + " | ".join(label.get(g, g.split("=")[1]) for g in groups) + " |",
             "|" + "---|" * (1 + len(groups))]
    for name, card in cards.items():
        acc = card["drawn"]["accuracy"]
        lines.append(f"| {name} | " + " | ".join(_pct(acc.get(g)) for g in groups) + " |")
    return "\n".join(lines)


def variation_table(cards: dict[str, dict]) -> str:
    """Per decoder layer: mean variation of object / background patches, and the object patches' top-half share."""
    lines = ["| model | layer | object patches | background patches | object patches in the top half |",
             "|---|---|---|---|---|"]
    for name, card in cards.items():
        for row in card["variation"]:
            lines.append(f"| {name} | {row['layer']} | {row['object']:.1f} | {row['background']:.1f} | "
                         f"{100 * row['object_in_top_half']:.0f} % |")
    return "\n".join(lines)


def sweep_table(sweeps: dict[str, dict]) -> str:
    """Per budget and first drop layer: accuracy relative to unpruned (object-patch recall at the
    first drop) for every method."""
    lines = []
    for name, sweep in sweeps.items():
        methods = list(sweep["methods"])
        lines += [f"\n{name} (n = {sweep['n']}; unpruned {_pct(sweep['unpruned']['accuracy'])} %): "
                  "accuracy relative to unpruned, % (object-patch recall at the first drop, %)",
                  "| budget | first drop layer | " + " | ".join(methods) + " |", "|" + "---|" * (2 + len(methods))]
        cells: dict[tuple[float, int], dict[str, str]] = {}
        for row in sweep["rows"]:
            key = (row["budget"], row["first_layer"])
            text = ("unreachable" if not row["reachable"]
                    else f"{_pct(row['relative'])} ({_pct(row.get('recall_at_first_drop'))})")
            cells.setdefault(key, {})[row["method"]] = text
        for (budget, layer), by_method in sorted(cells.items(), key=lambda item: (-item[0][0], item[0][1])):
            lines.append(f"| {budget:.2f} | {layer} | " + " | ".join(by_method.get(m, "–") for m in methods) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="NAME=REPORT.json[,SWEEP.json]")
    cards, sweeps = {}, {}
    for spec in ap.parse_args(argv).models:
        name, files = spec.split("=", 1)
        report, _, sweep = files.partition(",")
        cards[name] = json.loads(Path(report).read_text())
        if sweep:
            sweeps[name] = json.loads(Path(sweep).read_text())
    text = "\n\n".join([accuracy_table(cards), drawn_table(cards), variation_table(cards)]
                       + ([sweep_table(sweeps)] if sweeps else []))
    print(text)
    return text


if __name__ == "__main__":
    main()
