"""A real PACS for `make demo` and the tests of launcher/pacs: Debian's Orthanc with its DICOMweb plugin.

`start_orthanc(folder)` writes a configuration into `folder` (storage and index there, HTTP and DICOM on free ports,
no remote access, no authentication, the DICOMweb plugin), starts `Orthanc CONFIG.json`, waits until its REST API
answers (bounded) and returns a handle whose `stop()` ends the process (and waits for it). Orthanc 1.10 has no bind
address: it listens on all interfaces, and `RemoteAccessAllowed: false` refuses HTTP from other hosts; the tests
connect to 127.0.0.1 only (FACTS.md). Its DICOM port checks the called AE title (its `DicomAet`, PACSTEST); a DIMSE
caller that retrieves (C-GET, C-MOVE) and a C-MOVE destination are registered at run time (`register_modality`).
Without Orthanc, `orthanc_missing()` says how to install it: the tests fail
with that message rather than skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
START_S = 30.0


def orthanc_missing() -> str | None:
    """Why no Orthanc can start here (with what to do), or None."""
    if shutil.which("Orthanc") is None or not PLUGIN.is_file():
        return ("Orthanc with its DICOMweb plugin is not installed: run `make setup` as root on Debian or Ubuntu "
                "(it installs the packages orthanc and orthanc-dicomweb with apt-get)")
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc: its REST root, its DICOMweb root and its process."""

    http_port: int
    dicom_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_orthanc(folder: Path) -> Orthanc:
    """Start an Orthanc whose files all lie in `folder`; raise RuntimeError (with its log's tail) if it won't answer."""
    missing = orthanc_missing()
    if missing:
        raise RuntimeError(missing)
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "pacs-test", "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "PACSTEST",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomAlwaysAllowFind": True, "DicomCheckCalledAet": True, "HttpTimeout": 30, "LimitFindResults": 0,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = folder / "orthanc.log"
    with open(log, "wb") as out:
        # TCP_NODELAY=1: DCMTK (Orthanc's DICOM layer) then switches Nagle's algorithm off, as PACS in production
        # usually do; with it on, every DIMSE exchange waited 40 ms for a delayed ACK (FACTS.md).
        process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=folder, env={**os.environ, "TCP_NODELAY": "1"})
    orthanc = Orthanc(http_port, dicom_port, process, log)
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{orthanc.url}/system", timeout=2) as answer:
                if answer.status == 200:
                    return orthanc
        except OSError:
            time.sleep(0.1)
    orthanc.stop()
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"Orthanc did not answer within {START_S:.0f} s (exit {process.poll()}); its log ends:\n{tail}")


def register_modality(orthanc: Orthanc, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
    """Tell Orthanc (REST PUT /modalities/NAME) of a DICOM peer: a caller it lets retrieve, a C-MOVE destination."""
    body = json.dumps({"AET": aet, "Host": host, "Port": port}).encode()
    request = urllib.request.Request(f"{orthanc.url}/modalities/{name}", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=10) as answer:
        if answer.status != 200:
            raise RuntimeError(f"Orthanc answered {answer.status} to registering modality {name}")
