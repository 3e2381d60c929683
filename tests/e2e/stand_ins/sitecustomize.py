"""Loaded by the notebook's kernel in tests/e2e/test_notebook.py (this folder on its PYTHONPATH): every AWS request of
a boto3 client that the local stand-ins of the SageMaker service create carries the header X-Stand-In-For, naming
the role SageMaker would make that request as, so that the emulator's recording tells them from the notebook's own.

The stand-ins are launcher/local/runner.py (a training job: channels, logs, outputs: the training role) and
launcher/local/inference.py (batch transforms and endpoints: the model role). A client belongs to the innermost
launcher module on the stack when it is created: S3 transfers send from worker threads, so the request's own stack
cannot tell. Nothing else changes; botocore is patched only once it is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

LAUNCHER = Path(__file__).resolve().parents[3] / "launcher"
STAND_INS = {"local/runner.py": "TrainingRole", "local/inference.py": "ModelRole"}  # under launcher/
HEADER = "X-Stand-In-For"


def _stand_in() -> str | None:
    frame = sys._getframe(2)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(LAUNCHER):
            return STAND_INS.get(path.relative_to(LAUNCHER).as_posix())
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _patch(module: ModuleType) -> None:
    original = module.BaseClient.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        role = _stand_in()
        if role is not None:
            def tag(request: Any, **_: Any) -> None:
                request.headers[HEADER] = role
            self.meta.events.register_last("before-send", tag)

    module.BaseClient.__init__ = __init__


class _AfterBotocoreClient(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "botocore.client":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.loader is not None
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _AfterBotocoreClient())
