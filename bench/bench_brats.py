"""Time the BraTS phantoms and reader (issue 3): the teaching profile's 20 cases at 96x96x48, and loading them
back, against nibabel's bare `nib.load(...).get_fdata()` over the same files.

    .venv/bin/python bench/bench_brats.py [--patients 20] [--size 96] [--slices 48] [--repeat 3]
"""
import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from medcnn_nb.data.brats import find_brats_cases, load_brats_case
from medcnn_nb.data.phantom_brats import write_brats_phantoms


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "brats"
        t_write = best(lambda: write_brats_phantoms(out, a.patients, seed=0, size=a.size, slices=a.slices), a.repeat)
        cases = find_brats_cases(out)
        files = sorted(out.rglob("*.nii.gz"))
        t_load = best(lambda: [load_brats_case(c) for c in cases], a.repeat)
        t_bare = best(lambda: [np.asarray(nib.load(f).get_fdata(dtype=np.float32)) for f in files], a.repeat)
        mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"{a.patients} phantom cases {a.size}x{a.size}x{a.slices}, {len(files)} files, {mb:.1f} MB (best of {a.repeat})")
    print(f"write_brats_phantoms: {t_write:.2f} s ({t_write / a.patients * 1000:.0f} ms/case)")
    print(f"load_brats_case, all cases: {t_load:.2f} s ({t_load / a.patients * 1000:.0f} ms/case)")
    print(f"bare nib.load + get_fdata over the same files: {t_bare:.2f} s; ratio {t_load / t_bare:.2f}")


if __name__ == "__main__":
    main()
