"""The scaling table (issue 23 item 3): bench/scaling.py's figures as bench/results/bench.md prints them. No torch:
bench/report.py imports it in the parent process."""

from __future__ import annotations

from typing import Any

SCALES = (1, 4, 16)  # the data sizes, times the bench's --train-count (bench/__main__.py scaling_benchmark)


def scaling_lines(scaling: dict[str, Any] | None) -> list[str]:
    """The Scaling tables (bench/scaling.py's figures): cost per unit as work grows; [] without them."""
    if not scaling:
        return []
    lines = [
        f"Scaling: cost per unit as work grows (1x = {scaling['base_images']} images of {scaling['source_size']}x"
        f"{scaling['source_size']}; DenseNet121 108x96, batch 100). The disk rows force the decode cache to disk "
        "(cache_memory_mb 0), as a set beyond the job's cache_memory_mb is.",
        "",
        "| data | images | cache | prepare ms/image | loader ms/image | training step ms/image | its data wait "
        "ms/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in scaling.get("data", []):
        lines.append(
            f"| {row['scale']}x | {row['images']} | {row['cache']} | {row['prepare_ms_per_image']:.3f} "
            f"| {row['loader_ms_per_image']:.3f} | {row['step_ms_per_image']:.2f} "
            f"| {row['data_wait_ms_per_image']:.3f} |"
        )
    decode = scaling.get("decode")
    if decode:
        lines += ["", f"| decode (one process, {decode['count']} uncompressed 16-bit files) | ms/file | ns/pixel |",
                  "|---|---|---|"]
        lines += [f"| {r['size']}x{r['size']} | {r['ms_per_file']:.2f} | {r['ns_per_pixel']:.2f} |"
                  for r in decode["sizes"]]
    serving = scaling.get("serving")
    lines += ["", "| serving clients | requests/s | p50 | p99 |", "|---|---|---|---|"]
    if isinstance(serving, list):
        lines += [f"| {r['clients']} | {r['requests_per_second']:.1f} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms |"
                  for r in serving]
    else:
        lines.append("| 1, 8, 32 | not measured in this run (python -m bench --only scaling serves on the CPU) | | |")
    return lines + ["", f"Scaling run: {scaling.get('seconds', 0) / 60:.1f} min.", ""]
