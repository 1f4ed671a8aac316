"""Time the fold evaluators on a synthetic validation fold of teaching size (or any size).

    .venv/bin/python bench/bench_metrics.py                 # 4 LIDC cases x 40 x 96x96, 4 BraTS cases x 48 x 96x96x3
    .venv/bin/python bench/bench_metrics.py --size 512 --lidc-slices 120 --brats-slices 155

Prints one line per evaluator (median and best of --repeats runs) and a JSON summary.
"""
import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from scipy import ndimage

from medcnn_nb.metrics import evaluate_brats, evaluate_lidc


def lidc_fold(rng, cases, slices, size):
    "Spherical nodules, a blurred noisy probability map that finds most of them, and scattered false alarms."
    zz, yy, xx = np.indices((slices, size, size), dtype=np.float32)
    probs, truths = [], []
    for _ in range(cases):
        truth = np.zeros((slices, size, size), bool)
        for _ in range(rng.integers(1, 4)):
            c = rng.uniform([3, 8, 8], [slices - 3, size - 8, size - 8])
            r = rng.uniform(1.5, 4.0) * size / 96
            truth |= ((zz - c[0]) ** 2 + ((yy - c[1]) ** 2 + (xx - c[2]) ** 2)) <= r * r
        prob = ndimage.gaussian_filter(truth.astype(np.float32), 1.0) * rng.uniform(0.6, 1.4)
        prob += rng.random(truth.shape, dtype=np.float32) * 0.3
        for _ in range(rng.integers(0, 6)):
            z, y, x = rng.integers([0, 0, 0], [slices, size - 3, size - 3])
            prob[z, y:y + 3, x:x + 3] = rng.uniform(0.5, 1.0)
        probs.append(np.clip(prob, 0, 1)); truths.append(truth)
    ids = np.repeat([f"LIDC-IDRI-{i + 1:04d}" for i in range(cases)], slices)
    return np.concatenate(probs)[..., None], np.concatenate(truths)[..., None].astype(np.uint8), ids


def brats_fold(rng, cases, slices, size):
    "Nested ellipsoids (WT > TC > ET) inside an elliptical brain; the prediction is a shifted, noisy copy."
    zz, yy, xx = np.indices((slices, size, size), dtype=np.float32)
    probs, truths, rois = [], [], []
    for _ in range(cases):
        c = rng.uniform([slices * .3, size * .3, size * .3], [slices * .7, size * .7, size * .7])
        d = ((zz - c[0]) / (slices * .15)) ** 2 + ((yy - c[1]) / (size * .15)) ** 2 + ((xx - c[2]) / (size * .12)) ** 2
        truth = np.stack([d <= 1, d <= 0.4, (d <= 0.4) & (d >= 0.15)], -1)
        prob = ndimage.shift(truth.astype(np.float32), (rng.integers(-2, 3), rng.integers(-3, 4), 0, 0), order=0)
        prob = np.clip(prob * 0.8 + rng.random(truth.shape, dtype=np.float32) * 0.3, 0, 1)
        brain = ((zz - slices / 2) / (slices * .48)) ** 2 + ((yy - size / 2) / (size * .45)) ** 2 + ((xx - size / 2) / (size * .38)) ** 2 <= 1
        probs.append(prob); truths.append(truth.astype(np.uint8)); rois.append(brain)
    ids = np.repeat([f"BraTS2021_{i:05d}" for i in range(cases)], slices)
    return np.concatenate(probs), np.concatenate(truths), ids, np.concatenate(rois)


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter(); out = fn(); times.append(time.perf_counter() - start)
    return out, times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=96, help="in-plane size of the slices")
    ap.add_argument("--lidc-cases", type=int, default=4)
    ap.add_argument("--lidc-slices", type=int, default=40)
    ap.add_argument("--brats-cases", type=int, default=4)
    ap.add_argument("--brats-slices", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    lp, lt, lids = lidc_fold(rng, args.lidc_cases, args.lidc_slices, args.size)
    bp, bt, bids, broi = brats_fold(rng, args.brats_cases, args.brats_slices, args.size)
    spacing = {c: (1.0, 240 / args.size, 240 / args.size) for c in dict.fromkeys(bids)}
    lidc, lt_s = timed(lambda: evaluate_lidc(lp, lt, lids), args.repeats)
    brats, bt_s = timed(lambda: evaluate_brats(bp, bt, bids, broi, spacing=spacing), args.repeats)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, numpy {np.__version__}")
    print(f"evaluate_lidc  {lp.shape} float32: median {statistics.median(lt_s):.3f} s, best {min(lt_s):.3f} s "
          f"over {args.repeats} runs  (nodules {lidc['nodules']}, cpm {lidc['cpm']:.3f}, dice_case {lidc['dice_case']:.3f})")
    print(f"evaluate_brats {bp.shape} float32: median {statistics.median(bt_s):.3f} s, best {min(bt_s):.3f} s "
          f"over {args.repeats} runs  (dice_wt {brats['dice_wt']:.3f}, hd95_wt {brats['hd95_wt']:.2f} mm)")
    print(json.dumps({"args": vars(args), "evaluate_lidc_s": lt_s, "evaluate_brats_s": bt_s}))


if __name__ == "__main__":
    main()
