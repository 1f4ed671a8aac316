"""Fail when nbdev_export, nbdev_clean or the README generation would change a committed file.

The notebooks are the source: `medcnn_nb/`, the cleaned notebooks and README.md must already be what
these commands produce. We hash every file git knows (tracked, or untracked but not ignored) before
and after running them, so a hand edit of `medcnn_nb/*.py` (which nbdev_export overwrites) or an
uncleaned notebook fails here, in development and in CI alike.
"""
import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = [
    [str(BIN / "nbdev_export")],
    [str(BIN / "nbdev_clean")],
    [sys.executable, str(ROOT / "tools" / "make_readme.py")],
]


def snapshot():
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    out = {}
    for name in filter(None, files):
        p = ROOT / name
        out[name] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def main():
    before = snapshot()
    for cmd in STEPS:
        subprocess.run(cmd, cwd=ROOT, check=True)
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
