"""A real PACS for tests: Debian's Orthanc on loopback with its own configuration and storage.

Orthanc must be installed (``make test`` installs the ``orthanc`` package as root or
stops with the command); a missing binary fails the test loudly, never skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import free_port

ORTHANC_AE = "ORTHANC"
LOADER_AE = "LOADER"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@dataclass
class Orthanc:
    """A running Orthanc: its ports, folder and configuration; restartable on the same ports."""

    folder: Path
    http_port: int
    dicom_port: int
    modalities: dict[str, list[Any]]
    dicomweb: bool = False
    process: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        return {
            "Name": "test-pacs", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "Plugins": [],
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": ORTHANC_AE,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckModalityHost": True,
            "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
            "DicomModalities": {LOADER_AE.lower(): [LOADER_AE, "127.0.0.1", 104], **self.modalities},
            "WebDavEnabled": False, "SaveJobs": False, "TcpNoDelay": True, "StableAge": 1,
            **({"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
               if self.dicomweb else {}),
        }

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self) -> None:
        binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")
        assert binary, "Orthanc is not installed: apt-get install orthanc (make test installs it as root)"
        assert not self.dicomweb or Path(DICOMWEB_PLUGIN).exists(), (
            "Orthanc's DICOMweb plugin is not installed: apt-get install orthanc-dicomweb")
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(self.config()))
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen([binary, str(path)], cwd=self.folder, stdout=log,
                                        stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.folder / "orthanc.log").read_text()[-3000:]
            try:
                self.rest("/system")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise AssertionError("Orthanc did not answer within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def rest(self, path: str, data: bytes | None = None) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data,
                                         method="POST" if data is not None else "GET")
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310  (loopback)
            return json.loads(answer.read())

    def load(self, paths: list[Path]) -> None:
        """C-STORE ``paths`` into Orthanc with dcmtk's storescu, as a modality would."""
        storescu = shutil.which("storescu")
        assert storescu, "dcmtk is not installed: apt-get install dcmtk"
        result = subprocess.run(
            [storescu, "-aet", LOADER_AE, "-aec", ORTHANC_AE, "127.0.0.1", str(self.dicom_port),
             *map(str, paths)], capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "TCP_NODELAY": "1"})
        assert result.returncode == 0, result.stderr[-3000:]

    def instance_tags(self, sop_instance_uid: str) -> dict[str, Any]:
        found = [entry["ID"] for entry in self.rest("/tools/lookup", sop_instance_uid.encode())
                 if entry["Type"] == "Instance"]
        assert found, f"Orthanc does not hold {sop_instance_uid}"
        return self.rest(f"/instances/{found[0]}/simplified-tags")


def orthanc_start(folder: Path, *, modalities: dict[str, list[Any]], dicomweb: bool = False) -> Orthanc:
    folder.mkdir(parents=True, exist_ok=True)
    orthanc = Orthanc(folder, free_port(), free_port(), modalities, dicomweb)
    orthanc.start()
    return orthanc
