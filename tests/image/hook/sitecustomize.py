"""Loaded by every Python process of the image's contract tests (their PYTHONPATH starts with this directory).

It stands in for SageMaker's network isolation and reports what the process loaded:
- connections to internet addresses and name look-ups fail with OSError, and are recorded;
- at exit, the process writes its modules (name to file) and its refused attempts to IMAGE_TEST_RECORD_DIR/<pid>.json.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import sys
from typing import Any

_RECORD_DIR = os.environ.get("IMAGE_TEST_RECORD_DIR")
_LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1"}
_refused: list[str] = []


def _refuse(what: str) -> None:
    _refused.append(what)
    raise OSError(errno.ENETUNREACH, f"no network in the training image's contract test: {what}")


_connect, _connect_ex, _getaddrinfo, _gethostbyname = (
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo, socket.gethostbyname)


def _checked_connect(self: socket.socket, address: Any) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse(f"connect {address!r}")
    return _connect(self, address)


def _checked_connect_ex(self: socket.socket, address: Any) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _refuse(f"connect {address!r}")
    return _connect_ex(self, address)


def _checked_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host not in _LOCAL_HOSTS:
        _refuse(f"getaddrinfo {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


def _checked_gethostbyname(host: str) -> str:
    if host not in _LOCAL_HOSTS:
        _refuse(f"gethostbyname {host!r}")
    return _gethostbyname(host)


socket.socket.connect = _checked_connect  # type: ignore[method-assign,assignment]
socket.socket.connect_ex = _checked_connect_ex  # type: ignore[method-assign,assignment]
socket.getaddrinfo = _checked_getaddrinfo
socket.gethostbyname = _checked_gethostbyname


def _record() -> None:
    modules = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
    record = {"pid": os.getpid(), "argv": sys.argv, "modules": modules, "refused": _refused}
    with open(os.path.join(_RECORD_DIR or ".", f"{os.getpid()}.json"), "w", encoding="utf-8") as f:
        json.dump(record, f)


if _RECORD_DIR:
    atexit.register(_record)
