"""Shared volume files: exact voxels and geometry back, mapped read-only, within the budget."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rendering.hostvolumes import HostVolumes
from rendering.volume import Volume


def _volume(series_id: str, shape=(4, 6, 8), dtype=np.int16, seed: int = 0) -> Volume:
    voxels = np.random.default_rng(seed).integers(-1000, 3000, size=shape).astype(dtype)
    angle = np.radians(20)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Volume(voxels, (2.5, 0.8, 0.7), (-120.0, 33.5, 900.25), direction, "PT", series_id, "1.2.3",
                  suv_factor=0.00123)


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_another_process_s_view_is_the_same_volume_mapped_read_only(tmp_path, dtype):
    original = _volume("s1", dtype=dtype)
    HostVolumes(tmp_path, 1 << 20).put("s1:v1", original)
    shared = HostVolumes(tmp_path, 1 << 20).get("s1:v1", "s1")
    assert shared is not None and isinstance(shared.voxels, np.memmap)
    assert np.array_equal(shared.voxels, original.voxels) and shared.voxels.dtype == dtype
    assert not shared.voxels.flags.writeable
    assert shared.spacing == original.spacing and shared.origin == original.origin
    assert np.array_equal(shared.direction, original.direction)
    assert (shared.modality, shared.frame_of_reference_uid, shared.suv_factor) == ("PT", "1.2.3", 0.00123)
    assert HostVolumes(tmp_path, 1 << 20).get("s1:v2", "s1") is None  # a rebuilt volume is another key


def test_the_least_recently_used_files_go_first_when_the_budget_is_reached(tmp_path):
    host = HostVolumes(tmp_path, 1 << 20)
    host.put("s0", _volume("s0"))
    host.budget_bytes = 3 * host.used_bytes() + 10  # room for three files
    for n in (1, 2):
        host.put(f"s{n}", _volume(f"s{n}", seed=n))
    assert host.get("s0", "s0") is not None  # s1 is now the least recently used
    host.put("s3", _volume("s3", seed=3))
    assert [host.get(f"s{n}", f"s{n}") is not None for n in range(4)] == [True, False, True, True]
    assert host.used_bytes() <= host.budget_bytes


def test_a_volume_over_the_budget_or_a_damaged_file_costs_only_the_sharing(tmp_path):
    host = HostVolumes(tmp_path, 100)
    big = _volume("big")
    assert host.put("big", big) is big and host.get("big", "big") is None
    roomy = HostVolumes(tmp_path, 1 << 20)
    roomy.put("s1", _volume("s1"))
    (stored,) = tmp_path.glob("*.vol")
    stored.write_bytes(b"not a volume")
    assert roomy.get("s1", "s1") is None


def test_a_directory_someone_else_owns_or_a_link_is_never_shared_through(tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o777)
    os.chown(planted, 65534, 65534)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    for directory in (planted, link):
        host = HostVolumes(directory, 1 << 20)
        original = _volume("s1")
        assert host.put("s1", original) is original
        assert host.get("s1", "s1") is None
    assert list(planted.iterdir()) == [] and list((tmp_path / "elsewhere").iterdir()) == []
