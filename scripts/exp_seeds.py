"""Seed spread of the experiments: each headline number as median (or mean) [min, max] over seeds.

An experiment ``scripts/exp_<name>.py`` that defines ``headline(payload) -> {label: number}``
(the numbers its claims in docs/RESULTS.md rest on) can be rerun here for more seeds; seed 0
is the documented run (``docs/exp_<name>.json``), read, not rerun:

    python scripts/exp_seeds.py batch_size --seeds 1 2   # run seeds 1 and 2, then tabulate
    python scripts/exp_seeds.py batch_size               # tabulate what is recorded
    python scripts/exp_seeds.py --list                   # experiments with a headline
    python scripts/exp_seeds.py batch_size --mean        # mean [min, max] instead of the median
    python scripts/exp_seeds.py --json docs/exp_same_basin.json 'over_seeds/*/per_seed'

``--json FILE PATH...`` tabulates per-seed numbers that an experiment running its own seeds
stored in its JSON (mean [min, max], see :func:`json_rows`).

Each run writes the experiment's own files to ``out/seeds/<name>/seed<s>/`` (ignored by git);
its headline is merged into ``docs/exp_seeds.json`` (``{name: {seed: {label: value}}}``),
the file RESULTS.md quotes for every seed other than 0. An experiment may define
``seed_run(seed, out_dir)`` to rerun only its single-seed parts (``exp_fort_ganguli``: parts
A-C; its part D already covers three seeds); otherwise its ``main`` runs. What a seed
changes is the experiment's own: the initialization and batch order always, the synthetic
data where the experiment draws it from the seed.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import expcommon as ec  # noqa: E402

RECORD = ec.DOCS / "exp_seeds.json"
RUNS = ec.ROOT / "out" / "seeds"


def experiment(name: str):
    """The module ``exp_<name>``; ValueError naming the choices if it has no ``headline``."""
    try:
        module = importlib.import_module(f"exp_{name}")
    except ModuleNotFoundError as error:
        if error.name != f"exp_{name}":  # a dependency of the experiment is missing
            raise
        module = None
    if module is None or not hasattr(module, "headline"):
        raise ValueError(f"no experiment {name!r} with a headline; choose from "
                         f"{', '.join(with_headline())}")
    return module


def with_headline() -> list:
    """Names of the experiments that define ``headline``."""
    names = []
    for path in sorted(Path(__file__).resolve().parent.glob("exp_*.py")):
        name = path.stem[len("exp_"):]
        if name != "seeds" and "\ndef headline(" in path.read_text():
            names.append(name)
    return names


def run_seed(name: str, seed: int, out_dir, quick: bool = False) -> dict:
    """Run experiment ``name`` for ``seed`` into ``out_dir``; return its headline."""
    module = experiment(name)
    if hasattr(module, "seed_run") and not quick:
        payload = module.seed_run(seed, out_dir)
    else:
        payload = module.main(quick=quick, out_dir=out_dir, seed=seed)
    return clean(module.headline(payload))


def clean(headline: dict) -> dict:
    """Headline values as plain floats (JSON has no numpy scalars)."""
    return {label: float(value) for label, value in headline.items()}


def read_record(path=RECORD) -> dict:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def record(name: str, seed: int, headline: dict, path=RECORD) -> None:
    """Merge one seed's headline into the record file (other entries kept), under an
    exclusive lock so that runners of different experiments can record side by side."""
    path = Path(path)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_record(path)
        data.setdefault(name, {})[str(seed)] = headline
        data[name] = dict(sorted(data[name].items(), key=lambda item: int(item[0])))
        data = dict(sorted(data.items()))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(path)


def all_seeds(name: str, path=RECORD, documented=None) -> dict:
    """``{seed: headline}``: seed 0 from the documented run (``documented``, default
    ``docs/exp_<name>.json``, when it exists), the others from the record file."""
    seeds = {int(s): h for s, h in read_record(path).get(name, {}).items()}
    documented = Path(documented) if documented else ec.DOCS / f"exp_{name}.json"
    if documented.exists():
        seeds[0] = clean(experiment(name).headline(json.loads(documented.read_text())))
    return dict(sorted(seeds.items()))


def spread_table(seeds: dict, stat: str = "median") -> str:
    """Markdown table: one row per headline label, the value of every seed, then the median
    (``stat="mean"``: the mean) and range over the seeds (nan where a seed lacks the label)."""
    order = list(seeds)
    labels = list(dict.fromkeys(label for h in seeds.values() for label in h))
    head = ["number"] + [f"seed {s}" for s in order] + [f"{stat} [min, max]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in labels:
        values = [seeds[s].get(label, math.nan) for s in order]
        lines.append("| " + " | ".join([label] + [fmt(v) for v in values]
                                       + [summarize(values, stat)]) + " |")
    return "\n".join(lines)


def summarize(values, stat: str = "mean") -> str:
    """``centre [min, max]`` of the finite values, the centre their mean (``stat="mean"``) or
    median; ``-`` when none is finite. Booleans count as 0 and 1, so the mean of a verdict is
    the fraction of seeds where it holds."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return "-"
    centre = {"mean": np.mean, "median": np.median}[stat](finite)
    return f"{fmt(float(centre))} [{fmt(min(finite))}, {fmt(max(finite))}]"


def json_rows(data, path: str) -> dict:
    """``{label: per-seed values}`` at a ``/``-separated ``path`` into a JSON document.

    A segment ``*`` makes one row per key of a mapping (or index of a list), labelled by the
    path with the key in its place, and skips the entries that lack the rest of the path;
    ``#`` gathers every element of a list (or value of a mapping) into the seed vector; a
    number selects a list's element; a list of numbers at the end of the path is itself the
    seed vector. For example ``over_seeds/*/per_seed`` (one row per number, seeds stored as
    lists) or ``cases/shared/#/barrier_train_loss`` (one record per seed). KeyError names a
    missing key, TypeError a path ending elsewhere than at numbers, unless a ``*`` covers
    it."""
    rows = {}

    def walk(node, rest, label, optional):
        if not rest:
            values = node if isinstance(node, list) else [node]
            if all(v is None or isinstance(v, (bool, int, float)) for v in values):
                rows.setdefault("/".join(label), []).extend(values)
            elif not optional:
                raise TypeError(f"{'/'.join(label)!r} holds no numbers")
            return
        head, tail = rest[0], rest[1:]
        if head in ("*", "#") and isinstance(node, (dict, list)):
            items = list(enumerate(node)) if isinstance(node, list) else list(node.items())
        elif isinstance(node, dict) and head in node:
            items = [(head, node[head])]
        elif isinstance(node, list) and head.isdigit() and int(head) < len(node):
            items = [(head, node[int(head)])]
        elif optional:
            return
        else:
            raise KeyError(f"no key {head!r} on the path {path!r}")
        for key, child in items:
            walk(child, tail, label + [str(key) if head == "*" else head],
                 optional or head == "*")

    walk(data, [part for part in path.split("/") if part], [], False)
    return rows


def json_table(data, paths) -> str:
    """Markdown table of :func:`json_rows` for every path: label, the seeds' values, and the
    mean [min, max]."""
    lines = ["| number | per seed | mean [min, max] |", "|---|---|---|"]
    for path in paths:
        for label, values in json_rows(data, path).items():
            shown = ", ".join(fmt(float(v)) if v is not None else "-" for v in values)
            lines.append(f"| {label} | {shown} | {summarize(values)} |")
    return "\n".join(lines)


def fmt(value: float) -> str:
    """Three significant digits; integers as integers."""
    if not math.isfinite(value):
        return "-"
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", help="experiment name, e.g. batch_size")
    parser.add_argument("--seeds", type=int, nargs="*", default=[],
                        help="seeds to run (seed 0 is the documented run)")
    parser.add_argument("--list", action="store_true", help="experiments with a headline")
    parser.add_argument("--mean", action="store_true",
                        help="mean [min, max] over seeds instead of the median")
    parser.add_argument("--json", nargs="+", metavar=("FILE", "PATH"),
                        help="tabulate per-seed numbers stored in FILE at each PATH "
                             "(segments: key, * one row per key, # gather into the seeds)")
    args = parser.parse_args(argv)
    if args.json:
        if len(args.json) < 2:
            parser.error("--json needs a FILE and at least one PATH")
        print(json_table(json.loads(Path(args.json[0]).read_text()), args.json[1:]))
        return
    if args.list or args.name is None:
        print("\n".join(with_headline()))
        return
    experiment(args.name)
    for seed in args.seeds:
        ec.log(f"{args.name}, seed {seed}:")
        headline = run_seed(args.name, seed, RUNS / args.name / f"seed{seed}")
        record(args.name, seed, headline)
        ec.log(f"recorded seed {seed} in {RECORD}")
    print(spread_table(all_seeds(args.name), "mean" if args.mean else "median"))


if __name__ == "__main__":
    main()
