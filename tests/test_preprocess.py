"Preprocessing and the slice cache: hand computations, real files, phantoms read back through the readers."
import json, os, shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import scipy.stats
import pydicom
import pytest
from scipy import ndimage

from medcnn_nb.config import get_config
from medcnn_nb.data.core import DataError
from medcnn_nb import preprocess as pp
from medcnn_nb.datasets import load_slices
from medcnn_nb.preprocess import (normalise_mri, preprocess_ct, resize_slices, training_indices, window_ct)

SMOKE = get_config("smoke")


# --- windowing and normalisation against hand computation ---------------------------------------

def test_window_hand_values():
    got = window_ct(np.array([[-1024, -1000, -650], [-300, 400, 1200]], np.int16))
    np.testing.assert_allclose(got, [[0, 0, 350 / 1400], [700 / 1400, 1, 1]], atol=1e-7)
    assert got.dtype == np.float32
    with pytest.raises(ValueError, match="lo < hi"): window_ct(np.zeros(2), (0, 0))


def test_window_real_lidc_slice(real_lidc):
    f = real_lidc / "LIDC-IDRI-0001" / "000001.dcm"
    ds = pydicom.dcmread(f)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)  # by hand
    w = window_ct(hu, (-1000, 400))
    expected = np.minimum(np.maximum((hu + 1000) / 1400, 0), 1)
    np.testing.assert_allclose(w, expected, atol=1e-6)
    assert 0 < (w == 0).mean() < 1 and w.max() == 1  # air outside the body clips to 0, bone to 1


def test_normalise_mri_hand_values():
    v = np.array([[10., 20., 30., 40., 50.], [999., 0., -5., 7., 3.]])
    brain = np.array([[True] * 5, [False] * 5])
    out = normalise_mri(v, brain, "percentile", percentiles=(0, 100))  # plain min-max inside the brain
    np.testing.assert_allclose(out, [[0, .25, .5, .75, 1], [0, 0, 0, 0, 0]], atol=1e-7)
    out = normalise_mri(v, brain, "percentile", percentiles=(25, 75))  # NumPy linear percentiles: 20 and 40
    np.testing.assert_allclose(out[0], [0, 0, .5, 1, 1], atol=1e-7)
    # z-score: mean 30, population sd sqrt(200) = 14.142; z = -1.414 .. 1.414, clipped to +-4, mapped by (z + 4) / 8
    out = normalise_mri(v, brain)
    np.testing.assert_allclose(out, [[.5 - .25 / 2 ** .5, .5 - .125 / 2 ** .5, .5, .5 + .125 / 2 ** .5, .5 + .25 / 2 ** .5], [0] * 5],
                               atol=1e-7)
    out = normalise_mri(v, brain, z_clip=1.0)                  # |z| = 1.414 clips to 1: (z + 1) / 2
    np.testing.assert_allclose(out[0], [0, .5 - .5 / 2 ** .5, .5, .5 + .5 / 2 ** .5, 1], atol=1e-7)
    with pytest.raises(ValueError, match="empty"): normalise_mri(v, np.zeros_like(brain))
    with pytest.raises(ValueError, match="method must be one of"): normalise_mri(v, brain, "minmax")


def test_normalise_mri_real_brats(real_brats):
    f = real_brats / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1c.nii.gz"
    vol = nib.load(f).get_fdata(dtype=np.float32)
    brain = vol != 0
    out = normalise_mri(vol, brain, "percentile")
    lo, hi = np.percentile(vol[brain], [0.5, 99.5])
    np.testing.assert_allclose(out[brain], np.clip((vol[brain] - lo) / (hi - lo), 0, 1), atol=1e-5)
    assert out[~brain].max() == 0 and out.min() == 0 and out.max() == 1
    assert 0.004 < (out[brain] == 1).mean() < 0.006          # 0.5 % above the 99.5th percentile
    z = normalise_mri(vol, brain)                             # the default: scipy's z-score, clipped and mapped
    np.testing.assert_allclose(z[brain], (np.clip(scipy.stats.zscore(vol[brain].astype(np.float64)), -4, 4) + 4) / 8,
                               atol=1e-5)
    assert z[~brain].max() == 0 and 0 < z[brain].min() and z[brain].max() <= 1


def test_resize_mask_nearest_and_linear_image():
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    up = resize_slices(img, 8, antialias=False)
    assert up.shape == (1, 8, 8) and up.min() >= 0 and up.max() <= 15
    np.testing.assert_allclose(up[0, 3:5, 3:5].mean(), img[0, 1:3, 1:3].mean(), atol=1e-5)  # the centre is preserved
    mask = np.zeros((1, 5, 5), np.uint8); mask[0, 2, 2] = 3
    assert set(np.unique(resize_slices(mask, 15, order=0))) == {0, 3}
    assert (resize_slices(mask, 15, order=0) == 3).sum() == 9


def test_preprocess_ct_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        preprocess_ct(np.zeros((2, 8, 8)), (1, 1, 1), np.zeros((2, 8, 7), bool), 8)


# --- the cache on phantoms ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lidc_dir(tmp_path_factory):
    from medcnn_nb.data.phantom_lidc import write_lidc_phantoms
    root = tmp_path_factory.mktemp("lidc")
    write_lidc_phantoms(root / "data", patients=3, seed=1, size=64, slices=16)
    return root / "data"


@pytest.fixture(scope="module")
def brats_dir(tmp_path_factory):
    from medcnn_nb.data.phantom_brats import write_brats_phantoms
    root = tmp_path_factory.mktemp("brats")
    write_brats_phantoms(root / "data", patients=2, seed=1, size=48, slices=16)
    return root / "data"


def cache_folders(cache):
    return sorted(p.name for p in Path(cache).iterdir())


def test_lidc_slices_match_the_reader(lidc_dir, tmp_path):
    from medcnn_nb.data.lidc import find_lidc_cases, load_lidc_case
    sl = load_slices("lidc", lidc_dir, SMOKE, cache_dir=tmp_path, progress=False)
    series = find_lidc_cases(lidc_dir)
    assert sl.cases == [load_lidc_case(s).case_id for s in series]
    n = sum(len(list(Path(s).glob("*.dcm"))) for s in series)  # one slice per DICOM file
    assert len(sl) == n and sl.images.shape == (n, 64, 64, 1) and sl.masks.shape == (n, 64, 64, 1)
    assert sl.images.dtype == np.float32 and 0 <= sl.images.min() and sl.images.max() <= 1
    assert set(np.unique(sl.masks)) <= {0, 1} and sl.roi.dtype == bool
    np.testing.assert_array_equal(sl.positive, np.asarray(sl.masks).reshape(n, -1).any(1))
    for s in series:  # the cache holds exactly what preprocess_ct makes of the reader's arrays
        case = load_lidc_case(s, consensus=SMOKE.lidc.consensus)
        idx = sl.indices_of([case.case_id])
        np.testing.assert_array_equal(sl.slice_index[idx], np.arange(len(case.hu)))
        ref = preprocess_ct(case.hu, case.spacing, case.consensus_mask, 64, crop=SMOKE.lidc.crop)  # the definition's crop
        np.testing.assert_array_equal(sl.images[idx], ref["images"])
        np.testing.assert_array_equal(sl.masks[idx], ref["masks"])
        np.testing.assert_allclose(sl.spacing[case.case_id], ref["spacing"])
        assert ref["roi"].mean() > 0.3                      # the body, not an empty or full mask
    assert sl.positive.any() and not sl.positive.all()


def test_cache_reused_and_invalidated(lidc_dir, tmp_path):
    cache = tmp_path / "cache"
    first = load_slices("lidc", lidc_dir, SMOKE, cache_dir=cache, progress=False)
    meta = first.path / "meta.json"
    stamp = meta.stat().st_mtime_ns
    again = load_slices("lidc", lidc_dir, get_config("smoke", max_epochs=9, learning_rate=0.01), cache_dir=cache, progress=False)
    assert again.key == first.key and meta.stat().st_mtime_ns == stamp and len(cache_folders(cache)) == 1
    assert isinstance(again.images, np.memmap)
    # a preprocessing field changes the key
    other = load_slices("lidc", lidc_dir, get_config("smoke", **{"lidc.hu_window": (-1200, 600)}), cache_dir=cache, progress=False)
    assert other.key != first.key and len(cache_folders(cache)) == 2
    assert not np.array_equal(np.asarray(other.images), np.asarray(first.images))
    # the data change: one patient fewer
    data2 = tmp_path / "data2"
    shutil.copytree(lidc_dir, data2)
    shutil.rmtree(data2 / first.cases[-1])
    fewer = load_slices("lidc", data2, SMOKE, cache_dir=cache, progress=False)
    assert fewer.fingerprint != first.fingerprint and fewer.key != first.key
    assert fewer.cases == first.cases[:-1] and len(cache_folders(cache)) == 3
    # a damaged cache (a file missing) is rebuilt, not trusted
    (first.path / "positive.npy").unlink()
    rebuilt = load_slices("lidc", lidc_dir, SMOKE, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(rebuilt.positive, first.positive)
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_cache_race_loser_uses_winner(lidc_dir, tmp_path, monkeypatch):
    "A second run finishes while the first is still building: the first drops its copy and uses the winner's."
    cache = tmp_path / "cache"
    real_build = pp._build_cache
    calls = []
    def slow_build(*args, **kwargs):
        out = real_build(*args, **kwargs)
        if not calls:
            calls.append(1)
            winner = load_slices("lidc", lidc_dir, SMOKE, cache_dir=cache, progress=False)  # the racing run
            calls.append(winner.path)
        return out
    monkeypatch.setattr(pp, "_build_cache", slow_build)
    loser = load_slices("lidc", lidc_dir, SMOKE, cache_dir=cache, progress=False)
    assert loser.path == calls[1] and cache_folders(cache) == [loser.path.name]  # no temporary left behind
    assert json.loads((loser.path / "meta.json").read_text())["key"] == loser.key


def test_brats_slices(brats_dir, tmp_path):
    from medcnn_nb.data.brats import find_brats_cases, load_brats_case, regions
    cfg = get_config("smoke", image_size=64)  # larger than the 48-px phantoms: nearest neighbour drops no slice's label
    sl = load_slices("brats", brats_dir, cfg, cache_dir=tmp_path, progress=False)
    assert sl.images.shape[1:] == (64, 64, 4) and sl.masks.shape[1:] == (64, 64, 3)
    m = np.asarray(sl.masks).astype(bool)
    assert (m[..., 0] >= m[..., 1]).all() and (m[..., 1] >= m[..., 2]).all()  # WT ⊇ TC ⊇ ET
    for d in find_brats_cases(brats_dir):
        case = load_brats_case(d)
        idx = sl.indices_of([case.case_id])
        assert len(idx) == case.image.shape[2]
        np.testing.assert_array_equal(sl.positive[idx], regions(case.seg)[..., 0].any(axis=(0, 1)))
        # 0 away from the brain (linear interpolation may blend one pixel across the nearest-neighbour ROI edge)
        near_brain = ndimage.binary_dilation(sl.roi[idx], structure=np.ones((1, 3, 3), bool), iterations=2)
        assert sl.roi[idx].sum() > 0 and np.asarray(sl.images[idx])[~near_brain].max() == 0


def test_load_slices_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'luna'"): load_slices("luna", tmp_path, SMOKE, cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable lidc case"):
        load_slices("lidc", tmp_path / "empty", SMOKE, cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(DataError, match="not a folder"): load_slices("brats", tmp_path / "missing", SMOKE, cache_dir=tmp_path)


def test_training_indices_on_phantoms(lidc_dir, tmp_path):
    sl = load_slices("lidc", lidc_dir, SMOKE, cache_dir=tmp_path, progress=False)
    cases = sl.cases[:2]
    mine = sl.indices_of(cases)
    for ratio in (0, 0.5, 1, 2):
        idx = training_indices(sl, cases, ratio, seed=3)
        pos, neg = mine[sl.positive[mine]], mine[~sl.positive[mine]]
        assert set(pos) <= set(idx) and set(idx) <= set(mine) and len(set(idx)) == len(idx)
        assert (~sl.positive[idx]).sum() == min(len(neg), round(ratio * len(pos)))
    np.testing.assert_array_equal(training_indices(sl, cases, 1, seed=3), training_indices(sl, cases, 1, seed=3))
