"""The start page links each person to every page their role reaches, and to none other."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

ROLE_PAGES = {
    "doctor": {"Worklist", "PACS", "Raw import", "Active shares", "Layouts and rules"},
    "nurse": {"Worklist", "PACS", "Layouts and rules"},
    "admin_staff": {"Worklist"},
    "auditor": {"Audit console"},
    "it_admin": {"Raw import", "Active shares", "Hospital layouts", "Administration"},
}
LINK = re.compile(r'<li><a href="([^"]+)">([^<]+)</a>')


@pytest.mark.parametrize(("role", "titles"), sorted(ROLE_PAGES.items()))
def test_the_start_page_links_the_pages_a_role_reaches_and_each_opens(client, signed_in, keys_dir, role,
                                                                    titles):
    signed_in(role)
    page = client.get(reverse("home"))
    links = {title: url for url, title in LINK.findall(page.content.decode())}
    assert set(links) == titles
    for url in links.values():
        assert client.get(url).status_code == 200, url
