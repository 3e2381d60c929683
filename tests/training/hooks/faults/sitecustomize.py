"""Loaded by the job's process in tests/training/test_resume.py (its PYTHONPATH starts with this directory).

Faults at a chosen moment, so that the tests are exact rather than races against the clock:
- SIGTERM_AFTER_CHECKPOINT_EPOCH=N: once the checkpoint of epoch N has its final name, the process sends itself
  SIGTERM, as SageMaker does when it interrupts a spot job; the job's own handler takes it from there.
- SIGTERM_AFTER_METRICS_EPOCH=N: as soon as epoch N's metrics line is written to stdout (the epoch has finished,
  its checkpoint is not yet written), the process sends itself SIGTERM.
- CRASH_IN_CHECKPOINT_EPOCH=N: the write of epoch N's checkpoint stops half-way through and the process is killed
  with SIGKILL (no handler runs, nothing is flushed or renamed), as when the machine dies or the power goes.
"""

from __future__ import annotations

import io
import os
import signal

_TERM = os.environ.get("SIGTERM_AFTER_CHECKPOINT_EPOCH")
_CRASH = os.environ.get("CRASH_IN_CHECKPOINT_EPOCH")
_METRICS = os.environ.get("SIGTERM_AFTER_METRICS_EPOCH")

if _METRICS:
    import sys

    _line = f"epoch={int(_METRICS)} "

    class _TerminatingStdout:
        """stdout, sending SIGTERM right after the metrics line of the chosen epoch."""

        def __init__(self, stream):  # type: ignore[no-untyped-def]
            self._stream = stream

        def write(self, text):  # type: ignore[no-untyped-def]
            written = self._stream.write(text)
            if text.startswith(_line):
                self._stream.flush()
                os.kill(os.getpid(), signal.SIGTERM)
            return written

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self._stream, name)

    sys.stdout = _TerminatingStdout(sys.stdout)

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
