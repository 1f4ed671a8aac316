"""One `paper`-profile BraTS fold on the device Keras' backend sees (issue 13, item 8): images/s, epoch time, Dice.

    KERAS_BACKEND=torch MEDCNN_JOBS=12 python bench/bench_gpu_fold.py --summary gpu_fold.json

It runs what `medcnn-paper --profile paper` runs for one fold, without the notebooks: BraTS phantoms at
240×240×155 (60 cases, the profile's), the slice cache at 240×240 (BraTS' own size, no resizing of the
images), the five patient folds, and fold `--fold` of `--variant` trained with the paper's Adam (lr 0.001),
32 images per Adam step and BatchNorm momentum 0.99. On a GPU `--gradient-accumulation 1` feeds the 32 images
as one batch (the profile's default of 4 is for 24 GB of host memory, docs/paper_profile.md). The paper trains
up to 200 epochs with patience 10; `--max-epochs` bounds this run (say so when reporting it).

Stages and what is timed:
- phantoms written and the slice cache built (threads: `MEDCNN_JOBS`, `data.core.worker_count`);
- the network alone: `--model-steps` training steps on one fixed batch (no loader), images/s of the device;
- the fold: wall time of each epoch (training + validation on the monitored patients), the fold's training
  images/s from its manifest, evaluation time (4 mirror images per slice), and its metrics (Dice per region).
Partial results are printed as each stage ends, so a run stopped early still says how far it got.
`--prefetch 0` and `--prefetch 2` (different `--out` folders, or the same one after deleting its `outputs/`)
compare the fold's training images/s without and with the next batches built while the network trains.
"""
import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


def say(*args):
    print(*args, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="optimised")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--patients", type=int, default=60, help="phantom cases (paper profile: 60)")
    ap.add_argument("--size", type=int, default=240, help="phantom in-plane size and network input (BraTS: 240)")
    ap.add_argument("--slices", type=int, default=155, help="phantom slices (BraTS: 155)")
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--min-epochs", type=int, default=None, help="default: half of --max-epochs")
    ap.add_argument("--gradient-accumulation", type=int, default=1)
    ap.add_argument("--model-steps", type=int, default=20, help="timed steps of the network alone (0: skip)")
    ap.add_argument("--prefetch", type=int, default=None,
                    help="training batches built ahead in a thread (default: train.prefetch_depth(), 2 on a GPU under PyTorch or JAX)")
    ap.add_argument("--out", default="gpu_run", help="work folder (phantoms, cache, the fold's run folder)")
    ap.add_argument("--summary", default=None, help="write the measurements to this JSON file too")
    a = ap.parse_args()

    t_start = time.perf_counter()
    import keras
    import numpy as np
    from medcnn_nb.config import env_report, get_config
    from medcnn_nb.datasets import ensure_phantoms, get_dataset
    from medcnn_nb.data.core import worker_count
    from medcnn_nb.experiments import prepare, run_folds
    from medcnn_nb.train import fold_model, network_input_shape, physical_batch
    from medcnn_nb.variants import VARIANTS
    import medcnn_nb.train as train
    if a.prefetch is not None: train.prefetch_depth = lambda: a.prefetch  # what `training_batches` asks for

    out = Path(a.out).resolve()
    summary = dict(environment=env_report(), data_threads=worker_count(), prefetch=train.prefetch_depth(), args=vars(a))
    def record(**kw):
        summary.update(kw)
        if a.summary:
            Path(a.summary).parent.mkdir(parents=True, exist_ok=True)
            Path(a.summary).write_text(json.dumps(summary, indent=1, default=str))
    say(summary["environment"]); say(f"data threads: {summary['data_threads']}; training batches built ahead: {summary['prefetch']}")

    min_epochs = a.min_epochs if a.min_epochs is not None else max(1, a.max_epochs // 2)
    cfg = get_config("paper", image_size=a.size, gradient_accumulation=a.gradient_accumulation,
                     max_epochs=a.max_epochs, min_epochs=min_epochs,
                     **{"brats.patients": a.patients, "brats.size": a.size, "brats.slices": a.slices})
    record(config=dict(image_size=cfg.image_size, batch_size=cfg.batch_size, physical_batch=physical_batch(cfg),
                       gradient_accumulation=cfg.gradient_accumulation, learning_rate=cfg.learning_rate,
                       base_filters=cfg.base_filters, depth=cfg.depth, bn_momentum=cfg.bn_momentum,
                       max_epochs=cfg.max_epochs, min_epochs=cfg.min_epochs, patience=cfg.patience, folds=cfg.folds,
                       brats=dict(patients=cfg.brats.patients, size=cfg.brats.size, slices=cfg.brats.slices)))

    t = time.perf_counter()
    data_dir = ensure_phantoms("brats", cfg, out / "data" / "phantoms")
    t_phantoms = time.perf_counter() - t
    t = time.perf_counter()
    exp = prepare("brats", cfg, data_dir, out / "outputs", progress=False)
    t_cache = time.perf_counter() - t
    s = exp.sliceset
    record(phantoms_s=round(t_phantoms, 1), cache_s=round(t_cache, 1), slices=int(len(s)), cases=len(s.cases),
           slice_shape=list(s.images.shape[1:]))
    say(f"phantoms: {t_phantoms:.1f} s; slice cache: {t_cache:.1f} s; {len(s)} slices of {len(s.cases)} cases, "
        f"{tuple(s.images.shape[1:])}")

    variant = VARIANTS[a.variant]
    if a.model_steps > 0:  # the network alone on one batch: what the device does without the loader
        spec = get_dataset("brats")
        model = fold_model(variant, cfg, network_input_shape(s, cfg), s.masks.shape[-1], spec.dice_kwargs())
        pos = np.flatnonzero(s.positive)[:physical_batch(cfg)]
        x, y = np.asarray(s.images[pos]), np.asarray(s.masks[pos], np.float32)
        for _ in range(3): model.train_on_batch(x, y)  # warm-up: kernels chosen, memory allocated
        t = time.perf_counter()
        for _ in range(a.model_steps): loss = model.train_on_batch(x, y)
        float(np.asarray(loss[0] if isinstance(loss, (list, tuple)) else loss))  # wait for the device
        dt = time.perf_counter() - t
        record(model_only=dict(steps=a.model_steps, batch=len(pos), images_per_s=round(a.model_steps * len(pos) / dt, 1),
                               ms_per_batch=round(1000 * dt / a.model_steps, 1)))
        say(f"network alone: {summary['model_only']['images_per_s']} images/s "
            f"({summary['model_only']['ms_per_batch']} ms per batch of {len(pos)})")

    # the wall time of each epoch, stamped where Keras ends it (CSVLogger writes the history row then)
    stamps = []
    logger_end = keras.callbacks.CSVLogger.on_epoch_end
    def stamped(self, epoch, logs=None):
        stamps.append(time.perf_counter())
        dt = stamps[-1] - (stamps[-2] if len(stamps) > 1 else t_fold)
        say(f"epoch {epoch + 1}: {dt:.1f} s, loss {logs.get('loss', float('nan')):.4f}, "
            f"val_loss {logs.get('val_loss', float('nan')):.4f}, val_dice {logs.get('val_dice', float('nan')):.3f}")
        record(epoch_s=[round(b - a_, 1) for a_, b in zip([t_fold] + stamps[:-1], stamps)])
        return logger_end(self, epoch, logs)
    keras.callbacks.CSVLogger.on_epoch_end = stamped

    t_fold = time.perf_counter()
    (metrics,) = run_folds(exp, variant, folds=[a.fold], verbose=0)
    run_dir = exp.layout.run_dir("brats", variant.name, a.fold)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    record(metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
           timings_s=manifest.get("timings_s"), train_images_per_epoch=manifest.get("train_images_per_epoch"),
           train_images_per_s=manifest.get("train_images_per_s"), train_slices=manifest.get("train_slices"),
           val_slices=manifest.get("val_slices"), peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if keras.backend.backend() == "torch":
        import torch
        if torch.cuda.is_available():
            record(device=torch.cuda.get_device_name(0), peak_device_memory_mb=round(torch.cuda.max_memory_allocated() / 2**20))
    record(total_s=round(time.perf_counter() - t_start, 1))
    say(json.dumps({k: summary[k] for k in summary if k not in ("environment", "args", "config")}, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
