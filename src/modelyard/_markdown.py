"""Untrusted text (a description, a reason, dataset content, a model's output) as literal Markdown, for the
model card and the evaluation report: nothing it holds becomes a link, an image, raw HTML, emphasis, code, a
table cell or a block. Standard library only: training imports it, and must stay free of the stores."""

from __future__ import annotations

import re

# Inline Markdown (raw HTML and <...> autolinks are stopped by writing & and < as entities).
_INLINE = re.compile(r"([\\`*_\[\]|~])")
# What GFM viewers (GitHub, remark-gfm, markdown-it's linkify) turn into a link in plain text: a scheme's
# "://", "www." and an e-mail address's "@" (one followed by a domain). A backslash before the ":", "." or
# "@" renders nothing but splits the text the autolink is looked for in.
_AUTOLINK = re.compile(r":(?=//)|(?<=www)\.|@(?=\S*\.)", re.IGNORECASE)
# What makes a paragraph a heading, quote, list, rule or setext underline instead.
_BLOCK = re.compile(r"^(\d*)([#>+=*.)-])")


def md_text(v: object) -> str:
    """``v`` as literal Markdown text on one line (a newline would end a table row or start a block)."""
    text = " ".join(str(v).replace("&", "&amp;").replace("<", "&lt;").splitlines()).strip()
    return _AUTOLINK.sub(lambda m: "\\" + m[0], _INLINE.sub(r"\\\1", text))


def md_paragraph(v: object) -> str:
    """``v`` as a literal paragraph: :func:`md_text` that also cannot start a heading, quote, list or rule."""
    return _BLOCK.sub(r"\1\\\2", md_text(v))
