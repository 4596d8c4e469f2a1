"""One decrypted copy of each volume per host: render workers map it read-only from shared memory.

Every render worker used to decrypt and hold its own copy of each volume it
rendered (two workers, two copies of a 100 MB CT). The first worker to load a
volume now writes it once to a file on a tmpfs (``/dev/shm`` by default:
memory, never a disk) and every worker of the host, in any server process,
maps that file read-only: the pages exist once, whoever touches them.

* A file is named by the source's version key of the volume (for the clinical
  store: the encrypted object's inode, size and mtime), so a rebuilt volume is
  a new file and a stale one is never served.
* Files are written to a temporary name and renamed: a reader sees a whole
  volume or none. The directory is 0700 and the files 0600.
* ``budget_bytes`` bounds the directory (``GATEWAY_RENDER_SHARED_MB``): the
  least recently used files are unlinked first. A file still mapped by a
  worker stays valid until that worker lets go of it.
* Anything that goes wrong here (no tmpfs, full, unreadable) only costs the
  sharing: the caller keeps its private copy and rendering goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import struct
from pathlib import Path

import numpy as np

from gateway.config import private_directory_make
from rendering.volume import Volume, presentation_from_dict

log = logging.getLogger(__name__)

MAGIC = b"FGVOL001"
ALIGN = 64
SUFFIX = ".vol"


class HostVolumes:
    """The host's shared volume files under ``directory``, within ``budget_bytes``."""

    def __init__(self, directory: str | os.PathLike[str], budget_bytes: int) -> None:
        self.directory = Path(directory)
        self.budget_bytes = budget_bytes

    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + SUFFIX)

    def get(self, key: str, series_id: str) -> Volume | None:
        """The shared volume stored under ``key``, mapped read-only, or None."""
        path = self._path(key)
        try:
            private_directory_make(self.directory)
            volume = _mapped(path, series_id)
            os.utime(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            log.warning("shared volume %s unreadable (%s); loading a private copy", path.name, error)
            return None
        return volume

    def put(self, key: str, volume: Volume) -> Volume:
        """Share ``volume`` under ``key``; returns the mapped copy (or ``volume`` if sharing failed)."""
        if volume.nbytes > self.budget_bytes:
            return volume
        path = self._path(key)
        try:
            private_directory_make(self.directory)
            self._evict(room_for=volume.nbytes)
            _write(path, volume)
            return _mapped(path, volume.series_id)
        except OSError as error:
            log.warning("could not share volume %s (%s); keeping a private copy", volume.series_id, error)
            return volume

    def used_bytes(self) -> int:
        return sum(size for _, size, _ in self._files())

    def _files(self) -> list[tuple[float, int, Path]]:
        files = []
        for entry in self.directory.glob("*" + SUFFIX):
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            files.append((stat.st_mtime, stat.st_size, entry))
        return sorted(files)

    def _evict(self, *, room_for: int) -> None:
        files = self._files()
        used = sum(size for _, size, _ in files)
        for _, size, entry in files:
            if used + room_for <= self.budget_bytes:
                return
            entry.unlink(missing_ok=True)
            used -= size


def _header(volume: Volume) -> bytes:
    meta = {
        "dtype": volume.voxels.dtype.str, "shape": list(volume.voxels.shape), "spacing": list(volume.spacing),
        "origin": list(volume.origin), "direction": np.asarray(volume.direction).tolist(),
        "modality": volume.modality, "frame_of_reference_uid": volume.frame_of_reference_uid,
        "suv_factor": volume.suv_factor, "presentation": volume.presentation.as_dict(),
        "display": volume.display,
    }
    body = json.dumps(meta).encode()
    start = len(MAGIC) + 4 + len(body)
    return MAGIC + struct.pack(">I", len(body)) + body + b"\0" * (-start % ALIGN)


def _write(path: Path, volume: Volume) -> None:
    temporary = path.with_name(f".{path.stem}-{secrets.token_hex(4)}.part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(_header(volume))
            out.write(np.ascontiguousarray(volume.voxels).data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _mapped(path: Path, series_id: str) -> Volume:
    with path.open("rb") as stored:
        if stored.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a shared volume file")
        (length,) = struct.unpack(">I", stored.read(4))
        meta = json.loads(stored.read(length))
    offset = len(MAGIC) + 4 + length
    offset += -offset % ALIGN
    voxels = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r", offset=offset,
                       shape=tuple(meta["shape"]))
    return Volume(voxels=voxels, spacing=tuple(meta["spacing"]), origin=tuple(meta["origin"]),
                  direction=np.array(meta["direction"]), modality=meta["modality"], series_id=series_id,
                  frame_of_reference_uid=meta["frame_of_reference_uid"], suv_factor=meta["suv_factor"],
                  presentation=presentation_from_dict(meta.get("presentation") or {}),
                  display=meta.get("display") or {})
