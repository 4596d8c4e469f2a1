"""The volume builder: claims, one build per series at a time, stale builds discarded."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pytest
from django.db import connections

from imaging import volumes
from imaging.models import Series, VolumeState
from imaging.services import IngestBatch
from imaging.volumes import (
    BUILDING,
    claim_live,
    load_volume,
    volume_claim,
    volumes_build_pending,
    volumes_pending,
)
from tests.conftest import ZONES
from tests.imaging.conftest import PHANTOM_SLICES, phantom_files

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)


def _patient_one(phantom):
    out, truth = phantom
    folder = truth["patients"][0]["folder"]
    return [path for path in phantom_files(out) if folder in path.parts]


def _ingest(paths) -> None:
    batch = IngestBatch(actor="cli:test", door="c-store", build_volumes=False)
    for path in paths:
        batch.ingest(path.read_bytes())
    batch.close()


def test_a_live_claim_is_exclusive_and_a_lapsed_one_is_taken_over(store, phantom):
    _ingest(_patient_one(phantom)[:3])
    series = Series.objects.get()
    first = volume_claim(series_id=series.pk, lease_s=60)
    assert first is not None
    assert volume_claim(series_id=series.pk) is None
    series.refresh_from_db()
    assert series.volume_state == BUILDING and claim_live(series.volume_reason)
    assert volumes_pending() == []
    first.release()
    lapsed = volume_claim(series_id=series.pk, lease_s=-1)  # a builder that died at once
    assert lapsed is not None and volumes_pending() == [series.pk]
    taken = volume_claim(series_id=series.pk)
    assert taken is not None and taken.text != lapsed.text
    assert not lapsed.finish(volume_state=VolumeState.READY)  # the dead builder's result is refused


def test_two_builders_never_build_one_series_at_once(store, phantom, monkeypatch):
    _ingest(_patient_one(phantom))
    assert Series.objects.filter(volume_state=VolumeState.PENDING).count() == 2
    real = volumes.volume_from_datasets
    lock = threading.Lock()
    active: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    builds: Counter[str] = Counter()

    def tracked(datasets):
        items = list(datasets)
        uid = str(items[0].SeriesInstanceUID)
        with lock:
            active[uid] += 1
            builds[uid] += 1
            peak[uid] = max(peak[uid], active[uid])
        try:
            time.sleep(0.5)  # both builders are surely running by now
            return real(items)
        finally:
            with lock:
                active[uid] -= 1

    listed = threading.Barrier(2)
    real_pending = volumes.volumes_pending

    def both_listed(**kwargs):
        pending = real_pending(**kwargs)
        listed.wait(timeout=60)  # each builder saw every series pending before either claims
        return pending

    monkeypatch.setattr(volumes, "volume_from_datasets", tracked)
    monkeypatch.setattr(volumes, "volumes_pending", both_listed)
    built: list[int] = []

    def builder() -> None:
        try:
            built.append(volumes_build_pending())
        finally:
            connections.close_all()

    threads = [threading.Thread(target=builder) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(built) in ([0, 2], [1, 1]) and listed.n_waiting == 0
    assert len(builds) == 2 and set(builds.values()) == {1} and set(peak.values()) == {1}
    assert set(Series.objects.values_list("volume_state", flat=True)) == {VolumeState.READY}


def test_an_instance_stored_during_a_build_discards_it_and_the_next_build_has_it(store, phantom,
                                                                                monkeypatch):
    ct = [path for path in _patient_one(phantom) if "CT" in path.parts]
    _ingest(ct[:-1])
    real = volumes.volume_from_datasets
    calls = []

    def late_instance(datasets):
        calls.append(1)
        if len(calls) == 1:
            _ingest(ct[-1:])  # arrives while the first build holds the claim
        return real(datasets)

    monkeypatch.setattr(volumes, "volume_from_datasets", late_instance)
    volumes_build_pending()
    series = Series.objects.get()
    assert series.volume_state == VolumeState.PENDING and series.volume_object == ""
    assert not claim_live(series.volume_reason)
    volumes_build_pending()
    series.refresh_from_db()
    assert series.volume_state == VolumeState.READY and len(calls) == 2
    assert load_volume(series).voxels.shape == (PHANTOM_SLICES, 512, 512)


def test_load_volume_builds_a_pending_series_on_demand(store, phantom):
    ct = [path for path in _patient_one(phantom) if "CT" in path.parts]
    _ingest(ct)
    series = Series.objects.get()
    assert series.volume_state == VolumeState.PENDING
    assert load_volume(series).voxels.shape == (PHANTOM_SLICES, 512, 512)
    series.refresh_from_db()
    assert series.volume_state == VolumeState.READY and series.volume_object


def test_load_volume_waits_for_the_builder_holding_the_claim(store, phantom, monkeypatch):
    ct = [path for path in _patient_one(phantom) if "CT" in path.parts]
    _ingest(ct)
    series = Series.objects.get()
    claim = volume_claim(series_id=series.pk)
    assert claim is not None
    built = []
    monkeypatch.setattr(volumes, "_build_claimed",
                        lambda *args: built.append(args) or pytest.fail("built a second time"))

    def other_builder_finishes() -> None:
        try:
            time.sleep(0.5)
            Series.objects.filter(pk=series.pk).update(volume_state=VolumeState.REFUSED,
                                                       volume_reason="refused by the other builder")
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_builder_finishes)
    thread.start()
    with pytest.raises(volumes.VolumeRefused, match="the other builder"):
        load_volume(series)
    thread.join()
    assert built == []


def test_a_volume_built_on_its_first_load_in_a_worker_is_shared_with_the_host(store, phantom, tmp_path):
    from rendering.hostvolumes import HostVolumes
    from rendering.sources import ClinicalVolumes

    ct = [path for path in _patient_one(phantom) if "CT" in path.parts]
    _ingest(ct)
    series = Series.objects.get()
    assert series.volume_state == VolumeState.PENDING
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    source = ClinicalVolumes.__new__(ClinicalVolumes)  # this process's settings, not a worker's setup
    source._host = HostVolumes(shared, 1 << 30)
    first = source.load(series.series_instance_uid)
    assert [path.suffix for path in shared.iterdir()] == [".vol"], "the first load was not shared"
    again = source.load(series.series_instance_uid)
    assert isinstance(again.voxels, np.memmap) and again.shape == first.shape
