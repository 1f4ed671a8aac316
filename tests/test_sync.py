"""The notebooks are the source (issue 2): a hand edit of the generated library fails the sync check, and a
chapter saved from JupyterLab exports and cleans without spurious diffs. Each test works on a throwaway
git copy of the project, never on the checkout itself."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBSYNC = ["tools/nbsync.py"]


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def project_copy(tmp_path) -> Path:
    files = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    dst = tmp_path / "proj"
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    git(dst, "init", "-q")
    git(dst, "add", "-A")
    git(dst, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "copy")
    return dst


def nbsync(cwd, *args):
    return subprocess.run([sys.executable, *NBSYNC, *args], cwd=cwd, capture_output=True, text=True)


def test_clean_copy_passes_and_hand_edit_fails(project_copy):
    first = nbsync(project_copy, "--check")
    assert first.returncode == 0, first.stdout + first.stderr
    lib = project_copy / "medcnn_nb" / "config.py"
    lib.write_text(lib.read_text() + "\nHAND_EDIT = True\n")
    second = nbsync(project_copy, "--check")
    assert second.returncode == 1
    assert "medcnn_nb/config.py" in second.stdout
    assert "HAND_EDIT" not in lib.read_text()  # export restored the notebook's version


def jupyterlab_save(path: Path, edit) -> None:
    "Rewrite a notebook the way JupyterLab does after running it with the project kernel."
    nb = json.loads(path.read_text())
    nb["metadata"]["kernelspec"] = {"name": "medcnn_nb", "display_name": "medcnn_nb (.venv)", "language": "python"}
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.7", "file_extension": ".py"}
    for i, cell in enumerate(nb["cells"]):
        cell["metadata"]["execution"] = {"iopub.status.busy": "2026-11-26T10:00:00.000Z"}
        if cell["cell_type"] == "code":
            cell["metadata"]["scrolled"] = True
            cell["execution_count"] = i + 1
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["ran\n"]}]
    edit(nb)
    path.write_text(json.dumps(nb, indent=1))  # JupyterLab's layout: no sorted keys


def test_jupyterlab_edit_exports_and_cleans_without_spurious_diffs(project_copy):
    chapter = project_copy / "nbs" / "00_config.ipynb"
    original = json.loads(chapter.read_text())
    md = next(i for i, c in enumerate(original["cells"]) if c["cell_type"] == "markdown" and i > 0)
    code = next(i for i, c in enumerate(original["cells"])
                if c["cell_type"] == "code" and "def get_config" in "".join(c["source"]))

    def edit(nb):
        nb["cells"][md]["source"] = "".join(nb["cells"][md]["source"]) + "\nA sentence added in JupyterLab."
        src = "".join(nb["cells"][code]["source"])
        nb["cells"][code]["source"] = src + "\n\nEDITED_IN_LAB = 1"
        nb["cells"][code]["metadata"]["tags"] = ["parameters"]

    jupyterlab_save(chapter, edit)
    assert nbsync(project_copy).returncode == 0
    changed = git(project_copy, "status", "--porcelain").split("\n")
    assert sorted(l[3:] for l in changed if l) == ["medcnn_nb/config.py", "nbs/00_config.ipynb"]
    assert "EDITED_IN_LAB = 1" in (project_copy / "medcnn_nb" / "config.py").read_text()

    cleaned = json.loads(chapter.read_text())
    assert cleaned["metadata"] == original["metadata"]  # kernelspec normalised, language_info dropped
    assert len(cleaned["cells"]) == len(original["cells"])
    for i, (a, b) in enumerate(zip(original["cells"], cleaned["cells"])):
        if i == md:
            assert "".join(b["source"]).endswith("A sentence added in JupyterLab.")
        elif i == code:
            assert b["metadata"] == {"tags": ["parameters"]}  # papermill's tag survives the clean
            assert "".join(b["source"]).endswith("EDITED_IN_LAB = 1")
        else:
            assert a == b, f"cell {i} changed although it was not edited"
    # a second pass is a fixed point: nothing more to change
    git(project_copy, "add", "-A")
    assert nbsync(project_copy, "--check").returncode == 0
