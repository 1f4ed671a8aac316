"""End to end: `medcnn-paper --profile smoke` through papermill, resume after SIGKILL, determinism, PHI,
PNG export without a browser, offline HTML, file modes, a quiet console.

Two smoke runs are shared by all tests of this file (session-scoped fixtures):
- `smoke_run`: an uninterrupted run (PNG figures when kaleido finds a Chrome/Chromium);
- `resumed_run`: the same command killed with SIGKILL (every process of the run) once a fold has written its
  first checkpoint, then rerun with --resume; both with the browser hidden from kaleido, so that the
  no-browser path runs on every machine.
Both use the same seed, the same phantoms and `--deterministic true`, under umask 022.
"""
import gzip
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CMD = [sys.executable, "-c", "import sys; from medcnn_nb.paper import main; sys.exit(main(sys.argv[1:]))"]


def _args(base: Path, *extra):
    return ["--profile", "smoke", "--out", str(base / "outputs"), "--phantoms", str(base.parent / "phantoms"),
            "--deterministic", "true", "--quiet", *extra]


def _env(**extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
           **extra}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command itself must keep TensorFlow quiet
    return env


# kaleido (choreographer) takes BROWSER_PATH before PATH and the usual places: a path that does not exist hides them
NO_BROWSER = {"BROWSER_PATH": "/nonexistent/chromium"}


def _umask022():
    os.umask(0o022)


def _chrome_path(env) -> str:
    "What `medcnn_nb.report.chrome_path()` finds in a process with `env`."
    code = "from medcnn_nb.report import chrome_path; print(chrome_path())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("paper")


@pytest.fixture(scope="session")
def smoke_run(work):
    base = work / "a"
    run = subprocess.run(CMD + _args(base), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=2400,
                         preexec_fn=_umask022)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return base / "outputs" / "smoke", run.stdout, run.stderr


def count_rows(page: str) -> int:
    "Number of `<tr>` rows in an HTML page (the stdlib parser: a check that the HTML parses)."
    from html.parser import HTMLParser
    class P(HTMLParser):
        rows = 0
        def handle_starttag(self, tag, attrs): self.rows += tag == "tr"
    p = P(); p.feed(page); p.close()
    return p.rows


def _fold_dirs(root: Path):
    return sorted(p.parent for p in (root / "runs").glob("*/*/fold*/state.json"))


def _checkpointed_fold(root: Path, max_epochs: int):
    """A fold in the middle of its training: its checkpoint is on disk and complete (state.json, written last,
    is the newest of the checkpoint's files), more epochs are to come, and another fold is already done."""
    done = {p.parent for p in (root / "runs").glob("*/*/fold*/metrics.json")}
    for d in _fold_dirs(root):
        if not done or d in done or not (d / "last.keras").exists(): continue
        state_time = (d / "state.json").stat().st_mtime_ns
        if any(f.exists() and f.stat().st_mtime_ns > state_time for f in (d / "last.keras", d / "best.weights.h5")):
            continue  # the next epoch's checkpoint is being written
        state = json.loads((d / "state.json").read_text())
        if 1 <= state["epochs_done"] < max_epochs and not state["stopped"]: return d
    return None


def _freeze(pid: int) -> list:
    """SIGSTOP the command, its workers and the papermill kernels (which run in sessions of their own, so that
    signalling the process group alone would miss them); return them all."""
    import psutil
    os.killpg(pid, signal.SIGSTOP)              # first the command and its workers: no kernel starts meanwhile
    procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    for p in procs:
        try: p.send_signal(signal.SIGSTOP)
        except psutil.NoSuchProcess: pass
    return procs


def _signal_all(pid: int, procs: list, sig) -> None:
    import psutil
    for p in procs:
        try: p.send_signal(sig)
        except psutil.NoSuchProcess: pass
    try: os.killpg(pid, sig)
    except ProcessLookupError: pass


def _still_running(procs, limit_s: float = 120) -> list:
    "The processes of `procs` still running after up to `limit_s` seconds (zombies are dead: they write nothing)."
    import psutil
    deadline = time.monotonic() + limit_s
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE: alive.append(p)
            except psutil.NoSuchProcess: pass
        if not alive or time.monotonic() > deadline: return alive
        time.sleep(0.1)


@pytest.fixture(scope="session")
def resumed_run(work, smoke_run):
    base = work / "b"
    root = base / "outputs" / "smoke"
    max_epochs = json.loads((smoke_run[0] / "manifest.json").read_text())["config"]["max_epochs"]
    env = _env(**NO_BROWSER)
    assert _chrome_path(env) == "None", "BROWSER_PATH did not hide the browser from kaleido"
    log = work / "killed_run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(CMD + _args(base), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_umask022)
    killed_dir, procs = None, []
    deadline = time.monotonic() + 1800  # a generous bound: the event comes after ~a minute on a quiet 2-core CPU
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _checkpointed_fold(root, max_epochs) is not None:
                procs = _freeze(proc.pid)                       # nothing changes on disk from here on
                killed_dir = _checkpointed_fold(root, max_epochs)
                if killed_dir is not None: break
                _signal_all(proc.pid, procs, signal.SIGCONT)    # the moment passed while freezing: go on
                procs = []
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            procs = procs or _freeze(proc.pid)
            _signal_all(proc.pid, procs, signal.SIGKILL)       # a power cut: every process of the run at once
        proc.wait()
    alive = _still_running(procs)
    assert not alive, f"processes of the killed run still alive: {alive}"
    assert killed_dir is not None, (f"no fold was caught between its first checkpoint and its end (run ended: "
                                    f"{proc.returncode is not None}); output:\n" + log.read_text()[-3000:])
    # what the resumed run will find: the state the kill left
    epochs_at_kill = json.loads((killed_dir / "state.json").read_text())["epochs_done"]
    before = {p.parent: p.stat().st_mtime_ns for p in (root / "runs").glob("*/*/fold*/metrics.json")}
    assert killed_dir not in before
    run = subprocess.run(CMD + _args(base, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=2400, preexec_fn=_umask022)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return root, (killed_dir, epochs_at_kill), before, run.stdout


def test_every_table_and_figure_exists_and_parses(smoke_run):
    root, stdout, _ = smoke_run
    products = json.loads((root / "products.json").read_text())
    assert set(products["tables"]) == {"table1_lidc", "table2_brats", "table3_ablation"}
    assert {"figure1_pipeline_lidc", "figure2_pipeline_brats", "figure3_results"} <= set(products["figures"])
    from medcnn_nb.datasets import get_dataset
    for name, files in products["tables"].items():
        suffixes = sorted(Path(f).suffix for f in files)
        assert suffixes == [".csv", ".html", ".md"]
        csv = pd.read_csv(next(f for f in files if f.endswith(".csv")))
        html = Path(next(f for f in files if f.endswith(".html"))).read_text()
        md = Path(next(f for f in files if f.endswith(".md"))).read_text()
        assert count_rows(html) == len(csv) + 1
        assert md.count("\n|") == len(csv) + 2   # header, rule, one line per row (pandas' to_markdown)
        if name != "table3_ablation":
            assert len(csv) == len(get_dataset(name.split("_")[-1]).rows)
            assert "definition" in md.lower() or "Definitions" in md
        assert str(Path(files[0]).parent) in stdout   # the command printed where it is
    # the caption says how held-out slices were predicted when it is not once each (BraTS's tta knob, chapter 5c)
    assert "mean of its 4 mirror images" in (root / "tables" / "table2_brats.md").read_text()
    assert "mirror" not in (root / "tables" / "table1_lidc.md").read_text()
    for name, files in products["figures"].items():
        for f in files:
            data = Path(f).read_bytes()
            if f.endswith(".png"): assert data[:8] == b"\x89PNG\r\n\x1a\n", f
            else: assert b"plotly" in data[:200000].lower() and data.rstrip().endswith(b"</html>"), f
    pngs = sum(f.endswith(".png") for fs in products["figures"].values() for f in fs)
    if _chrome_path(_env()) != "None":   # kaleido has a browser: every figure has its PNG
        assert pngs == len(products["figures"]) >= 5 and "PNG skipped" not in stdout
    else:                                # none: the run says so once, and writes the HTML only
        assert pngs == 0 and stdout.count("PNG skipped: ") == 1
    for nb in ("lidc_unoptimised", "lidc_optimised", "brats_unoptimised", "brats_optimised", "paper"):
        executed = json.loads((root / "notebooks" / f"{nb}.ipynb").read_text())
        assert any("papermill" in str(c.get("metadata", {})) for c in executed["cells"])
    manifest = json.loads((root / "manifest.json").read_text())
    assert {"config", "seed", "versions", "git_commit", "data", "hardware", "timings_s"} <= set(manifest)
    assert all(len(d["fingerprint"]) == 16 for d in manifest["data"].values())


def test_tables_hold_only_what_we_measured(smoke_run):
    root = smoke_run[0]
    from medcnn_nb.datasets import get_dataset
    t1 = pd.read_csv(root / "tables" / "table1_lidc.csv")
    for variant in ("unoptimised", "optimised"):
        folds = [json.loads(p.read_text()) for p in sorted((root / "runs/lidc" / variant).glob("fold*/metrics.json"))]
        assert len(folds) == 2
        for _, row in t1.iterrows():
            values = np.array([f.get(row["key"], np.nan) for f in folds], dtype=float)
            values = values[np.isfinite(values)]
            if len(values) == 0: assert math.isnan(row[f"{variant}_mean"]); continue
            assert row[f"{variant}_mean"] == pytest.approx(values.mean(), abs=1e-12)
            if len(values) == 2: assert row[f"{variant}_sd"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        for key in ("slice_accuracy", "dice_case"):  # our value: pooled over the validation cases of all folds
            parts = [c[key] for f in folds for c in f["per_case"].values() if c[key][1] > 0]
            row = t1.set_index("key").loc[key]
            assert row[f"{variant}_value"] == pytest.approx(sum(p[0] for p in parts) / sum(p[1] for p in parts), abs=1e-12)
            assert row[f"{variant}_n"] == len(parts)
        claims = get_dataset("lidc").claims[variant]
        assert t1.loc[t1.key == "slice_accuracy", f"{variant}_paper"].item() == claims["accuracy"]
        assert math.isnan(t1.loc[t1.key == "dice_slice", f"{variant}_paper"].item())


def test_every_interval_lies_in_its_metrics_range(smoke_run):
    "Rates and Dice in [0, 1], their differences in [-1, 1], counts per scan and HD95 >= 0; low <= value <= high."
    root = smoke_run[0]
    from medcnn_nb.datasets import get_dataset
    checked = 0
    for table, dataset in (("table1_lidc", "lidc"), ("table2_brats", "brats")):
        t = pd.read_csv(root / "tables" / f"{table}.csv")
        for _, row in t.iterrows():
            unbounded = row["key"] in ("fp_per_scan", "hd95_wt", "hd95_tc", "hd95_et")
            for v in ("unoptimised", "optimised"):
                if row[f"{v}_n"] < 2: continue
                lo, x, hi = row[f"{v}_ci_low"], row[f"{v}_value"], row[f"{v}_ci_high"]
                assert (0 <= lo <= x <= hi) and (unbounded or hi <= 1), (table, row["key"], v, lo, x, hi)
                checked += 1
            if row["diff_n"] >= 2:
                lo, d, hi = row["diff_ci_low"], row["diff"], row["diff_ci_high"]
                assert lo <= d <= hi and (unbounded or -1 <= lo <= hi <= 1), (table, row["key"], lo, d, hi)
                assert 0 <= row["p"] <= 1 if row["p_n"] else math.isnan(row["p"])  # no non-zero difference: no test
            assert math.isnan(row["nothing"]) or unbounded or 0 <= row["nothing"] <= 1
    ab = pd.read_csv(root / "tables" / "table3_ablation.csv")
    for k in get_dataset("lidc").ablation_keys:
        for lo, x, hi in ab[[f"{k}_ci_low", f"{k}_value", f"{k}_ci_high"]].dropna().itertuples(index=False):
            assert 0 <= lo <= x <= hi <= 1; checked += 1
    assert checked >= 10
    assert set(ab["variant"]) >= {"+ dense blocks", "+ transfer learning"}


def test_fold_manifests(smoke_run):
    root = smoke_run[0]
    m = json.loads((root / "runs/brats/optimised/fold1/manifest.json").read_text())
    assert m["seed"] == m["config"]["seed"] + 1 and m["fold"] == 1
    assert not set(m["train_cases"]) & set(m["val_cases"]) and not set(m["monitor_cases"]) & set(m["val_cases"])
    assert {"fit", "evaluate", "total"} <= set(m["timings_s"]) and m["versions"]["keras"]
    history = pd.read_csv(root / "runs/brats/optimised/fold1/history.csv")
    assert len(history) == m["epochs_run"] >= 1 and {"loss", "val_loss", "val_dice"} <= set(history.columns)


def _fold_metrics(root: Path):
    return {p.parent.relative_to(root).as_posix(): json.loads(p.read_text())
            for p in sorted((root / "runs").glob("*/*/fold*/metrics.json"))}


def test_resume_after_sigkill_gives_the_same_tables(smoke_run, resumed_run):
    root_a = smoke_run[0]
    root_b, (killed_dir, epochs_at_kill), finished_before, _ = resumed_run
    for d, mtime in finished_before.items():          # finished folds were not retrained
        assert (d / "metrics.json").stat().st_mtime_ns == mtime
    m = json.loads((killed_dir / "manifest.json").read_text())
    # the interrupted fold continued from the checkpoint the kill left (it was killed with epochs still to run)
    assert 1 <= epochs_at_kill < m["config"]["max_epochs"]
    assert m["resumed_from_epoch"] == epochs_at_kill
    history = pd.read_csv(killed_dir / "history.csv")
    assert list(history["epoch"]) == list(range(len(history)))  # appended, no epoch twice
    for name in ("table1_lidc", "table2_brats", "table3_ablation"):
        a = pd.read_csv(root_a / "tables" / f"{name}.csv")
        b = pd.read_csv(root_b / "tables" / f"{name}.csv")
        pd.testing.assert_frame_equal(a, b)
        assert (root_a / "tables" / f"{name}.md").read_text() == (root_b / "tables" / f"{name}.md").read_text()


def test_same_seed_same_fold_metrics(smoke_run, resumed_run):
    "Every fold was trained twice (in two processes) with the same seed: the metrics are bit-identical."
    a, b = _fold_metrics(smoke_run[0]), _fold_metrics(resumed_run[0])
    assert a.keys() == b.keys() and len(a) >= 8
    assert a == b  # exact equality of every float (TensorFlow CPU, deterministic=True)


def _contents(path: Path):
    "The bytes of a file and, for zip containers (.npz, .keras), of each member."
    yield path.read_bytes()
    if path.suffix == ".gz":
        yield gzip.decompress(path.read_bytes())
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for name in z.namelist(): yield z.read(name)


def test_no_phi_in_outputs(smoke_run, resumed_run):
    from medcnn_nb.data import phantom_brats, phantom_lidc
    phi = [s.encode() for s in (*phantom_lidc.PHI_STRINGS, *phantom_brats.PHI_STRINGS)]
    assert phi
    files = [p for root in (smoke_run[0], resumed_run[0]) for p in root.rglob("*") if p.is_file()]
    assert len(files) > 50
    leaks = [(str(p), s) for p in files for blob in _contents(p) for s in phi if s in blob or s.lower() in blob.lower()]
    assert leaks == []
    # and the phantoms do hold it (so the grep can find it)
    phantoms = smoke_run[0].parents[2] / "phantoms"
    planted = [p for p in phantoms.rglob("*") if p.is_file() and any(s in p.read_bytes() for s in phi)]
    assert planted


def test_without_a_browser_the_run_says_so_once(resumed_run):
    "The resumed run had kaleido's browser hidden: it succeeded, wrote every figure as HTML and said so once."
    root, _, _, stdout = resumed_run
    products = json.loads((root / "products.json").read_text())
    assert len(products["figures"]) >= 5
    assert all([Path(f).suffix for f in files] == [".html"] for files in products["figures"].values())
    assert not list(root.rglob("*.png"))
    assert stdout.count("PNG skipped: ") == 1
    from medcnn_nb.report import NO_BROWSER
    assert NO_BROWSER in stdout and "apt-get install chromium" in NO_BROWSER


REMOTE_SCRIPT = re.compile(r"""<script\b[^>]*\bsrc\s*=\s*["']?\s*(?:https?:)?//""", re.I)


def test_html_outputs_open_offline(smoke_run, resumed_run):
    "No output page loads a script from the network; each loads plotly.js from beside it, the installed plotly's."
    from plotly.offline import get_plotlyjs
    pages = [p for root in (smoke_run[0], resumed_run[0]) for p in root.rglob("*.html")]
    assert len(pages) >= 2 * 8 and any(p.parent.name == "tables" for p in pages)
    assert REMOTE_SCRIPT.search('<script charset="utf-8" src="https://cdn.plot.ly/plotly-3.0.1.min.js">')  # the regex bites
    assert [str(p) for p in pages if REMOTE_SCRIPT.search(p.read_text(encoding="utf-8"))] == []
    for page in pages:
        for src in re.findall(r"""<script\b[^>]*\bsrc\s*=\s*["']([^"']+)""", page.read_text(encoding="utf-8")):
            assert (page.parent / src).is_file(), f"{page}: {src} is not beside it"
    for root in (smoke_run[0], resumed_run[0]):
        assert (root / "figures" / "plotly.min.js").read_text(encoding="utf-8") == get_plotlyjs()


def test_outputs_are_readable_by_others(smoke_run, resumed_run):
    "Under umask 022 every file the runs wrote is 0644 and every folder 0755, like files written with open()."
    for root in (smoke_run[0], resumed_run[0]):
        # outputs/<profile> and outputs/.cache (the slice cache) of the run, and the phantoms it generated
        paths = list(root.parent.rglob("*")) + list((root.parents[2] / "phantoms").rglob("*"))
        files = [p for p in paths if p.is_file()]
        assert len(files) > 50 and any(p.suffix == ".keras" for p in files) and any(p.suffix == ".npy" for p in files)
        assert {str(p): oct(p.stat().st_mode & 0o777) for p in files if p.stat().st_mode & 0o777 != 0o644} == {}
        assert {str(p): oct(p.stat().st_mode & 0o777) for p in paths if p.is_dir() and p.stat().st_mode & 0o777 != 0o755} == {}


# absl's pre-init warning and glog-style C++ lines ("I0000 00:00:17... 123 file.cc:31] ...")
TF_LINE = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w.]+:\d+\])", re.M)


def test_console_is_quiet(smoke_run):
    "TensorFlow's C++ start-up lines never reach the console (kernels and workers included); --verbose shows them."
    _, stdout, stderr = smoke_run
    assert TF_LINE.findall(stdout + stderr) == []
    assert "medcnn-paper: profile smoke" in stdout and "done in" in stdout
    assert stderr.strip() == "", stderr[-2000:]  # --quiet: no progress bar; and nothing else either


def test_a_finished_kernel_is_killed_not_asked_to_shut_down(tmp_path, monkeypatch):
    """`run_notebook` stops a kernel whose cells have all run by killing it: asking it to shut down races
    ipykernel's teardown, which once printed a ZMQError traceback on CI's console. The executed copy is complete."""
    import nbformat
    from jupyter_client.manager import AsyncKernelManager
    from medcnn_nb.paper import run_notebook
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("n = 2", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell("print(n * 21)")]
    for name in ("experiment", "paper"): nbformat.write(nb, tmp_path / f"{name}.ipynb")
    monkeypatch.setenv("MEDCNN_EXPERIMENTS", str(tmp_path))
    calls, shutdown = [], AsyncKernelManager.shutdown_kernel
    async def spy(self, now=False, restart=False):
        calls.append(now)
        return await shutdown(self, now=now, restart=restart)
    monkeypatch.setattr(AsyncKernelManager, "shutdown_kernel", spy)
    run_notebook("experiment", tmp_path / "out" / "e.ipynb", {"n": 3})
    assert calls == [True]
    executed = nbformat.read(tmp_path / "out" / "e.ipynb", as_version=4)
    assert [o["text"] for o in executed.cells[-1].outputs] == ["63\n"]  # the injected n = 3, run to the end


def test_executed_notebooks_hold_no_startup_noise(smoke_run):
    """The executed notebooks a reader opens hold what the cells print, not TensorFlow's C++ start-up lines (the
    kernels run with capture_fd_output off, so those go through the command's filter) nor tqdm's ipywidgets warning."""
    root = smoke_run[0]
    streams = [(nb.name, "".join(o["text"])) for nb in sorted((root / "notebooks").glob("*.ipynb"))
               for c in json.loads(nb.read_text())["cells"] for o in c.get("outputs", []) if o.get("output_type") == "stream"]
    assert sum("--- lidc / unoptimised / fold 0 ---" in t for _, t in streams) == 1  # the cells' own output is there
    assert [(name, t[:300]) for name, t in streams if TF_LINE.search(t) or "TqdmWarning" in t] == []


def test_verbose_shows_tensorflow_logs(tmp_path):
    "The filter is what keeps the console quiet: with --verbose the same start-up lines come through."
    run = subprocess.run(CMD + ["--profile", "smoke", "--out", str(tmp_path), "--verbose", "--lidc", str(tmp_path / "none")],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "--lidc" in run.stderr  # stops at the argument check, before TensorFlow
    code = "import sys; from medcnn_nb.config import NativeStderrFilter\n" \
           "with NativeStderrFilter(enabled=sys.argv[1] == 'quiet'): import keras; keras.ops.zeros(1)"
    quiet, verbose = (subprocess.run([sys.executable, "-c", code, mode], env=_env(), capture_output=True, text=True,
                                     timeout=600) for mode in ("quiet", "verbose"))
    assert quiet.returncode == verbose.returncode == 0
    assert TF_LINE.findall(quiet.stderr) == [] and TF_LINE.findall(verbose.stderr) != []


@pytest.mark.parametrize("argv", [["medcnn-phantom", "lidc", "--patients", "1", "--size", "32", "--slices", "8"],
                                  ["medcnn-data", "lidc", "tests/data/real/lidc/LIDC-IDRI-0001"]])
def test_data_commands_are_quiet(argv, tmp_path):
    "The data commands never load a deep-learning framework, so nothing but their own lines reaches the console."
    exe = Path(sys.executable).parent / argv[0]
    extra = ["--out", str(tmp_path / "p"), "--seed", "0"] if argv[0] == "medcnn-phantom" else []
    run = subprocess.run([str(exe), *argv[1:], *extra], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert TF_LINE.findall(run.stdout + run.stderr) == [] and run.stdout.strip()
    assert "tensorflow" not in (run.stdout + run.stderr).lower()
