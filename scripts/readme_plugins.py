"""Rewrite the plugin table in README.md from the installed built-ins (`make readme`).

The table sits between the two marker lines below; tests/unit/test_registry.py fails when it is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.cli import markdown_table, plugin_rows

BEGIN, END = "<!-- plugins:begin -->", "<!-- plugins:end -->"


def builtin_table() -> str:
    return markdown_table([r for r in plugin_rows() if r["distribution"].startswith("distillops==")])


def main(readme: Path = Path("README.md")) -> int:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"{readme}: the markers {BEGIN} / {END} are missing", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{builtin_table()}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
