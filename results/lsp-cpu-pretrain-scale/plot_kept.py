"""Probe score and held-out pretext metric against pretraining samples, one line per method, from the JSON
files of ``sslbench probe --kept-epochs ... --json``.

    python results/lsp-cpu-pretrain-scale/plot_kept.py results/lsp-cpu-pretrain-scale/probe-*-kept.json \
        --floor results/lsp-cpu-probe/probe-lsp-cpu-200.json --out results/lsp-cpu-pretrain-scale/probe-vs-samples.png

``--floor``: a probe JSON whose ``supervised`` row (the random, untrained network) is drawn as the floor. The
pretext metric of each method is its monitor (retrieval %, tile accuracy %, equivariance error px), each in
its own panel: their units differ.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure

from sslbench.contract.registry import default_registry


def read_kept(path: Path) -> tuple[str, list[dict]]:
    data = json.loads(path.read_text())
    rows = sorted((r for r in data["rows"] if "pretrain_samples" in r), key=lambda r: r["pretrain_samples"])
    if not rows:
        raise SystemExit(f"{path}: no rows with pretrain_samples (not written by sslbench probe --kept-epochs)")
    return data["pretext"], rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", nargs="+", type=Path)
    parser.add_argument("--floor", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    methods = [read_kept(path) for path in args.kept]
    registry = default_registry()
    figure = Figure(figsize=(4.5 * (1 + len(methods)), 4.0), layout="constrained")
    panels = figure.subplots(1, 1 + len(methods), squeeze=False)[0]
    probe = panels[0]
    for (pretext, rows), panel in zip(methods, panels[1:]):
        samples = [r["pretrain_samples"] / 1000 for r in rows]
        (line,) = probe.plot(samples, [r["probe_acc"] for r in rows], marker="o", label=pretext)
        monitor = registry.create("pretext", pretext, "--pretext").monitor
        panel.plot(samples, [r["pretext_metrics"][monitor] for r in rows], marker="o", color=line.get_color())
        panel.set(title=f"{pretext}: held-out {monitor}", xlabel="pretraining samples (thousands)", ylabel=monitor)
        panel.grid(alpha=0.3)
    if args.floor:
        floor = next(r["probe_acc"] for r in json.loads(args.floor.read_text())["rows"] if r["row"] == "supervised")
        probe.axhline(floor, color="grey", linestyle="--", label=f"random network ({floor:.1f})")
    probe.set(title="linear probe at 200 labelled images (LSP val)", xlabel="pretraining samples (thousands)",
              ylabel="probe accuracy % (joints + background)")  # fmt: skip
    probe.grid(alpha=0.3)
    probe.legend(fontsize="small")
    figure.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
