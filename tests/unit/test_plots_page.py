"""The offline page for `dvc plots show`."""

from __future__ import annotations

import re

from dvc_render.html import HTML

from pipeline import plots_page


def test_the_page_inlines_the_charting_libraries_and_keeps_dvcs_placeholders(tmp_path):
    path = plots_page.write(tmp_path / "plots.html")
    page = path.read_text()
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page  # where DVC would put its CDN <script> tags
    assert not re.search(r"<script[^>]+src=", page)
    for name in ("vegaEmbed", "vega", "vegaLite"):
        assert f"window.{name}=" in page, name
    filled = HTML(page).with_scripts('<script src="https://cdn.example/x.js"></script>')
    filled = filled.with_element("<div id='plot'></div>").embed()
    assert "<div id='plot'></div>" in filled and "cdn.example" not in filled


def test_ensure_writes_the_page_once_and_only_in_a_dvc_repository(tmp_path):
    page = tmp_path / ".dvc" / "plots.html"
    assert plots_page.ensure(page) is None and not page.exists()  # no .dvc folder: not a repository
    page.parent.mkdir()
    assert plots_page.ensure(page) == page and "{plot_divs}" in page.read_text()
    page.write_text("{plot_divs} kept")  # an existing page (perhaps the user's own) is left alone
    assert plots_page.ensure(page) == page and page.read_text() == "{plot_divs} kept"
