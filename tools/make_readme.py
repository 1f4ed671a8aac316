"""Render README.md from nbs/index.ipynb with nbconvert (Quarto, which nbdev_readme needs, is not
installable here; see DESIGN.md section 3). nbdev directives are honoured: `#| hide` cells are dropped
and `#|` lines are removed from the cells that stay."""
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]


def strip_directives(nb):
    kept = []
    for cell in nb.cells:
        lines = cell.source.splitlines()
        directives = [l.replace(" ", "") for l in lines if l.startswith("#|")]
        if "#|hide" in directives or "#|exec_doc" in directives:
            continue
        cell.source = "\n".join(l for l in lines if not l.startswith("#|")).strip()
        kept.append(cell)
    nb.cells = kept
    return nb


def main():
    nb = nbformat.read(ROOT / "nbs" / "index.ipynb", as_version=4)
    body, _ = MarkdownExporter().from_notebook_node(strip_directives(nb))
    header = "<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->\n\n"
    text = header + body.strip() + "\n"
    target = ROOT / "README.md"
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
