"""The result of ``sslbench bench`` as a table, and a warning when the machine was busy."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from sslbench.experiment.bench.plan import JIGSAW_PRETEXT, LOADER_TARGET_RATIO

# ---------------------------------------------------------------------------- output


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def _giga(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e9:,.2f} GFLOP"


def result_table(result: dict[str, Any]) -> Table:
    """The figures of :func:`run_bench` as one rich table."""
    cfg, train, flops, data, memory = (
        result["config"],
        result["train"],
        result["flops"],
        result["data"],
        result["memory"],
    )
    machine = result["machine"]
    title = (f"sslbench bench: {cfg['backbone']} at {cfg['input_size']} px, profile {cfg['profile']}, "
             f"{machine['device']} ({machine['cpu']}, {machine['threads']} threads)")  # fmt: skip
    table = Table(title=title, title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("detail")
    for v in train["variants"]:
        if v["error"]:
            status = "skipped" if v["error"].startswith("skipped") else "failed"
            table.add_row(f"train step: {v['name']}", status, v["error"])
            continue
        layout = "channels_last" if v["channels_last"] else "NCHW"
        extra = f", compile {v['warmup_s']:.0f} s" if v["compile"] else ""
        table.add_row(
            f"train step: {v['name']}", _fmt(v["images_per_s"], " img/s"),
            f"{v['precision']}, {layout}, batch {v['batch_size']}, {v['threads']} threads"
            f"{'' if v['mkldnn'] else ', mkldnn off'}{extra}; MFU {_fmt(v['mfu_percent'], '%')}",
        )  # fmt: skip
    if train["speedup_vs_baseline"] is not None:
        table.add_row(
            "speed-up vs baseline", _fmt(train["speedup_vs_baseline"], "x", 2), "profile / baseline, same run"
        )
    for row in train.get("pretexts", []):
        if row["pretext"] != "pose":
            table.add_row(f"train step: pretext {row['pretext']}", _fmt(row["images_per_s"], " img/s"),
                          f"{row['cost_vs_pose']:.2f}x the time per image of the pose step timed beside it "
                          f"({_fmt(train['pretexts'][0]['images_per_s'], ' img/s')}), {row['flops_vs_pose']:.2f}x "
                          f"its FLOPs ({_giga(row['train_flops_per_image'])}); batch {row['batch_size']}")  # fmt: skip
    inference = result["inference"]
    table.add_row("inference latency", _fmt(inference["latency_ms"], " ms/img"), "batch 1: forward + decoding")
    table.add_row("eval throughput", _fmt(inference["eval_images_per_s"], " img/s"), f"batch {cfg['batch_size']}")
    table.add_row("jigsaw samples", _fmt(data["jigsaw_samples_per_s"], "/s"),
                  f"{JIGSAW_PRETEXT} make_sample, {data['jigsaw_image_side']} px images, one process")  # fmt: skip
    table.add_row("pose samples", _fmt(data["pose_samples_per_s"], "/s"), "crop, augmentation, heatmaps; one process")
    for name, loader in (("pose", data["loader"]["pose"]), ("jigsaw", data["loader"]["jigsaw"])):
        ratio = loader["ratio_to_training"]
        mark = "" if ratio is None else (" (ok)" if ratio >= LOADER_TARGET_RATIO else " [red](below 3x)[/]")
        table.add_row(f"loader {name}", _fmt(loader["samples_per_s"], "/s"),
                      f"1 worker, incl. image load; {_fmt(ratio, 'x', 1)} the training step{mark}; "
                      f"first batch {loader['first_batch_s']:.2f} s")  # fmt: skip
    table.add_row("FLOPs per training image", _giga(flops["train_per_image"]),
                  f"forward + backward; forward alone {_giga(flops['forward_per_image'])}")  # fmt: skip
    table.add_row("achieved", _fmt((flops["achieved"] or 0) / 1e9, " GFLOP/s"), "profile variant")
    table.add_row("peak (measured)", _fmt(flops["peak"] / 1e9, " GFLOP/s"),
                  f"{flops['peak_precision']}: matmul {flops['peak_matmul'] / 1e9:,.1f}, "
                  f"conv {flops['peak_conv'] / 1e9:,.1f} GFLOP/s")  # fmt: skip
    table.add_row("model FLOP utilisation", _fmt(flops["mfu_percent"], " %"), "achieved / measured peak")
    if "fit" in memory:
        fit_rss = memory["fit"]
        series = ", ".join(f"{x:.0f}" for x in fit_rss["after_epoch_mb"])
        table.add_row("RSS growth over epochs", _fmt(fit_rss["growth_mb"], " MiB"),
                      f"RSS after each of {fit_rss['epochs']} short fit epochs: {series} MiB")  # fmt: skip
    table.add_row("peak RSS", _fmt(memory["peak_rss_mb"], " MiB"),
                  f"this process ({memory['start_rss_mb']:.0f} MiB after imports); "
                  f"largest loader worker {memory['peak_rss_children_mb']:.0f} MiB")  # fmt: skip
    load = machine.get("load_before")
    table.caption = (
        f"commit {machine['commit']}, torch {machine['torch']}; load average before "
        f"{load[0] if load else '?'} on {machine['logical_cpus']} CPUs; {result['seconds']:.0f} s"
    )
    return table


def busy_warning(result: dict[str, Any]) -> str | None:
    """A warning when the machine was busy before the benchmark started (figures are then lower bounds)."""
    load = result["machine"].get("load_before")
    cpus = result["machine"].get("logical_cpus") or 1
    if load and load[0] > 0.25 * cpus:
        return (f"the machine was busy (load average {load[0]} on {cpus} CPUs) before the benchmark: "
                "figures are lower bounds; ratios measured side by side are more reliable")  # fmt: skip
    return None
