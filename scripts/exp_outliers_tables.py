"""Experiment 1's two tables in docs/RESULTS.md, as mean [min, max] over seeds, from the JSON.

    python scripts/exp_outliers_tables.py                      # docs/exp_outliers_vs_classes.json
    python scripts/exp_outliers_tables.py out/quick/exp_outliers_vs_classes.json

Reads what ``scripts/exp_outliers_vs_classes.py`` wrote (no training, no spectra) and prints
two markdown tables:

* **Table 1 beside ours**: each of the paper's 19 rows (Sagun et al. 2018, App. A, as
  transcribed in ``exp_outliers_vs_classes.PAPER_TABLE``), then ours over the seeds: the mean
  eigenvalue ``tr(H) / M``, the gap count + 1 and the ratio count + 2 (the offsets of the
  hypothesis ``paper = ours + offset``, ``OFFSETS``) with the number of seeds on which the
  hypothesis holds, and the count of our eigenvalues above the paper's own cutoff.
* **Every row**: our 40 rows with each rule's count, the step after the (k-1)-th eigenvalue,
  the mean eigenvalue and the training loss.

A cell is ``mean [min, max]`` over the seeds (:func:`exp_seeds.summarize`), or the single
value when every seed agrees.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402
from exp_outliers_vs_classes import OFFSETS  # noqa: E402
from exp_seeds import fmt, summarize  # noqa: E402

JSON = ec.DOCS / "exp_outliers_vs_classes.json"


def over_seeds(values, scale: float = 1.0, sig: str | None = None) -> str:
    """``mean [min, max]`` of ``values * scale`` (``sig``: a format such as ``{:.2g}`` for
    every number instead of three significant digits); the value alone when all agree (at
    that precision)."""
    values = [v * scale for v in values]
    if sig is None:
        if min(values) == max(values):
            return fmt(values[0])
        return summarize(values)
    low, high = sig.format(min(values)), sig.format(max(values))
    if low == high:
        return low
    return f"{sig.format(sum(values) / len(values))} [{low}, {high}]"


def key(row) -> tuple:
    return row["k"], row["optimizer"], row["activation"], row["scale"]


def paper_table(payload) -> str:
    """The paper's 19 rows beside ours (see the module docstring)."""
    ours = {key(r): r for r in payload["rows"]}
    head = ["alg", "act", "M", "cov", "k", "paper mean", "ours mean", "paper gap",
            f"ours gap + {OFFSETS['gap']} (hits)", "paper ratio",
            f"ours ratio + {OFFSETS['ratio']} (hits)", "paper heur (cutoff)",
            "ours above that cutoff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in payload["paper_comparison"]["rows"]:
        p = row["paper"]
        mine = ours[(p["k"], p["optimizer"], p["activation"], p["scale"])]
        cells = [p["optimizer"], p["activation"], f"{p['num_params']} (ours {row['num_params']})",
                 f"{p['scale']:g}", str(p["k"]), f"{p['mean_eigenvalue']:.3g}",
                 over_seeds(mine["mean_eigenvalue"]["per_seed"], sig="{:.2g}")]
        for rule, offset in OFFSETS.items():
            counts = [c + offset for c in row[rule]["per_seed"]]
            cells += [str(p[rule]), f"{over_seeds(counts)} ({row[rule]['hits_offset']}/"
                                    f"{len(counts)})"]
        cells.append("N/A (N/A)" if p["heur"] is None else f"{p['heur']} ({p['cutoff']:g})")
        cells.append(threshold_cell(row.get("threshold")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def threshold_cell(threshold) -> str:
    """Our count above the paper's cutoff over seeds; ``>= K`` where every computed
    eigenvalue is above it (the count is then only a lower bound)."""
    if not threshold:
        return "-"
    counts = [t["count"] for t in threshold]
    if all(t["saturated"] for t in threshold):
        return f">= {counts[0]} (all K computed above)"
    text = over_seeds(counts)
    saturated = sum(t["saturated"] for t in threshold)
    return text + (f" ({saturated} saturated)" if saturated else "")


def rows_table(payload) -> str:
    """Every one of our rows: the paper's gap / ratio / heur where Table 1 has the row."""
    head = ["k", "alg", "act", "cov", "paper gap / ratio / heur", "gap", "ratio", "elbow",
            "below-top", "lambda_(k-1)/lambda_k", "mean eig tr(H)/M", "loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in payload["rows"]:
        p = r["paper"]
        paper = (f"{p['gap']} / {p['ratio']} / {p['heur'] if p['heur'] is not None else 'N/A'}"
                 if p else "no row")
        cells = [str(r["k"]), r["optimizer"], r["activation"], f"{r['scale']:g}", paper]
        cells += [over_seeds(r[rule]["per_seed"]) for rule in
                  ("gap", "ratio", "elbow", "below_top")]
        cells += [over_seeds(r["step_after_k_minus_1"]["per_seed"], sig="{:.2f}"),
                  over_seeds(r["mean_eigenvalue"]["per_seed"], sig="{:.2g}"),
                  over_seeds(r["train_loss"]["per_seed"], sig="{:.1g}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    payload = json.loads(Path(argv[0] if argv else JSON).read_text())
    print(paper_table(payload))
    print()
    print(rows_table(payload))


if __name__ == "__main__":
    main()
