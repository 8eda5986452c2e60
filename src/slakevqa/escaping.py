"""Data and model text made safe to show: in a terminal (:func:`printable`) and in Markdown (:func:`md_text`).

Questions, answers, predictions, KG rows, file names and model names come from files anyone can
edit. Printed raw, an ESC sequence in a question can recolour, retitle or rewrite a terminal, and
a bidi override (U+202E) can show text in an order other than its bytes'. Written raw into
Markdown, a newline followed by ``#`` starts a heading, ``|`` splits a table cell, ``<script>``
is HTML and ``[x](javascript:...)`` a link. Every writer of data text into either goes through
one of these functions. They sit at the root of the package because the writers sit in several
layers (``evaluation/diagnose_markdown.py``, ``reporting/``, ``commands/``), and the import
direction (docs/architecture.md) lets all of them import the root and nothing lower.
"""

from __future__ import annotations

import html
import re

# C0 controls, DEL, C1 controls (the ESC of terminal sequences is \x1b; C1 \x9b is a one-byte CSI),
# line and paragraph separators, and the bidi embeddings, overrides and isolates of "Trojan Source".
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Everything str.splitlines breaks on; \r\n first so that it becomes one space, not two.
_LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")
# Markdown's inline specials: backslash, code, emphasis, strikethrough, links/images, headings, table
# pipes. ``_`` between two letters or digits cannot start or end emphasis (CommonMark's flanking rule),
# so ``llava_med`` stays as it is; anywhere else it is escaped.
_MD_SPECIAL = re.compile(r"[\\`*~\[\]#|]|(?<![^\W_])_|_(?![^\W_])")
# What opens a block when it starts a line: list items, setext underlines, ordered list numbers.
_MD_LINE_START = re.compile(r"^(\s*)(?:([-+=])|(\d{1,9})(?=[.)](?:\s|$)))")
_PIPE = re.compile(r"(?<!\\)((?:\\\\)*)\|")  # a pipe after an even number of backslashes: not yet escaped


def _visible(match: re.Match) -> str:
    char = match.group()
    return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def _escape_line_start(match: re.Match) -> str:
    indent, marker, number = match.groups()
    return indent + ("\\" + marker if marker else number + "\\")


def printable(text: object, keep_newlines: bool = False) -> str:
    r"""``text`` with control characters and bidi controls replaced by visible escapes, for a terminal.

    C0 (newline and tab included, unless ``keep_newlines`` keeps ``\n``), DEL, C1, U+2028/U+2029
    and the bidi controls U+202A-U+202E, U+2066-U+2069 become ``\xNN`` / ``\uNNNN`` (``\n``,
    ``\r``, ``\t`` by name), so one field prints as one line and changes nothing but its own text.

    >>> printable("Lung\x1b[2J\x1b]0;pwned\x07 \u202eevil\nfact: fake")
    'Lung\\x1b[2J\\x1b]0;pwned\\x07 \\u202eevil\\nfact: fake'
    >>> printable("肺 Café ✓")
    '肺 Café ✓'
    """
    text = str(text)
    if keep_newlines:
        return "\n".join(_UNSAFE.sub(_visible, line) for line in text.split("\n"))
    return _UNSAFE.sub(_visible, text)


def one_line(text: object) -> str:
    r"""``text`` with every line break (``\r\n``, ``\n``, ``\r``, U+2028, ...) turned into one space.

    >>> one_line("What is\r\nthis?\n# Heading")
    'What is this? # Heading'
    """
    return _LINE_BREAK.sub(" ", str(text))


def md_text(value: object) -> str:
    r"""``value`` as Markdown that renders as its own text and nothing else, on one line.

    Line breaks become spaces, other control characters visible escapes (:func:`printable`),
    ``&``, ``<``, ``>`` HTML entities, Markdown specials backslash-escaped (``\ ` * ~ [ ] # |``
    and ``_`` at a word's edge), and a list, number or underline marker at the start escaped. Safe
    in a table cell, a heading, a list item or a paragraph; ordinary words, numbers, paths and
    names like ``llava_med`` or ``T2-weighted (MRI)`` come back unchanged.

    >>> md_text("<script>alert(1)</script>\n# Heading | [x](javascript:alert(1)) *bold* _it_")
    '&lt;script&gt;alert(1)&lt;/script&gt; \\# Heading \\| \\[x\\](javascript:alert(1)) \\*bold\\* \\_it\\_'
    >>> md_text("hf model from /models/llava_med-7b (bfloat16 on cuda, sdpa)")
    'hf model from /models/llava_med-7b (bfloat16 on cuda, sdpa)'
    >>> md_text("- item"), md_text("1. first"), md_text(42)
    ('\\- item', '1\\. first', '42')
    """
    text = html.escape(printable(one_line(value).replace("\t", " ")), quote=False)
    text = _MD_SPECIAL.sub(lambda m: "\\" + m.group(), text)
    return _MD_LINE_START.sub(_escape_line_start, text, count=1)


def md_cell(text: object) -> str:
    r"""A table cell that cannot end its row or its cell: one line, printable, every pipe escaped.

    For cells that are already Markdown (ours, or :func:`md_text` output): a pipe already escaped
    is left as it is, so escaping twice changes nothing.

    >>> md_cell("a|b\nc"), md_cell(md_text("a|b"))
    ('a\\|b c', 'a\\|b')
    """
    return _PIPE.sub(lambda m: m.group(1) + "\\|", printable(one_line(text)))


def md_code(text: object) -> str:
    r"""``text`` as an inline code span: shown verbatim (no escapes inside), on one line.

    The fence is one backtick longer than the longest run inside, so no content closes it
    early; CommonMark shows code-span content as text, never as HTML or a link.

    >>> md_code("Yes"), md_code("a `b` c"), md_code("`x")
    ('`Yes`', '``a `b` c``', '`` `x ``')
    """
    content = printable(one_line(text))
    fence = "`" * (max((len(run) for run in re.findall("`+", content)), default=0) + 1)
    pad = " " if content.startswith("`") or content.endswith("`") else ""
    return f"{fence}{pad}{content}{pad}{fence}"


def md_code_block(text: object, info: str = "text") -> list[str]:
    r"""``text`` as a fenced code block, one list item per line (fence lines included).

    Lines stay lines; control characters other than ``\n`` become visible (a lone ``\r`` would
    otherwise end a line in Markdown); the fence is longer than any backtick run inside.

    >>> md_code_block("[INST] <image>\n```\n# not a heading")
    ['````text', '[INST] <image>', '```', '# not a heading', '````']
    """
    content = printable(text, keep_newlines=True)
    fence = "`" * max(3, max((len(run) for run in re.findall("`+", content)), default=0) + 1)
    return [fence + info, *content.split("\n"), fence]
