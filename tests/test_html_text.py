"""Markup removal with a real HTML parser: cut tags, escaped tags, CSS, JS, and text kept."""

from __future__ import annotations

import re

import pytest

from pipelines.html_text import CleaningCounts, clean_text, first_sentence, strip_code

CSS = (
    ".a-box-inner{background-color:#fff}#alohaBuyBoxWidget .selected{background-color:#fffbf3;"
    "border-color:#e77600;box-shadow:0 0 3px rgba(228,121,17,.5)}#aloha-cart-popover .aloha-cart"
    "{height:auto;overflow:hidden}@media (max-width:600px){.x{display:none}}.popover-tab"
)
MARKUP = re.compile(r"<[A-Za-z/!?][^<>]*>|<[A-Za-z][\w-]*\s+[\w-]+=|\{[^{}]*:[^{}]*\}|&amp;|&[a-z]+;")


@pytest.mark.parametrize(
    "raw, clean",
    [
        ('<span class="a-size-medium a-color-secondary"', None),  # only a cut tag
        ('Visa Gift Card <span class="a-size-medium a-color-secondary"', "Visa Gift Card"),
        ('<span class="a-size-medium a-color-secondary" Visa Gift Card', "Visa Gift Card"),
        ('class="a-size-medium">Visa Gift Card</span>', "Visa Gift Card"),
        ('<span class="x">Visa</span> <span>Card', "Visa Card"),
        ("size < 5 and > 3, I <3 it", "size < 5 and > 3, I <3 it"),
        ("&lt;br&gt;escaped&amp;nbsp;twice", "escaped twice"),
        ("Maggiano&#39;s Gift Card", "Maggiano's Gift Card"),
        ("<style>.a{color:red}</style><script>var x = 1;</script>Text", "Text"),
        (CSS, None),
        ("$25.00 " + CSS, "$25.00"),
        ('P.when("A").execute(function(A){ var x = 1; });', None),
        ("It will function (as intended) {really}", "It will function (as intended) {really}"),
        ("Ranked #1 in Gift Cards", "Ranked #1 in Gift Cards"),
        ("</span></span></span>", None),
        ("", None),
        (None, None),
    ],
)
def test_clean_text(raw: str | None, clean: str | None) -> None:
    assert clean_text(raw) == clean
    if clean:
        assert not MARKUP.search(clean)


def test_strip_code_keeps_text_without_braces() -> None:
    assert strip_code("plain text: no code") == "plain text: no code"
    assert strip_code("$10.00 " + CSS).split() == ["$10.00"]


def test_first_sentence_cuts_at_a_word() -> None:
    assert first_sentence("Great card. Use it anywhere.") == "Great card."
    long = first_sentence("word " * 60, max_chars=50)
    assert long is not None and len(long) <= 50 and long.startswith("word word")
    assert first_sentence(None) is None


def test_cleaning_counts() -> None:
    c = CleaningCounts()
    c.record("title", "<b>A</b>", "A")
    c.record("title", "Plain  text", "Plain text")  # whitespace only: not a cleaning
    c.record("title", "<span", None)
    c.record("title", None, None)
    assert c.as_dict() == {"title": {"values": 3, "cleaned": 2, "emptied": 1}}
