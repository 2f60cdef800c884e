"""A study's ``REPORT.md`` as HTML for the Runs view, its figures served from the study folder.

Rendered with markdown-it-py in its safe preset: raw HTML in the Markdown is
shown as text, never run, and ``javascript:`` links are dropped. Each image's
source is mapped to the server's URL of that figure (``figures/NAME.png`` ->
``{figure_url}NAME.png``) and any other image is replaced by its alt text, so
the page loads nothing from outside; a relative link to one of the study's runs
(``runs/NAME``) becomes a link to that run's page.
"""

import posixpath

from markdown_it import MarkdownIt

from ..experiments.report.markdown import FIGURE_DIR


def render_report(text, figure_url, run_links):
    """The HTML of the Markdown ``text``.

    ``figure_url``: the URL prefix figures are served under; ``run_links``: ``{"runs/NAME": url}`` for the
    runs that can be linked to.
    """
    md = MarkdownIt("js-default")
    tokens = md.parse(text)
    for token in tokens:
        for child in token.children or ():
            if child.type == "image":
                child.attrs["src"] = _figure(child.attrs.get("src", ""), figure_url)
                if not child.attrs["src"]:  # not a figure of the folder: its alt text stands in for it
                    child.type, child.tag, child.attrs, child.children = "text", "", {}, None
            elif child.type == "link_open":
                href = str(child.attrs.get("href", ""))
                target = posixpath.normpath(href.rstrip("/")) if href and "://" not in href else None
                if target in run_links:
                    child.attrs["href"] = run_links[target]
                elif not href.startswith(("http://", "https://", "#")):
                    del child.attrs["href"]  # a file of the folder that is not served: plain text
    return md.renderer.render(tokens, md.options, {})


def _figure(src, figure_url):
    """The served URL of a ``figures/NAME`` source, or "" for any other source."""
    src = str(src)
    if "://" in src or src.startswith("/"):
        return ""
    folder, name = posixpath.split(posixpath.normpath(src))
    return figure_url + name if folder == FIGURE_DIR and name else ""
