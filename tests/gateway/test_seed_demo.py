import json
import stat

import pytest
from django.core.management import CommandError, call_command

from accounts.models import Role, User
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)


def test_seed_demo_creates_one_account_per_role_once(settings, tmp_path, capsys):
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", phantom_slices=32)
    first_output = capsys.readouterr().out
    call_command("seed_demo", phantom_slices=32)
    second_output = capsys.readouterr().out

    assert sorted(User.objects.values_list("role", flat=True)) == sorted(Role.values)
    credentials_file = tmp_path / "demo-credentials.json"
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600
    credentials = json.loads(credentials_file.read_text())
    for user in User.objects.all():
        assert user.check_password(credentials[user.username])
        assert credentials[user.username] in first_output
    assert "first run only" not in second_output
    truth = json.loads((tmp_path / "demo" / "phantom" / "truth.json").read_text())
    assert len(truth["patients"]) == 1
    assert "stored 48, duplicates 0" in first_output and "importing" not in second_output
    assert "AE title PETCT1" in first_output and "AE title" not in second_output
    from imaging.models import Instance, Series
    assert Instance.objects.count() == 48
    assert set(Series.objects.values_list("volume_state", flat=True)) == {"ready"}


def test_seed_demo_refuses_where_demo_data_is_disabled(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.DEMO_ALLOWED = False
    with pytest.raises(CommandError, match="disabled"):
        call_command("seed_demo")
    assert not User.objects.exists()
