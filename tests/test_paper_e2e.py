"""End to end: `medcnn-paper --profile smoke` through papermill, resume after SIGKILL, determinism, PHI.

Two smoke runs are shared by all tests of this file (session-scoped fixtures):
- `smoke_run`: an uninterrupted run;
- `resumed_run`: the same command killed with SIGKILL in the middle of a fold, then rerun with --resume.
Both use the same seed, the same phantoms and `--deterministic true`.
"""
import gzip
import json
import math
import os
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


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("paper")


@pytest.fixture(scope="session")
def smoke_run(work):
    base = work / "a"
    run = subprocess.run(CMD + _args(base), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return base / "outputs" / "smoke", run.stdout


def _fold_dirs(root: Path):
    return sorted(p.parent for p in (root / "runs").glob("*/*/fold*/state.json"))


@pytest.fixture(scope="session")
def resumed_run(work, smoke_run):
    base = work / "b"
    root = base / "outputs" / "smoke"
    proc = subprocess.Popen(CMD + _args(base), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: the papermill kernel dies with it
    killed_in = None
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            done = {p.parent for p in (root / "runs").glob("*/*/fold*/metrics.json")}
            for d in _fold_dirs(root):
                state = json.loads((d / "state.json").read_text())
                # the middle of a fold, once at least one other fold has finished
                if done and d not in done and state["epochs_done"] >= 1 and not state["stopped"]:
                    killed_in = (d, state["epochs_done"])
                    break
            if killed_in: break
            time.sleep(0.05)
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_in is not None, "the run ended before a fold could be interrupted"
    before = {p.parent: p.stat().st_mtime_ns for p in (root / "runs").glob("*/*/fold*/metrics.json")}
    assert killed_in[0] not in before
    run = subprocess.run(CMD + _args(base, "--resume"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return root, killed_in, before


def test_every_table_and_figure_exists_and_parses(smoke_run):
    root, stdout = smoke_run
    products = json.loads((root / "products.json").read_text())
    assert set(products["tables"]) == {"table1_lidc", "table2_brats", "table3_ablation"}
    assert {"figure1_pipeline_lidc", "figure2_pipeline_brats", "figure3_results"} <= set(products["figures"])
    from medcnn_nb.report import TABLE_ROWS, count_rows
    for name, files in products["tables"].items():
        suffixes = sorted(Path(f).suffix for f in files)
        assert suffixes == [".csv", ".html", ".md"]
        csv = pd.read_csv(next(f for f in files if f.endswith(".csv")))
        html = Path(next(f for f in files if f.endswith(".html"))).read_text()
        md = Path(next(f for f in files if f.endswith(".md"))).read_text()
        assert count_rows(html) == len(csv) + 1
        assert md.count("\n|") == len(csv) + 2
        if name != "table3_ablation":
            assert len(csv) == len(TABLE_ROWS["lidc" if "lidc" in name else "brats"])
            assert "definition" in md.lower() or "Definitions" in md
        assert str(Path(files[0]).parent) in stdout   # the command printed where it is
    for name, files in products["figures"].items():
        for f in files:
            data = Path(f).read_bytes()
            if f.endswith(".png"): assert data[:8] == b"\x89PNG\r\n\x1a\n", f
            else: assert b"plotly" in data[:200000].lower() and data.rstrip().endswith(b"</html>"), f
    assert sum(f.endswith(".png") for fs in products["figures"].values() for f in fs) >= 5
    for nb in ("lidc_unoptimised", "lidc_optimised", "brats_unoptimised", "brats_optimised", "paper"):
        executed = json.loads((root / "notebooks" / f"{nb}.ipynb").read_text())
        assert any("papermill" in str(c.get("metadata", {})) for c in executed["cells"])
    manifest = json.loads((root / "manifest.json").read_text())
    assert {"config", "seed", "versions", "git_commit", "data", "hardware", "timings_s"} <= set(manifest)
    assert all(len(d["fingerprint"]) == 16 for d in manifest["data"].values())


def test_tables_hold_only_what_we_measured(smoke_run):
    root, _ = smoke_run
    from medcnn_nb.report import PAPER_CLAIMS
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
        claims = PAPER_CLAIMS["lidc"][variant]
        assert t1.loc[t1.key == "slice_accuracy", f"{variant}_paper"].item() == claims["accuracy"]
        assert math.isnan(t1.loc[t1.key == "dice_slice", f"{variant}_paper"].item())


def test_fold_manifests(smoke_run):
    root, _ = smoke_run
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
    root_a, _ = smoke_run
    root_b, (killed_dir, epochs_at_kill), finished_before = resumed_run
    for d, mtime in finished_before.items():          # finished folds were not retrained
        assert (d / "metrics.json").stat().st_mtime_ns == mtime
    m = json.loads((killed_dir / "manifest.json").read_text())
    # the interrupted fold continued from its checkpoint (an epoch may end between our look and the kill)
    assert epochs_at_kill <= m["resumed_from_epoch"] <= m["config"]["max_epochs"]
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
