"""Reading bookmarks: kept per user and study, restored, and shown to a doctor's own live shares
that cover the study, never further; sharing and unsharing are audited."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.utils import timezone

from accounts.models import User
from gateway.audit.models import AuditEvent
from gateway.audit.services import audit_outbox_drain
from gateway.sharing.models import Share
from gateway.sharing.principal import ConsultantPrincipal
from gateway.sharing.services import (
    Minted,
    PinResult,
    Scope,
    capability_verify,
    share_forward,
    share_redeem,
    share_revoke,
)
from imaging.access import StudyNotFound
from imaging.bookmarks import (
    BOOKMARKS_PER_STUDY,
    STATE_MOST_BYTES,
    BookmarkError,
    BookmarkNotFound,
    SavedBookmark,
    bookmark_delete,
    bookmark_get,
    bookmark_save,
    bookmark_share,
    bookmark_unshare,
    bookmarks_of,
    shares_for_bookmarks,
)
from imaging.models import ReadingBookmark, ReadingBookmarkShare, Study
from tests.conftest import ZONES
from tests.sharing.factories import clinical_study, doctor, mint, verified

pytestmark = [pytest.mark.django_db(databases=ZONES), pytest.mark.usefixtures("keys_dir")]

STATE = {"tabs": [{"layout": "2x2", "views": [{"kind": "axial", "window": [40, 400]}]}]}


@pytest.fixture
def reader() -> User:
    """The doctor who keeps the bookmarks and issues the shares."""
    return verified(doctor("dr.reader"))


@pytest.fixture
def other() -> User:
    return verified(doctor("dr.other"))


@pytest.fixture
def first() -> Study:
    """Two studies of one patient and one of another."""
    return clinical_study(patient="patient-a", uid="2.25.1001")


@pytest.fixture
def second(first) -> Study:
    return clinical_study(patient="patient-a", uid="2.25.1002", description="PET-CT follow-up")


@pytest.fixture
def elsewhere() -> Study:
    return clinical_study(patient="patient-b", uid="2.25.2001")


def consultant(minted: Minted) -> ConsultantPrincipal:
    """The consultant's principal after the PIN, as every request of theirs verifies it."""
    assert share_redeem(token=minted.token, pin=minted.pin, source_ip="127.0.0.1")[0] \
        is PinResult.REDEEMED
    return capability_verify(minted.token, client_ip="127.0.0.1")


def audited(action: str) -> list[AuditEvent]:
    audit_outbox_drain()  # inside the test's transaction the on-commit append has not run
    return list(AuditEvent.objects.filter(action=action).order_by("sequence"))


def names(bookmarks: list[SavedBookmark]) -> list[str]:
    return [bookmark.name for bookmark in bookmarks]


# --- keeping --------------------------------------------------------------------------------------

def test_saved_bookmarks_are_listed_newest_first_and_restored_whole(reader, first):
    baseline = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="Baseline",
                             state=STATE)
    later = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="Lesions",
                          state={"tabs": []})
    assert names(bookmarks_of(principal=reader, study_uid=first.study_instance_uid)) == [
        "Lesions", "Baseline"]
    restored = bookmark_get(principal=reader, bookmark_id=baseline.id)
    assert restored.state == STATE and restored.study_uid == first.study_instance_uid
    wire = later.wire()
    assert wire == {"id": later.id, "name": "Lesions", "updated_at": later.updated_at.isoformat(),
                    "shared_with": []}
    assert "state" not in wire and json.loads(json.dumps(wire)) == wire


def test_saving_under_a_name_again_replaces_its_state(reader, first):
    kept = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="Baseline",
                         state=STATE)
    bookmark_save(user=reader, study_uid=first.study_instance_uid, name="Other", state={})
    again = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="  Baseline ",
                          state={"tabs": ["new"]})
    assert again.id == kept.id and again.updated_at >= kept.updated_at
    assert ReadingBookmark.objects.count() == 2
    listed = bookmarks_of(principal=reader, study_uid=first.study_instance_uid)
    assert names(listed) == ["Baseline", "Other"]  # replaced: now the newest
    assert listed[0].state == {"tabs": ["new"]}


def test_at_most_twenty_per_study_but_a_replacement_still_goes_in(reader, first, second):
    for number in range(BOOKMARKS_PER_STUDY):
        bookmark_save(user=reader, study_uid=first.study_instance_uid, name=f"b{number}", state={})
    with pytest.raises(BookmarkError, match="at most 20 bookmarks per study"):
        bookmark_save(user=reader, study_uid=first.study_instance_uid, name="one more", state={})
    bookmark_save(user=reader, study_uid=first.study_instance_uid, name="b3", state={"x": 1})
    bookmark_save(user=reader, study_uid=second.study_instance_uid, name="one more", state={})
    assert ReadingBookmark.objects.filter(study=first).count() == BOOKMARKS_PER_STUDY
    assert ReadingBookmark.objects.filter(study=second).count() == 1


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "tab\tname", "bell\x07", "new\nline", None, 7])
def test_a_bad_name_is_refused(reader, first, name):
    with pytest.raises(BookmarkError, match="the name must be 1 to 64 printable characters"):
        bookmark_save(user=reader, study_uid=first.study_instance_uid, name=name, state={})
    assert not ReadingBookmark.objects.exists()


def test_a_name_is_trimmed_and_may_take_sixty_four_characters(reader, first):
    assert bookmark_save(user=reader, study_uid=first.study_instance_uid, name="  Réunion 2 ",
                         state={}).name == "Réunion 2"
    longest = "é" * 64
    assert bookmark_save(user=reader, study_uid=first.study_instance_uid, name=longest,
                         state={}).name == longest


@pytest.mark.parametrize("state", [[], "text", None, {"views": {1, 2}}, {"x": float("nan")},
                                   {"blob": "x" * STATE_MOST_BYTES}])
def test_a_state_that_is_not_a_small_json_object_is_refused(reader, first, state):
    with pytest.raises(BookmarkError, match="JSON object of at most 64 KiB"):
        bookmark_save(user=reader, study_uid=first.study_instance_uid, name="n", state=state)
    assert not ReadingBookmark.objects.exists()


def test_a_state_of_exactly_64_kib_is_kept(reader, first):
    padding = STATE_MOST_BYTES - len(json.dumps({"blob": ""}, separators=(",", ":")))
    state = {"blob": "x" * padding}
    bookmark_save(user=reader, study_uid=first.study_instance_uid, name="n", state=state)
    assert ReadingBookmark.objects.get().state == state


def test_a_study_the_user_may_not_view_keeps_no_bookmark(reader, first):
    auditor = verified(User.objects.create_user(username="auditor", password="x" * 20,
                                                role="auditor"))
    with pytest.raises(StudyNotFound):
        bookmark_save(user=auditor, study_uid=first.study_instance_uid, name="n", state={})
    with pytest.raises(StudyNotFound):
        bookmark_save(user=reader, study_uid="2.25.404", name="n", state={})
    unverified = doctor("dr.half-signed-in")
    with pytest.raises(StudyNotFound):
        bookmark_save(user=unverified, study_uid=first.study_instance_uid, name="n", state={})
    assert not ReadingBookmark.objects.exists()


def test_another_user_sees_nothing_and_cannot_delete(reader, other, first):
    mine = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="Mine", state=STATE)
    assert bookmarks_of(principal=other, study_uid=first.study_instance_uid) == []
    with pytest.raises(BookmarkNotFound):
        bookmark_get(principal=other, bookmark_id=mine.id)
    with pytest.raises(BookmarkNotFound):
        bookmark_delete(user=other, bookmark_id=mine.id)
    with pytest.raises(BookmarkNotFound):
        bookmark_delete(user=other, bookmark_id=mine.id + 1000)  # missing: the same answer
    assert ReadingBookmark.objects.filter(pk=mine.id).exists()
    bookmark_delete(user=reader, bookmark_id=mine.id)
    with pytest.raises(BookmarkNotFound):
        bookmark_get(principal=reader, bookmark_id=mine.id)


def test_saving_and_deleting_are_not_audited(reader, first):
    before = AuditEvent.objects.count()
    kept = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="n", state=STATE)
    bookmark_delete(user=reader, bookmark_id=kept.id)
    audit_outbox_drain()
    assert AuditEvent.objects.count() == before


# --- sharing --------------------------------------------------------------------------------------

def test_a_patient_share_covers_every_study_of_its_patient(reader, first, second):
    share = mint(reader, first, scope=Scope.PATIENT).share
    for study in (first, second):
        kept = bookmark_save(user=reader, study_uid=study.study_instance_uid, name="n", state={})
        assert bookmark_share(user=reader, bookmark_id=kept.id,
                              share_public_id=share.public_id).shared_with == (share.public_id,)
    assert ReadingBookmarkShare.objects.filter(share=share).count() == 2


def test_a_study_share_covers_only_its_study(reader, first, second):
    share = mint(reader, first, scope=Scope.STUDY).share
    on_second = bookmark_save(user=reader, study_uid=second.study_instance_uid, name="n", state={})
    with pytest.raises(BookmarkError, match="that study is not part of this share"):
        bookmark_share(user=reader, bookmark_id=on_second.id, share_public_id=share.public_id)
    on_first = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="n", state={})
    bookmark_share(user=reader, bookmark_id=on_first.id, share_public_id=share.public_id)
    assert list(ReadingBookmarkShare.objects.values_list("bookmark_id", flat=True)) == [on_first.id]


def test_a_share_of_another_patient_is_refused(reader, first, elsewhere):
    share = mint(reader, elsewhere, scope=Scope.PATIENT).share
    kept = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="n", state={})
    with pytest.raises(BookmarkError, match="that study is not part of this share"):
        bookmark_share(user=reader, bookmark_id=kept.id, share_public_id=share.public_id)
    assert not ReadingBookmarkShare.objects.exists()


def test_only_the_issuer_shares_with_a_share(reader, other, first):
    theirs = mint(other, first, scope=Scope.PATIENT).share
    kept = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="n", state={})
    for share_id in (theirs.public_id, "0" * 24):  # someone else's, and none: the same answer
        with pytest.raises(BookmarkError, match="that share is not one of yours"):
            bookmark_share(user=reader, bookmark_id=kept.id, share_public_id=share_id)
    with pytest.raises(BookmarkNotFound):  # nor can the share's issuer share someone else's bookmark
        bookmark_share(user=other, bookmark_id=kept.id, share_public_id=theirs.public_id)
    assert not ReadingBookmarkShare.objects.exists()


def test_only_a_live_share_takes_a_bookmark(reader, first):
    revoked = mint(reader, first, recipient="Dr Revoked").share
    expired = mint(reader, first, recipient="Dr Expired").share
    share_revoke(user=reader, share_id=revoked.public_id, source_ip=None)
    Share.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - dt.timedelta(minutes=1))
    kept = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="n", state={})
    for share in (revoked, expired):
        with pytest.raises(BookmarkError, match="This share has ended"):
            bookmark_share(user=reader, bookmark_id=kept.id, share_public_id=share.public_id)
    assert not ReadingBookmarkShare.objects.exists()


def test_the_share_menu_lists_own_live_covering_shares(reader, other, first, second, elsewhere):
    patient_wide = mint(reader, second, scope=Scope.PATIENT, recipient="Dr Whole Patient").share
    this_study = mint(reader, first, recipient="Dr This Study").share
    mint(reader, second, recipient="Dr Other Study")
    mint(reader, elsewhere, scope=Scope.PATIENT, recipient="Dr Other Patient")
    mint(other, first, recipient="Dr Of Another Doctor")
    revoked = mint(reader, first, recipient="Dr Revoked").share
    share_revoke(user=reader, share_id=revoked.public_id, source_ip=None)
    menu = shares_for_bookmarks(user=reader, study_uid=first.study_instance_uid)
    assert {entry["id"] for entry in menu} == {patient_wide.public_id, this_study.public_id}
    entry = next(e for e in menu if e["id"] == this_study.public_id)
    assert entry == {"id": this_study.public_id, "recipient": "Dr This Study",
                     "expires_at": this_study.expires_at.isoformat()}
    nurse = verified(User.objects.create_user(username="nurse", password="x" * 20, role="nurse"))
    assert shares_for_bookmarks(user=nurse, study_uid=first.study_instance_uid) == []


# --- what a consultant sees -----------------------------------------------------------------------

def test_a_consultant_lists_only_bookmarks_shared_with_it_of_studies_it_covers(reader, first, second):
    study_share = mint(reader, first, recipient="Dr Study")
    patient_share = mint(reader, first, scope=Scope.PATIENT, recipient="Dr Patient")
    shown = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="Shown", state=STATE)
    kept_back = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="Kept", state={})
    on_second = bookmark_save(user=reader, study_uid=second.study_instance_uid, name="Second",
                              state={"tabs": [2]})
    for minted in (study_share, patient_share):
        bookmark_share(user=reader, bookmark_id=shown.id, share_public_id=minted.share.public_id)
    bookmark_share(user=reader, bookmark_id=on_second.id,
                   share_public_id=patient_share.share.public_id)

    narrow = consultant(study_share)
    listed = bookmarks_of(principal=narrow, study_uid=first.study_instance_uid)
    assert names(listed) == ["Shown"] and listed[0].shared_with == () and listed[0].state == STATE
    assert bookmarks_of(principal=narrow, study_uid=second.study_instance_uid) == []
    for hidden in (kept_back, on_second):
        with pytest.raises(BookmarkNotFound):
            bookmark_get(principal=narrow, bookmark_id=hidden.id)
    assert bookmark_get(principal=narrow, bookmark_id=shown.id).state == STATE

    wide = consultant(patient_share)
    assert names(bookmarks_of(principal=wide, study_uid=first.study_instance_uid)) == ["Shown"]
    assert names(bookmarks_of(principal=wide, study_uid=second.study_instance_uid)) == ["Second"]
    owner_view = bookmarks_of(principal=reader, study_uid=first.study_instance_uid)
    assert set(next(b for b in owner_view if b.name == "Shown").shared_with) == {
        study_share.share.public_id, patient_share.share.public_id}
    with pytest.raises(BookmarkNotFound):  # a consultant keeps and deletes nothing
        bookmark_delete(user=wide, bookmark_id=shown.id)  # type: ignore[arg-type]
    with pytest.raises(StudyNotFound):
        bookmark_save(user=wide, study_uid=first.study_instance_uid, name="n",  # type: ignore[arg-type]
                      state={})


def test_a_revoked_share_no_longer_lists_them(reader, first):
    minted = mint(reader, first)
    kept = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="n", state=STATE)
    bookmark_share(user=reader, bookmark_id=kept.id, share_public_id=minted.share.public_id)
    holder = consultant(minted)  # a session made before the revocation, still open
    assert names(bookmarks_of(principal=holder, study_uid=first.study_instance_uid)) == ["n"]
    share_revoke(user=reader, share_id=minted.share.public_id, source_ip=None)
    assert bookmarks_of(principal=holder, study_uid=first.study_instance_uid) == []
    with pytest.raises(BookmarkNotFound):
        bookmark_get(principal=holder, bookmark_id=kept.id)
    assert bookmark_get(principal=reader, bookmark_id=kept.id).shared_with == ()


def test_an_expired_share_no_longer_lists_them(reader, first):
    minted = mint(reader, first)
    kept = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="n", state=STATE)
    bookmark_share(user=reader, bookmark_id=kept.id, share_public_id=minted.share.public_id)
    holder = consultant(minted)
    Share.objects.filter(pk=minted.share.pk).update(
        expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert bookmarks_of(principal=holder, study_uid=first.study_instance_uid) == []


def test_a_forwarded_share_sees_its_parents_bookmarks_within_its_own_scope(reader, first, second):
    root = mint(reader, first, scope=Scope.PATIENT, actions=("view",))
    on_first = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="First", state={})
    on_second = bookmark_save(user=reader, study_uid=second.study_instance_uid, name="Second",
                              state={})
    for kept in (on_first, on_second):
        bookmark_share(user=reader, bookmark_id=kept.id, share_public_id=root.share.public_id)
    forwarded = share_forward(holder=consultant(root), token=root.token,
                              study_uid=second.study_instance_uid, actions=("view",), hours=24,
                              recipient="Dr Colleague", source_ip="127.0.0.1")
    colleague = consultant(forwarded)
    assert names(bookmarks_of(principal=colleague, study_uid=second.study_instance_uid)) == ["Second"]
    assert bookmarks_of(principal=colleague, study_uid=first.study_instance_uid) == []
    with pytest.raises(BookmarkNotFound):
        bookmark_get(principal=colleague, bookmark_id=on_first.id)

    # the doctor may also show one to the forwarded share itself; its parent does not see it
    assert forwarded.share.public_id in {
        e["id"] for e in shares_for_bookmarks(user=reader, study_uid=second.study_instance_uid)}
    only_colleague = bookmark_save(user=reader, study_uid=second.study_instance_uid, name="Only",
                                   state={})
    bookmark_share(user=reader, bookmark_id=only_colleague.id,
                   share_public_id=forwarded.share.public_id)
    assert names(bookmarks_of(principal=colleague, study_uid=second.study_instance_uid)) == [
        "Only", "Second"]
    parent = capability_verify(root.token, client_ip="127.0.0.1")
    assert names(bookmarks_of(principal=parent, study_uid=second.study_instance_uid)) == ["Second"]

    share_revoke(user=reader, share_id=root.share.public_id, source_ip=None)  # ends the child too
    assert bookmarks_of(principal=colleague, study_uid=second.study_instance_uid) == []


def test_unsharing_hides_it_again(reader, first):
    minted = mint(reader, first)
    kept = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="n", state={})
    bookmark_share(user=reader, bookmark_id=kept.id, share_public_id=minted.share.public_id)
    holder = consultant(minted)
    assert bookmark_unshare(user=reader, bookmark_id=kept.id,
                            share_public_id=minted.share.public_id).shared_with == ()
    assert bookmarks_of(principal=holder, study_uid=first.study_instance_uid) == []


# --- audit ----------------------------------------------------------------------------------------

def test_sharing_and_unsharing_are_audited_once_each(reader, first):
    minted = mint(reader, first)
    kept = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="Mr X follow-up",
                         state=STATE)
    share_id = minted.share.public_id
    bookmark_share(user=reader, bookmark_id=kept.id, share_public_id=share_id, source_ip="10.0.0.7")
    bookmark_share(user=reader, bookmark_id=kept.id, share_public_id=share_id)  # already: nothing new
    [shared] = audited("bookmark.share")
    assert shared.actor == reader.username and shared.actor_role == "doctor"
    assert shared.outcome == "success" and shared.source_ip == "10.0.0.7"
    assert shared.study == first.study_instance_uid
    assert shared.patient_pseudonym == first.patient.pseudonym
    assert json.loads(shared.details) == {"bookmark": kept.id, "share": share_id}
    assert "Mr X" not in shared.details  # the doctor's free text stays out of the trail

    assert audited("bookmark.unshare") == []
    bookmark_unshare(user=reader, bookmark_id=kept.id, share_public_id=share_id)
    bookmark_unshare(user=reader, bookmark_id=kept.id, share_public_id=share_id)  # not shown: nothing
    [unshared] = audited("bookmark.unshare")
    assert unshared.actor == reader.username
    assert json.loads(unshared.details) == {"bookmark": kept.id, "share": share_id}


def test_a_refused_share_records_nothing(reader, other, first):
    theirs = mint(other, first).share
    kept = bookmark_save(user=reader, study_uid=first.study_instance_uid, name="n", state={})
    with pytest.raises(BookmarkError):
        bookmark_share(user=reader, bookmark_id=kept.id, share_public_id=theirs.public_id)
    assert audited("bookmark.share") == []
