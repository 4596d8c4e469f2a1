"""The reader's language on the viewer socket, and words translated where they are shown.

A websocket runs outside ``LocaleMiddleware``: :func:`rendering.consumers.reader_language` picks
the language as a page would. An error made in a render worker (no reader, maybe no Django set
up) crosses as its English template and values and is translated where the reader is told it;
``str()`` stays English for the log and the audit trail.
"""

from __future__ import annotations

import pickle

import pytest
from django.utils import translation
from django.utils.translation import gettext_noop

from rendering.consumers import reader_language
from rendering.engine.core import MissingVolumeError, RenderError
from rendering.protocol import ProtocolError, message_parse
from rendering.remote import REMOTE_ERRORS
from rendering.said import Said, said
from rendering.session import SessionError
from rendering.viewstate import ViewStateError, viewstate_from_dict
from rendering.workers import ERRORS, error_from_wire, error_wire


def _scope(*, cookie: str | None = None, accept: str | None = None) -> dict:
    headers = [(b"host", b"127.0.0.1")]
    if accept is not None:
        headers.append((b"accept-language", accept.encode()))
    return {"cookies": {"django_language": cookie} if cookie is not None else {}, "headers": headers}


def test_the_language_cookie_wins_over_the_browser_s_languages():
    assert reader_language(_scope(cookie="hu", accept="en-GB,en;q=0.9")) == "hu"
    assert reader_language(_scope(cookie="en", accept="hu-HU,hu;q=0.9")) == "en"


def test_without_a_cookie_the_best_offered_browser_language_is_chosen():
    assert reader_language(_scope(accept="hu-HU,hu;q=0.9,en;q=0.5")) == "hu"
    assert reader_language(_scope(accept="de-DE,de;q=0.9,hu;q=0.4,en;q=0.3")) == "hu"


def test_a_language_not_offered_falls_back_to_the_site_s(settings):
    settings.LANGUAGE_CODE = "en"
    assert reader_language(_scope(cookie="de", accept="fr-FR,de;q=0.8")) == "en"
    assert reader_language(_scope(cookie="klingon")) == "en"
    assert reader_language(_scope(accept="*")) == "en"
    assert reader_language({}) == "en"


def test_the_cookie_name_is_the_site_s(settings):
    settings.LANGUAGE_COOKIE_NAME = "gateway-language"
    scope = _scope(accept="en")
    scope["cookies"] = {"gateway-language": "hu", "django_language": "en"}
    assert reader_language(scope) == "hu"


def test_an_error_s_english_stays_for_the_log_and_its_words_are_translated_where_shown(reader_catalogue):
    language = reader_catalogue("layer %(layer)s: series %(series)s is not available")
    error = MissingVolumeError(gettext_noop("layer %(layer)s: series %(series)s is not available"),
                               layer=1, series="1.2.3")
    with translation.override(language):
        assert str(error) == "layer 1: series 1.2.3 is not available"
        assert said(error) == "⟦layer 1: series 1.2.3 is not available⟧"
    with translation.override("en"):
        assert said(error) == "layer 1: series 1.2.3 is not available"


def test_words_inside_words_are_translated_each_and_a_plain_error_is_said_as_it_stands(reader_catalogue):
    language = reader_catalogue("%(path)s: %(why)s", "must be a number")
    with pytest.raises(ViewStateError) as raised:
        viewstate_from_dict({"view": "axial", "layers": [{"series_id": "a", "window_center": "x",
                                                          "window_width": 1}]})
    with translation.override(language):
        assert str(raised.value) == "layers[0].window_center: must be a number"
        assert said(raised.value) == "⟦layers[0].window_center: ⟦must be a number⟧⟧"
        assert said(ValueError("not for translating")) == "not for translating"


def test_a_translation_that_breaks_its_placeholders_is_not_shown(tmp_path, settings):
    import polib

    catalogue = polib.POFile()
    catalogue.metadata = {"Content-Type": "text/plain; charset=UTF-8", "Language": "hu"}
    catalogue.append(polib.POEntry(msgid="view %(view)s has no layer %(layer)s", msgstr="nézet %(nézet)s"))
    target = tmp_path / "hu" / "LC_MESSAGES" / "django.mo"
    target.parent.mkdir(parents=True)
    catalogue.save_as_mofile(str(target))
    settings.LOCALE_PATHS = [tmp_path]
    error = SessionError(gettext_noop("view %(view)s has no layer %(layer)s"), view=0, layer=2)
    with translation.override("hu"):
        assert said(error) == "view 0 has no layer 2"


def test_a_worker_s_error_crosses_as_its_words_for_both_pools(reader_catalogue):
    language = reader_catalogue("the render queue is full; try again", "render failed (%(kind)s)")
    for known in (ERRORS, REMOTE_ERRORS):
        crossed = error_from_wire(known, *error_wire(RenderError(gettext_noop("the render queue is full; "
                                                                              "try again")), known))
        assert isinstance(crossed, RenderError) and str(crossed) == "the render queue is full; try again"
        with translation.override(language):
            assert said(crossed) == "⟦the render queue is full; try again⟧"
        hidden = error_from_wire(known, *error_wire(KeyError("secret detail"), known))
        assert str(hidden) == "render failed (KeyError)" and "secret" not in said(hidden)


def test_an_error_from_an_older_worker_without_words_is_said_as_it_came():
    crossed = error_from_wire(ERRORS, "ViewStateError", "state: must be an object", None)
    assert isinstance(crossed, ViewStateError) and said(crossed) == "state: must be an object"


def test_said_errors_pickle_with_their_words_and_their_own_fields():
    with pytest.raises(ProtocolError) as raised:
        message_parse("{not json", views=1)
    copy = pickle.loads(pickle.dumps(raised.value))  # noqa: S301  (its own bytes, just made)
    assert (copy.code, copy.of, str(copy)) == ("not_json", None, "the message is not valid JSON")
    assert copy.said == raised.value.said
    wrapped = SessionError.from_error(raised.value)
    assert wrapped.said == Said(gettext_noop("the message is not valid JSON"))


def test_words_joined_are_each_translated(reader_catalogue):
    language = reader_catalogue("no patient height")
    joined = Said.joined("; ", [Said(gettext_noop("no patient height")), "Units is CNTS"])
    assert str(joined) == "no patient height; Units is CNTS"
    with translation.override(language):
        assert joined.translated() == "⟦no patient height⟧; Units is CNTS"


def test_no_words_say_nothing_not_the_catalogue_s_header(reader_catalogue):
    with translation.override(reader_catalogue("no patient height")):
        assert said(RenderError()) == "" and Said("").translated() == ""
