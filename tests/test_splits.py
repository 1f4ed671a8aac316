"Patient-level folds: no leak, every patient validated once, stratified, saved and reused."
import json

import numpy as np
import pytest

from medcnn_nb.datasets import brats_patient, lidc_patient
from medcnn_nb.preprocess import SliceSet
from medcnn_nb.splits import assert_no_leak, load_or_make_folds, patient_folds


def cases_with_repeats(n, rng):
    "n case ids, some patients with a second series or a second BraTS time point."
    ids = [f"LIDC-IDRI-{i:04d}" for i in range(n)]
    ids += [f"{c}#2" for c in rng.choice(ids, n // 5, replace=False)]
    ids += [f"BraTS-GLI-{i:05d}-000" for i in range(n // 3)] + [f"BraTS-GLI-{i:05d}-001" for i in range(n // 6)]
    return ids


def patient_id(case_id):
    "The LIDC rule (second series) and the BraTS rule (second time point), for ids of both datasets."
    return brats_patient(lidc_patient(case_id))


@pytest.mark.parametrize("seed", range(8))
def test_folds_properties(seed):
    rng = np.random.default_rng(seed)
    ids = cases_with_repeats(int(rng.integers(12, 40)), rng)
    pat_pos = {p: bool(rng.random() < 0.4) for p in {patient_id(c) for c in ids}}
    pos = [pat_pos[patient_id(c)] for c in ids]
    k = int(rng.integers(2, 6))
    folds = patient_folds(ids, pos, k=k, seed=seed, patient_id=patient_id)
    assert [f["fold"] for f in folds] == list(range(k))
    seen = []
    for f in folds:
        assert sorted(f["train"] + f["val"]) == sorted(ids)
        assert not {patient_id(c) for c in f["train"]} & {patient_id(c) for c in f["val"]}
        seen += sorted({patient_id(c) for c in f["val"]})
    assert sorted(seen) == sorted(pat_pos)  # each patient in exactly one validation fold
    # stratification: positive and negative patients per fold within one of their share
    n_pos = sum(pat_pos.values())
    for f in folds:
        val_pat = {patient_id(c) for c in f["val"]}
        assert abs(sum(pat_pos[p] for p in val_pat) - n_pos / k) < 1 + 1e-9
        assert abs(sum(not pat_pos[p] for p in val_pat) - (len(pat_pos) - n_pos) / k) < 1 + 1e-9
    assert folds == patient_folds(ids, pos, k=k, seed=seed, patient_id=patient_id)
    # without the rule every case is its own patient, and a second series can land in another fold
    assert len({p for f in patient_folds(ids, pos, k=k, seed=seed) for p in f['val']}) == len(ids)


def test_folds_errors():
    with pytest.raises(ValueError, match="2 patient\\(s\\) cannot make 3 folds"):
        patient_folds(["a", "a#2", "b"], [True, True, False], k=3, patient_id=lidc_patient)
    with pytest.raises(ValueError, match="unique"): patient_folds(["a", "a", "b"], [1, 1, 0], k=2)
    with pytest.raises(ValueError, match="has_positive"): patient_folds(["a", "b"], [1], k=2)


def test_assert_no_leak():
    assert_no_leak(["p1", "p2#2"], ["p3"], lidc_patient)
    with pytest.raises(ValueError, match="p2"): assert_no_leak(["p1", "p2#2"], ["p2"], lidc_patient)
    assert_no_leak(["p1", "p2#2"], ["p2"])  # without a rule, a second series is another patient


def sliceset(cases, positives):
    ids = np.repeat(cases, 4)
    pos = np.repeat(positives, 4) & np.tile([False, True, True, False], len(cases))
    return SliceSet(images=None, masks=None, roi=None, case_ids=ids, slice_index=np.tile(np.arange(4), len(cases)),
                    positive=pos, spacing={}, dataset="t", fingerprint="f")


def test_fold_file_reused_not_recomputed(tmp_path):
    cases = [f"P{i:02d}" for i in range(10)]
    ss = sliceset(cases, np.arange(10) % 3 == 0)
    path = tmp_path / "run" / "folds.json"
    folds = load_or_make_folds(path, ss, k=5, seed=4)
    saved = json.loads(path.read_text())
    assert saved["folds"] == folds and saved["k"] == 5 and saved["seed"] == 4 and saved["cases"] == cases
    # a hand-edited (still valid) assignment proves that the file is read, not recomputed
    saved["folds"] = [{"fold": i, "val": cases[2 * i:2 * i + 2], "train": cases[:2 * i] + cases[2 * i + 2:]} for i in range(5)]
    path.write_text(json.dumps(saved))
    assert load_or_make_folds(path, ss, k=5, seed=4) == saved["folds"]
    with pytest.raises(ValueError, match="other cases"): load_or_make_folds(path, sliceset(cases[:9], np.ones(9, bool)), 5, 4)
    with pytest.raises(ValueError, match="seed=4"): load_or_make_folds(path, ss, k=5, seed=5)
    saved["folds"][0]["val"].append("P05")  # P05 is also in fold 0's training cases
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="patient leak.*P05"): load_or_make_folds(path, ss, k=5, seed=4)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable fold file"): load_or_make_folds(path, ss, k=5, seed=4)
