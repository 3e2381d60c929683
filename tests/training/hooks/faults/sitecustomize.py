"""Loaded by the job's process in tests/training/test_resume.py (its PYTHONPATH starts with this directory).

Faults at a chosen moment, so that the tests are exact rather than races against the clock:
- SIGTERM_AFTER_CHECKPOINT_EPOCH=N: once the checkpoint of epoch N has its final name, the process sends itself
  SIGTERM, as SageMaker does when it interrupts a spot job; the job's own handler takes it from there.
- CRASH_IN_CHECKPOINT_EPOCH=N: the write of epoch N's checkpoint stops half-way through and the process is killed
  with SIGKILL (no handler runs, nothing is flushed or renamed), as when the machine dies or the power goes.
"""

from __future__ import annotations

import io
import os
import signal

_TERM = os.environ.get("SIGTERM_AFTER_CHECKPOINT_EPOCH")
_CRASH = os.environ.get("CRASH_IN_CHECKPOINT_EPOCH")

if _TERM:
    _replace = os.replace
    _done = f"epoch-{int(_TERM):04d}.pt"

    def _replace_then_terminate(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        _replace(src, dst, *args, **kwargs)
        if str(dst).endswith(os.sep + _done):
            os.kill(os.getpid(), signal.SIGTERM)

    os.replace = _replace_then_terminate

if _CRASH:
    import torch

    _save = torch.save
    _partial = f".epoch-{int(_CRASH):04d}.pt.partial"

    def _crashing_save(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not str(getattr(f, "name", f)).endswith(_partial):
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
