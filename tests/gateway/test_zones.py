"""The three trust zones: each model lives in exactly one database."""

import pytest
from django.apps import apps
from django.core.checks import run_checks
from django.db import DatabaseError, connections, router, transaction

from accounts.models import User
from gateway.routers import ZoneViolation
from imaging.identity.models import PatientIdentity
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)

PROJECT_APPS = ["accounts", "identity", "imaging", "rendering", "gateway"]


def _tables(alias: str) -> set[str]:
    with connections[alias].cursor() as cursor:
        return set(connections[alias].introspection.table_names(cursor))


def _identity(**overrides):
    fields = {"pseudonym": "p" * 64, "patient_id": "MRN-1", "patient_name": "Doe^Jane"}
    return PatientIdentity(**{**fields, **overrides})


def test_every_model_is_migrated_into_its_own_zone_only():
    for model in apps.get_models():
        homes = [alias for alias in ZONES if router.allow_migrate_model(alias, model)]
        assert homes == [router.db_for_write(model)], model._meta.label


def test_identity_tables_exist_only_in_the_identity_database():
    table = PatientIdentity._meta.db_table
    assert table in _tables("identity")
    assert table not in _tables("default")
    assert table not in _tables("audit")
    assert User._meta.db_table not in _tables("identity")
    assert User._meta.db_table not in _tables("audit")


def test_identity_rows_go_to_the_identity_database():
    _identity().save()
    assert PatientIdentity.objects.using("identity").count() == 1
    assert router.db_for_read(PatientIdentity) == "identity"


@pytest.mark.parametrize("wrong_zone", ["default", "audit"])
def test_an_identity_row_cannot_be_saved_to_another_zone(wrong_zone):
    with pytest.raises(ZoneViolation, match="'identity' database"):
        _identity().save(using=wrong_zone)


@pytest.mark.parametrize("wrong_zone", ["default", "audit"])
def test_bulk_writes_to_another_zone_find_no_table(wrong_zone):
    with pytest.raises(DatabaseError), transaction.atomic(using=wrong_zone):
        PatientIdentity.objects.using(wrong_zone).bulk_create([_identity()])


def test_a_clinical_row_cannot_be_saved_to_the_identity_zone():
    with pytest.raises(ZoneViolation):
        User(username="someone", role="doctor").save(using="identity")


def test_relations_across_zones_are_refused():
    user = User(username="x", role="doctor")
    assert router.allow_relation(user, _identity()) is False
    assert router.allow_relation(user, User(username="y", role="nurse")) is True


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_zones_pointing_at_one_database_fail_the_system_check(settings):
    databases = {alias: dict(config) for alias, config in settings.DATABASES.items()}
    databases["identity"] = dict(databases["default"])
    settings.DATABASES = databases
    ids = [message.id for message in run_checks(include_deployment_checks=False)]
    assert "gateway.E002" in ids


def test_distinct_zones_pass_the_system_check():
    ids = [message.id for message in run_checks()]
    assert not [i for i in ids if i.startswith("gateway.")]
