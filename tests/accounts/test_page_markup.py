"""Markup the stylesheet's layout fixes hang on: long strings wrap, radio buttons sit by their labels."""

import pytest
from django.conf import settings
from django.urls import reverse

from tests.accounts.conftest import password_step, sign_in
from tests.conftest import ZONES
from tests.sharing.factories import clinical_study

pytestmark = pytest.mark.django_db(databases=ZONES)

CSS = (settings.BASE_DIR / "gateway" / "static" / "gateway" / "gateway.css").read_text(encoding="utf-8")


def _rule(selector: str) -> str:
    return CSS.split(selector + " {", 1)[1].split("}", 1)[0]


def test_the_otpauth_uri_wraps_inside_its_card(client, person):
    newcomer = person("new.nurse", role="nurse", device=False)
    password_step(client, newcomer.username)
    page = client.get(reverse("accounts:enrol")).content.decode()
    assert '<code class="otpauth">otpauth://' in page
    assert "overflow-wrap: anywhere" in _rule("code.otpauth")


def test_the_share_link_wraps_and_the_radios_sit_on_their_labels_lines(client, person, clock):
    sign_in(client, person(), clock)
    study = clinical_study()
    page = client.get(reverse("sharing:mint", args=[study.study_instance_uid])).content.decode()
    assert '<form method="post" class="share-form">' in page
    fieldset = page.split("<fieldset>", 1)[1].split("</fieldset>", 1)[0]
    assert '<label for="id_scope_0"><input type="radio"' in fieldset
    assert "display: flex" in _rule("form.share-form fieldset label")
    assert "width: auto" in _rule('form.share-form input[type="radio"]')
    assert "overflow-wrap: anywhere" in _rule("textarea.share-link")
