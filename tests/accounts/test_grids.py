"""Saved grid layouts: a reader's own (at most 20) and the hospital's (at most 40, audited), checked
by the grid parser before every write, each owner's out of the other's reach."""

from __future__ import annotations

import json

import pytest

from accounts.grids import (
    GRIDS_PER_USER,
    HOSPITAL_GRIDS,
    GridLayoutNotFound,
    grid_delete,
    grid_hospital_delete,
    grid_hospital_save,
    grid_hospital_update,
    grid_save,
    grid_update,
    grids_hospital,
    grids_of,
)
from accounts.models import GridLayout
from gateway.audit.models import AuditEvent
from rendering.grids import Grid, GridError
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)

MERGED = Grid(2, 2, ((0, 0, 2, 1), (0, 1, 1, 1), (1, 1, 1, 1)))


def test_own_grids_then_the_hospital_s_each_marked(person):
    reader, other, it = person(), person("dr.other"), person("it.admin", "it_admin")
    hospital = grid_hospital_save(actor=it, name="Hospital 2x2", grid=Grid.even(2, 2))
    own = grid_save(user=reader, name="  merged left ", grid=MERGED)
    grid_save(user=other, name="someone else's", grid=Grid.even(1, 2))
    assert grids_of(user=reader) == [
        {"id": own["id"], "name": "merged left", "grid": MERGED.wire(), "hospital": False},
        {"id": hospital["id"], "name": "Hospital 2x2", "grid": Grid.even(2, 2).wire(), "hospital": True}]
    assert grids_hospital() == [hospital]
    assert GridLayout.objects.get(pk=own["id"]).position == 0


def test_a_grid_is_checked_before_it_is_written(person):
    reader = person()
    with pytest.raises(GridError, match="overlap"):
        grid_save(user=reader, name="bad", grid=Grid(1, 2, ((0, 0, 1, 2), (0, 1, 1, 1))))
    with pytest.raises(GridError, match="printable"):
        grid_save(user=reader, name="  ", grid=MERGED)
    saved = grid_save(user=reader, name="fine", grid=MERGED)
    with pytest.raises(GridError):
        grid_update(user=reader, grid_id=saved["id"], name="fine", grid=Grid(5, 1, ()))
    grid_update(user=reader, grid_id=saved["id"], name="wide", grid=Grid.even(1, 3))
    assert [(grid["name"], grid["grid"]) for grid in grids_of(user=reader)] == [
        ("wide", Grid.even(1, 3).wire())]


def test_at_most_twenty_own_and_forty_hospital_grids(person):
    reader, it = person(), person("it.admin", "it_admin")
    for number in range(GRIDS_PER_USER):
        grid_save(user=reader, name=f"grid {number}", grid=MERGED)
    with pytest.raises(GridError, match="at most 20 grids per user"):
        grid_save(user=reader, name="one too many", grid=MERGED)
    for number in range(HOSPITAL_GRIDS):
        grid_hospital_save(actor=it, name=f"grid {number}", grid=MERGED)
    with pytest.raises(GridError, match="at most 40 hospital-wide grids"):
        grid_hospital_save(actor=it, name="one too many", grid=MERGED)


def test_another_owner_s_grid_looks_missing(person):
    reader, other, it = person(), person("dr.other"), person("it.admin", "it_admin")
    mine = grid_save(user=reader, name="mine", grid=MERGED)
    hospital = grid_hospital_save(actor=it, name="hospital", grid=MERGED)
    for grid_id in (mine["id"], hospital["id"]):
        with pytest.raises(GridLayoutNotFound):
            grid_delete(user=other, grid_id=grid_id)
        with pytest.raises(GridLayoutNotFound):
            grid_update(user=other, grid_id=grid_id, name="taken", grid=MERGED)
    with pytest.raises(GridLayoutNotFound):
        grid_delete(user=reader, grid_id=hospital["id"])
    with pytest.raises(GridLayoutNotFound):
        grid_hospital_delete(actor=it, grid_id=mine["id"])
    grid_delete(user=reader, grid_id=mine["id"])
    assert grids_of(user=reader) == [hospital]


def test_a_hospital_grid_s_changes_are_audited_and_a_reader_s_are_not(person,
                                                                      django_capture_on_commit_callbacks):
    reader, it = person(), person("it.admin", "it_admin")
    with django_capture_on_commit_callbacks(execute=True):
        saved = grid_hospital_save(actor=it, name="PET/CT", grid=MERGED)
        grid_hospital_update(actor=it, grid_id=saved["id"], name="PET/CT wide", grid=Grid.even(1, 2))
        grid_hospital_delete(actor=it, grid_id=saved["id"])
        grid_save(user=reader, name="own", grid=MERGED)
    events = AuditEvent.objects.filter(action="admin.layout").order_by("sequence")
    details = [json.loads(event.details) for event in events]
    assert [(event.actor, detail["change"], detail["what"])
            for event, detail in zip(events, details, strict=True)] == [
        ("it.admin", "added", "grid"), ("it.admin", "changed", "grid"), ("it.admin", "deleted", "grid")]
    assert details[1]["grid"] == Grid.even(1, 2).wire()


def test_a_stored_grid_that_no_longer_parses_is_left_out(person, caplog):
    reader = person()
    GridLayout.objects.create(user=reader, name="edited by hand", grid={"rows": 9})
    kept = grid_save(user=reader, name="fine", grid=MERGED)
    assert [grid["id"] for grid in grids_of(user=reader)] == [kept["id"]]
    assert "is skipped" in caplog.text
