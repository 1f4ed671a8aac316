"Metrics (nbs/05a_metrics.ipynb) against scikit-learn, brute-force oracles, hand-built cases and real masks."
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from medcnn_nb.losses import DiceMetric
from medcnn_nb.metrics import (CPM_LEVELS, Counts, accuracy, binarize, case_detections, case_groups,
                               confusion_counts, cpm, dice, evaluate_brats, evaluate_lidc, froc, hd95, nanmean,
                               nodule_detection, per_case, sensitivity, slice_detection, specificity, surface)



def random_masks(seed, shape=(6, 20, 20), density=0.15):
    rng = np.random.default_rng(seed)
    truth = ndimage.binary_dilation(rng.random(shape) < density / 5)
    prob = np.clip(truth * 0.6 + rng.random(shape) * 0.5, 0, 1)
    roi = rng.random(shape) < 0.8
    return prob, truth, roi


@pytest.mark.parametrize("seed", range(5))
def test_counts_and_rates_match_sklearn(seed):
    prob, truth, roi = random_masks(seed)
    pred = prob >= 0.5
    for r in (None, roi):
        p, t = (pred, truth) if r is None else (pred[r], truth[r])
        c = confusion_counts(prob, truth, r)
        assert list(c) == [confusion_matrix(t.ravel(), p.ravel(), labels=[False, True]).ravel()[i] for i in (3, 1, 2, 0)]
        assert accuracy(prob, truth, r) == pytest.approx(accuracy_score(t.ravel(), p.ravel()))
        assert sensitivity(prob, truth, r) == pytest.approx(recall_score(t.ravel(), p.ravel()))
        assert specificity(prob, truth, r) == pytest.approx(recall_score(t.ravel(), p.ravel(), pos_label=False))
        assert dice(prob, truth, r) == pytest.approx(f1_score(t.ravel(), p.ravel()))
    assert dice(prob, truth, threshold=0.8) == pytest.approx(f1_score(truth.ravel(), prob.ravel() >= 0.8))


def test_empty_masks_and_nan_rules():
    empty, some = np.zeros((3, 4, 4), bool), np.zeros((3, 4, 4), bool)
    some[1, 2, 2] = True
    assert dice(empty, empty) == 1.0
    assert dice(some, empty) == 0.0 and dice(empty, some) == 0.0
    assert math.isnan(sensitivity(some, empty))          # no positives: undefined
    assert math.isnan(specificity(some, np.ones_like(some)))  # no negatives: undefined
    assert specificity(empty, empty) == 1.0
    assert nanmean([0.5, float("nan"), 1.0]) == 0.75
    assert math.isnan(nanmean([])) and math.isnan(nanmean([float("nan")]))


def test_binarize_reads_probabilities_bools_and_labels():
    assert binarize(np.array([0.2, 0.5, 0.9])).tolist() == [False, True, True]
    assert binarize(np.array([0, 1, 2], np.uint8)).tolist() == [False, True, True]
    assert binarize(np.array([True, False])).tolist() == [True, False]
    with pytest.raises(ValueError, match="dtype <U1"):
        binarize(np.array(["a"]))
    with pytest.raises(ValueError, match=r"shapes differ: \(2, 3\) vs \(3, 2\)"):
        dice(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="roi of shape"):
        confusion_counts(np.zeros((2, 3)), np.zeros((2, 3)), roi=np.ones(2, bool))


def test_case_groups_and_per_case():
    assert case_groups(np.array(["x", "x", "y", "z", "z"])) == {"x": slice(0, 2), "y": slice(2, 3), "z": slice(3, 5)}
    assert case_groups([]) == {}
    with pytest.raises(ValueError, match="'x' are not contiguous"):
        case_groups(["x", "y", "x"])
    prob, truth, roi = random_masks(3, shape=(9, 12, 12))
    ids = ["a"] * 4 + ["b"] * 5
    got = per_case(dice, prob, truth, ids, roi)
    assert got == {"a": pytest.approx(f1_score(truth[:4][roi[:4]], prob[:4][roi[:4]] >= 0.5)),
                   "b": pytest.approx(f1_score(truth[4:][roi[4:]], prob[4:][roi[4:]] >= 0.5))}
    with pytest.raises(ValueError, match="8 case ids for 9 slices"):
        per_case(dice, prob, truth, ids[:8])


def test_slice_detection_against_sklearn_with_min_area():
    prob, truth, _ = random_masks(7, shape=(30, 16, 16), density=0.05)
    truth[::3] = False                                   # a third of the slices truly negative
    for min_area in (1, 3, 10):
        c = slice_detection(prob, truth, min_area=min_area)
        pred_slice = (prob >= 0.5).sum((1, 2)) >= min_area
        true_slice = truth.any((1, 2))
        tn, fp, fn, tp = confusion_matrix(true_slice, pred_slice, labels=[False, True]).ravel()
        assert c == Counts(tp, fp, fn, tn)
    # hand-built: 2 predicted pixels are below min_area=3
    t = np.zeros((2, 5, 5), bool); t[0, 1, 1] = True
    p = np.zeros((2, 5, 5), bool); p[0, 1, 1:3] = True
    assert slice_detection(p, t) == Counts(0, 0, 1, 1)
    assert slice_detection(p, t, min_area=2) == Counts(1, 0, 0, 1)


def test_nodule_matching_hand_built():
    truth = np.zeros((8, 20, 20), bool)
    truth[1:3, 2:5, 2:5] = True                          # nodule A
    truth[5:7, 14:17, 14:17] = True                      # nodule B
    prob = np.zeros(truth.shape)
    prob[2, 4, 4] = 0.7; prob[3, 5, 5] = 0.9             # diagonal neighbours: one candidate (26-connectivity) on A
    prob[6, 15, 15] = 0.6; prob[7, 10, 10] = 0.8         # a hit on B and, apart, a false positive
    prob[1, 2, 2] = 0.55                                 # a second, separate candidate on A: no extra hit, no FP
    det = case_detections(prob, truth)
    assert det.n_nodules == 2 and sorted(det.scores.tolist()) == [0.55, 0.6, 0.8, 0.9]
    assert nodule_detection([det]) == {"nodules": 2, "detected": 2, "false_positives": 1, "scans": 1,
                                       "sensitivity": 1.0, "fp_per_scan": 1.0}
    assert nodule_detection([det], min_score=0.65)["detected"] == 1
    # one candidate bridging two nodules finds both
    bridge = np.zeros(truth.shape); bridge[2, 4, 4:16] = 0.9; bridge[3:6, 4:16, 15] = 0.9
    assert nodule_detection([case_detections(bridge, truth)])["detected"] == 2
    # booleans: every candidate scores 1
    assert case_detections(prob >= 0.5, truth).scores.tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="one \\(z, y, x\\) volume"):
        case_detections(prob[0], truth[0])


def brute_force_froc(detections, t):
    "Sensitivity and FP/scan when only candidates scoring >= t are kept, by plain loops."
    found, fps, total = 0, 0, 0
    for d in detections:
        hit = set()
        for s, h in zip(d.scores, d.hits):
            if s >= t:
                if len(h): hit |= set(h.tolist())
                else: fps += 1
        found += len(hit); total += d.n_nodules
    return fps / len(detections), found / total


def synthetic_scan(rng, size=(16, 32, 32)):
    zz, yy, xx = np.indices(size)
    truth, prob = np.zeros(size, bool), rng.random(size) * 0.45
    for _ in range(rng.integers(1, 4)):
        c = rng.integers(3, np.array(size) - 3)
        ball = (zz - c[0])**2 + (yy - c[1])**2 + (xx - c[2])**2 <= 4
        truth |= ball
        if rng.random() < 0.75: prob[ball] = rng.uniform(0.5, 1.0)
    for _ in range(rng.integers(0, 5)): prob[tuple(rng.integers(0, size))] = rng.uniform(0.5, 1.0)
    return prob, truth


def test_froc_matches_brute_force_and_luna_interpolation():
    rng = np.random.default_rng(11)
    dets = [case_detections(*synthetic_scan(rng)) for _ in range(7)]
    fps, sens, thr = froc(dets)
    assert (fps[0], sens[0], thr[0]) == (0.0, 0.0, np.inf)
    assert np.all(np.diff(fps) >= 0) and np.all(np.diff(sens) >= 0)
    for f, s, t in zip(fps[1:], sens[1:], thr[1:]):
        assert (f, s) == pytest.approx(brute_force_froc(dets, t))
    # LUNA16's evaluation script reads the raw curve with np.interp; levels off the 1/7 grid avoid ties
    levels = (0.13, 0.37, 0.6, 1.1, 2.9)
    assert cpm(fps, sens, levels) == pytest.approx(np.mean(np.interp(levels, fps, sens)))


def test_cpm_hand_built_curves():
    # hit at 0 FP (1/2), FP (1 FP/scan), then the second hit: curve (0,0) (0,.5) (1,.5) (1,1)
    assert cpm([0, 0, 1, 1], [0, .5, .5, 1]) == pytest.approx((3 * 0.5 + 4 * 1.0) / 7)
    # a single operating point at 2 FP/scan and sensitivity 0.8: straight line from (0, 0)
    expected = np.mean([0.8 * min(lv / 2, 1) for lv in CPM_LEVELS])
    assert cpm([0, 2], [0, 0.8]) == pytest.approx(expected)
    assert math.isnan(cpm([0, 1], [float("nan"), float("nan")]))


def brute_hd95(a, b, spacing):
    pa, pb = np.argwhere(surface(a)) * spacing, np.argwhere(surface(b)) * spacing
    d = np.r_[cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]]
    return np.percentile(d, 95)


@pytest.mark.parametrize("seed", range(4))
def test_hd95_matches_kdtree_oracle(seed):
    rng = np.random.default_rng(seed)
    shape = (12, 30, 30)
    a = ndimage.binary_dilation(rng.random(shape) < 0.004, iterations=3)
    b = ndimage.binary_dilation(rng.random(shape) < 0.004, iterations=2)
    a[:, 0, :5] = True                                   # touches the image border: border voxels are surface
    spacing = np.array([2.5, 0.7, 0.7])
    assert hd95(a, b, spacing) == pytest.approx(brute_hd95(a, b, spacing))
    assert hd95(a, b) == pytest.approx(brute_hd95(a, b, np.ones(3)))


def test_hd95_empty_cases_and_shift():
    a = np.zeros((3, 20, 20), bool); a[1, 4:10, 4:10] = True
    assert hd95(a, np.roll(a, 3, axis=2)) == pytest.approx(3.0)
    assert hd95(a, a) == 0.0
    assert hd95(np.zeros_like(a), np.zeros_like(a)) == 0.0
    assert math.isnan(hd95(a, np.zeros_like(a))) and math.isnan(hd95(np.zeros_like(a), a))


def test_real_whole_tumour_mask(real_brats):
    path = real_brats / "Brats18_CBICA_AOO_1" / "GT_W.nii.gz"
    nib = pytest.importorskip("nibabel")
    img = nib.load(path)
    wt = np.asarray(img.dataobj) > 0
    assert wt.any()
    spacing = np.array(img.header.get_zooms()[:3], float)
    eroded = ndimage.binary_erosion(wt, iterations=2)
    shifted = np.roll(wt, 4, axis=0)
    assert dice(eroded, wt) == pytest.approx(f1_score(wt.ravel(), eroded.ravel()))
    assert hd95(eroded, wt, spacing) == pytest.approx(brute_hd95(eroded, wt, spacing))
    assert hd95(shifted, wt, spacing) == pytest.approx(brute_hd95(shifted, wt, spacing))


def test_dice_metric_matches_f1_over_batches_and_in_fit():
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(5)
    ys = [(rng.random((n, 8, 8, 1)) < 0.3).astype("float32") for n in (2, 3)]
    ps = [rng.random((n, 8, 8, 1)).astype("float32") for n in (2, 3)]
    m = DiceMetric()
    for y, p in zip(ys, ps): m.update_state(y, p)
    flat_y, flat_p = np.concatenate([y.ravel() for y in ys]), np.concatenate([p.ravel() for p in ps])
    assert float(m.result()) == pytest.approx(f1_score(flat_y, flat_p >= 0.5), abs=1e-6)
    m.reset_state()
    w = np.array([1.0, 0.0, 2.0], "float32")
    m.update_state(ys[1], ps[1], sample_weight=w)
    pixel_w = np.repeat(w, 64)
    assert float(m.result()) == pytest.approx(f1_score(ys[1].ravel(), ps[1].ravel() >= 0.5, sample_weight=pixel_w), abs=1e-6)
    m.reset_state()
    assert float(m.result()) == 1.0
    assert DiceMetric.from_config(DiceMetric(threshold=0.3).get_config()).threshold == 0.3
    # in a compiled model, as the training loop logs it
    x = rng.random((6, 8, 8, 1)).astype("float32")
    y = (x > 0.6).astype("float32")
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp))
    model.compile(loss="binary_crossentropy", metrics=[DiceMetric()])
    logged = model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)["dice"]
    assert logged == pytest.approx(f1_score(y.ravel(), model.predict(x, verbose=0).ravel() >= 0.5, zero_division=1.0), abs=1e-5)


def lidc_fold(seed=0, cases=3, slices=10, size=24):
    rng = np.random.default_rng(seed)
    vols = [synthetic_scan(rng, (slices, size, size)) for _ in range(cases)]
    prob = np.concatenate([v[0] for v in vols]).astype("float32")
    truth = np.concatenate([v[1] for v in vols])
    ids = np.repeat([f"LIDC-IDRI-{i:04d}" for i in range(cases)], slices)
    roi = rng.random(truth.shape) < 0.9
    return prob, truth, ids, roi


def test_evaluate_lidc_against_independent_computations():
    prob, truth, ids, roi = lidc_fold()
    r = evaluate_lidc(prob[..., None], truth[..., None].astype(np.uint8), ids, roi=roi, min_area=2)
    json.loads(json.dumps(r))                            # plain Python numbers
    assert all(type(v) in (float, int) for k, v in r.items() if k != "per_case")
    pred = prob >= 0.5
    ps, ts = pred.sum((1, 2)) >= 2, truth.any((1, 2))
    for c in dict.fromkeys(ids):  # per case: numerator and denominator of each rate, and the do-nothing numerator
        i = ids == c
        assert r["per_case"][c]["slice_accuracy"] == [accuracy_score(ts[i], ps[i], normalize=False), i.sum(), (~ts[i]).sum()]
        assert r["per_case"][c]["pixel_sensitivity"][:2] == [(pred[i] & truth[i] & roi[i]).sum(), (truth[i] & roi[i]).sum()]
    assert r["slice_accuracy"] == pytest.approx(accuracy_score(ts, ps))
    assert r["slice_sensitivity"] == pytest.approx(recall_score(ts, ps))
    assert r["slice_specificity"] == pytest.approx(recall_score(ts, ps, pos_label=False))
    assert r["pixel_accuracy"] == pytest.approx(accuracy_score(truth[roi], pred[roi]))
    assert r["pixel_sensitivity"] == pytest.approx(recall_score(truth[roi], pred[roi]))
    assert r["pixel_specificity"] == pytest.approx(recall_score(truth[roi], pred[roi], pos_label=False))
    cases = [np.flatnonzero(ids == c) for c in dict.fromkeys(ids)]
    dc = [f1_score(truth[i].ravel(), pred[i].ravel()) for i in cases if truth[i].any()]
    assert r["dice_case"] == pytest.approx(np.mean(dc))
    dsl = [f1_score(truth[k].ravel(), pred[k].ravel()) for k in range(len(truth)) if truth[k].any()]
    assert r["dice_slice"] == pytest.approx(np.mean(dsl)) and r["positive_slices"] == len(dsl)
    dets = [case_detections(prob[i], truth[i]) for i in cases]
    assert r["nodules"] == sum(ndimage.label(truth[i], np.ones((3, 3, 3)))[1] for i in cases)
    fp_rate, sens = brute_force_froc(dets, 0.5)
    assert (r["fp_per_scan"], r["nodule_sensitivity"]) == pytest.approx((fp_rate, sens))
    assert r["cpm"] == pytest.approx(cpm(*froc(dets)[:2]))
    assert (r["cases"], r["slices"]) == (3, 30)


def test_evaluate_lidc_thresholds_and_rejects_bad_input():
    prob, truth, ids, _ = lidc_fold(1)
    r = evaluate_lidc(prob, truth, ids, threshold=0.8)
    assert r["pixel_sensitivity"] == pytest.approx(recall_score(truth.ravel(), prob.ravel() >= 0.8))
    with pytest.raises(ValueError, match="not contiguous"):
        evaluate_lidc(prob, truth, np.r_[ids[10:20], ids[:10], ids[20:]][np.r_[0:5, 10:15, 5:10, 15:30]])
    with pytest.raises(ValueError, match="29 case ids for 30 slices"):
        evaluate_lidc(prob, truth, ids[:29])
    with pytest.raises(ValueError, match="expected predictions of shape"):
        evaluate_lidc(prob[..., None].repeat(2, -1), truth[..., None].repeat(2, -1), ids)


def test_evaluate_brats_against_independent_computations():
    rng = np.random.default_rng(2)
    n_cases, z, size = 3, 8, 20
    truth = np.zeros((n_cases * z, size, size, 3), bool)
    for c in range(n_cases):
        s = slice(c * z + 1, c * z + 7)
        truth[s, 4:15, 3:14, 0] = True
        truth[s, 6:12, 5:11, 1] = True
        truth[c * z + 3:c * z + 5, 7:10, 6:9, 2] = c != 2      # case 2 has no enhancing tumour
    prob = np.clip(truth * 0.7 + rng.random(truth.shape) * 0.4 - 0.05, 0, 1)
    ids = np.repeat(["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003"], z)
    brain = np.zeros(truth.shape[:3], bool); brain[:, 1:19, 1:19] = True
    spacing = {"BraTS2021_00001": (1.0, 1.0, 1.0), "BraTS2021_00002": (2.0, 1.0, 1.0), "BraTS2021_00003": (1.0, 0.5, 0.5)}
    r = evaluate_brats(prob, truth, ids, brain, spacing=spacing)
    json.loads(json.dumps(r))
    pred = prob >= 0.5
    wt_p, wt_t = pred[..., 0][brain], truth[..., 0][brain]
    assert r["voxel_accuracy"] == pytest.approx(accuracy_score(wt_t, wt_p))
    assert r["voxel_sensitivity"] == pytest.approx(recall_score(wt_t, wt_p))
    assert r["voxel_specificity"] == pytest.approx(recall_score(wt_t, wt_p, pos_label=False))
    for k, name in enumerate(("wt", "tc", "et")):
        per = []
        for c, case in enumerate(spacing):
            t, p = truth[c * z:(c + 1) * z, ..., k], pred[c * z:(c + 1) * z, ..., k]
            per.append(1.0 if not (t.any() or p.any()) else f1_score(t.ravel(), p.ravel()))
        assert r[f"dice_{name}"] == pytest.approx(np.mean(per)), name
    hd = [brute_hd95(pred[c * z:(c + 1) * z, ..., 0], truth[c * z:(c + 1) * z, ..., 0], np.array(sp))
          for c, sp in enumerate(spacing.values())]
    assert r["hd95_wt"] == pytest.approx(np.mean(hd)) and r["hd95_wt_cases"] == 3
    assert r["cases"] == 3
