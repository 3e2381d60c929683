"""pydicom's value validation off while launcher/pacs handles a dataset, safely across threads.

pydicom's warnings about an invalid value quote the value (a name, an ID), so de-identification, DIMSE identifiers,
received datasets and SRs are handled with validation off. pydicom's own `config.disable_value_validation()` saves
and restores one process-wide setting: entered by two threads at once (a pull's workers), the last to leave restores
what the first had set, and validation stayed off for the rest of the process (a later test caught it: pydicom no
longer warned at all). `no_value_validation()` counts who is inside and restores the setting when the last one leaves.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom import config

__all__ = ["no_value_validation"]

_lock = threading.Lock()
_inside = 0
_saved: tuple[int, int] | None = None


@contextmanager
def no_value_validation() -> Iterator[None]:
    """Value validation off (reading and writing) until the last thread inside leaves; then as it was."""
    global _inside, _saved
    with _lock:
        if _inside == 0:
            _saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
            config.settings.reading_validation_mode = config.IGNORE
            config.settings.writing_validation_mode = config.IGNORE
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0 and _saved is not None:
                config.settings.reading_validation_mode, config.settings.writing_validation_mode = _saved
