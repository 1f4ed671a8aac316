"""Integration tests of `medcnn_nb.train` on tiny phantoms: evaluation coverage, early stopping, multi-device."""
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from medcnn_nb.config import get_config
from medcnn_nb.variants import ABLATION, VARIANTS
from medcnn_nb.train import inner_split, trim_history

TINY = {"image_size": 32, "base_filters": 4, "depth": 2, "max_epochs": 3, "lidc.size": 48, "lidc.slices": 16,
        "brats.size": 48, "brats.slices": 16, "deterministic": True}


@pytest.fixture(scope="module")
def tiny_lidc(tmp_path_factory):
    from medcnn_nb.data.phantom_lidc import write_lidc_phantoms
    from medcnn_nb.datasets import load_slices
    from medcnn_nb.splits import load_or_make_folds
    work = tmp_path_factory.mktemp("train")
    cfg = get_config("smoke", **TINY)
    write_lidc_phantoms(work / "lidc", patients=6, seed=3, size=48, slices=16)
    s = load_slices("lidc", work / "lidc", cfg, work / "cache", progress=False)
    return work, cfg, s, load_or_make_folds(work / "folds.json", s, k=2, seed=0)


def test_variants_differ_by_one_optimisation():
    base = VARIANTS["unoptimised"]
    fields = ("arch", "loss", "augment", "early_stopping", "pretrained")
    for name in ABLATION[1:-1]:
        diff = [f for f in fields if getattr(VARIANTS[name], f) != getattr(base, f)]
        assert len(diff) == 1, (name, diff)
    assert [f for f in fields if getattr(VARIANTS["optimised"], f) == getattr(base, f)] == ["pretrained"]
    assert {"plus_dense", "plus_transfer"} <= set(ABLATION)  # every optimisation the paper names


def test_inner_split_keeps_patients_apart(tiny_lidc):
    _, cfg, s, folds = tiny_lidc
    for f in folds:
        fit, monitor = inner_split(f["train"], {c for c, p in s.case_has_positive().items() if p}, seed=cfg.seed)
        assert set(fit) | set(monitor) == set(f["train"]) and not set(fit) & set(monitor)
        assert not (set(fit) | set(monitor)) & set(f["val"]) and monitor


def test_trim_history(tmp_path):
    p = tmp_path / "history.csv"
    p.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n")
    trim_history(p, 2)
    assert pd.read_csv(p)["epoch"].tolist() == [0, 1]
    trim_history(p, 5)  # fewer rows than epochs: unchanged
    assert pd.read_csv(p)["epoch"].tolist() == [0, 1]


def test_fold_evaluates_every_val_slice_against_an_oracle(tiny_lidc):
    "metrics.json agrees with a NumPy recomputation from the saved model's predictions."
    import keras
    from medcnn_nb.train import CUSTOM_OBJECTS as _custom, train_fold
    work, cfg, s, folds = tiny_lidc
    m = train_fold(s, folds[1], VARIANTS["unoptimised"], cfg, work / "runs/unopt/fold1", verbose=0)
    val = np.flatnonzero(np.isin(s.case_ids, folds[1]["val"]))
    assert m["val_slices"] == len(val) and m["epochs_run"] == cfg.max_epochs
    model = keras.saving.load_model(work / "runs/unopt/fold1/last.keras", custom_objects=_custom)
    pred = model.predict(np.asarray(s.images[val]), verbose=0)[..., 0] >= 0.5
    truth = np.asarray(s.masks[val])[..., 0].astype(bool)
    area = pred.reshape(len(val), -1).sum(1)
    from medcnn_nb.metrics import MIN_AREA
    slice_pred, slice_true = area >= MIN_AREA, truth.reshape(len(val), -1).any(1)
    assert m["slice_accuracy"] == pytest.approx(np.mean(slice_pred == slice_true), abs=1e-12)
    roi = np.asarray(s.roi[val]).astype(bool)
    tp, fp = (pred & truth & roi).sum(), (pred & ~truth & roi).sum()
    tn = (~pred & ~truth & roi).sum()
    if (truth & roi).sum(): assert m["pixel_sensitivity"] == pytest.approx(tp / (truth & roi).sum(), abs=1e-12)
    assert m["pixel_specificity"] == pytest.approx(tn / (tn + fp), abs=1e-12)
    manifest = json.loads((work / "runs/unopt/fold1/manifest.json").read_text())
    assert manifest["seed"] == cfg.seed + 1 and manifest["config"]["image_size"] == 32
    assert sorted(manifest["val_cases"]) == sorted(folds[1]["val"])


def test_fold_on_patches_predicts_whole_slices(tiny_lidc):
    "With lidc.patch_size the fold trains on 16-px patches of its 32-px slices, validates and evaluates whole slices, and resumes."
    import keras
    from medcnn_nb.train import CUSTOM_OBJECTS as _custom, train_fold
    work, cfg, s, folds = tiny_lidc
    pcfg = get_config("smoke", **{**TINY, "lidc.patch_size": 16})
    run = work / "runs/patch/fold0"
    first = train_fold(s, folds[0], VARIANTS["optimised"], pcfg, run, verbose=0, stop_after_epochs=1)
    assert first == {} and (run / "last.keras").exists()           # left as a kill would leave it
    m = train_fold(s, folds[0], VARIANTS["optimised"], pcfg, run, verbose=0)  # resumes from the checkpoint
    val = np.flatnonzero(np.isin(s.case_ids, folds[0]["val"]))
    assert m["val_slices"] == len(val) and m["epochs_run"] >= pcfg.min_epochs
    model = keras.saving.load_model(run / "last.keras", custom_objects=_custom)
    assert model.input_shape == (None, None, None, 1)
    assert model.predict(np.asarray(s.images[val[:2]]), verbose=0).shape == (2, 32, 32, 1)
    assert len(pd.read_csv(run / "history.csv")) == m["epochs_run"]
    with pytest.raises(ValueError, match="divisible by 2"):
        train_fold(s, folds[0], VARIANTS["optimised"], get_config("smoke", **{**TINY, "lidc.patch_size": 6}), work / "runs/p6", verbose=0)


def test_batches_built_ahead_train_the_same_fold(tiny_lidc, monkeypatch):
    "Training batches built two ahead in a thread (what a GPU run under PyTorch or JAX does), killed and resumed, give the fold of no prefetching."
    import medcnn_nb.train as T
    work, cfg, s, folds = tiny_lidc
    pcfg = get_config("smoke", **{**TINY, "lidc.patch_size": 16})  # augmented patches: every batch drawn from (seed, epoch, j)
    plain = T.train_fold(s, folds[1], VARIANTS["optimised"], pcfg, work / "runs/ahead0/fold1", verbose=0)
    monkeypatch.setattr(T, "prefetch_depth", lambda: 2)
    run = work / "runs/ahead2/fold1"
    assert T.train_fold(s, folds[1], VARIANTS["optimised"], pcfg, run, verbose=0, stop_after_epochs=1) == {}
    ahead = T.train_fold(s, folds[1], VARIANTS["optimised"], pcfg, run, verbose=0)
    assert ahead == plain and plain["epochs_run"] == pcfg.max_epochs
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv"), pd.read_csv(work / "runs/ahead0/fold1/history.csv"))


def test_early_stopping_restores_the_best_epoch(tiny_lidc):
    "With patience 0, training stops after the first epoch without a lower val_loss, and the kept weights are the best epoch's."
    from medcnn_nb.train import train_fold
    work, cfg, s, folds = tiny_lidc
    cfg0 = replace(cfg, patience=0, max_epochs=6, min_epochs=1)
    run = work / "runs/es/fold0"
    train_fold(s, folds[0], VARIANTS["plus_early_stopping"], cfg0, run, verbose=0)
    h = pd.read_csv(run / "history.csv")
    best = 1 + int(np.argmin(h["val_loss"].to_numpy()[1:]))  # first minimum from min_epochs on (Keras' strict "<")
    state = json.loads((run / "state.json").read_text())
    assert state["early_stopping"]["best_epoch"] == best
    if state["stopped"]: assert len(h) == best + 2   # patience 0: stops one epoch after the best
    assert (run / "best.weights.h5").exists()


@pytest.mark.parametrize("losses, min_epochs, kept", [
    ([1.0, 0.8, 0.6, 0.7, 0.9], 0, 2),    # the loss fell: the best epoch is kept, not the untrained epoch 0
    ([0.3, 0.8, 0.6, 0.7, 0.9], 1, 2),    # epoch 0 lowest (a model that predicts nothing): still never kept
    ([0.9, 0.8, 0.85, 0.5, 0.4], 3, 4),   # nothing before min_epochs counts
])
def test_early_stopping_never_restores_an_untrained_epoch(tmp_path, losses, min_epochs, kept):
    "The callback fed a scripted validation loss restores the weights of the lowest loss at or after min_epochs."
    from types import SimpleNamespace
    import keras
    from medcnn_nb.train import resumable_callbacks
    cfg = get_config("smoke", patience=10, min_epochs=min_epochs)
    es = next(c for c in resumable_callbacks(tmp_path, SimpleNamespace(early_stopping=True), cfg, None)
              if type(c).__name__ == "ResumableEarlyStopping")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    es.set_model(model)
    es.on_train_begin()
    for epoch, loss in enumerate(losses):
        model.set_weights([np.full((1, 1), epoch, np.float32), np.zeros(1, np.float32)])  # weights say which epoch
        es.on_epoch_end(epoch, {"val_loss": loss, "loss": 1.0})
    es.on_train_end()
    assert es.best_epoch == kept
    assert float(model.get_weights()[0][0, 0]) == kept


def disk_sliceset(cases=12, z=8, size=32, seed=0):
    "A planted-disk phantom: bright noisy disks (radius 3-6 px) on half the slices of each case, noise elsewhere."
    from medcnn_nb.preprocess import SliceSet
    rng = np.random.default_rng(seed)
    n = cases * z
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(0.3, 0.08, (n, size, size, 1)).astype(np.float32)
    masks = np.zeros((n, size, size, 1), np.uint8)
    for i in range(n):
        if i % z >= z // 2: continue
        r, cy, cx = rng.uniform(3, 6), *rng.uniform(8, size - 8, 2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        masks[i, disk, 0] = 1
        images[i, disk, 0] += 0.35
    case_ids = np.repeat([f"LIDC-IDRI-{c + 1:04d}" for c in range(cases)], z)
    return SliceSet(images=np.clip(images, 0, 1), masks=masks, roi=np.ones((n, size, size), bool), case_ids=case_ids,
                    slice_index=np.tile(np.arange(z), cases), positive=masks.reshape(n, -1).any(1),
                    spacing={c: (1.0, 1.0, 1.0) for c in np.unique(case_ids)}, dataset="lidc")


@pytest.mark.slow
def test_tiny_model_learns_planted_disks(tmp_path, variant="unoptimised"):
    """Regression guard of the training mechanics: the plain U-Net with cross-entropy (the hardest variant to train
    on a small budget) reaches Dice > 0.5 on planted disks; with Keras' BatchNorm momentum 0.99 it scores 0 (seeds 42, 1).
    8 filters, the teaching width: with 4 the Dice was under 0.5 for seeds 0, 1 and 5 of 0-5 and 42 (seed 1: 0 after
    14 epochs too), with 8 it was 0.715-0.964 for all seven, so this guard does not pass by the luck of one seed."""
    from medcnn_nb.train import train_fold
    s = disk_sliceset()
    cases = list(dict.fromkeys(s.case_ids.tolist()))
    split = {"fold": 0, "train": cases[:9], "val": cases[9:]}
    cfg = get_config("smoke", base_filters=8, depth=2, max_epochs=8, steps_per_epoch=0, patience=3, min_epochs=2,
                     batch_size=8, deterministic=True)
    m = train_fold(s, split, VARIANTS[variant], cfg, tmp_path / variant, verbose=0)
    h = pd.read_csv(tmp_path / variant / "history.csv")
    assert {"loss", "dice", "val_loss", "val_dice"} <= set(h.columns)   # learning curves for every variant
    assert m["dice_case"] > 0.5, (m["dice_case"], h.to_dict("list"))


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
                    reason="a tf.distribute strategy: TensorFlow backend only (the script runs under KERAS_BACKEND)")
def test_mirrored_strategy_on_two_logical_cpus(tiny_lidc):
    "distribute='mirrored' builds the model in a MirroredStrategy over 2 logical CPUs and trains a fold."
    work, *_ = tiny_lidc
    script = textwrap.dedent(f"""
        import json, os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from medcnn_nb.config import get_config
        from medcnn_nb.datasets import load_slices
        from medcnn_nb.variants import VARIANTS
        from medcnn_nb.splits import load_or_make_folds
        from medcnn_nb.train import _build, distribution_scope, train_fold
        cfg = get_config("smoke", **{TINY!r}, distribute="mirrored")
        cfg = cfg.__class__(**{{**cfg.__dict__, "max_epochs": 1}})
        s = load_slices("lidc", {str(work / 'lidc')!r}, cfg, {str(work / 'cache')!r}, progress=False)
        folds = load_or_make_folds({str(work / 'folds.json')!r}, s, k=2, seed=0)
        with distribution_scope(cfg) as scope:
            strategy = tf.distribute.get_strategy()
            model = _build(VARIANTS["optimised"], cfg, s.images.shape[1:], 1)
        m = train_fold(s, folds[0], VARIANTS["optimised"], cfg, {str(work / 'runs/mirrored/fold0')!r}, verbose=0)
        print(json.dumps(dict(replicas=strategy.num_replicas_in_sync,
                              variable=type(model.weights[0].value).__name__, epochs=m["epochs_run"],
                              acc=m["slice_accuracy"])))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert "Mirrored" in out["variable"]
    assert out["epochs"] == 1 and 0 <= out["acc"] <= 1


@pytest.mark.parametrize("postprocess", ["most_confident_component", "largest_component", "none"])
def test_brats_fold_keeps_one_part_of_each_case(tmp_path_factory, monkeypatch, postprocess):
    "A BraTS fold scores each case's prediction with one 3D part, by default the most confident: checked with a planted prediction."
    import medcnn_nb.train as train
    from scipy import ndimage
    from medcnn_nb.data.phantom_brats import write_brats_phantoms
    from medcnn_nb.datasets import load_slices
    from medcnn_nb.splits import load_or_make_folds
    work = tmp_path_factory.mktemp("brats_post")
    cfg = get_config("smoke", **TINY, **{"brats.postprocess": postprocess})
    write_brats_phantoms(work / "brats", patients=4, seed=3, size=48, slices=16)
    s = load_slices("brats", work / "brats", cfg, work / "cache", progress=False)
    folds = load_or_make_folds(work / "folds.json", s, k=2, seed=0)
    cases = np.asarray(s.case_ids)
    val = np.flatnonzero(np.isin(cases, folds[0]["val"]))
    # the truth at 0.8, plus in each case a one-voxel speck in a corner: surer (0.9) in the first case, less (0.6) in the second
    planted = 0.8 * np.asarray(s.masks[val], np.float32)
    for case, p in zip(folds[0]["val"], (0.9, 0.6)):
        planted[np.flatnonzero(cases[val] == case)[0], 0, 0] = p
    monkeypatch.setattr(train, "predict_probabilities", lambda model, images, **kw: planted.copy())
    m = train.train_fold(s, folds[0], VARIANTS["unoptimised"], cfg, work / "fold0", verbose=0)
    changed = 0
    for case in folds[0]["val"]:
        rows = cases[val] == case
        wt, truth = planted[rows][..., 0] >= 0.5, np.asarray(s.masks[val][rows])[..., 0].astype(bool)
        dice = lambda p: 2 * (p & truth).sum() / (p.sum() + truth.sum())
        kept = wt
        if postprocess != "none":  # the oracle: label the parts, keep the one with most voxels, or with the highest peak
            parts, n = ndimage.label(wt)
            size = [(parts == i).sum() for i in range(1, n + 1)]
            peak = [planted[rows][..., 0][parts == i].max() for i in range(1, n + 1)]
            best = int(np.argmax(size)) if postprocess == "largest_component" else max(range(n), key=lambda i: (peak[i], size[i]))
            kept = parts == 1 + best
        changed += dice(kept) != dice(wt)
        assert m["per_case"][case]["dice_wt"][0] == pytest.approx(dice(kept), abs=1e-9), case
    # the speck removed in both cases, or kept; the most confident rule keeps the surer speck of the first case instead
    assert changed == (0 if postprocess == "none" else 2)
    first = folds[0]["val"][0]
    assert (m["per_case"][first]["dice_wt"][0] == 0) == (postprocess == "most_confident_component")
