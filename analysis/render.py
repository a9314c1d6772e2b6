"""A report as a list of blocks, rendered to Markdown and to one self-contained HTML page.

Blocks are tuples: ("h1" | "h2" | "h3", text), ("p", text), ("ul", [item, ...]), ("pre", text),
("table", header, rows), ("img", path relative to the report, caption). Text may hold the inline
Markdown the reports use, `code` and **bold**; the HTML renders them as <code> and <strong>
(never as literal backticks or asterisks), exponents written x^a as superscripts, and inlines
each figure as a base64 PNG, so the page needs no other file.
"""
from __future__ import annotations

import base64
import html
import pathlib
import re

# `code` first (its content is literal), then **bold** in the text around it
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_SUP = re.compile(r"(?<=[\w)])\^([\w*αβγδεσ]+)")  # N^α, C^a, (N_c / N)^α_N: exponents as superscripts
_NUM = r"[-+−]?[\d.,]+(?:e[-+]?\d+)?%?"
_NUMERIC = re.compile(rf"^(?:{_NUM}|{_NUM}–{_NUM}|–)$")  # a number, a range "lo – hi", or none

CSS = """
body{font-family:Georgia,'STIX Two Text','Times New Roman',serif;max-width:1100px;margin:2em auto;
 padding:0 1.2em;line-height:1.45;color:#1a1a1a}
h1{font-size:1.7em;border-bottom:2px solid #333;padding-bottom:.2em}
h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #bbb;padding-bottom:.15em}
h3{font-size:1.08em;margin-top:1.4em}
code,pre{font-family:'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:.86em}
code{background:#f1f1f1;padding:.05em .3em;border-radius:3px;overflow-wrap:anywhere}
pre{background:#f6f6f6;border:1px solid #e2e2e2;padding:8px 10px;overflow-x:auto;line-height:1.3}
.scroll{overflow-x:auto;margin:.8em 0}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th{background:#f0f0f0;border-bottom:2px solid #888;text-align:center}
td,th{border:1px solid #d0d0d0;padding:3px 7px;vertical-align:top}
td{text-align:left}td.num{text-align:right;white-space:nowrap}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1.2em 0;text-align:center}
img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.3em;font-style:italic}
li{margin:.2em 0}
"""


def inline_html(text: str) -> str:
    """Escape `text` for HTML, rendering `code` spans, **bold** and x^exponent as a superscript."""
    parts = _CODE.split(text)  # even indices: prose; odd: code contents
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            out.append(_SUP.sub(r"<sup>\1</sup>", _BOLD.sub(r"<strong>\1</strong>", html.escape(part))))
    return "".join(out)


def markdown(blocks) -> str:
    """The blocks as GitHub-flavoured Markdown (figures linked by their relative paths)."""
    out = []
    for kind, *body in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {body[0]}\n")
        elif kind == "p":
            out.append(f"{body[0]}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in body[0]) + "\n")
        elif kind == "pre":
            out.append(f"```\n{body[0]}\n```\n")
        elif kind == "table":
            header, rows = body
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("")
        elif kind == "img":
            path, caption = body
            out.append(f"![{caption}]({path})\n\n*{caption}*\n")
    return "\n".join(out)


def _cell(text: str, tag: str = "td") -> str:
    cls = " class='num'" if tag == "td" and _NUMERIC.match(text.replace(" ", "")) else ""
    return f"<{tag}{cls}>{inline_html(text)}</{tag}>"


def page(blocks, root: pathlib.Path, title: str) -> str:
    """The blocks as one self-contained HTML page; figures (paths relative to `root`) inlined."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for kind, *body in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{inline_html(body[0])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{inline_html(body[0])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{inline_html(item)}</li>" for item in body[0]) + "</ul>")
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(body[0])}</pre>")
        elif kind == "table":
            header, rows = body
            parts.append("<div class='scroll'><table><thead><tr>" + "".join(_cell(h, "th") for h in header)
                         + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows]
            parts.append("</tbody></table></div>")
        elif kind == "img":
            path, caption = body
            data = base64.b64encode((root / path).read_bytes()).decode()
            parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{inline_html(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
