"""The Medical Segmentation Decathlon's Task01_BrainTumour: reader, phantoms, command lines, and the whole
paper command on it (a third dataset that needed one definition and nothing else)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medcnn_nb.config import get_config
from medcnn_nb.data.brats import MODALITIES, regions
from medcnn_nb.data.core import DataError
from medcnn_nb.data.msd import find_msd_cases, load_msd_case, read_dataset_json, scan_msd, write_msd_phantoms
from medcnn_nb.data.phantom_brats import brats_phantom, write_brats_phantoms
from medcnn_nb.datasets import data_main, load_slices, phantom_main

ROOT = Path(__file__).resolve().parents[1]


def write_task(root: Path, modality: dict, labels: dict, image: np.ndarray, label: np.ndarray, name="BRATS_001"):
    "A task folder written with nibabel alone (not with our writer), identity affine."
    (root / "imagesTr").mkdir(parents=True); (root / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "tensorImageSize": "4D", "modality": modality, "labels": labels, "numTraining": 1,
        "training": [{"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"}], "test": []}))
    return root / "imagesTr" / f"{name}.nii.gz"


MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def test_reader_maps_channels_and_labels_by_name(tmp_path):
    # channels stored in an order of our own, each constant = its position, so the mapping is visible
    order = {"0": "T2w", "1": "FLAIR", "2": "T1w", "3": "T1gd"}
    image = np.zeros((6, 5, 4, 4), np.float32)
    for c in range(4): image[1:5, 1:4, 1:3, c] = 10 + c
    label = np.zeros((6, 5, 4), np.uint8)
    label[1, 1, 1], label[2, 2, 1], label[3, 2, 2] = 1, 2, 3  # edema, non-enhancing, enhancing
    img = write_task(tmp_path / "t", order, MSD_LABELS, image, label)
    case = load_msd_case(img)
    stored_index = {"t1": 2, "t1ce": 3, "t2": 0, "flair": 1}  # by hand from `order`
    for i, m in enumerate(MODALITIES): assert case.image[2, 2, 1, i] == 10 + stored_index[m], m
    assert case.seg[1, 1, 1] == 2 and case.seg[2, 2, 1] == 1 and case.seg[3, 2, 2] == 3  # ED, NCR/NET, ET (BraTS)
    wt, tc, et = np.moveaxis(regions(case.seg), -1, 0)
    assert wt.sum() == 3 and tc.sum() == 2 and et.sum() == 1 and tc[2, 2, 1] and not tc[1, 1, 1]
    assert case.brain_mask.sum() == 4 * 3 * 2 and case.case_id == "BRATS_001"


def test_reader_errors_name_the_file(tmp_path):
    image = np.zeros((4, 4, 4, 4), np.float32); label = np.zeros((4, 4, 4), np.uint8); label[0, 0, 0] = 5
    img = write_task(tmp_path / "a", {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, MSD_LABELS, image, label)
    with pytest.raises(DataError, match=r"BRATS_001.nii.gz: label values \[5\] are not declared"): load_msd_case(img)
    img = write_task(tmp_path / "b", {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, MSD_LABELS,
                     image[..., :3], np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(DataError, match="expected 4 channels, got 3"): load_msd_case(img)
    write_task(tmp_path / "c", {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "ADC"}, MSD_LABELS, image, label)
    with pytest.raises(DataError, match="dataset.json: modalities"): read_dataset_json(tmp_path / "c")
    (tmp_path / "d").mkdir(); (tmp_path / "d" / "dataset.json").write_text("{oops")
    with pytest.raises(DataError, match="not valid JSON"): read_dataset_json(tmp_path / "d")


def test_phantoms_read_back_as_the_brats_generator_made_them(tmp_path):
    images = write_msd_phantoms(tmp_path / "Task01_BrainTumour", patients=2, seed=5, size=32, slices=16)
    doc = json.loads((tmp_path / "Task01_BrainTumour" / "dataset.json").read_text())
    assert doc["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"} and doc["labels"] == MSD_LABELS
    assert doc["numTraining"] == 2 and doc["tensorImageSize"] == "4D"
    assert [e["image"] for e in doc["training"]] == ["./imagesTr/BRATS_001.nii.gz", "./imagesTr/BRATS_002.nii.gz"]
    for i, image in enumerate(images):
        ph = brats_phantom(5, i, 32, 16)
        raw = nib.as_closest_canonical(nib.load(image)).get_fdata()  # nibabel alone: the stored channel order
        np.testing.assert_array_equal(raw[..., 0], ph.image[..., MODALITIES.index("flair")])
        np.testing.assert_array_equal(raw[..., 2], ph.image[..., MODALITIES.index("t1ce")])
        case = load_msd_case(image)
        np.testing.assert_array_equal(case.image, ph.image)
        np.testing.assert_array_equal(case.seg, ph.seg)
    assert [p.name for p in find_msd_cases(tmp_path)] == ["BRATS_001.nii.gz", "BRATS_002.nii.gz"]


def test_same_phantoms_same_slices_as_brats(tmp_path):
    "The MSD definition reuses BraTS's preprocessing: the same generated cases give the same slices."
    cfg = get_config("smoke", image_size=32)
    write_msd_phantoms(tmp_path / "msd", patients=2, seed=1, size=32, slices=16)
    write_brats_phantoms(tmp_path / "brats", patients=2, seed=1, year=2021, size=32, slices=16)
    m = load_slices("msd", tmp_path / "msd", cfg, tmp_path / "cache", progress=False)
    b = load_slices("brats", tmp_path / "brats", cfg, tmp_path / "cache", progress=False)
    assert m.cases == ["BRATS_001", "BRATS_002"] and m.dataset == "msd"
    np.testing.assert_array_equal(np.asarray(m.images), np.asarray(b.images))
    np.testing.assert_array_equal(np.asarray(m.masks), np.asarray(b.masks))
    assert m.positive.any()


def test_command_lines(tmp_path, capsys):
    out = tmp_path / "Task01_BrainTumour"
    assert phantom_main(["msd", "--out", str(out), "--patients", "2", "--seed", "0", "--size", "32", "--slices", "16"]) == 0
    capsys.readouterr()
    assert data_main(["msd", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["case_id"] for r in rows] == ["BRATS_001", "BRATS_002"] and all(r["ok"] for r in rows)
    assert rows[0]["shape"] == [32, 32, 16] and set(rows[0]["labels"]) <= {0, 1, 2, 3}
    (out / "imagesTr" / "BRATS_002.nii.gz").unlink()
    assert data_main(["msd", str(out)]) == 1
    text = capsys.readouterr().out
    assert "BRATS_002: FAILED" in text and "listed in dataset.json but missing" in text and "2 case(s), 1 failed" in text
    assert scan_msd(out)[0]["ok"]


@pytest.mark.slow
def test_paper_command_on_msd_phantoms(tmp_path):
    "`medcnn-phantom msd` then `medcnn-paper --profile smoke --datasets msd --msd DIR`: its table, nothing else."
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    bin_ = Path(sys.executable).parent
    data = tmp_path / "Task01_BrainTumour"
    r = subprocess.run([str(bin_ / "medcnn-phantom"), "msd", "--out", str(data), "--patients", "6", "--seed", "42",
                        "--size", "64", "--slices", "24"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(bin_ / "medcnn-paper"), "--profile", "smoke", "--datasets", "msd", "--msd", str(data),
                        "--out", str(tmp_path / "outputs"), "--deterministic", "true", "--quiet"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    root = tmp_path / "outputs" / "smoke"
    products = json.loads((root / "products.json").read_text())
    assert set(products["tables"]) == {"table_msd"}                      # no ablation: not asked for msd
    t = pd.read_csv(root / "tables" / "table_msd.csv")
    assert t["key"].tolist()[:4] == ["voxel_accuracy", "voxel_sensitivity", "voxel_specificity", "dice_wt"]
    assert t["optimised_paper"].isna().all() and t.loc[3, "optimised_folds"] == 2   # no claims; WT Dice on both folds
    assert t.loc[3, "optimised_n"] == 6 and 0 <= t.loc[3, "optimised_ci_low"] <= t.loc[3, "optimised_ci_high"] <= 1
    folds = [json.loads(p.read_text()) for p in sorted((root / "runs/msd/optimised").glob("fold*/metrics.json"))]
    assert len(folds) == 2 and t.loc[3, "optimised_mean"] == pytest.approx(np.mean([f["dice_wt"] for f in folds]))
    assert "MSD Task01_BrainTumour (not in the paper)" in (root / "tables" / "table_msd.md").read_text()
    assert {"figure1_pipeline_msd", "figure3_results"} <= set(products["figures"])


def test_scan_reports_an_unexpected_reader_error_and_goes_on(tmp_path, monkeypatch):
    "A reader bug (here a ZeroDivisionError) in one case is that case's problem, worded as a bug; the next case still loads."
    import medcnn_nb.data.msd as msd
    images = write_msd_phantoms(tmp_path / "Task01_BrainTumour", patients=2, seed=5, size=32, slices=16)
    real = msd.load_msd_case
    def flaky(image):
        if Path(image).name == images[0].name: raise ZeroDivisionError("division by zero")
        return real(image)
    monkeypatch.setattr(msd, "load_msd_case", flaky)
    rows = scan_msd(tmp_path / "Task01_BrainTumour")
    assert [r["ok"] for r in rows] == [False, True]
    assert rows[0]["problems"] == [f"{rows[0]['path']}: this case could not be read (division by zero); the reader did "
                                   "not expect it, which is a bug in medcnn_nb: please report it"]
