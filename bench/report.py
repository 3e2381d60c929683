"""The targets of the performance issue, checked against a run's figures, and the markdown table the README quotes.

Serving (requests per second and latency of the served model) and the 3-D benchmark (volumes) are reported, not
judged: no target is set for them.
"""

from __future__ import annotations

import math
from typing import Any

from bench.scaling_report import scaling_lines

LOADER_SPEEDUP = 20.0  # (b) loader >= 20x (a)
TRAINING_SPEEDUP = 2.0  # (b) training >= 2x (a)
LOOP_SHARE = 0.92  # the job's own loop >= 92 % of the best ceiling variant (CPU; issue 23)
GPU_LOOP_SHARE = 0.80  # on a GPU, >= 80 %: a 108x96 step takes milliseconds there, and the per-step host work counts


def best_ceiling(ceiling: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest ceiling variant, each variant counted at the higher of its measurements before and after the loop
    (bench/__main__.py's ceiling entry: "before", "after"), with its spread from that measurement."""
    counted = counted_variants(ceiling)
    return max(counted, key=lambda v: v["images_per_second"]) if counted else None


def counted_variants(ceiling: dict[str, Any]) -> list[dict[str, Any]]:
    """Each variant at the higher of its two measurements ("when": 'before' or 'after' the loop)."""
    runs = [(when, ceiling[when]) for when in ("before", "after") if ceiling.get(when)]
    best: dict[tuple[str, bool], dict[str, Any]] = {}
    for when, run in runs:
        for v in run.get("variants", []):
            key = (v["precision"], bool(v["channels_last"]))
            if key not in best or v["images_per_second"] > best[key]["images_per_second"]:
                best[key] = {**v, "when": when}
    return list(best.values())


def loop_share(ceiling: dict[str, Any], *, target: float = LOOP_SHARE) -> dict[str, Any] | None:
    """The job's loop as a share of the best ceiling variant, and the verdicts: "met" (>= target) and "impossible"
    (above 1 + the ceiling's spread: the ceiling measures less than the loop does); None without both figures."""
    best, loop = best_ceiling(ceiling), ceiling.get("loop")
    if best is None or not loop:
        return None
    share = _ratio(loop["images_per_second"], best["images_per_second"])
    default = next((v for v in counted_variants(ceiling) if v.get("job_default")), None)
    return {
        "share": share,
        "spread": best["spread"],
        "variant": _variant_name(best),
        "job_default": _variant_name(default) if default else "?",
        "share_of_job_default": _ratio(loop["images_per_second"], default["images_per_second"]) if default else None,
        "target": target,
        "met": share >= target,
        "impossible": not share <= 1.0 + best["spread"],
    }


def targets(
    results: dict[str, Any], *, loop_target: float = LOOP_SHARE, basis: str = "wall"
) -> list[dict[str, Any]]:
    """Each target, per source size, with its measured value and whether it is met.

    Args:
        results: what bench/__main__.py (or bench/gpu.py) collected.
        loop_target: the job's loop as a share of the best ceiling variant.
        basis: 'wall' (images per second) or 'cpu' (images per CPU second: for runs on a shared machine, with
            --threads 1); the loop's share is judged on wall time either way (the job reports no CPU time).

    Returns:
        One {"target", "size", "value", "required", "met", "basis"} per check that the results hold figures for.
    """
    if basis not in ("wall", "cpu"):
        raise ValueError(f"basis must be 'wall' or 'cpu'; got {basis!r}")
    rate = "images_per_second" if basis == "wall" else "images_per_cpu_second"
    checks: list[dict[str, Any]] = []

    def add(name: str, size: str, value: float, required: float, *, at_most: bool = False) -> None:
        met = math.isfinite(value) and (value <= required if at_most else value >= required)
        checks.append({"target": name, "size": size, "value": round(value, 3), "required": required, "met": met,
                       "basis": basis, "at_most": at_most})

    for size, entry in results.get("sizes", {}).items():
        loader, training = entry.get("loader"), entry.get("training")
        if loader:
            a, b = loader["a"], loader["b"]
            add("loader (b)/(a) images/s", size, _ratio(b[rate], a[rate]), LOADER_SPEEDUP)
            add("loader peak RSS (b)/(a)", size, _ratio(b["peak_rss_mib"], a["peak_rss_mib"]), 1.0, at_most=True)
        if training:
            a, b = training["a"], training["b"]
            add("training (b)/(a) images/s", size, _ratio(b[rate], a[rate]), TRAINING_SPEEDUP)
            add("training peak RSS (b)/(a)", size, _ratio(b["peak_rss_mib"], a["peak_rss_mib"]), 1.0, at_most=True)
    ceiling = results.get("ceiling", {})
    share = loop_share(ceiling, target=loop_target)
    if share is not None:
        size = str(ceiling.get("source_size", "?"))
        add("loop / best ceiling", size, share["share"], loop_target)
        add(IMPOSSIBLE, size, share["share"], round(1.0 + share["spread"], 4), at_most=True)
        checks[-1]["basis"] = checks[-2]["basis"] = "wall"
    return checks


IMPOSSIBLE = "loop / best ceiling <= 1 + spread"


def impossible_message(results: dict[str, Any]) -> str | None:
    """The failure message when the loop beats its own ceiling by more than the ceiling's spread; None otherwise."""
    share = loop_share(results.get("ceiling", {}))
    if share is None or not share["impossible"]:
        return None
    return (
        f"the job's loop runs at {share['share']:.0%} of the best ceiling variant ({share['variant']}), above 100 % + "
        f"its spread ({share['spread']:.0%}): the ceiling is wrong; it must time at least the loop's work (network, "
        "batch, image size, optimizer and threads as the job has them): see bench/ceiling.py"
    )


def markdown(results: dict[str, Any]) -> str:
    """The short report: setting and load, then loader, training, ceiling, serving, 3-D, scaling and targets."""
    ceiling = results.get("ceiling", {})
    sizes = results.get("sizes", {})
    lines = _setting_lines(results, ceiling.get("before") or {})
    lines += _loader_lines(sizes)
    lines += _training_lines(sizes, ceiling)
    lines += ceiling_lines(ceiling)
    lines += serving_lines(results.get("serving"))
    if results.get("runtimes"):
        from bench.serving_runtimes import markdown as runtime_lines  # torch: imported at the end, when used

        lines += runtime_lines(results["runtimes"]).splitlines() + [""]
    lines += volume_lines(results.get("volumes"))
    lines += scaling_lines(results.get("scaling"))  # bench/scaling_report.py
    lines += _target_lines(results.get("targets", []))
    return "\n".join(lines)


def _setting_lines(results: dict[str, Any], limit: dict[str, Any]) -> list[str]:
    """What was measured where, the machine's load, and the data."""
    settings, machine = results["settings"], results["machine"]
    lines = [
        f"Measured {results['created']} on {machine['cpu']}, {machine['logical_cores']} cores, "
        f"{machine['memory_gib']} GiB ({results['device']}); torch {results['versions'].get('torch')}, "
        f"MONAI {results['versions'].get('monai')}, ITK {results['versions'].get('itk')}; "
        f"{limit.get('threads', settings.get('threads') or 'default')} torch threads. "
        "Machine load (1-min load average): "
        f"{results['load']['start']} at the start, {results['load']['end']} at the end; each row's "
        "'other load' is the CPU the rest of the machine used during that measurement, in cores. 'Per CPU-s' "
        "ratios divide by the CPU time each side used instead of wall time: robust to other jobs' time slices "
        "(exact with 1 thread per process; with more, OpenMP's spin-waiting is counted too).",
    ]
    if not results.get("sizes"):  # --only ceiling, serving, volumes or scaling: no per-size 2-D set was made
        return [*lines, f"Whole run: {results.get('seconds', 0) / 60:.1f} min.", ""]
    lines += [
        f"Data: synthetic 16-bit DICOM generated at bench time (training/synthetic.py), {settings['train_count']} "
        f"training + {settings['validation_count']} validation images per source size. Throughput: median of "
        f"the epochs after the first; loader {settings['loader_epochs']} epochs for (a), "
        f"{settings['loader_epochs_ours']} for (b); training {settings['train_epochs']} epochs each (also the cap "
        f"for time-to-accuracy). Whole run: {results.get('seconds', 0) / 60:.1f} min.",
        "",
    ]
    return lines


def _loader_lines(sizes: dict[str, Any]) -> list[str]:
    """The Loader table; [] without loader figures."""
    if not any("loader" in e for e in sizes.values()):
        return []
    lines: list[str] = []
    lines += [
        "Loader: images/s delivered to the training step, no model (108x96, batch 100, augmentation on).",
        "",
        "| source | (a) public sample | (b) ours | (b)/(a) | (b)/(a) per CPU-s | (b) one-time prepare "
        "| peak RSS (a) / (b) | other load (a) / (b) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, entry in sizes.items():
        if "loader" not in entry:
            continue
        a, b = entry["loader"]["a"], entry["loader"]["b"]
        decode = b.get("decode", {})
        lines.append(
            f"| {size}x{size} | {a['images_per_second']:,.0f} | {b['images_per_second']:,.0f} "
            f"| {_ratio(b['images_per_second'], a['images_per_second']):.0f}x "
            f"| {_ratio(b['images_per_cpu_second'], a['images_per_cpu_second']):.0f}x "
            f"| {b['prepare_seconds']:.1f} s ({decode.get('files', '?')} files, "
            f"{decode.get('files_per_second', 0):,.0f} files/s decoded) "
            f"| {a['peak_rss_mib']:,.0f} / {b['peak_rss_mib']:,.0f} MiB | {_load(a)} / {_load(b)} |"
        )
    lines.append("")
    return lines


def _training_lines(sizes: dict[str, Any], ceiling: dict[str, Any]) -> list[str]:
    """The Training table, each row against the best ceiling variant; [] without training figures."""
    if not any("training" in e for e in sizes.values()):
        return []
    best = best_ceiling(ceiling)
    lines: list[str] = []
    lines += [
        "Training: DenseNet121 at 108x96, batch 100, images/s of whole epochs (data, step, optimizer); "
        "time to 0.95 validation accuracy counts training epochs (and (b)'s prepare), not validation.",
        "",
        "| source | (a) public sample | (b) ours | (b)/(a) | (b)/best ceiling | (b)/(a) per CPU-s "
        "| time to 0.95 (a) | (b) | peak RSS (a) / (b) | other load (a) / (b) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, entry in sizes.items():
        if "training" not in entry:
            continue
        a, b = entry["training"]["a"], entry["training"]["b"]
        share = _ratio(b["images_per_second"], best["images_per_second"]) if best else float("nan")
        lines.append(
            f"| {size}x{size} | {a['images_per_second']:.1f} | {b['images_per_second']:.1f} "
            f"| {_ratio(b['images_per_second'], a['images_per_second']):.1f}x | {share:.0%} "
            f"| {_ratio(b['images_per_cpu_second'], a['images_per_cpu_second']):.1f}x "
            f"| {_to_target(a)} | {_to_target(b)} "
            f"| {a['peak_rss_mib']:,.0f} / {b['peak_rss_mib']:,.0f} MiB | {_load(a)} / {_load(b)} |"
        )
    lines.append("")
    return lines


def ceiling_lines(ceiling: dict[str, Any]) -> list[str]:
    """The Ceiling table (each variant before and after the loop), the loop's share and, when measured, its phases;
    [] without ceiling figures."""
    if not ceiling.get("before") and not ceiling.get("after"):
        return []
    run = ceiling.get("before") or ceiling["after"]
    best = best_ceiling(ceiling)
    lines = [
        f"Ceiling: DenseNet121's training step alone (forward, loss, backward, the job's fused AdamW) on an in-memory "
        f"batch of {run['batch_size']} at {'x'.join(str(v) for v in run['image_size'])}, {run['threads']} torch "
        f"thread(s); {run['warmup']} warm-up steps, then the median of {len(run['variants'][0]['steps'])} timed "
        "steps; spread = (max - min) / median of those steps; measured before and after the loop, the higher counts.",
        "",
        "| precision | memory format | before | after | counted | spread | job default |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in counted_variants(ceiling):
        rates = [_rate_of(ceiling.get(when), v) for when in ("before", "after")]
        mark = " (best)" if best is not None and _variant_name(v) == _variant_name(best) else ""
        lines.append(
            f"| {_variant_name(v).replace(' ', ' | ')} | {rates[0]} | {rates[1]} "
            f"| {v['images_per_second']:.1f}{mark} | {v['spread']:.1%} | {'yes' if v.get('job_default') else ''} |"
        )
    return lines + [""] + _share_lines(ceiling) + phase_lines(ceiling.get("phases"))


def _share_lines(ceiling: dict[str, Any]) -> list[str]:
    """The loop's figure and its share of the ceiling, with the verdicts."""
    share, loop = loop_share(ceiling), ceiling.get("loop")
    if share is None or not loop:
        return []
    epochs = ", ".join(f"{r:.1f}" for r in loop["epochs"])
    verdict = "met" if share["met"] else "**not met**"
    if share["impossible"]:
        verdict = "**FAILED: above 100 % + the spread, the ceiling is wrong**"
    of_default = share["share_of_job_default"]
    default = f"; of the job's default variant ({share['job_default']}): {of_default:.0%}" if of_default else ""
    return [
        f"Loop: the job's own `images_per_second` (python -m training at 108x96, batch 100, the job's other defaults; "
        f"epochs: {epochs}; the median after the first) {loop['images_per_second']:.1f} images/s = "
        f"**{share['share']:.0%}** of the best ceiling variant ({share['variant']}, spread {share['spread']:.1%})"
        f"{default}. Target >= {share['target']:.0%}: {verdict}.",
        "",
    ]


def phase_lines(phases: dict[str, Any] | None) -> list[str]:
    """Where the loop's step spends its time (bench/ceiling.py loop_phases); [] without it."""
    if not phases:
        return []
    names = list(phases["phases"])
    return [
        f"The loop's step by phase (a bench-only copy of it, bench/ceiling.py; {phases['images_per_second']:.1f} "
        f"images/s, cache in {phases['cache']}), ms a step and share:",
        "",
        "| " + " | ".join(names) + " |",
        "|" + "---|" * len(names),
        "| " + " | ".join(f"{phases['phases'][n]:.1f} ({phases['shares'][n]:.0%})" for n in names) + " |",
        "",
    ]


def _variant_name(v: dict[str, Any]) -> str:
    return f"{v['precision']} {'channels_last' if v['channels_last'] else 'contiguous'}"


def _rate_of(run: dict[str, Any] | None, variant: dict[str, Any]) -> str:
    for v in (run or {}).get("variants", []):
        if _variant_name(v) == _variant_name(variant):
            return f"{v['images_per_second']:.1f}"
    return "-"


def _target_lines(checks: list[dict[str, Any]]) -> list[str]:
    """The Targets table; [] without targets."""
    if not checks:
        return []
    lines: list[str] = []
    basis = "per CPU second" if checks[0].get("basis") == "cpu" else "per wall-clock second"
    lines += [f"Targets, judged on images {basis}:", ""]
    lines += ["| target | source | measured | required | met |", "|---|---|---|---|---|"]
    for c in checks:
        sign = "<=" if c.get("at_most", "RSS" in c["target"]) else ">="
        lines.append(
            f"| {c['target']} | {c['size']}x{c['size']} | {c['value']:.2f} | {sign} {c['required']} "
            f"| {'yes' if c['met'] else '**no**'} |"
        )
    lines.append("")
    return lines


def serving_lines(serving: dict[str, Any] | None) -> list[str]:
    """The Serving table (and what it measured) for bench/cases.py's `serving` figures; [] without them."""
    if not serving:
        return []
    model, file = serving.get("model", {}), serving.get("file", {})
    height, width = model.get("image_size", ["?", "?"])
    source = f"{file.get('rows', '?')}x{file.get('columns', '?')}"
    kib = file.get("bytes", 0) / 1024
    epochs = model.get("epochs", "?")
    lines = [
        f"Serving: POST /invocations (application/dicom in, JSON out) of one {source} 16-bit DICOM file "
        f"({kib:,.0f} KiB), {serving['requests']} timed requests from {serving['concurrency']} concurrent clients "
        f"after 2 per worker of warm-up, against `python -m training.serve` (gunicorn, {serving['workers']} "
        f"worker(s) on {serving['cores']} core(s)) on localhost, the clients on the same machine. The bundle is the "
        f"job's own (training.job.train) after {epochs} epoch(s) on {serving.get('train_images', '?')} training images "
        f"({model.get('train_seconds', 0):.0f} s). Latency is per request, as the client sees it. No target is set.",
    ]
    if serving.get("note"):
        lines[0] += f" Note: {serving['note']}."
    lines += [
        "",
        "| file | model input | requests/s | p50 | p99 | max | errors | requests x clients | workers / cores "
        "| other load |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {source}, {kib:,.0f} KiB | {height}x{width} {model.get('network', '?')} "
        f"| {serving['requests_per_second']:,.1f} | {serving['p50_ms']:,.0f} ms | {serving['p99_ms']:,.0f} ms "
        f"| {serving['max_ms']:,.0f} ms | {serving['errors']} | {serving['requests']} x {serving['concurrency']} "
        f"| {serving['workers']} / {serving['cores']} | {_load(serving)} |",
        "",
    ]
    return lines


def volume_lines(volumes: dict[str, Any] | None) -> list[str]:
    """The 3-D tables (bench/volumes.py's figures, bench/__main__.py's volume_benchmark): loader and training, (a)
    and (b) side by side, each with its peak memory and the 1-minute load average before it; [] without them."""
    if not volumes:
        return []
    grid = "x".join(str(v) for v in volumes["grid"])
    a, b = volumes["loader"]["a"], volumes["loader"]["b"]
    decode = b.get("decode", {})
    lines = [
        f"Volumes (3-D): {volumes['count']} synthetic CT series of {volumes['slices']} slices of "
        f"{volumes['size']}x{volumes['size']} (random file names, slices in random order), resampled to {grid} "
        f"(D x H x W), batch {volumes['batch_size']}; rates in volumes/s, median of the epochs after the first. "
        "(a) monai.data.Dataset + LoadImaged(ITKReader) of each series folder, ScaleIntensity, Resize, RandRotate90 "
        "every epoch, torch DataLoader, Adam fp32; (b) prepare_volumes once (its decode apart) + BatchLoader "
        "(augment_volumes) + the job's train_one_epoch. Peak RSS: the case's process. No target is set.",
        "",
        "| loader | (a) MONAI | (b) ours | (b)/(a) | (b) one-time prepare" + _VOLUME_COLUMNS,
        "|---|---|---|---|---|---|---|---|",
        f"| {grid} | {a['images_per_second']:,.1f} | {b['images_per_second']:,.1f} "
        f"| {_ratio(b['images_per_second'], a['images_per_second']):.1f}x "
        f"| {b['prepare_seconds']:.1f} s ({decode.get('series', '?')} series, {decode.get('processes', '?')} "
        f"process(es)) | {_side_by_side(a, b)}",
        "",
    ]
    if volumes.get("training"):
        lines += [
            "| training | (a) MONAI | (b) ours | (b)/(a) | (b) autocast" + _VOLUME_COLUMNS,
            "|---|---|---|---|---|---|---|---|",
        ]
        for network, pair in volumes["training"].items():
            a, b = pair["a"], pair["b"]
            lines.append(
                f"| {network} {grid} | {a['images_per_second']:.2f} | {b['images_per_second']:.2f} "
                f"| {_ratio(b['images_per_second'], a['images_per_second']):.1f}x | {b.get('autocast', '?')}"
                f"{'' if b.get('losses_finite', True) else ' (loss not finite: diverged)'} "
                f"| {_side_by_side(a, b)}"
            )
        lines.append("")
    accuracy = volumes.get("accuracy")
    if accuracy:
        reached = (f"{accuracy['seconds_to_target']} s (epoch {accuracy['epochs_to_target']}, the decode's "
                   f"{accuracy['prepare_seconds']:.1f} s included)" if accuracy["seconds_to_target"] is not None
                   else f"not within {len(accuracy['epochs'])} epochs (best {accuracy['best_val_accuracy']})")
        lines += [f"Time to {accuracy['target_accuracy']} validation accuracy, the job's fit on the order-only set "
                  f"({accuracy['series']} series, {accuracy['validation_series']} for validation, resnet18 at "
                  f"{'x'.join(str(v) for v in accuracy['grid'])}, {accuracy['autocast']}, "
                  f"{accuracy['memory_format']}): {reached}; {accuracy['images_per_second']:.1f} volumes/s.", ""]
    lines += [f"Left out: {network}: {why}." for network, why in volumes.get("left_out", {}).items()]
    return lines + ([""] if volumes.get("left_out") else [])


_VOLUME_COLUMNS = " | peak RSS (a) / (b) | load avg before (a) / (b) | other load (a) / (b) |"


def _side_by_side(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The last three columns of a 3-D row: peak memory, load average before, other load."""
    rss = f"{a['peak_rss_mib']:,.0f} / {b['peak_rss_mib']:,.0f} MiB"
    return f"{rss} | {_load_average(a)} / {_load_average(b)} | {_load(a)} / {_load(b)} |"


def _load_average(entry: dict[str, Any]) -> str:
    process = entry.get("process")
    return f"{process['load_average_before']:.1f}" if process else "-"


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def _load(entry: dict[str, Any]) -> str:
    process = entry.get("process")
    return f"{process['other_load_cores']:.1f}" if process else "-"


def _to_target(entry: dict[str, Any]) -> str:
    if entry.get("seconds_to_target") is None:
        return f"not reached in {len(entry['epochs'])} epochs (best {entry['best_val_accuracy']:.2f})"
    return f"{entry['seconds_to_target']:.0f} s (epoch {entry['epochs_to_target']})"
