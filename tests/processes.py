"""Whether processes a test saw start have ended (the local runner and the local inference leave none behind)."""

from __future__ import annotations

from pathlib import Path


def still_running(pids: list[int]) -> list[int]:
    """The processes among `pids` that still run (a zombie has ended: it waits only for its parent to reap it)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone
        if state != "Z":
            alive.append(pid)
    return alive
