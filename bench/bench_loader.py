"""Benchmark of issue 4: (a) slice-cache build time, (b) loader throughput with augmentation, (c) slices/s
consumed by one training step of a U-Net at the profile's image size; the loader should deliver >= 5x (c).

    .venv/bin/python bench/bench_loader.py                    # teaching phantoms, both datasets
    .venv/bin/python bench/bench_loader.py --profile smoke --dataset lidc
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np

from medcnn_nb.datasets import DATASETS, ensure_phantoms, load_slices
from medcnn_nb.preprocess import training_indices


def unet(input_shape, out_channels, base_filters, depth):
    "The project's U-Net, or a plain one when `medcnn_nb.models` is not there."
    try:
        from medcnn_nb.models import build_model
        return build_model("unet", input_shape, out_channels=out_channels, base_filters=base_filters, depth=depth), "medcnn_nb.models"
    except ImportError:
        import keras
        from keras import layers
        x = inp = keras.Input(input_shape); skips = []
        for d in range(depth):
            f = base_filters * 2**d
            x = layers.Conv2D(f, 3, padding="same", activation="relu")(x); x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
            skips.append(x); x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(base_filters * 2**depth, 3, padding="same", activation="relu")(x)
        for d in reversed(range(depth)):
            f = base_filters * 2**d
            x = layers.Conv2DTranspose(f, 2, strides=2)(x); x = layers.Concatenate()([x, skips[d]])
            x = layers.Conv2D(f, 3, padding="same", activation="relu")(x); x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        return keras.Model(inp, layers.Conv2D(out_channels, 1, activation="sigmoid")(x)), "inline"


def loader_rate(sl, idx, batch_size, batches, workers, seed):
    "Slices/s the loader delivers with augmentation (one thread, or Keras' thread pool with `workers`)."
    from medcnn_nb.loader import SliceLoader
    ld = SliceLoader(sl, idx, batch_size, augment=True, seed=seed, workers=workers)
    n_batches = min(batches, len(ld))
    if workers <= 1:
        ld[0]  # page the memory map in, as the first epoch would
        t0 = time.perf_counter(); n = 0
        for b in range(n_batches): n += len(ld[b][0])
        return n / (time.perf_counter() - t0)
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    it = PyDatasetAdapter(ld, shuffle=False)
    t0 = time.perf_counter(); n = 0
    it.on_epoch_begin()
    for b, (x, _) in enumerate(it.get_numpy_iterator()):
        n += len(x)
        if b + 1 >= n_batches: break
    rate = n / (time.perf_counter() - t0)
    it.on_epoch_end()
    return rate


def train_rate(sl, idx, batch_size, cfg, steps):
    "Slices/s one `train_on_batch` of a U-Net consumes at the cache's image size."
    import keras
    keras.utils.set_random_seed(cfg.seed)
    model, source = unet(sl.images.shape[1:], sl.masks.shape[-1], cfg.base_filters, cfg.depth)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="binary_crossentropy")
    take = idx[:batch_size]
    x, y = np.asarray(sl.images[take], np.float32), np.asarray(sl.masks[take], np.float32)
    for _ in range(3): model.train_on_batch(x, y)  # tracing and warm-up
    t0 = time.perf_counter()
    for _ in range(steps): model.train_on_batch(x, y)
    return steps * len(x) / (time.perf_counter() - t0), source, model.count_params()


def main(argv=None):
    from medcnn_nb.config import add_config_args, config_from_args, env_report
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="teaching", help="smoke | teaching | paper (default teaching)")
    p.add_argument("--dataset", choices=(*DATASETS, "both"), default="both", help="a registered dataset, or both of the paper's")
    p.add_argument("--data-root", type=Path, help="folder with lidc/ and brats/ (default: fresh phantoms in a temp folder)")
    p.add_argument("--batches", type=int, default=40, help="batches timed for the loader (default 40)")
    p.add_argument("--steps", type=int, default=10, help="training steps timed (default 10)")
    p.add_argument("--workers", type=int, default=2, help="threads for the parallel loader measurement (default 2)")
    add_config_args(p)
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    print(env_report())
    # each dataset's slices come at its own size (its knobs may override cfg.image_size): the table says which
    print(f"profile {cfg.profile}: batch {cfg.batch_size}, U-Net base {cfg.base_filters} depth {cfg.depth}, whole slices")
    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    rows = []
    try:
        paper = [d.name for d in DATASETS.values() if d.in_paper]
        for ds in (paper if args.dataset == "both" else (args.dataset,)):
            data = args.data_root / ds if args.data_root else None
            t_gen = float("nan")
            if not args.data_root:
                t0 = time.perf_counter()
                data = ensure_phantoms(ds, cfg, work / "phantoms")
                t_gen = time.perf_counter() - t0
            cache = work / f"cache-{ds}"  # always cold: a fresh cache folder
            t0 = time.perf_counter(); sl = load_slices(ds, data, cfg, cache_dir=cache, progress=False); t_build = time.perf_counter() - t0
            t0 = time.perf_counter(); load_slices(ds, data, cfg, cache_dir=cache, progress=False); t_reuse = time.perf_counter() - t0
            idx = training_indices(sl, sl.cases, cfg.negatives_ratio, cfg.seed)
            one = loader_rate(sl, idx, cfg.batch_size, args.batches, 1, cfg.seed)
            par = loader_rate(sl, idx, cfg.batch_size, args.batches, args.workers, cfg.seed) if args.workers > 1 else float("nan")
            train, source, params = train_rate(sl, idx, cfg.batch_size, cfg, args.steps)
            rows.append(dict(dataset=ds, size="x".join(map(str, sl.images.shape[1:3])), cases=len(sl.cases), slices=len(sl),
                             train_slices=len(idx), gen_s=t_gen, build_s=t_build,
                             reuse_s=t_reuse, loader_1=one, loader_w=par, train=train, ratio=one / train, source=source, params=params))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n| dataset | slice px | cases | slices | phantoms s | (a) cache build s | reuse s | (b) loader slices/s, 1 thread | "
          f"(b) {args.workers} threads | (c) training slices/s | (b)/(c) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['size']} | {r['cases']} | {r['slices']} | {r['gen_s']:.1f} | {r['build_s']:.2f} | {r['reuse_s']:.3f} | "
              f"{r['loader_1']:.0f} | {r['loader_w']:.0f} | {r['train']:.1f} | {r['ratio']:.1f}x |")
    for r in rows:
        print(f"{r['dataset']}: U-Net from {r['source']}, {r['params']:,} parameters; loader/training = {r['ratio']:.1f}x "
              f"({'meets' if r['ratio'] >= 5 else 'BELOW'} the 5x target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
