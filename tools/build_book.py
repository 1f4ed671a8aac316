"""`make book`: execute the chapters on the phantoms and render a static HTML book (DESIGN.md section 3).

    python tools/build_book.py                      # every chapter in nbs/ -> book/
    python tools/build_book.py --only 01_cnn_basics 05a_metrics --out /tmp/book
    python tools/build_book.py --no-execute         # render the notebooks as they are (no kernel)
    python tools/build_book.py --student-copy handout/   # notebooks without the exercise solutions

Chapters are the notebooks `nbs/NN*.ipynb`; the two-digit prefix is the chapter of the book (issue 7),
so a new notebook joins the book, in name order, without any change here. `nbs/experiments/` holds
papermill notebooks, not chapters, and `index.ipynb` is the README.

Each notebook runs in the project's kernel with `nbs/` as working directory and a time budget per
chapter (`--timeout`); TensorFlow's and the kernels' start-up lines (`STARTUP_NOISE`, chapter 0) are kept
off the console, as `medcnn-paper` keeps them (`--verbose` shows them), and out of the pages.
`#| eval: false` cells are skipped, as `nbdev_test` skips them; `#| hide` cells
and the `#|` directive lines are left out of the pages. Plotly figures are executed with the
`plotly_mimetype` renderer, so the outputs carry the figure as JSON, and drawn on the page by the
plotly.js that ships inside the installed `plotly` package, copied once to `book/assets/`: the figures
stay interactive without a network. Formulas are typeset by MathJax 2: Debian's `libjs-mathjax`
(`/usr/share/javascript/mathjax`, linked as `book/assets/mathjax`) when it is installed, so the book
works offline; otherwise nbconvert's CDN copy, and offline the formulas then show as TeX source.

A chapter that fails is still rendered, with its outputs up to the failing cell and a banner naming the
cell and the error; the other chapters are built, and the exit code is 1. Wall times go to the pages, to
the index and to `book/timings.json`. The latest `make paper` outputs (`outputs/<profile>/tables`,
`figures`) are shown on a "Results" page linked from chapter 6.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import html
import json
import os
import platform
import re
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jinja2
import nbformat
from nbconvert import HTMLExporter
from nbconvert.filters import markdown2html_mistune

from medcnn_nb.config import STARTUP_NOISE, NativeStderrFilter  # the start-up lines `medcnn-paper` drops (chapter 0)

ROOT = Path(__file__).resolve().parents[1]

# The book's chapters follow the paper (issue 7); a notebook's two-digit prefix says which it belongs to.
CHAPTERS = {
    0: "Set-up: configuration and outputs",
    1: "CNN basics and Eq. (1)",
    2: "Data and preprocessing",
    3: "Optimisation: structures and losses",
    4: "Transfer learning",
    5: "Experiments and metrics",
    6: "Results: Tables 1-2 and Figure 3",
    7: "Discussion: limitations, leakage and what the paper leaves open",
}
RESULTS_CHAPTER = 6
PLOTLY_MIME = "application/vnd.plotly.v1+json"
LOCAL_MATHJAX = Path("/usr/share/javascript/mathjax")  # Debian package libjs-mathjax
MATHJAX_QUERY = "?config=TeX-AMS_CHTML-full,Safe"     # nbconvert's own choice
SOLUTION_RE = re.compile(r"<details>\s*<summary>\s*Solution.*?</details>", re.S | re.I)
DIRECTIVE_RE = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*)$")


@dataclass
class Page:
    "One notebook of the book and what happened when it was built."
    source: Path           # the notebook
    chapter: int           # book chapter (the two-digit prefix)
    title: str             # the notebook's H1
    summary: str = ""      # the `>` line under the H1
    status: str = "not executed"  # "ok", "failed", "not executed"
    seconds: float | None = None  # wall time of the execution, kernel start included
    error: dict | None = None     # {"cell": index, "ename", "evalue"} when it failed
    skipped_cells: int = 0        # `#| eval: false` cells not executed

    @property
    def stem(self) -> str: return self.source.stem
    @property
    def href(self) -> str: return f"{self.stem}.html"


# ----------------------------------------------------------------------------------------------- finding
def chapter_of(path: Path) -> int | None:
    "The book chapter of a notebook from its two-digit prefix (`05a_metrics` -> 5), or None."
    m = re.match(r"^(\d\d)", path.name)
    return int(m.group(1)) if m else None


def title_of(nb) -> tuple[str, str]:
    "The first H1 of the notebook and the `>` summary line that follows it."
    for cell in nb.cells:
        if cell.cell_type != "markdown": continue
        lines = cell.source.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("# "):
                rest = [l for l in lines[i + 1:] if l.strip()]
                quote = []
                for l in rest:  # the `>` block right under the title, which may span lines
                    if not l.startswith(">"): break
                    quote.append(l.lstrip(">").strip())
                return line[2:].strip(), " ".join(quote)
    return "", ""


def find_chapters(nbs: Path, only: list[str] | None = None) -> list[Page]:
    "The chapter notebooks `NN*.ipynb` directly in `nbs`, in name order (`only`: stems or globs to keep)."
    pages = []
    for path in sorted(nbs.glob("[0-9][0-9]*.ipynb")):
        if only and not any(path.match(f"{o}.ipynb") or path.match(o) or path.stem == o for o in only):
            continue
        nb = nbformat.read(path, as_version=4)
        title, summary = title_of(nb)
        pages.append(Page(path, chapter_of(path), title or path.stem, summary))
    if only:
        unmatched = [o for o in only if not any(p.source.match(f"{o}.ipynb") or p.source.match(o) or p.stem == o
                                               for p in pages)]
        if unmatched: raise SystemExit(f"build_book: no chapter notebook in {nbs} matches {unmatched}")
    return pages


# --------------------------------------------------------------------------------------------- directives
def directives(cell) -> dict[str, str]:
    "The nbdev `#| name: value` directives of a code cell."
    out = {}
    if cell.cell_type != "code": return out
    for line in cell.source.splitlines():
        m = DIRECTIVE_RE.match(line)
        if m: out[m.group(1).replace("-", "_")] = m.group(2).strip()
    return out


def skip_eval(cell) -> bool:
    return directives(cell).get("eval", "").lower() in ("false", "0", "no")


def strip_directives(nb):
    "Drop `#| hide` cells and directive-only cells; remove `#|` lines from the rest (a copy)."
    nb = copy.deepcopy(nb)
    kept = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            d = directives(cell)
            if "hide" in d: continue
            code = "\n".join(l for l in cell.source.splitlines() if not DIRECTIVE_RE.match(l)).strip("\n")
            if not code.strip() and not cell.get("outputs"): continue
            if "export" in d or "exports" in d:
                cell.metadata["book_exported"] = True
            cell.source = code
        kept.append(cell)
    nb.cells = kept
    return nb


# ---------------------------------------------------------------------------------------------- executing
def kernel_name() -> str:
    "The project's kernel (`make install` registers `medcnn_nb`); else python3 from this interpreter's PATH."
    from jupyter_client.kernelspec import KernelSpecManager
    specs = KernelSpecManager().find_kernel_specs()
    return "medcnn_nb" if "medcnn_nb" in specs else "python3"


def execute(page: Page, nb, cwd: Path, timeout: float, kernel: str):
    "Run `nb` in place; fill `page.status/seconds/error`. Never raises for a failing notebook."
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    class BookClient(NotebookClient):
        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            if cell.cell_type == "code" and skip_eval(cell):
                cell.outputs = []; cell.execution_count = None; page.skipped_cells += 1
                cell.metadata["book_skipped"] = True
                return cell
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)

    start = time.monotonic()
    deadline = start + timeout
    current = {"index": None}
    client = BookClient(nb, kernel_name=kernel, resources={"metadata": {"path": str(cwd)}},
                        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
                        startup_timeout=120, allow_errors=False,
                        # a finished kernel is killed, not asked to shut down: that request races ipykernel's
                        # teardown and can print a ZMQError traceback (chapter 06b, `run_notebook`)
                        shutdown_kernel="immediate",
                        on_cell_start=lambda cell, cell_index: current.update(index=cell_index))
    try:
        client.execute()
        page.status = "ok"
    except CellExecutionError as e:
        page.status = "failed"
        page.error = {"cell": current["index"], "ename": e.ename, "evalue": e.evalue}
    except CellTimeoutError:
        page.status = "failed"
        page.error = {"cell": current["index"], "ename": "Timeout",
                      "evalue": f"the chapter ran past its budget of {timeout:g} s (--timeout)"}
    except DeadKernelError as e:
        page.status = "failed"
        page.error = {"cell": current["index"], "ename": "DeadKernelError", "evalue": str(e).strip()[:500]}
    except Exception as e:  # a kernel that cannot start, a broken notebook: report and go on
        page.status = "failed"
        page.error = {"cell": current["index"], "ename": type(e).__name__, "evalue": str(e).strip()[:500]}
    page.seconds = round(time.monotonic() - start, 2)
    return nb


# ---------------------------------------------------------------------------------------------- rendering
def drop_backend_noise(nb):
    "Remove TensorFlow's C++ start-up lines (`STARTUP_NOISE`) from stderr outputs (in place)."
    # every chapter that imports Keras would otherwise open with them
    for cell in nb.cells:
        if cell.cell_type != "code": continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = "".join(l for l in out.text.splitlines(keepends=True) if not STARTUP_NOISE.match(l.rstrip("\n")))
                if not text.strip(): continue
                out.text = text
            kept.append(out)
        cell.outputs = kept
    return nb


def plotly_to_html(nb):
    "Replace each plotly JSON output by a div drawn with the page's local plotly.js (in place)."
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY_MIME not in data: continue
            fig = data.pop(PLOTLY_MIME)
            fig = json.loads(fig) if isinstance(fig, str) else fig
            div = f"plotly-{uuid.uuid4().hex[:12]}"
            height = (fig.get("layout") or {}).get("height") or 450
            args = ", ".join(json.dumps(fig.get(k) or d).replace("</", "<\\/")
                             for k, d in (("data", []), ("layout", {})))
            config = json.dumps({"responsive": True, **(fig.get("config") or {})})
            data["text/html"] = (f'<div id="{div}" class="plotly-graph-div book-plotly" '
                                 f'style="height:{int(height)}px; width:100%;"></div>\n'
                                 f'<script>Plotly.newPlot("{div}", {args}, {config});</script>')
            data.pop("text/plain", None)
    return nb


BOOK_TEMPLATE = r"""
{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}
<script src="assets/plotly.min.js" charset="utf-8"></script>
{%- endblock html_head_js -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block extra_css %}
<style>
.book-nav { display:flex; justify-content:space-between; gap:1em; padding:.6em 1em; margin:0 0 1em 0;
            background:#f3f5f8; border-bottom:1px solid #d0d7de; font-family:sans-serif; font-size:14px; }
.book-nav a { text-decoration:none; color:#0b5cad; }
.book-nav .book-here { color:#555; }
.book-banner { margin:1em; padding:.8em 1em; border-left:6px solid #c62828; background:#fdecea;
               font-family:sans-serif; }
.book-banner.ok { border-left-color:#2e7d32; background:#edf7ee; }
.book-foot { margin:2em 1em 1em; color:#666; font-family:sans-serif; font-size:13px; }
.book-toc td, .book-toc th { padding:.25em .8em; text-align:left; }
.book-exported { font-size:11px; color:#7a5c00; font-family:sans-serif; }
details { border:1px solid #d0d7de; border-radius:4px; padding:.3em .8em; margin:.5em 0; }
details > summary { cursor:pointer; font-weight:600; }
iframe.book-figure { width:100%; height:520px; border:1px solid #d0d7de; }
</style>
{% endblock extra_css %}
{%- block body_header -%}
{{ super() }}
{{ resources.book.nav }}
{{ resources.book.banner }}
{%- endblock body_header -%}
{% block input_group -%}
{%- if cell.metadata.get('book_exported') -%}<div class="book-exported">exported to the library</div>{%- endif -%}
{{ super() }}
{%- endblock input_group %}
{% block body_footer %}
{{ resources.book.footer }}
{{ resources.book.nav }}
{{ super() }}
{% endblock body_footer %}
"""


def exporter(mathjax_url: str | None = None) -> HTMLExporter:
    kw = {"mathjax_url": mathjax_url} if mathjax_url else {}
    return HTMLExporter(template_name="lab", template_file="book.html.j2",
                        extra_loaders=[jinja2.DictLoader({"book.html.j2": BOOK_TEMPLATE})], **kw)


def install_assets(out: Path) -> str | None:
    "Copy plotly.js into `out/assets`; link Debian's MathJax there when installed. Returns the MathJax URL."
    from medcnn_nb.report import write_plotly_js  # the one way figures get their local plotly.js
    assets = out / "assets"
    write_plotly_js(assets)
    link = assets / "mathjax"
    if (LOCAL_MATHJAX / "MathJax.js").exists():
        if not link.exists():
            if link.is_symlink(): link.unlink()
            link.symlink_to(LOCAL_MATHJAX, target_is_directory=True)  # 54 MB: linked, not copied
        return "assets/mathjax/MathJax.js" + MATHJAX_QUERY
    return None


def nav_html(prev: tuple[str, str] | None, here: str, nxt: tuple[str, str] | None) -> str:
    "The bar at the top and bottom of each page: previous, contents, next."
    prev_html = (f'<a class="book-prev" href="{prev[0]}">&larr; {html.escape(prev[1])}</a>' if prev else "<span></span>")
    next_html = (f'<a class="book-next" href="{nxt[0]}">{html.escape(nxt[1])} &rarr;</a>' if nxt else "<span></span>")
    return (f'<nav class="book-nav">{prev_html}<span class="book-here"><a href="index.html">Contents</a> '
            f'&middot; {html.escape(here)}</span>{next_html}</nav>')


def render(nb, title: str, out: Path, nav: str, banner: str = "", footer: str = "",
           mathjax_url: str | None = None):
    "Write `nb` as one HTML page of the book."
    nb = drop_backend_noise(plotly_to_html(strip_directives(nb)))
    nb.metadata["title"] = title
    body, _ = exporter(mathjax_url).from_notebook_node(
        nb, resources={"book": {"nav": nav, "banner": banner, "footer": footer}})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out


def md_notebook(*cells: str):
    "A notebook of markdown cells, to render the index and the results page like a chapter."
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(c) for c in cells])


def fmt_seconds(s: float | None) -> str:
    return "-" if s is None else (f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min")


def machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}"


# ------------------------------------------------------------------------------------------ results page
def results_cells(outputs: Path, profile: str, book: Path) -> tuple[list[str], bool]:
    "Markdown cells for the Results page from `outputs/<profile>` (copied into `book/results/`)."
    root = outputs / profile
    tables = sorted(root.glob("tables/*.html")) + [p for p in sorted(root.glob("tables/*.md"))
                                                    if not p.with_suffix(".html").exists()]
    figures = sorted(root.glob("figures/*.html")) + [p for p in sorted(root.glob("figures/*.png"))
                                                     if not p.with_suffix(".html").exists()]
    head = ("# Results of the latest `make paper` run\n\n"
            "> The tables and figures of the paper, regenerated by this project (chapter 6).")
    if not tables and not figures:
        return [head, f"**No `make paper` run exists yet** for the profile `{profile}`: nothing was found in "
                      f"`{root}/tables` or `{root}/figures`. Run `make paper` (about 20 minutes on a 2-core "
                      f"CPU for the `teaching` profile) and then `make book` again."], False
    stamp = max(p.stat().st_mtime for p in tables + figures)
    cells = [head, f"Profile `{profile}`, files from `{root}`, last written "
                   f"{dt.datetime.fromtimestamp(stamp):%Y-%m-%d %H:%M}. Every caption says how LIDC "
                   f"\"detection\" and BraTS Dice are measured here (DESIGN section 1)."]
    dest = book / "results"
    dest.mkdir(parents=True, exist_ok=True)
    for p in tables:
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".html":
            text = re.sub(r"(?is)^.*<body[^>]*>|</body>.*$", "", text)  # a whole document -> its body
        cells.append(f"## Table: {p.stem}\n\n{text}")
    for p in figures:
        shutil.copy2(p, dest / p.name)
        if p.suffix == ".html":
            page = (dest / p.name).read_text(encoding="utf-8")
            # figures load plotly.js from beside them (older runs: from a CDN): the book's copy instead
            page = re.sub(r'<script[^>]+src="(?:https?://cdn\.plot\.ly/[^"]+|plotly\.min\.js)"[^>]*>\s*</script>',
                          '<script src="../assets/plotly.min.js" charset="utf-8"></script>', page)
            (dest / p.name).write_text(page, encoding="utf-8")
            cells.append(f"## Figure: {p.stem}\n\n<iframe class=\"book-figure\" src=\"results/{p.name}\" "
                         f"title=\"{html.escape(p.stem)}\"></iframe>\n\n[open alone](results/{p.name})")
        else:
            cells.append(f"## Figure: {p.stem}\n\n![{p.stem}](results/{p.name})")
    return cells, True


# -------------------------------------------------------------------------------------------- student copy
def strip_solutions(nb) -> tuple[object, int]:
    "A copy of `nb` without outputs and with each `<details><summary>Solution` block withheld."
    nb = copy.deepcopy(nb)
    n = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source, k = SOLUTION_RE.subn("*(The solution is withheld in the student copy.)*", cell.source)
            n += k
        elif cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb, n


def student_copy(pages: list[Page], dest: Path) -> int:
    "Write the chapters without their solutions to `dest`; return how many solutions were withheld."
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for page in pages:
        nb, n = strip_solutions(nbformat.read(page.source, as_version=4))
        nbformat.write(nb, dest / page.source.name)
        print(f"  {page.source.name}: {n} solution(s) withheld")
        total += n
    return total


# ------------------------------------------------------------------------------------------------ the book
def build(nbs: Path = ROOT / "nbs", out: Path = ROOT / "book", only: list[str] | None = None,
          execute_chapters: bool = True, timeout: float = 600, profile: str = "teaching",
          outputs: Path = ROOT / "outputs", kernel: str | None = None, quiet: bool = False) -> list[Page]:
    "Execute and render the chapters of `nbs` into `out`; return the pages (see `Page.status`)."
    nbs, out, outputs = Path(nbs).resolve(), Path(out).resolve(), Path(outputs).resolve()
    pages = find_chapters(nbs, only)
    if not pages: raise SystemExit(f"build_book: no chapter notebook (NN*.ipynb) in {nbs}")
    out.mkdir(parents=True, exist_ok=True)
    mathjax_url = install_assets(out)

    # The kernel inherits these: plotly figures as JSON outputs, quiet TensorFlow, this venv first on PATH.
    os.environ["PLOTLY_RENDERER"] = "plotly_mimetype"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    kernel = kernel or kernel_name()

    with_results = True  # the results page is always there: it says plainly when no run exists yet
    results_title = "Results of the latest make paper run"
    # Reading order: the chapters, with the results page right after chapter 6's notebooks.
    order = [(p.href, f"{p.chapter}. {p.title}") for p in pages]
    if with_results:
        at = max([i + 1 for i, p in enumerate(pages) if p.chapter <= RESULTS_CHAPTER] or [0])
        order.insert(at, ("results.html", results_title))
    seq = [("index.html", "the book")] + order

    def nav(href: str) -> str:
        i = [h for h, _ in seq].index(href)
        return nav_html(seq[i - 1] if i > 0 else None, seq[i][1], seq[i + 1] if i + 1 < len(seq) else None)

    notebooks = []
    for page in pages:
        nb = nbformat.read(page.source, as_version=4)
        if execute_chapters:
            nb = execute(page, nb, nbs, timeout, kernel)
            if not quiet:
                print(f"executed {page.source.name}: {page.status} in {fmt_seconds(page.seconds)}", flush=True)
                if page.error:
                    e = page.error
                    print(f"  FAILED {page.source.name}: cell {e['cell']}: {e['ename']}: {e['evalue']}", flush=True)
        notebooks.append(nb)

    for page, nb in zip(pages, notebooks):
        if page.status == "failed":
            e = page.error
            banner = (f'<div class="book-banner" id="book-failure"><b>This chapter failed to execute</b> '
                      f'(cell {e["cell"]}): <code>{html.escape(str(e["ename"]))}: {html.escape(str(e["evalue"]))}'
                      f'</code>. The outputs below stop at that cell.</div>')
        elif page.status == "not executed":
            banner = '<div class="book-banner ok">This page was rendered without executing the notebook.</div>'
        else:
            banner = ""
        footer = (f'<div class="book-foot">Book chapter {page.chapter}: {html.escape(CHAPTERS.get(page.chapter, ""))}. '
                  f'Source: <code>nbs/{page.source.name}</code>. Executed: {page.status}'
                  + (f", in {fmt_seconds(page.seconds)} on {html.escape(machine())}" if page.seconds is not None else "")
                  + (f"; {page.skipped_cells} <code>#| eval: false</code> cell(s) not run" if page.skipped_cells else "")
                  + "</div>")
        render(nb, page.title, out / page.href, nav(page.href), banner, footer, mathjax_url=mathjax_url)

    if with_results:
        cells, found = results_cells(outputs, profile, out)
        render(md_notebook(*cells), results_title, out / "results.html", nav("results.html"), mathjax_url=mathjax_url)
    index_cells = index_markdown(pages, with_results, execute_chapters)
    render(md_notebook(*index_cells), "medcnn_nb: the book", out / "index.html", nav("index.html"),
           mathjax_url=mathjax_url)

    record = {"built": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
              "mathjax": mathjax_url or "CDN",
              "executed": execute_chapters, "timeout_s": timeout, "kernel": kernel,
              "total_seconds": round(sum(p.seconds or 0 for p in pages), 2),
              "chapters": [{**{k: v for k, v in asdict(p).items() if k != "source"}, "notebook": p.source.name}
                           for p in pages]}
    (out / "timings.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return pages


def index_markdown(pages: list[Page], with_results: bool, executed: bool) -> list[str]:
    cells = ["# medcnn_nb: the book\n\n> Chapters to read beside the paper on optimising CNNs for LIDC-IDRI "
             "nodule detection and BraTS tumour segmentation; every page was executed on the phantoms.",
             "Each chapter states which section of the paper it implements, shows the formula, the code and a "
             "check, and ends with exercises whose solutions you can unfold. Times are the wall time of "
             f"executing each notebook on this machine ({html.escape(machine())})."]
    rows = []
    for ch, name in CHAPTERS.items():
        mine = [p for p in pages if p.chapter == ch]
        total = sum(p.seconds or 0 for p in mine)
        rows.append(f"## {ch}. {name}\n")
        if not mine:
            rows.append("*No notebook for this chapter in this build.*\n")
        for p in mine:
            flag = {"ok": "", "failed": " **FAILED**", "not executed": " (not executed)"}[p.status]
            err = f" - cell {p.error['cell']}: `{p.error['ename']}`" if p.error else ""
            rows.append(f"- [{p.title}]({p.href}) `{p.source.name}` - {fmt_seconds(p.seconds)}{flag}{err}"
                        + (f"<br><small>{html.escape(p.summary)}</small>" if p.summary else ""))
        if ch == RESULTS_CHAPTER and with_results:
            rows.append("- [Results of the latest `make paper` run](results.html): Tables 1-2, Figure 3")
        if len(mine) > 1 and executed:
            rows.append(f"\nChapter total: {fmt_seconds(total)}")
        rows.append("")
    cells.append("\n".join(rows))
    extra = [p for p in pages if p.chapter not in CHAPTERS]
    if extra:
        cells.append("## Other notebooks\n\n" + "\n".join(f"- [{p.title}]({p.href})" for p in extra))
    return cells


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def screenshots(out: Path, chromium: str = "/usr/bin/chromium", size=(1280, 1400)) -> list[Path]:
    "PNGs of the index and of the first chapter page that draws a plotly figure, in `out/screenshots`."
    import subprocess, tempfile
    if not Path(chromium).exists():
        print(f"screenshots: {chromium} is missing (Debian package chromium); none taken"); return []
    pages = [out / "index.html"] + [p for p in sorted(out.glob("[0-9][0-9]*.html"))
                                    if "Plotly.newPlot(" in p.read_text(encoding="utf-8")][:1]
    (out / "screenshots").mkdir(exist_ok=True)
    shots = []
    for page in pages:
        target = out / "screenshots" / f"{page.stem}.png"
        with tempfile.TemporaryDirectory() as profile:  # a fresh browser profile each time
            subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--hide-scrollbars",
                            f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=10000",
                            f"--screenshot={target}", page.as_uri()], capture_output=True, timeout=120)
        if target.exists(): shots.append(target)
    return shots


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nbs", type=Path, default=ROOT / "nbs", help="folder of the chapter notebooks (default nbs/)")
    ap.add_argument("--out", type=Path, default=ROOT / "book", help="where the HTML book goes (default book/)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="build only these notebooks (stems or globs, e.g. 02*)")
    ap.add_argument("--no-execute", action="store_true", help="render the notebooks as stored, without a kernel")
    ap.add_argument("--timeout", type=float, default=600, help="seconds each chapter may run (default 600)")
    ap.add_argument("--kernel", help="Jupyter kernel name (default: medcnn_nb when registered, else python3)")
    ap.add_argument("--profile", default="teaching", help="whose `make paper` outputs to embed (default teaching)")
    ap.add_argument("--outputs", type=Path, default=ROOT / "outputs", help="the outputs/ folder of `make paper`")
    ap.add_argument("--screenshots", action="store_true",
                    help="also save PNGs of the index and of the first page with a plotly figure to OUT/screenshots "
                         "(needs /usr/bin/chromium)")
    ap.add_argument("--verbose", action="store_true",
                    help="let the kernels' start-up lines through (TensorFlow's C++ logging, CUDA probing on a CPU "
                         "machine, ipykernel's TCP notice); by default they are dropped from the console, as "
                         "`medcnn-paper` drops them")
    ap.add_argument("--student-copy", type=Path, metavar="DIR",
                    help="only write the chapters, outputs cleared and solutions withheld, to DIR (no book)")
    args = ap.parse_args(argv)
    if args.student_copy:
        pages = find_chapters(args.nbs.resolve(), args.only)
        n = student_copy(pages, args.student_copy)
        print(f"student copy: {len(pages)} notebooks in {args.student_copy}, {n} solutions withheld")
        return 0
    start = time.monotonic()
    with NativeStderrFilter(enabled=not args.verbose):  # the kernels inherit the filtered stderr
        pages = build(args.nbs, args.out, args.only, not args.no_execute, args.timeout, args.profile, args.outputs,
                      args.kernel)
    if args.screenshots:
        for shot in screenshots(args.out.resolve()): print(f"screenshot: {shot}")
    failed = [p for p in pages if p.status == "failed"]
    print(f"book: {len(pages)} chapter notebooks -> {args.out.resolve() / 'index.html'} "
          f"in {time.monotonic() - start:.0f} s; timings in {args.out.resolve() / 'timings.json'}")
    for p in failed:
        print(f"FAILED {p.source.name}: cell {p.error['cell']}: {p.error['ename']}: {p.error['evalue']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
