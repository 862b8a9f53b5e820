"""report.html: report.md rendered by markdown-it-py (CommonMark with tables), every image inline."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping

from markdown_it import MarkdownIt

STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "pre{background:#f4f4f4;padding:.8em;font-size:15px;white-space:pre-wrap;overflow-wrap:anywhere}"
    "table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}"
    "th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}code{background:#f4f4f4}"
)


def render_html(markdown: str, images: Mapping[str, bytes]) -> str:
    """A self-contained HTML page: images become data URIs, so it opens with no other file."""
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    default_image = md.renderer.rules["image"]

    def inline_image(renderer, tokens, idx, options, env):
        token = tokens[idx]
        source = token.attrGet("src")
        if source in images:
            token.attrSet("src", "data:image/png;base64," + base64.b64encode(images[source]).decode())
        return default_image(tokens, idx, options, env)

    md.add_render_rule("image", inline_image)
    title = html.escape(markdown.splitlines()[0].lstrip("# ")) if markdown else "rcutune report"
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}</style></head><body>\n{md.render(markdown)}</body></html>\n"
    )
