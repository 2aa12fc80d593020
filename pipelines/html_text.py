"""Markup out of Amazon text fields: HTML (whole, fragmentary or escaped), CSS and JS.

Why a real parser (selectolax's lexbor engine, an HTML5-conformant tokenizer in C):
the 2018 dumps carry cut-off tags (`<span class="a-size-medium a-color-secondary"` with no
closing `>`), escaped and double-escaped markup (`&lt;br&gt;`, `&amp;nbsp;`), `<script>` /
`<style>` bodies and bare CSS pasted into fields. A regex cannot tell `<3` or `size < 5` (text,
per the HTML5 tokenizer) from a tag, nor where an attribute value ends; the parser does exactly
what a browser does. Measured on the real Gift Cards metadata (8,015 non-empty title /
description / brand / category values, 92 with markup, every value parsed; 2 cores shared):
regex cleaner 22 ms, selectolax-lexbor 78 ms, lxml.html 107 ms (and lxml raises "Document is
empty" on markup-only values such as `</span></span>`). selectolax is the faster of the two and
follows HTML5; it is called only on values that contain a tag-like `<`, so clean values cost a
regex search.

Unterminated tags at the start or end of a value are markup, not text (they are what is left of
a tag the scraper cut). CSS rules (`.a-box-inner{background-color:#fff}…`) are removed with the
selectors they were attached to; a value with JavaScript statements in it is dropped whole.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from selectolax.lexbor import LexborHTMLParser

_WS = re.compile(r"\s+")
# HTML5: '<' starts a tag only before a letter, '/', '!' or '?' — "<3" and "size < 5" are text
_MARKUP = re.compile(r"<[A-Za-z/!?]")
_ENTITY = re.compile(r"&(?:#\d+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]{1,31});")
_QUOTED_ATTR = r"""[\w:.-]+\s*=\s*(?:"[^"]*"|'[^']*')"""
# an opening tag at the start of a value that never closes: tag name + quoted attributes, no '>'
_CUT_HEAD = re.compile(rf"""^\s*<[A-Za-z][\w:-]*(?:\s+{_QUOTED_ATTR})*(?![^<]*>)""")
# the attribute tail of a tag whose '<name' was cut off: `class="x">Real text`
_ORPHAN_ATTRS = re.compile(rf"""^\s*(?:{_QUOTED_ATTR}\s*)+/?>""")
# a tag opened at the end of a value that never closes
_CUT_TAIL = re.compile(r"<[A-Za-z/!?][^<>]*$")
# a CSS declaration block: '{', then 'property: value'
_CSS_BLOCK = re.compile(r"\{\s*[-\w]+\s*:[^{}]*\}")
# a whitespace-separated piece of a selector: CSS punctuation, or an HTML tag name
_SELECTOR_TOKEN = re.compile(
    r"^(?:[.#@*:\[>+~,(]\S*|(?:a|b|i|p|div|span|td|th|tr|table|tbody|thead|ul|ol|li|img|body|html|"
    r"h[1-6]|input|button|label|form|select|option|section|header|footer|nav|iframe|svg)"
    r"(?:[.#:\[,>]\S*)?|\S*[.#:\[][A-Za-z_-]\S*)$"
)
_JS = re.compile(
    r"\bfunction\s*[\w$]*\s*\((?:\s*[\w$]+\s*(?:,\s*[\w$]+\s*)*)?\)\s*\{|\}\s*\)\s*;|\bvar\s+[A-Za-z_$][\w$]*\s*=|\b(?:document|window)\.\w+\s*[.(=]"
    r"|=>\s*\{|\bP\.when\(|\bjQuery\("
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def unescape(value: str, rounds: int = 3) -> str:
    """Entities decoded until none is left (the dumps escape some values twice: `&amp;nbsp;`)."""
    for _ in range(rounds):
        if "&" not in value or not _ENTITY.search(value):
            break
        value = html.unescape(value)
    return value


def _parse_text(value: str) -> str:
    tree = LexborHTMLParser(value)
    tree.strip_tags(["script", "style", "template"])
    return tree.text(separator=" ") if tree.body is not None else ""


def strip_code(value: str) -> str:
    """CSS rules removed; a value with JavaScript in it → '' (there is no text to save).

    Scraped CSS comes as one run of rules, often cut at both ends: everything from the first
    rule's selector to the last '}' goes, then selector pieces (or a cut rule) left at the ends.
    """
    if _JS.search(value):
        return ""
    first = _CSS_BLOCK.search(value)
    if first is None:
        return value
    head = _trim_selector(value[: first.start()].split(" "), from_end=True)
    tail = value[value.rfind("}") + 1 :]
    if "{" in tail:  # a rule cut before its '}'
        tail = tail[: tail.find("{")].rsplit(" ", 1)[0] if " " in tail[: tail.find("{")] else ""
    tail = _trim_selector(tail.split(" "), from_end=False)
    return f"{head} {tail}"


def _trim_selector(tokens: list[str], *, from_end: bool) -> str:
    """The tokens left once selector-looking ones are removed from one end."""
    seq = list(reversed(tokens)) if from_end else list(tokens)
    while seq and (not seq[0].strip() or _SELECTOR_TOKEN.match(seq[0].strip())):
        seq.pop(0)
    return " ".join(reversed(seq) if from_end else seq)


def clean_text(value: str | None) -> str | None:
    """Plain text of a raw field: entities decoded, markup / CSS / JS removed, spaces collapsed."""
    if not value:
        return None
    s = unescape(value)
    if "<" in s or "=" in s:
        s = _ORPHAN_ATTRS.sub(" ", s)
        s = _CUT_TAIL.sub(" ", _CUT_HEAD.sub(" ", s))
        if _MARKUP.search(s):
            s = _parse_text(s)
            s = _CUT_TAIL.sub(" ", s)  # an escaped cut tag (`&lt;span class=…`) is text to the parser
    s = strip_code(s)
    s = _WS.sub(" ", s).strip()
    return s or None


def first_sentence(value: str | None, max_chars: int = 120) -> str | None:
    """The first sentence of a cleaned text, cut at a word, for use as an item's name."""
    if not value:
        return None
    s = _SENTENCE.split(value, maxsplit=1)[0].strip()
    if len(s) > max_chars:
        cut = s.rfind(" ", 0, max_chars)
        s = s[: cut if cut > max_chars // 2 else max_chars].rstrip(" ,;:-")
    return s or None


@dataclass
class CleaningCounts:
    """Per field: values read (non-empty), changed by cleaning, and emptied by it."""

    fields: dict[str, dict[str, int]] = field(default_factory=dict)

    def record(self, name: str, raw: str | None, clean: str | None) -> None:
        c = self.fields.setdefault(name, {"values": 0, "cleaned": 0, "emptied": 0})
        raw_s = raw.strip() if raw else ""
        if not raw_s:
            return
        c["values"] += 1
        if clean is None:
            c["emptied"] += 1
            c["cleaned"] += 1
        elif clean != _WS.sub(" ", raw_s):
            c["cleaned"] += 1

    def add(self, name: str, key: str, n: int = 1) -> None:
        c = self.fields.setdefault(name, {"values": 0, "cleaned": 0, "emptied": 0})
        c[key] = c.get(key, 0) + n

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self.fields.items()}
