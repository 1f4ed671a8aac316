"""LIDC-IDRI reader and phantoms: real XML and DICOM samples, pydicom's own files, phantom round trips, bad input."""
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medcnn_nb.data.core import DataError
from medcnn_nb.data.lidc import (find_lidc_cases, find_series, load_lidc_case, parse_lidc_xml, read_series, scan_lidc)
from medcnn_nb.data.phantom_lidc import PHI_STRINGS, make_lidc_phantom, write_lidc_phantoms

DICOMDIR_TREE = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"
SIZE, SLICES, SEED = 64, 16, 11


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lidc") / "data"
    write_lidc_phantoms(out, patients=4, seed=SEED, size=SIZE, slices=SLICES)
    return out


def _copy_case(phantoms: Path, tmp_path: Path, patient: int = 0) -> Path:
    src = find_lidc_cases(phantoms)[patient]
    dst = tmp_path / "LIDC-IDRI-9999" / "study" / "series"
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- real XML
def _raw_counts(text: str) -> dict:
    "Independent counts straight from the text, without an XML parser."
    return {"sessions": len(re.findall(r"<readingSession>", text)),
            "marks": len(re.findall(r"<unblindedReadNodule>", text)),
            "with_characteristics": len(re.findall(r"<characteristics>\s*<", text)),
            "non_nodules": len(re.findall(r"<nonNodule>", text)),
            "rois": len(re.findall(r"<roi>", text)),
            "exclusions": len(re.findall(r"<inclusion>\s*FALSE\s*</inclusion>", text)),
            "version": re.search(r"<Version>([^<]+)</Version>", text).group(1).strip()}


def test_all_real_xml_files_parse_with_their_counts(real_data):
    files = sorted((real_data / "lidc" / "xml").glob("*.xml")) + [real_data / "lidc" / "LIDC-IDRI-0001" / "069.xml"]
    assert len(files) == 20
    kinds, versions = {"ct": 0, "xray": 0}, set()
    for f in files:
        text, ann = f.read_text(), parse_lidc_xml(f)
        raw = _raw_counts(text)
        kinds[ann.kind] += 1
        assert ann.version == raw["version"]
        if "<IdriReadMessage" in text:
            assert ann.kind == "xray" and ann.readers == [] and "X-ray" in ann.message
            continue
        versions.add(ann.version)
        assert ann.kind == "ct"
        assert ann.series_uid == re.search(r"<SeriesInstanceUid>([^<]+)<", text).group(1).strip()
        assert len(ann.readers) == raw["sessions"], f
        assert sum(len(r.nodules) + len(r.small_nodules) for r in ann.readers) == raw["marks"], f
        assert sum(len(r.nodules) for r in ann.readers) == raw["with_characteristics"], f
        assert sum(len(r.non_nodules) for r in ann.readers) == raw["non_nodules"], f
        rois = [roi for r in ann.readers for n in r.nodules + r.small_nodules for roi in n.rois]
        assert len(rois) == raw["rois"], f
        assert sum(not roi.inclusion for roi in rois) == raw["exclusions"], f
        assert all(len(n.rois[0].xy) == 1 for r in ann.readers for n in r.small_nodules if n.rois)
        assert all(n.malignancy in (1, 2, 3, 4, 5) for r in ann.readers for n in r.nodules)
    assert kinds == {"ct": 16, "xray": 4}
    assert versions == {"1.7", "1.8", "1.8.1"}


def test_manifest_facts_of_069(real_data):
    ann = parse_lidc_xml(real_data / "lidc" / "LIDC-IDRI-0001" / "069.xml")
    assert len(ann.readers) == 4
    assert sum(len(r.nodules) + len(r.small_nodules) for r in ann.readers) == 13
    assert sum(len(r.non_nodules) for r in ann.readers) == 13
    assert sum(len(n.rois) for r in ann.readers for n in r.nodules + r.small_nodules) == 41


def test_real_lidc_slice_to_hu_and_matching_series(real_data):
    folder = real_data / "lidc" / "LIDC-IDRI-0001"
    s = read_series(folder)
    ds = pydicom.dcmread(folder / "000001.dcm")
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    np.testing.assert_array_equal(s.hu[0], ds.pixel_array.astype(np.float32) - 1024)
    assert s.hu.dtype == np.float32 and s.hu.shape == (1, 512, 512)
    assert s.spacing == (2.5, 0.703125, 0.703125)
    assert s.series_uid == parse_lidc_xml(folder / "069.xml").series_uid == str(ds.SeriesInstanceUID)
    assert s.z_positions.tolist() == [-207.5]


def test_real_unsorted_series_comes_out_sorted(real_data):
    folder = real_data / "ct-series-unsorted"
    s = read_series(folder)
    oracle = sorted((float(pydicom.dcmread(p).ImagePositionPatient[2]), p.name) for p in folder.glob("*.dcm"))
    assert [f.name for f in s.files] == [name for _, name in oracle]
    assert [f.name for f in s.files] != sorted(f.name for f in s.files)  # file-name order would be wrong
    np.testing.assert_allclose(s.z_positions, [z for z, _ in oracle])
    assert s.spacing[0] == pytest.approx(1.25)
    ds = pydicom.dcmread(s.files[2])
    np.testing.assert_array_equal(s.hu[2], (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32))


# ---------------------------------------------------------------- pydicom's own files
def test_pydicom_ct_small():
    f = Path(get_testdata_file("CT_small.dcm"))
    s = read_series([f])
    ds = pydicom.dcmread(f)
    np.testing.assert_array_equal(s.hu[0], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    assert s.spacing[1:] == tuple(float(v) for v in ds.PixelSpacing)


def test_dicomdir_tree_series_grouped_and_sorted():
    found = find_series(DICOMDIR_TREE)
    # oracle: pydicom, file by file
    uids = {}
    for p in DICOMDIR_TREE.rglob("*"):
        if p.is_file():
            try: ds = pydicom.dcmread(p, stop_before_pixels=True)
            except Exception: continue
            if "SeriesInstanceUID" in ds: uids.setdefault(str(ds.SeriesInstanceUID), set()).add(p)
    assert {k: set(v) for k, v in found.items()} == uids
    ct5n = next(v for v in found.values() if v[0].parent.name == "CT5N")
    s = read_series(ct5n)
    assert np.all(np.diff(s.z_positions) > 0)
    # MR700 is a rotating angiography projection: every slice has its own orientation, so it is no stack
    mr = next(v for v in found.values() if v[0].parent.name == "MR700")
    iops = {tuple(np.round([float(x) for x in pydicom.dcmread(f).ImageOrientationPatient], 3)) for f in mr}
    assert len(iops) == len(mr) == 7
    with pytest.raises(DataError, match="orientation .* differs from the rest of the series") as e:
        read_series(mr)
    assert str(e.value).split(":")[0] in {str(f) for f in mr}


def test_dicomdir_tree_problems():
    found = find_series(DICOMDIR_TREE)
    ct2 = next(v for v in found.values() if v[0].parent.name == "CT2")
    with pytest.raises(DataError, match="missing slices"):
        read_series(ct2)
    tiny = next(v for v in found.values() if v[0].parent.name == "SE000000")
    with pytest.raises(DataError, match="without pixel data") as e:
        read_series(tiny)
    assert tiny[0].name in str(e.value)


# ---------------------------------------------------------------- phantoms
def test_phantom_round_trip(phantoms):
    cases = find_lidc_cases(phantoms)
    assert len(cases) == 4
    for i, folder in enumerate(cases):
        ph, case = make_lidc_phantom(SEED, i, SIZE, SLICES), load_lidc_case(folder)
        assert case.case_id == ph.patient_id == f"LIDC-IDRI-{i + 1:04d}"
        np.testing.assert_array_equal(case.hu, ph.hu)
        np.testing.assert_allclose(case.spacing, ph.spacing, rtol=1e-6)
        assert len(case.nodules) == len(ph.nodules)
        np.testing.assert_array_equal(case.consensus_mask, ph.consensus_mask())
        np.testing.assert_array_equal(case.slice_labels, ph.consensus_mask().any((1, 2)))
        # each consensus nodule is one planted nodule, with the same readers
        assert sorted(tuple(sorted(n.readers)) for n in case.nodules) == sorted(tuple(sorted(n.readers)) for n in ph.nodules)


def test_phantom_consensus_levels(phantoms):
    for i, folder in enumerate(find_lidc_cases(phantoms)):
        ph = make_lidc_phantom(SEED, i, SIZE, SLICES)
        for level in (1 / 3, 1.0):
            np.testing.assert_array_equal(load_lidc_case(folder, consensus=level).consensus_mask, ph.consensus_mask(level))


def test_phantom_properties_over_teaching_set():
    phs = [make_lidc_phantom(5, i, 64, 16) for i in range(12)]
    kinds = {n.kind for p in phs for n in p.nodules}
    assert kinds == {"solid", "ground_glass", "juxta_pleural"}
    assert any(not p.nodules for p in phs)
    assert all(3 <= n.diameter_mm <= 30 for p in phs for n in p.nodules)
    assert all(1 <= len(p.readers) <= 4 for p in phs)
    multi = [n for p in phs for n in p.nodules if len(n.reader_masks) > 1]
    assert any(len({m.full().tobytes() for m in n.reader_masks.values()}) > 1 for n in multi)  # readers differ
    assert any(len(n.readers) < len(p.readers) for p in phs for n in p.nodules)               # someone missed one
    assert np.mean([p.consensus_mask().mean() for p in phs]) < 0.01                           # imbalance


def test_phantom_determinism_and_phi(phantoms, tmp_path):
    write_lidc_phantoms(tmp_path / "again", patients=4, seed=SEED, size=SIZE, slices=SLICES)
    a = sorted(p.relative_to(phantoms) for p in phantoms.rglob("*") if p.is_file())
    b = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert a == b
    assert all((phantoms / p).read_bytes() == (tmp_path / "again" / p).read_bytes() for p in a)
    write_lidc_phantoms(tmp_path / "other", patients=1, seed=SEED + 1, size=SIZE, slices=SLICES)
    first = next(p for p in a if p.suffix == ".dcm")
    other = sorted((tmp_path / "other").rglob("*.dcm"))[0]
    assert other.read_bytes() != (phantoms / first).read_bytes()
    ds = pydicom.dcmread(phantoms / first)
    assert (str(ds.PatientName), ds.PatientBirthDate) == PHI_STRINGS
    assert ds.RescaleIntercept == -1024 and ds.pixel_array.dtype == np.int16
    assert ds.SeriesInstanceUID and ds.StudyInstanceUID and ds.SOPInstanceUID
    assert PHI_STRINGS[0] not in load_lidc_case(find_lidc_cases(phantoms)[0]).case_id


# ---------------------------------------------------------------- bad input
def test_truncated_dicom(phantoms, tmp_path):
    case = _copy_case(phantoms, tmp_path)
    victim = sorted(case.glob("*.dcm"))[3]
    victim.write_bytes(victim.read_bytes()[:2000])
    with pytest.raises(DataError, match=rf"{victim.name}: truncated DICOM"):
        load_lidc_case(case)


def test_dicom_without_pixel_data(phantoms, tmp_path):
    case = _copy_case(phantoms, tmp_path)
    victim = sorted(case.glob("*.dcm"))[2]
    ds = pydicom.dcmread(victim); del ds.PixelData; ds.save_as(victim)
    with pytest.raises(DataError, match=rf"{victim.name}: DICOM file without pixel data"):
        load_lidc_case(case)


def test_two_series_in_one_folder(phantoms, tmp_path):
    case = _copy_case(phantoms, tmp_path)
    other = find_lidc_cases(phantoms)[1]
    shutil.copy(sorted(other.glob("*.dcm"))[0], case / "intruder.dcm")
    with pytest.raises(DataError, match="2 series mixed in one folder"):
        load_lidc_case(case)
    groups = find_series(case)  # the way out: group by UID
    assert sorted(len(v) for v in groups.values()) == [1, SLICES]


def test_missing_and_duplicated_slices(phantoms, tmp_path):
    case = _copy_case(phantoms, tmp_path)
    files = read_series(case).files
    files[SLICES // 2].unlink()
    with pytest.raises(DataError, match="missing slices: a gap of"):
        read_series(case)
    s = read_series(case, strict=False)
    assert len(s.hu) == SLICES - 1 and "missing slices" in s.problems[0]
    dup = pydicom.dcmread(files[0]); dup.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["dup"])
    dup.save_as(case / "dup.dcm")
    with pytest.raises(DataError, match=rf"duplicated slice position .*{files[0].name}|duplicated slice position .*dup.dcm"):
        read_series(case)


def test_xml_not_lidc_and_unmatched_rois(phantoms, tmp_path):
    case = _copy_case(phantoms, tmp_path, patient=next(i for i in range(4) if make_lidc_phantom(SEED, i, SIZE, SLICES).nodules))
    xml = next(case.glob("*.xml"))
    text = xml.read_text()
    bogus = case / "notes.xml"; bogus.write_text("<?xml version='1.0'?><report><item/></report>")
    with pytest.raises(DataError, match="notes.xml: not a LIDC annotation file"):
        load_lidc_case(case)
    bogus.unlink()
    moved = re.sub(r"<imageSOP_UID>[^<]*</imageSOP_UID>", "<imageSOP_UID>1.2.3</imageSOP_UID>", text)
    moved = re.sub(r"<imageZposition>[^<]*</imageZposition>", "<imageZposition>9999.0</imageZposition>", moved)
    xml.write_text(moved)
    with pytest.raises(DataError, match=rf"{xml.name}: none of its \d+ nodule ROIs matches a slice"):
        load_lidc_case(case)
    # without SOP UIDs the z positions still place every ROI
    xml.write_text(re.sub(r"<imageSOP_UID>[^<]*</imageSOP_UID>", "<imageSOP_UID>1.2.3</imageSOP_UID>", text))
    assert load_lidc_case(case).consensus_mask.sum() > 0
    xml.write_text("<LidcReadMessage><unclosed>")
    with pytest.raises(DataError, match="not well-formed XML"):
        load_lidc_case(case)


def test_exclusion_roi_is_subtracted(phantoms, tmp_path):
    case = _copy_case(phantoms, tmp_path)
    s = read_series(case)
    xml = next(case.glob("*.xml"))
    sq = [(20, 20), (30, 20), (30, 30), (20, 30)]
    hole = [(23, 23), (27, 23), (27, 27), (23, 27)]
    def roi(pts, inc): return (f"<roi><imageZposition>{s.z_positions[5]}</imageZposition><imageSOP_UID>{s.sop_uids[5]}</imageSOP_UID>"
                               f"<inclusion>{inc}</inclusion>" + "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in pts) + "</roi>")
    xml.write_text(f'<LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader><Version>1.8</Version><SeriesInstanceUid>{s.series_uid}'
                   f"</SeriesInstanceUid></ResponseHeader><readingSession><servicingRadiologistID>1</servicingRadiologistID>"
                   f"<unblindedReadNodule><noduleID>1</noduleID><characteristics><malignancy>2</malignancy></characteristics>"
                   f"{roi(sq, 'TRUE')}{roi(hole, 'FALSE')}</unblindedReadNodule></readingSession></LidcReadMessage>")
    c = load_lidc_case(case)
    expected = np.zeros(s.hu.shape[1:], bool); expected[20:31, 20:31] = True; expected[24:27, 24:27] = False
    np.testing.assert_array_equal(c.consensus_mask[5], expected)
    assert c.consensus_mask.sum() == 121 - 9 and c.nodules[0].malignancy == 2


def test_scan_reports_and_goes_on(phantoms, tmp_path):
    root = tmp_path / "scan"
    shutil.copytree(phantoms, root)
    victim = sorted(find_lidc_cases(root)[1].glob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    rows = scan_lidc(root)
    assert [r["ok"] for r in rows] == [True, False, True, True]
    assert victim.name in rows[1]["problems"][0]
    assert rows[0]["slices"] == SLICES and rows[0]["consensus_nodules"] == len(make_lidc_phantom(SEED, 0, SIZE, SLICES).nodules)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no DICOM series found"):
        scan_lidc(tmp_path / "empty")
