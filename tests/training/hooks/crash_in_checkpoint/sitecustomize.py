"""Loaded by the job's process in tests/training/test_resume.py (its PYTHONPATH starts with this directory).

It stands in for a machine that dies while a checkpoint is being written: when CRASH_IN_CHECKPOINT_EPOCH is set,
the job's write of that epoch's checkpoint stops half-way through and the process is killed with SIGKILL (no
handler runs, nothing is flushed or renamed), as when a spot instance is reclaimed or the power goes.
"""

from __future__ import annotations

import io
import os
import signal

_EPOCH = os.environ.get("CRASH_IN_CHECKPOINT_EPOCH")

if _EPOCH:
    import torch

    _save = torch.save
    _target = f".epoch-{int(_EPOCH):04d}.pt.partial"

    def _crashing_save(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        name = str(getattr(f, "name", f))
        if not name.endswith(_target):
            return _save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        _save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
        return None

    torch.save = _crashing_save
