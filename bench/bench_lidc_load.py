"""Loading a 512x512x130 LIDC phantom series to HU vs pydicom's bare dcmread + pixel_array (issue 3 target: <= 1.3x).

Run: .venv/bin/python bench/bench_lidc_load.py [--repeats 5] [--size 512] [--slices 130]
Both sides read the same files from the page cache (one warm-up pass first); the best of N repeats is reported.
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from medcnn_nb.data.lidc import find_lidc_cases, read_series
from medcnn_nb.data.phantom_lidc import write_lidc_phantoms


def bare(files):
    "The reference: one dcmread and pixel_array per file, nothing else."
    return [pydicom.dcmread(f).pixel_array for f in files]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--slices", type=int, default=130)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_lidc_phantoms(tmp, patients=1, seed=0, size=a.size, slices=a.slices)
        print(f"phantom {a.size}x{a.size}x{a.slices} written in {time.perf_counter() - t:.2f} s")
        folder = find_lidc_cases(tmp)[0]
        files = sorted(folder.glob("*.dcm"))
        bare(files); s = read_series(folder)                     # warm the page cache
        stack = np.stack(bare(files)).astype(np.float32) - 1024  # same values, file order
        assert np.array_equal(np.sort(s.hu, axis=0), np.sort(stack, axis=0))
        tb, tr = [], []
        for _ in range(a.repeats):
            t = time.perf_counter(); bare(files); tb.append(time.perf_counter() - t)
            t = time.perf_counter(); read_series(folder); tr.append(time.perf_counter() - t)
        b, r = min(tb), min(tr)
        print(f"bare dcmread + pixel_array: {b:.3f} s (best of {a.repeats}; median {np.median(tb):.3f} s)")
        print(f"read_series (sort + HU):    {r:.3f} s (best of {a.repeats}; median {np.median(tr):.3f} s)")
        print(f"ratio read_series / bare: {r / b:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
