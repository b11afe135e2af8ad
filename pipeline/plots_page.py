"""The HTML page `dvc plots show` renders into, with its charting libraries inline, so it works offline.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN: without a network (a cluster node, a
train, an air-gapped site) it is a blank page. This page carries the three libraries inside it, as one
script bundled by ``vl-convert`` from the copies it ships; nothing is fetched when the page opens.

    python -m pipeline.plots_page [PATH]    # default: .dvc/plots.html

``scripts/setup.sh`` writes it, and ``.dvc/config`` names it (``plots.html_template = plots.html``,
relative to ``.dvc``), so `dvc plots show` uses it without options. It is generated rather than kept in
git: about 0.9 MB of third-party JavaScript that the installed package already holds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.atomic import write_text

VEGA_LITE = "5.21"  # DVC's plot templates are Vega-Lite 5 specifications
DEFAULT_PATH = Path(".dvc") / "plots.html"
# DVC fills these three placeholders; ``{scripts}`` is left out on purpose, since DVC would put its CDN
# <script> tags there
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>distillops plots</title>
    <script>
__BUNDLE__
    </script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
        img { max-width: 100%; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def page() -> str:
    """The page: DVC's placeholders and the Vega, Vega-Lite and Vega-Embed bundle."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    if "</script" in bundle.lower():  # would end the inline script early
        bundle = bundle.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    return PAGE.replace("__BUNDLE__", bundle)


def write(path: Path = DEFAULT_PATH) -> Path:
    write_text(path, page())
    return path


def ensure(path: Path = DEFAULT_PATH) -> Path | None:
    """Write the page if the repository (a ``.dvc`` folder here) lacks it; never fails a stage: without
    ``vl-convert`` it says how to get one and returns None."""
    if path.exists():
        return path
    if not path.parent.is_dir():
        return None
    try:
        return write(path)
    except ImportError:
        print(f"[plots] {path} is missing and vl-convert-python is not installed: `dvc plots show` needs the "
              f"page; pip install vl-convert-python, then python -m pipeline.plots_page")  # fmt: skip
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.plots_page", description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH), type=Path)
    args = parser.parse_args(argv)
    out = write(args.path)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): dvc plots show renders offline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
