"""BraTS reader and BraTS-format phantoms (issue 3): real samples, nibabel's own files, phantom round trips,
determinism, planted PHI, and every bad-input case with a message naming the file."""
import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcnn_nb.data.brats import (MODALITIES, REGIONS, BratsCase, find_brats_cases, load_brats_case, map_labels,
                                  regions, scan_brats)
from medcnn_nb.data.core import DataError
from medcnn_nb.data.phantom_brats import PHI_STRINGS, brats_phantom, phantom_case_id, write_brats_phantoms

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
NAMES = {2020: ("_", dict(t1="t1", t1ce="t1ce", t2="t2", flair="flair", seg="seg")),
         2021: ("_", dict(t1="t1", t1ce="t1ce", t2="t2", flair="flair", seg="seg")),
         2023: ("-", dict(t1="t1n", t1ce="t1c", t2="t2w", flair="t2f", seg="seg"))}


def write_case(root, name, year, arrays, affine=None, ext=".nii.gz"):
    "A case folder written with plain nibabel (the oracle writer), keys t1/t1ce/t2/flair/seg."
    sep, suffix = NAMES[year]
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        nib.save(nib.Nifti1Image(arr, np.diag([-1.0, -1.0, 1.0, 1.0]) if affine is None else affine),
                 d / f"{name}{sep}{suffix[key]}{ext}")
    return d


def volumes(shape=(8, 7, 5), seed=0):
    rng = np.random.default_rng(seed)
    vols = {m: rng.integers(1, 500, shape).astype(np.int16) for m in MODALITIES}
    for v in vols.values(): v[:2] = 0  # background slab outside the "brain"
    return vols


# ---------------------------------------------------------------- real BraTS samples

@pytest.fixture(scope="module")
def real_gli(real_brats):
    return load_brats_case(real_brats / "BraTS-GLI-00001-000")


def test_real_2023_case_loads(real_gli, real_brats):
    folder = real_brats / "BraTS-GLI-00001-000"
    assert (real_gli.case_id, real_gli.year, real_gli.seg) == ("BraTS-GLI-00001-000", 2023, None)
    assert real_gli.image.shape == (240, 240, 155, 4) and real_gli.image.dtype == np.float32
    assert nib.aff2axcodes(real_gli.affine) == ("R", "A", "S")
    # channel order t1, t1ce, t2, flair = files t1n, t1c, t2w, t2f; oracle: nibabel's own canonical reorientation
    for c, suffix in enumerate(("t1n", "t1c", "t2w", "t2f")):
        ref = nib.as_closest_canonical(nib.load(folder / f"BraTS-GLI-00001-000-{suffix}.nii.gz"))
        np.testing.assert_array_equal(real_gli.image[..., c], np.asarray(ref.dataobj, dtype=np.float32))
    # the file is stored LPS: RAS data is the raw array flipped in x and y
    raw = np.asarray(nib.load(folder / "BraTS-GLI-00001-000-t1c.nii.gz").dataobj)
    np.testing.assert_array_equal(real_gli.image[..., 1], raw[::-1, ::-1].astype(np.float32))
    np.testing.assert_array_equal(real_gli.brain_mask, (real_gli.image != 0).any(-1))
    # a skull-stripped adult brain: 1.0-2.0 litres of 1 mm voxels
    assert real_gli.spacing == (1.0, 1.0, 1.0)
    assert 1_000_000 < real_gli.brain_mask.sum() < 2_000_000


def test_real_brats18_is_not_a_brats_case(real_brats):
    folder = real_brats / "Brats18_CBICA_AOO_1"
    with pytest.raises(DataError) as e:
        load_brats_case(folder)
    msg = str(e.value)
    assert msg.startswith(str(folder)) and "not a BraTS case" in msg
    assert "FLAIR.nii.gz" in msg and "GT_W.nii.gz" in msg  # what was found
    assert "BraTS2021_00000" in msg and "t1c" in msg        # what was expected


def test_scan_real_folder(real_brats):
    rows = {r["case_id"]: r for r in scan_brats(real_brats)}
    assert set(rows) == {"BraTS-GLI-00001-000", "Brats18_CBICA_AOO_1"}
    ok = rows["BraTS-GLI-00001-000"]
    assert (ok["ok"], ok["year"], ok["shape"], ok["labels"], ok["modalities"]) == (True, 2023, [240, 240, 155], None, list(MODALITIES))
    bad = rows["Brats18_CBICA_AOO_1"]
    assert bad["ok"] is False and "not a BraTS case" in bad["problems"][0]
    assert [p.name for p in find_brats_cases(real_brats)] == ["BraTS-GLI-00001-000"]
    json.dumps(list(rows.values()))  # the summary is JSON-ready for `medcnn-data brats --json`


# ---------------------------------------------------------------- nibabel's own files

def test_nibabel_anatomical_as_a_case(tmp_path):
    src = NIB_DATA / "anatomical.nii"  # real brain, stored LAS, big-endian int16
    assert nib.aff2axcodes(nib.load(src).affine) == ("L", "A", "S")
    d = tmp_path / "BraTS2021_00042"
    d.mkdir()
    for m in MODALITIES: shutil.copy(src, d / f"BraTS2021_00042_{m}.nii")
    case = load_brats_case(d)
    raw = np.asarray(nib.load(src).dataobj).astype(np.float32)
    assert case.image.shape == (*raw.shape, 4) and nib.aff2axcodes(case.affine) == ("R", "A", "S")
    for c in range(4): np.testing.assert_array_equal(case.image[..., c], raw[::-1])  # LAS -> RAS flips x only
    np.testing.assert_allclose(case.spacing, nib.load(src).header.get_zooms()[:3])


def test_nibabel_4d_and_foreign_files_are_refused(tmp_path):
    d = tmp_path / "BraTS2021_00043"
    d.mkdir()
    for m in ("t1", "t1ce", "flair"): shutil.copy(NIB_DATA / "anatomical.nii", d / f"BraTS2021_00043_{m}.nii")
    shutil.copy(NIB_DATA / "example4d.nii.gz", d / "BraTS2021_00043_t2.nii.gz")
    with pytest.raises(DataError, match=r"BraTS2021_00043_t2\.nii\.gz: expected a 3D volume, got shape \(128, 96, 24, 2\)"):
        load_brats_case(d)
    other = tmp_path / "subject"
    other.mkdir()
    shutil.copy(NIB_DATA / "anatomical.nii", other / "anatomical.nii")
    with pytest.raises(DataError, match="not a BraTS case: found files \\['anatomical.nii'\\]"):
        load_brats_case(other)


# ---------------------------------------------------------------- naming, labels, regions

@pytest.mark.parametrize("year,name", [(2020, "BraTS20_Training_001"), (2020, "BraTS20_Validation_007"),
                                       (2021, "BraTS2021_00000"), (2023, "BraTS-GLI-00000-000"),
                                       (2023, "BraTS-PED-00012-001"), (2023, "BraTS-SSA-00002-000")])
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_layouts_and_labels(tmp_path, year, name, ext):
    vols = volumes()
    internal = np.zeros((8, 7, 5), np.uint8)
    internal[3:6, 2:5, 1:4] = 2; internal[4, 3, 2] = 3; internal[5, 4, 3] = 1
    stored = np.where(internal == 3, 3 if year == 2023 else 4, internal).astype(np.uint8)
    case = load_brats_case(write_case(tmp_path, name, year, {**vols, "seg": stored}, ext=ext))
    assert (case.case_id, case.year) == (name, year)
    np.testing.assert_array_equal(case.seg, internal[::-1, ::-1])
    for c, m in enumerate(MODALITIES): np.testing.assert_array_equal(case.image[..., c], vols[m][::-1, ::-1])


def test_float_labels_and_regions():
    np.testing.assert_array_equal(map_labels(np.array([0.0, 1.0, 2.0, 4.0], np.float32), 2020), [0, 1, 2, 3])
    seg = brats_phantom(3, 0, 48, 24).seg
    r = regions(seg)
    assert r.shape == (*seg.shape, 3) and REGIONS == ("WT", "TC", "ET")
    np.testing.assert_array_equal(r[..., 0], np.isin(seg, [1, 2, 3]))
    np.testing.assert_array_equal(r[..., 1], np.isin(seg, [1, 3]))
    np.testing.assert_array_equal(r[..., 2], seg == 3)
    with pytest.raises(ValueError, match="0..3"): regions(np.array([0, 4]))


# ---------------------------------------------------------------- bad input

def test_modalities_of_different_shapes(tmp_path):
    vols = volumes()
    vols["flair"] = np.ones((8, 7, 6), np.int16)
    d = write_case(tmp_path, "BraTS2021_00001", 2021, vols)
    with pytest.raises(DataError, match=r"BraTS2021_00001_flair\.nii\.gz: shape \(8, 7, 6\) differs from BraTS2021_00001_t1\.nii\.gz \(8, 7, 5\)"):
        load_brats_case(d)


def test_modalities_of_different_affines(tmp_path):
    d = write_case(tmp_path, "BraTS2021_00002", 2021, volumes())
    shifted = np.diag([-1.0, -1.0, 1.0, 1.0]); shifted[2, 3] = 5.0
    nib.save(nib.Nifti1Image(np.ones((8, 7, 5), np.int16), shifted), d / "BraTS2021_00002_t2.nii.gz")
    with pytest.raises(DataError, match=r"BraTS2021_00002_t2\.nii\.gz: affine differs from BraTS2021_00002_t1"):
        load_brats_case(d)


def test_seg_on_another_grid(tmp_path):
    d = write_case(tmp_path, "BraTS2021_00003", 2021, {**volumes(), "seg": np.zeros((8, 7, 4), np.uint8)})
    with pytest.raises(DataError, match=r"BraTS2021_00003_seg\.nii\.gz: shape \(8, 7, 4\) differs"):
        load_brats_case(d)


def test_missing_modality(tmp_path):
    vols = volumes(); del vols["t1ce"]
    d = write_case(tmp_path, "BraTS-GLI-00004-000", 2023, vols)
    with pytest.raises(DataError, match=r"missing modality: t1ce \(BraTS-GLI-00004-000-t1c\.nii\.gz\)") as e:
        load_brats_case(d)
    assert str(e.value).startswith(str(d))


@pytest.mark.parametrize("year,values,bad", [(2021, [0, 1, 2, 3], "[3]"), (2020, [0, 2, 5], "[5]"), (2023, [0, 1, 4], "[4]")])
def test_unknown_label_values(tmp_path, year, values, bad):
    seg = np.zeros((8, 7, 5), np.uint8); seg.flat[: len(values)] = values
    name = phantom_case_id(year, 5)
    d = write_case(tmp_path, name, year, {**volumes(), "seg": seg})
    with pytest.raises(DataError) as e:
        load_brats_case(d)
    msg = str(e.value)
    assert f"unknown label values {bad}" in msg and f"{name}{NAMES[year][0]}seg.nii.gz" in msg


def test_truncated_nifti(tmp_path):
    d = write_case(tmp_path, "BraTS2021_00006", 2021, volumes())
    f = d / "BraTS2021_00006_t1ce.nii.gz"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"BraTS2021_00006_t1ce\.nii\.gz: cannot read NIfTI"):
        load_brats_case(d)


def test_empty_folders(tmp_path):
    with pytest.raises(DataError, match="no BraTS case found: no .nii/.nii.gz file"): find_brats_cases(tmp_path)
    with pytest.raises(DataError, match="no BraTS case found"): scan_brats(tmp_path)
    with pytest.raises(DataError, match="not a folder"): scan_brats(tmp_path / "missing")
    (tmp_path / "BraTS2021_00007").mkdir()
    with pytest.raises(DataError, match="missing modality: t1 .*the folder is empty"): load_brats_case(tmp_path / "BraTS2021_00007")


def test_scan_reports_problems_and_goes_on(tmp_path):
    write_brats_phantoms(tmp_path / "data", 2, seed=0, size=32, slices=16)
    vols = volumes(); del vols["t2"]
    write_case(tmp_path / "data" / "more", "BraTS2021_00009", 2021, vols)
    rows = scan_brats(tmp_path / "data")
    assert [(r["case_id"], r["ok"]) for r in rows] == [("BraTS2021_00000", True), ("BraTS2021_00001", True), ("BraTS2021_00009", False)]
    assert "missing modality: t2" in rows[2]["problems"][0] and rows[2]["modalities"] == ["t1", "t1ce", "flair"]
    assert rows[0]["shape"] == [32, 32, 16] and rows[0]["modalities"] == [*MODALITIES, "seg"]
    assert set(rows[0]["labels"]) <= {0, 1, 2, 3} and 0 in rows[0]["labels"]


# ---------------------------------------------------------------- phantoms

@pytest.mark.parametrize("year", [2020, 2021, 2023])
def test_phantom_round_trip(tmp_path, year):
    folders = write_brats_phantoms(tmp_path, 3, seed=11, year=year, size=40, slices=20)
    assert [f.name for f in folders] == [phantom_case_id(year, i) for i in range(3)]
    assert find_brats_cases(tmp_path) == folders
    sep, suffix = NAMES[year]
    for i, folder in enumerate(folders):
        planted = brats_phantom(11, i, 40, 20)
        case = load_brats_case(folder)
        assert isinstance(case, BratsCase) and case.year == year and case.problems == []
        np.testing.assert_array_equal(case.seg, planted.seg)
        np.testing.assert_array_equal(case.image, planted.image.astype(np.float32))
        np.testing.assert_array_equal(case.brain_mask, planted.brain_mask)
        np.testing.assert_allclose(case.affine, planted.affine, atol=1e-5)
        # on disk: int16 modalities, the year's label values, LPS like real BraTS, zero outside the brain
        t1 = nib.load(folder / f"{folder.name}{sep}{suffix['t1']}.nii.gz")
        assert t1.get_data_dtype() == np.int16 and nib.aff2axcodes(t1.affine) == ("L", "P", "S")
        stored = np.unique(np.asarray(nib.load(folder / f"{folder.name}{sep}seg.nii.gz").dataobj)).tolist()
        et = 3 if year == 2023 else 4
        assert set(stored) <= {0, 1, 2, et} and (et in stored) == bool((planted.seg == 3).any())


def test_phantoms_are_deterministic(tmp_path):
    a = write_brats_phantoms(tmp_path / "a", 3, seed=4, year=2023, size=32, slices=16)
    b = write_brats_phantoms(tmp_path / "b", 3, seed=4, year=2023, size=32, slices=16)
    c = write_brats_phantoms(tmp_path / "c", 3, seed=5, year=2023, size=32, slices=16)
    files = lambda root: sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files(tmp_path / "a") == files(tmp_path / "b") == files(tmp_path / "c") and len(files(tmp_path / "a")) == 15
    for rel in files(tmp_path / "a"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert any((tmp_path / "a" / r).read_bytes() != (tmp_path / "c" / r).read_bytes() for r in files(tmp_path / "a"))
    assert a[0].name == c[0].name


def test_phantoms_vary_and_are_imbalanced():
    cases = [brats_phantom(42, i, 48, 24) for i in range(10)]
    wt = np.array([(p.seg > 0).sum() / p.brain_mask.sum() for p in cases])
    assert (wt > 0).all() and wt.max() < 0.3          # every case has a tumour, always a minority of the brain
    assert wt.max() / wt.min() > 5                     # sizes vary a lot
    centres = np.array([np.argwhere(p.seg > 0).mean(0) for p in cases])
    assert centres.std(0).min() > 1                    # positions vary
    positive_slices = np.array([(p.seg > 0).any((0, 1)).mean() for p in cases])
    assert positive_slices.mean() < 0.75               # many axial slices hold no tumour


def test_fake_phi_is_planted_and_not_read_back(tmp_path):
    (folder,) = write_brats_phantoms(tmp_path, 1, seed=0, size=32, slices=16)
    for f in folder.glob("*.nii.gz"):
        raw = gzip.decompress(f.read_bytes())
        assert all(s.encode() in raw[:348] for s in PHI_STRINGS), f  # in the 348-byte NIfTI-1 header
        header = nib.load(f).header
        assert PHI_STRINGS[0] in header["db_name"].item().decode()
        assert PHI_STRINGS[1] in header["descrip"].item().decode()
    case = load_brats_case(folder)
    text = repr(case) + json.dumps(scan_brats(tmp_path))
    assert not any(s in text for s in PHI_STRINGS)


def test_phantom_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="year must be one of"): write_brats_phantoms(tmp_path, 1, 0, year=2019)
    with pytest.raises(ValueError, match="patients must be >= 1"): write_brats_phantoms(tmp_path, 0, 0)
    with pytest.raises(ValueError, match="phantom too small"): brats_phantom(0, 0, size=8)


def test_misnamed_seg_is_reported_not_used(tmp_path):
    # BraTS 2020 case 355 really ships its seg as W39_1998.09.19_Segm.nii: the case loads as unlabelled, with a warning
    d = write_case(tmp_path, "BraTS20_Training_355", 2020, volumes())
    nib.save(nib.Nifti1Image(np.zeros((8, 7, 5), np.uint8), np.eye(4)), d / "W39_1998.09.19_Segm.nii")
    case = load_brats_case(d)
    assert case.seg is None and case.problems == [f"{d}: ignored NIfTI files not in BraTS 2020 naming: ['W39_1998.09.19_Segm.nii']"]
    (row,) = scan_brats(tmp_path)
    assert row["ok"] and row["labels"] is None and row["problems"] == case.problems


def test_scan_reports_an_unexpected_reader_error_and_goes_on(tmp_path, monkeypatch):
    "A reader bug (here a KeyError) in one case is that case's problem, worded as a bug; the next case still loads."
    import medcnn_nb.data.brats as brats
    folders = write_brats_phantoms(tmp_path, patients=2, seed=0, size=32, slices=12)
    real = brats.load_brats_case
    def flaky(d, labels=None):
        if Path(d).name == folders[0].name: raise KeyError("t1")
        return real(d, labels)
    monkeypatch.setattr(brats, "load_brats_case", flaky)
    rows = {r["case_id"]: r for r in scan_brats(tmp_path)}
    assert [rows[f.name]["ok"] for f in folders] == [False, True]
    assert rows[folders[0].name]["problems"] == [
        f"{folders[0]}: this case could not be read ('t1'); the reader did not expect it, which is a bug in medcnn_nb: "
        "please report it"]
