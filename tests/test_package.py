"""The library stands alone (issue 2): the built wheel, installed into an empty virtual environment that
sees only the runtime requirements, imports every module; the notebook tooling is imported lazily and a
missing extra is named."""
import os
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Top-level packages that come only with the "notebooks" / "test" extras (or with Jupyter itself).
# pip must see only what is installed, not a source tree put on PYTHONPATH.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
DEV_ONLY = ["papermill", "nbdev", "execnb", "fastcore", "ghapi", "jupyterlab", "jupyter_server", "nbconvert",
            "nbclient", "nbformat", "ipykernel", "IPython", "pytest", "jupytext"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, env=CLEAN_ENV)
    (whl,) = out.glob("medcnn_nb-*.whl")
    return whl


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory, wheel) -> Path:
    """An empty venv with only the wheel; runtime requirements are borrowed from the project's environment
    through a .pth file, and the dev-only packages are made unimportable by a finder that a .pth file installs."""
    env = tmp_path_factory.mktemp("bare")
    venv.create(env, with_pip=False)
    py = env / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, env=CLEAN_ENV)
    deps_site = Path(subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    check=True, capture_output=True, text=True).stdout.strip())
    (site / "zz_runtime_deps.pth").write_text(str(deps_site) + "\n")
    # the blocker is imported by a .pth line, not by sitecustomize.py: Debian's and Ubuntu's system Python ship
    # /usr/lib/python3.X/sitecustomize.py, which comes first on sys.path and would hide ours
    (site / "_block_dev_only.py").write_text(textwrap.dedent(f"""
        import sys
        BLOCKED = set({DEV_ONLY!r})
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not a runtime requirement)", name=name)
        sys.meta_path.insert(0, _Block())
    """))
    (site / "00_block_dev_only.pth").write_text("import _block_dev_only\n")  # .pth files run in name order
    return py


def modules_in(wheel: Path) -> list[str]:
    names = zipfile.ZipFile(wheel).namelist()
    mods = [n[:-3].replace("/", ".").removesuffix(".__init__") for n in names
            if n.startswith("medcnn_nb/") and n.endswith(".py") and not n.endswith("_modidx.py")]
    return sorted(mods)


def test_wheel_holds_every_module(wheel):
    in_tree = sorted(p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
                     for p in (ROOT / "medcnn_nb").rglob("*.py") if p.name != "_modidx.py")
    assert modules_in(wheel) == in_tree


def test_every_module_imports_with_runtime_requirements_only(bare_python, wheel, tmp_path):
    mods = modules_in(wheel)
    code = textwrap.dedent(f"""
        import importlib, sys
        import medcnn_nb
        assert '/site-packages/medcnn_nb' in medcnn_nb.__file__.replace('\\\\', '/'), medcnn_nb.__file__
        for m in {mods!r}:
            importlib.import_module(m)
        leaked = sorted(set({DEV_ONLY!r}) & {{k.split('.')[0] for k in sys.modules}})
        assert not leaked, leaked
        try:
            import papermill
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit('the blocker did not block papermill')
        print(len({mods!r}), 'modules imported')
    """)
    run = subprocess.run([str(bare_python), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"{len(mods)} modules imported" in run.stdout


def test_missing_extra_is_named(bare_python, tmp_path):
    code = "from medcnn_nb.config import require\nrequire('papermill', 'notebooks')"
    run = subprocess.run([str(bare_python), "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode != 0
    assert "pip install 'medcnn_nb[notebooks]'" in run.stderr
