"""The book (issue 7): `tools/build_book.py` executes chapter notebooks, renders them with nbconvert, and the
pages load in a real headless Chromium with their plotly figures drawn.

The notebooks here are small ones written by the test (a chapter with a plotly figure, nbdev directives
and an exercise; a chapter that fails), so the test does not depend on which real chapters exist."""
import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Exactly the flags issue 7 lists; each run adds a fresh --user-data-dir.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def load_builder():
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "tools" / "build_book.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_book"] = mod
    spec.loader.exec_module(mod)
    return mod


bb = load_builder()

SOLUTION = """<details><summary>Solution</summary>

```python
SECRET_SOLUTION_CODE = 42
```
</details>"""


def demo_chapter():
    return new_notebook(cells=[
        new_code_cell("#| default_exp demo"),
        new_markdown_cell("# A demo chapter\n\n> One line that says what it holds."),
        new_code_cell("#| export\nimport numpy as np\nEXPORTED_VALUE = int(np.arange(4).sum())"),
        new_code_cell("#| hide\nprint('HIDDEN_' + 'MARKER')"),
        new_code_cell("#| eval: false\nraise RuntimeError('a skipped cell was executed')"),
        new_code_cell("print('sum is', EXPORTED_VALUE)"),
        new_code_cell("import sys\nprint('WARNING: All log messages before absl::InitializeLog() is called are written to STDERR', file=sys.stderr)\n"
                      "print('I0000 00:00:1795719311.369015   18693 port.cc:153] oneDNN custom operations are on.', file=sys.stderr)\n"
                      "print('a real warning', file=sys.stderr)"),
        new_code_cell("import plotly.graph_objects as go\n"
                      "go.Figure(go.Bar(x=['a', 'b', 'c'], y=[3, 1, 2]), layout=dict(title='demo bars'))"),
        new_markdown_cell("## Exercises\n\n1. Add the numbers.\n\n" + SOLUTION + "\n\n2. Again.\n\n" + SOLUTION),
    ])


def broken_chapter():
    return new_notebook(cells=[
        new_markdown_cell("# A broken chapter\n\n> It divides by zero."),
        new_code_cell("print('before the error')"),
        new_code_cell("1 / 0"),
        new_code_cell("print('AFTER_' + 'THE_ERROR')"),
    ])


@pytest.fixture(scope="module")
def chapters(tmp_path_factory):
    nbs = tmp_path_factory.mktemp("nbs")
    nbformat.write(demo_chapter(), nbs / "01_demo.ipynb")
    nbformat.write(broken_chapter(), nbs / "05_broken.ipynb")
    # neither is a chapter: the README notebook and the papermill experiments
    nbformat.write(new_notebook(cells=[new_markdown_cell("# README")]), nbs / "index.ipynb")
    (nbs / "experiments").mkdir()
    nbformat.write(new_notebook(cells=[new_markdown_cell("# experiment")]), nbs / "experiments" / "06_x.ipynb")
    return nbs


@pytest.fixture(scope="module")
def built(chapters, tmp_path_factory):
    "The book of the two test chapters, executed (one kernel start each), without any make paper run."
    out = tmp_path_factory.mktemp("book")
    code = bb.main(["--nbs", str(chapters), "--out", str(out), "--timeout", "120",
                    "--outputs", str(out / "no_outputs_here")])
    return out, code


def links(page: Path):
    text = page.read_text(encoding="utf-8")
    prev = re.search(r'class="book-prev" href="([^"]+)"', text)
    nxt = re.search(r'class="book-next" href="([^"]+)"', text)
    return (prev.group(1) if prev else None), (nxt.group(1) if nxt else None)


def test_finds_chapters_by_prefix(chapters):
    pages = bb.find_chapters(chapters)
    assert [(p.stem, p.chapter, p.title) for p in pages] == [("01_demo", 1, "A demo chapter"),
                                                             ("05_broken", 5, "A broken chapter")]
    assert pages[0].summary == "One line that says what it holds."
    assert [p.stem for p in bb.find_chapters(chapters, only=["05*"])] == ["05_broken"]
    with pytest.raises(SystemExit, match="no_such"):
        bb.find_chapters(chapters, only=["no_such"])
    assert bb.chapter_of(Path("02f_preprocess.ipynb")) == 2 and bb.chapter_of(Path("index.ipynb")) is None


def test_failing_chapter_is_reported_and_the_rest_still_builds(built):
    out, code = built
    assert code == 1  # a failed chapter makes the build fail
    record = json.loads((out / "timings.json").read_text())
    by_name = {c["notebook"]: c for c in record["chapters"]}
    assert set(by_name) == {"01_demo.ipynb", "05_broken.ipynb"}
    assert by_name["01_demo.ipynb"]["status"] == "ok" and by_name["01_demo.ipynb"]["skipped_cells"] == 1
    err = by_name["05_broken.ipynb"]["error"]
    assert by_name["05_broken.ipynb"]["status"] == "failed"
    assert (err["cell"], err["ename"]) == (2, "ZeroDivisionError")
    assert all(c["seconds"] > 0 for c in record["chapters"])
    broken = (out / "05_broken.html").read_text()
    assert 'id="book-failure"' in broken and "ZeroDivisionError" in broken and "(cell 2)" in broken
    assert "before the error" in broken and "AFTER_THE_ERROR" not in broken
    index = (out / "index.html").read_text()
    assert "**FAILED**" not in index and "<strong>FAILED</strong>" in index


def test_pages_hide_directives_and_embed_plotly_locally(built):
    out, _ = built
    demo = (out / "01_demo.html").read_text()
    assert "<title>A demo chapter</title>" in demo
    assert "HIDDEN_MARKER" not in demo and "#| export" not in demo and "default_exp" not in demo
    assert "sum is 6" in demo  # the exported cell ran, the skipped one did not raise
    # the cell's source holds each line once; its output keeps the real warning and drops TF's start-up lines
    assert demo.count("a real warning") == 2 and demo.count("oneDNN") == 1 and demo.count("absl::InitializeLog") == 1
    assert "a skipped cell was executed" in demo  # its source is shown ...
    assert "Traceback" not in demo                  # ... but it was not run
    assert 'src="assets/plotly.min.js"' in demo and "Plotly.newPlot(" in demo and "demo bars" in demo
    assert "cdn.plot.ly" not in demo and "require.min.js" not in demo
    import plotly
    shipped = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assert (out / "assets" / "plotly.min.js").read_bytes() == shipped.read_bytes()
    assert demo.count("<details>") == 2 and "SECRET_SOLUTION_CODE" in demo


def test_navigation_walks_every_page_in_order(built):
    out, _ = built
    seq, page = [], "index.html"
    while page:
        seq.append(page)
        page = links(out / page)[1]
    assert seq == ["index.html", "01_demo.html", "05_broken.html", "results.html"]
    assert [links(out / p)[0] for p in seq] == [None] + seq[:-1]
    assert {p.name for p in out.glob("*.html")} == set(seq)


def test_results_page_without_and_with_a_paper_run(built, chapters, tmp_path):
    out, _ = built
    assert "No <code>make paper</code> run exists yet" in (out / "results.html").read_text()
    # a fake `make paper` output: one Markdown table and one plotly figure written with the CDN script
    outputs = tmp_path / "outputs"
    (outputs / "teaching" / "tables").mkdir(parents=True)
    (outputs / "teaching" / "figures").mkdir(parents=True)
    (outputs / "teaching" / "tables" / "table1_lidc.md").write_text(
        "| metric | paper | ours |\n|---|---|---|\n| accuracy | 95.2 | 91.0 |\n")
    import plotly.graph_objects as go
    go.Figure(go.Bar(x=[1, 2], y=[2, 1])).write_html(outputs / "teaching" / "figures" / "figure3.html",
                                                    include_plotlyjs="cdn")  # as runs before issue 10 wrote them
    from medcnn_nb.report import save_figure  # as runs write them now: plotly.min.js beside the page
    save_figure(go.Figure(go.Bar(x=[1, 2], y=[1, 2])), outputs / "teaching" / "figures", "figure1", png=False)
    book = tmp_path / "book"
    pages = bb.build(chapters, book, only=["05_broken"], execute_chapters=False, outputs=outputs, quiet=True)
    assert [p.status for p in pages] == ["not executed"]
    results = (book / "results.html").read_text()
    assert "<td>accuracy</td>" in results and "<td>95.2</td>" in results
    assert 'src="results/figure3.html"' in results
    for name in ("figure1.html", "figure3.html"):
        fig = (book / "results" / name).read_text()
        assert "cdn.plot.ly" not in fig and '<script src="../assets/plotly.min.js"' in fig
        assert 'src="plotly.min.js"' not in fig
    assert (book / "assets" / "plotly.min.js").stat().st_size > 1_000_000


def test_student_copy_withholds_solutions(chapters, tmp_path):
    code = bb.main(["--nbs", str(chapters), "--student-copy", str(tmp_path / "handout")])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "handout").iterdir()) == ["01_demo.ipynb", "05_broken.ipynb"]
    nb = nbformat.read(tmp_path / "handout" / "01_demo.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert "SECRET_SOLUTION_CODE" not in text and "<details>" not in text
    assert "1. Add the numbers." in text and "2. Again." in text
    assert text.count("withheld in the student copy") == 2
    original = nbformat.read(chapters / "01_demo.ipynb", as_version=4)
    assert len(nb.cells) == len(original.cells)  # only the solutions went, no cell


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           "--virtual-time-budget=10000", *args, url],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_pages_load_in_headless_chromium(built, tmp_path, capsys):
    out, _ = built
    if not CHROMIUM.exists():  # a machine without the browser: the book says so instead of failing
        assert bb.screenshots(out, chromium=str(CHROMIUM)) == []
        assert capsys.readouterr().out == f"screenshots: {CHROMIUM} is missing (Debian package chromium); none taken\n"
        return
    for name, title in [("index.html", "medcnn_nb: the book"), ("01_demo.html", "A demo chapter"),
                        ("05_broken.html", "A broken chapter"), ("results.html", "Results of the latest make paper run")]:
        run = chromium((out / name).as_uri(), tmp_path / f"profile-{name}", "--dump-dom")
        assert run.returncode == 0, run.stderr[-2000:]
        assert f"<title>{title}</title>" in run.stdout, f"{name}: title missing from the DOM"
        if name == "01_demo.html":
            # plotly.js ran: it replaced the empty div by the plot's SVG layers, with our bars in it
            assert 'class="main-svg"' in run.stdout and "demo bars" in run.stdout
            assert run.stdout.count('class="point"') >= 3
    # screenshots of the index and a chapter for the note, kept under book/screenshots/
    shots = ROOT / "book" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    for name in ("index", "01_demo"):
        target = shots / f"{name}.png"
        target.unlink(missing_ok=True)
        run = chromium((out / f"{name}.html").as_uri(), tmp_path / f"shot-{name}", "--window-size=1280,1400",
                       f"--screenshot={target}", "--hide-scrollbars")
        assert run.returncode == 0 and target.exists(), run.stderr[-2000:]
        assert png_size(target) == (1280, 1400)


def test_console_drops_kernel_start_up_lines(tmp_path):
    """`make book`'s console is as quiet as `medcnn-paper`'s: a kernel's start-up lines on its native stderr are
    dropped, its other lines kept; with `--verbose` the start-up lines come through."""
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    noise = "I0000 00:00:1795719311.369015   18693 port.cc:153] oneDNN custom operations are on."
    cells = [new_markdown_cell("# Quiet\n\n> A chapter writing to file descriptor 2."),
             new_code_cell(f"import os\nos.write(2, b'{noise}\\n')\nos.write(2, b'a real native warning\\n')")]
    nbformat.write(new_notebook(cells=cells), nbs / "01_quiet.ipynb")
    def build(*extra):
        run = subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py"), "--nbs", str(nbs), "--out",
                              str(tmp_path / f"book{len(extra)}"), "--outputs", str(tmp_path / "none"), *extra],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        return run.stderr
    quiet, verbose = build(), build("--verbose")
    assert "a real native warning" in quiet and noise not in quiet and "without encryption" not in quiet
    assert "a real native warning" in verbose and noise in verbose
