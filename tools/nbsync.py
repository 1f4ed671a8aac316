"""Regenerate everything that is derived from the notebooks, and (with --check) fail if that changed a file.

The notebooks in nbs/ are the source. Derived from them:
- `medcnn_nb/` (nbdev_export);
- the notebooks' own stored form (nbdev_clean, then outputs and execution counts stripped and the
  kernelspec normalised to `python3`, so that running a chapter in JupyterLab and saving it leaves no
  diff; cell tags such as papermill's `parameters` are kept);
- README.md (tools/make_readme.py, from nbs/index.ipynb).

`--check` hashes every file git knows (tracked, or untracked but not ignored) before and after, so a hand
edit of `medcnn_nb/*.py` (which nbdev_export overwrites) or an uncleaned notebook fails `make test`.
"""
import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KERNELSPEC = {"display_name": "python3", "language": "python", "name": "python3"}


def snapshot():
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    out = {}
    for name in filter(None, files):
        p = ROOT / name
        out[name] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def strip_outputs(path: Path):
    "Drop outputs and execution counts, normalise the kernelspec; write only when something changed."
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.setdefault("metadata", {})["kernelspec"] = KERNELSPEC
    new = json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    if new != text:
        path.write_text(new, encoding="utf-8")


def regenerate():
    subprocess.run([str(BIN / "nbdev_export")], cwd=ROOT, check=True)
    subprocess.run([str(BIN / "nbdev_clean")], cwd=ROOT, check=True)
    for nb in sorted((ROOT / "nbs").rglob("*.ipynb")):
        if ".ipynb_checkpoints" not in nb.parts:
            strip_outputs(nb)
    subprocess.run([sys.executable, str(ROOT / "tools" / "make_readme.py")], cwd=ROOT, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if regenerating changed any file")
    args = parser.parse_args()
    before = snapshot() if args.check else None
    regenerate()
    if not args.check:
        return
    after = snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        print("The notebooks and the generated files disagree. These files changed when regenerated:")
        for name in changed:
            print("   ", name)
        print("The notebooks in nbs/ are the source: edit them, then run `make sync` and commit the result.")
        sys.exit(1)
    print(f"sync check: export, clean and README generation left all {len(after)} files unchanged")


if __name__ == "__main__":
    main()
