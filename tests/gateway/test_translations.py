"""Every string a reader sees is translatable, and the catalogues hold them all, translated.

The completeness check re-extracts the marked strings (``makemessages`` in a scratch tree)
and compares them with the committed catalogues. A string nobody marked never reaches a
catalogue, so the pages are also rendered in a pseudo-language whose every translation is
the English text in ⟦brackets⟧: a sentence or a control's label still in plain English
there was not marked.
"""

from __future__ import annotations

import re
from pathlib import Path

import polib
import pytest
from django.urls import reverse
from django.utils import translation
from lxml import html

from gateway.translations import DOMAINS, catalogue_path, catalogue_problems, translated_languages
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)

STOPWORDS = frozenset({
    "an", "and", "are", "as", "at", "be", "been", "by", "can", "for", "from", "has", "have", "here",
    "in", "is", "it", "its", "may", "must", "no", "not", "of", "on", "only", "or", "that", "the",
    "there", "this", "to", "was", "were", "will", "with", "you", "your", "yet"})
CHROME = ("button", "label", "th", "h1", "h2", "h3", "legend", "summary", "caption", "title", "option")
ATTRIBUTES = ("title", "aria-label", "placeholder", "alt")
NAMES = frozenset({"Fusion", "Gateway"})  # the product's name
WRAPPED = re.compile(r"⟦.*?⟧", re.S)


def test_catalogues_hold_every_marked_string_translated_and_compiled():
    problems = catalogue_problems()
    assert not problems, f"{len(problems)} problem(s); run: python manage.py translations\n" + "\n".join(
        map(str, problems[:60]))


def test_a_hungarian_reader_gets_hungarian(client):
    catalogue = polib.pofile(str(catalogue_path("hu", "django")))
    sign_in = catalogue.find("Sign in")
    assert sign_in is not None and sign_in.msgstr and sign_in.msgstr != "Sign in"
    page = client.get(reverse("accounts:login"), HTTP_ACCEPT_LANGUAGE="hu-HU,hu;q=0.9,en;q=0.5")
    assert page.status_code == 200
    text = page.content.decode()
    assert '<html lang="hu">' in text and sign_in.msgstr in text
    english = client.get(reverse("accounts:login"), HTTP_ACCEPT_LANGUAGE="en-GB,en;q=0.9")
    assert '<html lang="en">' in english.content.decode()


def test_the_language_form_sets_the_reader_s_choice(client):
    answer = client.post(reverse("i18n:language"), {"language": "hu", "next": reverse("accounts:login")},
                         HTTP_ACCEPT_LANGUAGE="en")
    assert answer.status_code == 302 and answer["Location"] == reverse("accounts:login")
    page = client.get(reverse("accounts:login"), HTTP_ACCEPT_LANGUAGE="en")
    assert '<html lang="hu">' in page.content.decode()


def test_the_page_scripts_catalogue_is_served_in_the_reader_s_language(client):
    catalogue = polib.pofile(str(catalogue_path("hu", "djangojs")))
    entry = next(entry for entry in catalogue if entry.msgstr and not entry.msgid_plural
                 and entry.msgstr != entry.msgid)
    script = client.get(reverse("i18n:catalogue"), HTTP_ACCEPT_LANGUAGE="hu").content.decode()
    assert _js_literal(entry.msgstr) in script
    assert _js_literal(entry.msgstr) not in client.get(reverse("i18n:catalogue"),
                                                       HTTP_ACCEPT_LANGUAGE="en").content.decode()


def _js_literal(text: str) -> str:
    import json

    return json.dumps(text)[1:-1]


@pytest.fixture
def pseudo_language(tmp_path: Path, settings):
    """Hungarian's catalogues replaced by ⟦English⟧ ones, for the pages' unmarked strings to show."""
    for language in translated_languages():
        for domain in DOMAINS:
            source = catalogue_path(language, domain)
            assert source.exists(), f"{source} is missing: run python manage.py translations"
            pseudo = polib.pofile(str(source))
            for entry in pseudo:
                if entry.msgid_plural:
                    entry.msgstr_plural = {0: f"⟦{entry.msgid}⟧", 1: f"⟦{entry.msgid_plural}⟧"}
                else:
                    entry.msgstr = f"⟦{entry.msgid}⟧"
                entry.flags = [flag for flag in entry.flags if flag != "fuzzy"]
            target = catalogue_path(language, domain, "mo", root=tmp_path)
            target.parent.mkdir(parents=True, exist_ok=True)
            pseudo.save_as_mofile(str(target))
    settings.LOCALE_PATHS = [tmp_path]
    with translation.override("hu"):
        yield "hu"


def _words(text: str) -> list[str]:
    """The plain words of ``text`` outside ⟦translations⟧; codes, names with digits and the
    product's name are not words to translate."""
    tokens = (token.strip(".,:;!?()·…\"'") for token in WRAPPED.sub(" ", text).split())
    return [token for token in tokens
            if re.fullmatch(r"[A-Za-z]{2,}(?:'[a-z]+)?", token) and token not in NAMES]


def _chrome_text(element) -> str:
    """A control's or heading's text, without the choices of a select inside it."""
    parts = [element.text or ""]
    for child in element:
        if isinstance(child.tag, str) and child.tag not in ("select", "option", "datalist"):
            parts.append(_chrome_text(child))
        parts.append(child.tail or "")
    return " ".join(parts)


def _declared_untranslated(element) -> bool:
    """Text that says it is not to be translated: ``translate="no"`` (data) or its own ``lang``
    (a language's own name in the language menu)."""
    return any(node.get("translate") == "no" or (node.get("lang") and node.tag != "html")
               for node in (element, *element.iterancestors()))


def _unmarked(page: str) -> list[str]:
    # A translated sentence may hold markup (a link in it): all of it is translated.
    tree = html.fromstring(WRAPPED.sub("⟦⟧", page))
    for element in tree.iter("script", "style"):
        element.drop_tree()
    found = []
    for element in tree.iter():
        if not isinstance(element.tag, str) or _declared_untranslated(element):
            continue
        for attribute in ATTRIBUTES:
            value = element.get(attribute)
            if value and _words(value):
                found.append(f"<{element.tag} {attribute}={value!r}>")
        if element.tag in CHROME:
            if _words(_chrome_text(element)):
                found.append(f"<{element.tag}> {' '.join(_chrome_text(element).split())!r}")
            continue
        own = " ".join(filter(None, [element.text, *[child.tail for child in element]]))
        words = _words(own)
        if len(words) >= 2 and STOPWORDS & {word.lower() for word in words}:
            found.append(f"<{element.tag}> {' '.join(own.split())!r}")
    return found


PAGES = {
    None: ["accounts:login"],
    "doctor": ["home", "imaging:worklist", "imaging:pacs_queue", "sharing:active", "accounts:security",
               "accounts:password_change", "rendering:layouts"],
    "nurse": ["home", "imaging:worklist"],
    "admin_staff": ["home", "imaging:worklist"],
    "auditor": ["home", "audit:console"],
    "it_admin": ["home", "sharing:active", "rendering:layouts_hospital"],
}


@pytest.mark.parametrize("role", list(PAGES))
def test_every_page_text_is_marked_for_translation(client, signed_in, pseudo_language, role):
    if role is not None:
        signed_in(role)
    problems = []
    for name in PAGES[role]:
        for query in ("", "?name=*") if name == "imaging:worklist" else ("",):
            response = client.get(reverse(name) + query, HTTP_ACCEPT_LANGUAGE="hu")
            assert response.status_code == 200, (name, response.status_code)
            page = response.content.decode()
            assert "⟦" in page, f"{name}: the pseudo-language did not apply"
            problems += [f"{name}{query}: {found}" for found in _unmarked(page)]
    assert problems == [], "text not marked for translation:\n" + "\n".join(problems)
