"""Issue 14: a corpus of malformed inputs, each written by the test itself from small phantoms (32 x 32 slices)
and the real fixtures. For each: `medcnn-data` (its main function, output captured) exits with the code we
decided, the message names the file at fault and the cause, no traceback is printed, and the other cases of the
same folder are still reported as loaded. The table of decisions is in chapters 02a (LIDC) and 02b (BraTS)."""
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medcnn_nb.data.brats import brats_layout, find_brats_cases
from medcnn_nb.datasets import data_main, validate_dataset, validation_summary
from medcnn_nb.data.core import printable
from medcnn_nb.data.lidc import find_lidc_cases
from medcnn_nb.data.phantom_brats import write_brats_phantoms
from medcnn_nb.data.phantom_lidc import write_lidc_phantoms

ROOT = Path(__file__).resolve().parents[1]
# the TCIA pieces: in the repository when issue 10 has copied them, else beside the checkout
REAL_LIDC = next((p for p in (ROOT / "tests" / "data" / "real" / "lidc", ROOT.parent / "shared" / "data" / "real" / "lidc")
                  if p.is_dir()), None)


@dataclass
class Bad:
    "One malformed input: `mutate(case folder) -> the file the message must name`."
    name: str
    mutate: Callable
    code: int                  # exit code of medcnn-data
    words: tuple               # the cause, in words, that the message must contain
    accepted: bool = False     # True: loaded with a warning / recorded assumption (exit 0)
    marks: dict = field(default_factory=dict)


def _run(capsys, *argv):
    code = data_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _check(capsys, what: str, root: Path, victim_case: Path, bad: Bad, named: Path):
    "Run medcnn-data (JSON and text) and check the decision, the message and the other cases."
    code, out, err = _run(capsys, what, root, "--json")
    assert "Traceback" not in out + err
    assert code == bad.code, (out, err)
    rows = json.loads(out)
    mine = [r for r in rows if Path(r["path"]) == victim_case]
    others = [r for r in rows if Path(r["path"]) != victim_case]
    assert len(mine) == 1 and len(others) == 2 and all(r["ok"] for r in others), rows  # the rest still loads
    row = mine[0]
    assert row["ok"] == bad.accepted
    messages = row["problems"] + row.get("assumptions", [])
    hits = [m for m in messages if str(named) in m and all(w in m for w in bad.words)]
    assert hits, (str(named), bad.words, messages)
    assert not any(re.search(r"unexpected \w+Error|Traceback", m) for m in messages)
    code2, text, err2 = _run(capsys, what, root)  # the human-readable form says the same
    assert code2 == code and "Traceback" not in text + err2 and printable(named.name) in text


# ---------------------------------------------------------------- LIDC: DICOM headers
def dicom(which="all"):
    "A mutation that edits slice `which` (index into the sorted files) or all slices with pydicom."
    def deco(edit):
        def mutate(series: Path) -> Path:
            files = sorted(series.glob("*.dcm"))
            chosen = files if which == "all" else [files[which]]
            for f in chosen:
                ds = pydicom.dcmread(f); edit(ds); ds.save_as(f)
            return chosen[0]
        return mutate
    return deco


def _delete(*keys):
    def edit(ds):
        for k in keys: delattr(ds, k)
    return edit


def _set(key, value):
    return lambda ds: setattr(ds, key, value)


def _smaller(ds):
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:16, :16]).tobytes(); ds.Rows = ds.Columns = 16


def _truncate(series):
    f = sorted(series.glob("*.dcm"))[2]; f.write_bytes(f.read_bytes()[:-500]); return f  # cut inside the pixels


def _no_pixels(series):
    f = sorted(series.glob("*.dcm"))[2]; ds = pydicom.dcmread(f); del ds.PixelData; ds.save_as(f); return f


def _not_dicom(series):
    f = series / "notes.dcm"; f.write_text("scanner notes, not an image"); return f


def _duplicate(series):
    src = sorted(series.glob("*.dcm"))[3]; ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["dup"]); ds.save_as(series / "copy.dcm")
    return series  # a property of the series: the message names the folder and both files


def _gap(series):
    files = sorted(series.glob("*.dcm")); files[4].unlink(); return series  # names the folder and the slices around the gap


def _intruder(series):
    ds = pydicom.dcmread(sorted(series.glob("*.dcm"))[0]); ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.SOPInstanceUID = "1.2.3.4.5.6"; ds.save_as(series / "intruder.dcm"); return series  # names the folder and a file of each


def _control_name(series):
    f = sorted(series.glob("*.dcm"))[2]
    bad = f.with_name("cut\nLIDC-IDRI-9999: 8 slices, all fine\x1b[32m.dcm")
    bad.write_bytes(f.read_bytes()[:900]); f.unlink(); return bad


DICOM_CORPUS = [
    Bad("no RescaleIntercept in any slice", dicom()(_delete("RescaleIntercept")), 1, ("no RescaleIntercept", "Type 1", "C.8.2.1")),
    Bad("no RescaleIntercept in one slice", dicom(5)(_delete("RescaleIntercept")), 1, ("no RescaleIntercept",)),
    Bad("no RescaleSlope", dicom()(_delete("RescaleSlope")), 0, ("no RescaleSlope", "assumed 1"), accepted=True),
    Bad("no RescaleSlope nor RescaleIntercept", dicom()(_delete("RescaleSlope", "RescaleIntercept")), 1, ("no RescaleIntercept",)),
    Bad("RescaleSlope 0", dicom(3)(_set("RescaleSlope", 0)), 1, ("RescaleSlope is 0",)),
    Bad("no PixelSpacing in any slice", dicom()(_delete("PixelSpacing")), 1, ("no PixelSpacing", "8 of 8 slices", "C.7.6.2")),
    Bad("no PixelSpacing in one slice", dicom(6)(_delete("PixelSpacing")), 1, ("no PixelSpacing", "1 of 8 slices")),
    Bad("PixelSpacing 0", dicom()(_set("PixelSpacing", [0, 0])), 1, ("is not positive",)),
    Bad("PixelSpacing of one slice differs", dicom(2)(_set("PixelSpacing", [3.65, 3.65])), 1, ("PixelSpacing", "differs from the rest")),
    Bad("PixelSpacing with one value", dicom(1)(_set("PixelSpacing", [0.7])), 1, ("PixelSpacing holds 1 values, expected 2",)),
    Bad("no ImageOrientationPatient in any slice", dicom()(_delete("ImageOrientationPatient")), 1, ("no ImageOrientationPatient", "8 of 8")),
    Bad("no ImageOrientationPatient in one slice", dicom(4)(_delete("ImageOrientationPatient")), 1, ("no ImageOrientationPatient", "1 of 8")),
    Bad("a sagittal slice in an axial stack", dicom(3)(_set("ImageOrientationPatient", [0, 1, 0, 0, 0, -1])), 1,
        ("orientation sagittal", "differs from the rest of the series", "axial")),
    Bad("orientation not unit vectors", dicom()(_set("ImageOrientationPatient", [2, 0, 0, 0, 1, 0])), 1, ("not two perpendicular unit vectors",)),
    Bad("no ImagePositionPatient in one slice", dicom(7)(_delete("ImagePositionPatient")), 1, ("no ImagePositionPatient",)),
    Bad("no ImagePositionPatient in any slice", dicom()(_delete("ImagePositionPatient")), 1, ("no ImagePositionPatient", "8 of 8")),
    Bad("one slice of another size", dicom(5)(_smaller), 1, ("size (Rows, Columns) 16x16 differs", "32x32")),
    Bad("no SOPInstanceUID", dicom(2)(_delete("SOPInstanceUID")), 0, ("no SOPInstanceUID", "by z position only"), accepted=True),
    Bad("no SeriesInstanceUID in one slice", dicom(1)(_delete("SeriesInstanceUID")), 1, ("without SeriesInstanceUID",)),
    Bad("a truncated slice", _truncate, 1, ("truncated",)),
    Bad("a slice without pixel data", _no_pixels, 1, ("without pixel data",)),
    Bad("a .dcm file that is not DICOM", _not_dicom, 1, ("not a DICOM file",)),
    Bad("a duplicated slice", _duplicate, 1, ("duplicated slice position", "copy.dcm")),
    Bad("a missing slice", _gap, 1, ("missing slices: a gap of", "(1-006.dcm and 1-004.dcm;")),
    Bad("a slice of another series", _intruder, 1, ("2 series mixed in one folder", "e.g. intruder.dcm")),
    Bad("a file name with a newline and ESC", _control_name, 1, ("cut short before the pixels",)),
]


# ---------------------------------------------------------------- LIDC: the readers' XML
def xml(edit):
    "A mutation of the case's XML text."
    def mutate(series: Path) -> Path:
        f = next(series.glob("*.xml")); f.write_text(edit(f.read_text())); return f
    return mutate


def _first(pattern, repl):
    return lambda t: re.sub(pattern, repl, t, count=1)


def _first_nodule_shifted(dx):
    def edit(t):
        head, sep, rest = t.partition("</unblindedReadNodule>")
        return re.sub(r"<xCoord>(-?\d+)</xCoord>", lambda m: f"<xCoord>{int(m.group(1)) + dx}</xCoord>", head) + sep + rest
    return edit


def _xml_folder(series):
    (series / "extra.xml").mkdir(); return series / "extra.xml"


XML_CORPUS = [
    Bad("xCoord inf", xml(_first(r"<xCoord>\d+</xCoord>", "<xCoord>inf</xCoord>")), 1,
        ("reader 367265244, nodule Nodule 001", "'inf' is not a finite number")),
    Bad("xCoord nan", xml(_first(r"<yCoord>\d+</yCoord>", "<yCoord>nan</yCoord>")), 1, ("'nan' is not a finite number",)),
    Bad("xCoord 1e30", xml(_first(r"<xCoord>\d+</xCoord>", "<xCoord>1e30</xCoord>")), 1, ("is absurd", "Nodule 001")),
    Bad("xCoord not a number", xml(_first(r"<xCoord>\d+</xCoord>", "<xCoord>12px</xCoord>")), 1, ("'12px' is not a number",)),
    Bad("point without xCoord", xml(_first(r"<xCoord>\d+</xCoord>", "")), 1, ("a point without <xCoord>",)),
    Bad("imageZposition inf", xml(_first(r"<imageZposition>[^<]*</imageZposition>", "<imageZposition>-inf</imageZposition>")), 1,
        ("<imageZposition>", "not a finite number")),
    Bad("imageZposition absurd", xml(_first(r"<imageZposition>[^<]*</imageZposition>", "<imageZposition>1e12</imageZposition>")), 1,
        ("is absurd",)),
    Bad("negative coordinates", xml(_first(r"<xCoord>\d+</xCoord>", "<xCoord>-3</xCoord>")), 0,
        ("reader 367265244, nodule Nodule 001", "negative pixel coordinates"), accepted=True),
    Bad("one reader's mark outside the image", xml(_first_nodule_shifted(100)), 0,
        ("reader 367265244, nodule Nodule 001", "outside the 32x32 image", "left out"), accepted=True),
    Bad("every mark outside the image", xml(lambda t: re.sub(r"<xCoord>(\d+)</xCoord>", lambda m: f"<xCoord>{int(m.group(1)) + 500}</xCoord>", t)),
        1, ("none of its", "gives a mark inside this 32x32 series")),
    Bad("every ROI on no slice", xml(lambda t: re.sub(r"<imageSOP_UID>[^<]*</imageSOP_UID>", "<imageSOP_UID>1.2.3</imageSOP_UID>",
                                                      re.sub(r"<imageZposition>[^<]*<", "<imageZposition>999.0<", t))), 1,
        ("matches a slice",)),
    Bad("one ROI on no slice", xml(lambda t: re.sub(r"<imageSOP_UID>[^<]*</imageSOP_UID>", "<imageSOP_UID>1.2.3</imageSOP_UID>",
                                                    re.sub(r"<imageZposition>[^<]*<", "<imageZposition>999.0<", t, count=1), count=1)),
        0, ("reader 367265244, nodule Nodule 001", "1 of 3 ROIs (z 999) match no slice"), accepted=True),
    Bad("no readingSession", xml(lambda t: re.sub(r"<readingSession>.*</readingSession>", "", t, flags=re.S)), 1, ("no <readingSession>",)),
    Bad("no SeriesInstanceUid", xml(_first(r"<SeriesInstanceUid>[^<]*</SeriesInstanceUid>", "")), 1, ("no <ResponseHeader><SeriesInstanceUid>",)),
    Bad("another series' XML", xml(_first(r"<SeriesInstanceUid>[^<]*</SeriesInstanceUid>", "<SeriesInstanceUid>1.2.3</SeriesInstanceUid>")), 1,
        ("annotates series 1.2.3",)),
    Bad("malignancy 9", xml(_first(r"<malignancy>\d</malignancy>", "<malignancy>9</malignancy>")), 0,
        ("reader 367265244, nodule Nodule 001", "malignancy 9 is outside the LIDC scale 1-5"), accepted=True),
    Bad("calcification 0", xml(_first(r"<calcification>\d</calcification>", "<calcification>0</calcification>")), 0,
        ("calcification 0 is outside the LIDC scale 1-6",), accepted=True),
    Bad("a rating in words", xml(_first(r"<subtlety>\d</subtlety>", "<subtlety>obvious</subtlety>")), 1, ("'obvious' is not a number",)),
    Bad("a ROI without points", xml(lambda t: re.sub(r"(<inclusion>TRUE</inclusion>)\s*(<edgeMap>.*?</edgeMap>\s*)+(</roi>)", r"\1\3", t, count=1, flags=re.S)),
        0, ("no <edgeMap> point",), accepted=True),
    Bad("not well-formed XML", xml(lambda t: t[: len(t) // 2]), 1, ("not well-formed XML",)),
    Bad("not a LIDC file", xml(lambda t: "<?xml version='1.0'?><report><finding/></report>"), 1, ("not a LIDC annotation file",)),
    Bad("a folder named like an XML file", _xml_folder, 1, ("is a folder, not an XML file",)),
]


@pytest.fixture(scope="module")
def lidc_base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "lidc"
    write_lidc_phantoms(out, patients=3, seed=3, size=32, slices=8)  # case 2: 3 readers, 2 marks each
    return out


def _spoil_one_case(capsys, dataset: str, base: Path, find, bad, tmp_path) -> None:
    "Copy the good dataset, apply one malformation to its second case, check the command's answer."
    root = tmp_path / "data"; shutil.copytree(base, root)
    victim = find(root)[1]
    _check(capsys, dataset, root, victim, bad, bad.mutate(victim))


@pytest.mark.parametrize("bad", DICOM_CORPUS + XML_CORPUS, ids=lambda b: b.name)
def test_lidc_bad_input(bad, lidc_base, tmp_path, capsys):
    _spoil_one_case(capsys, "lidc", lidc_base, find_lidc_cases, bad, tmp_path)


def test_control_characters_cannot_forge_a_line(lidc_base, tmp_path, capsys):
    root = tmp_path / "data"; shutil.copytree(lidc_base, root)
    named = _control_name(find_lidc_cases(root)[1])
    code, text, err = _run(capsys, "lidc", root)
    assert code == 1 and "\x1b" not in text and "cut\\nLIDC-IDRI-9999: 8 slices, all fine\\x1b[32m.dcm" in text
    assert not any(line.startswith("LIDC-IDRI-9999") for line in text.splitlines())  # no forged case line
    code, out, _ = _run(capsys, "lidc", root, "--json")
    assert any(str(named) in p for r in json.loads(out) for p in r["problems"])  # JSON keeps the true name, escaped by json


# ---------------------------------------------------------------- LIDC: layouts
def test_dicomdir_at_the_root_is_not_a_case(lidc_base, tmp_path, capsys):
    root = tmp_path / "data"; shutil.copytree(lidc_base, root)
    dicomdir = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "DICOMDIR"
    shutil.copy(dicomdir, root / "DICOMDIR")
    code, out, err = _run(capsys, "lidc", root, "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 3 and all(r["ok"] for r in rows) and str(root) not in [r["path"] for r in rows]


def test_symlinked_patient_folder_is_followed_and_loops_are_cut(lidc_base, tmp_path, capsys):
    root, elsewhere = tmp_path / "data", tmp_path / "other-disk"
    shutil.copytree(lidc_base, root)
    shutil.move(str(root / "LIDC-IDRI-0002"), elsewhere)
    (root / "LIDC-IDRI-0002").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back-to-root").symlink_to(root, target_is_directory=True)  # a loop
    code, out, _ = _run(capsys, "lidc", root, "--json")
    rows = json.loads(out)
    assert code == 0 and [r["case_id"] for r in rows] == ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"]
    assert all(r["ok"] for r in rows)


@pytest.mark.skipif(REAL_LIDC is None, reason="real LIDC fixtures not found")
def test_real_slice_without_rescale_or_spacing(tmp_path, capsys):
    "The real LIDC-IDRI-0001 slice, with the fields the issue found accepted silently removed."
    for key, words in (("RescaleIntercept", "off by the intercept"), ("PixelSpacing", "pixel size in mm is unknown")):
        case = tmp_path / key / "LIDC-IDRI-0001"; case.mkdir(parents=True)
        ds = pydicom.dcmread(REAL_LIDC / "LIDC-IDRI-0001" / "000001.dcm"); delattr(ds, key); ds.save_as(case / "000001.dcm")
        shutil.copy(REAL_LIDC / "LIDC-IDRI-0001" / "069.xml", case)
        code, out, err = _run(capsys, "lidc", tmp_path / key, "--json")
        row = json.loads(out)[0]
        assert code == 1 and not row["ok"] and str(case / "000001.dcm") in row["problems"][0] and words in row["problems"][0]


@pytest.mark.skipif(REAL_LIDC is None, reason="real LIDC fixtures not found")
def test_real_xml_out_of_scale_rating_is_reported(capsys):
    "A real TCIA file rates internal structure 5 on a 1-4 scale: kept as a warning, not silently."
    f = REAL_LIDC / "xml" / "tcia-lidc-xml_187_255.xml"
    if not f.exists(): pytest.skip("tcia-lidc-xml_187_255.xml not among the fixtures")
    code, out, _ = _run(capsys, "lidc-xml", f, "--json")
    doc = json.loads(out)
    assert code == 0 and any(str(f) in p and "internalStructure 5 is outside the LIDC scale 1-4" in p for p in doc["problems"])


# ---------------------------------------------------------------- one XML file (medcnn-data lidc-xml)
def test_lidc_xml_command_on_bad_files(lidc_base, tmp_path, capsys):
    src = next(find_lidc_cases(lidc_base)[1].glob("*.xml")).read_text()
    code, _, err = _run(capsys, "lidc-xml", tmp_path)
    assert code == 1 and f"{tmp_path}: is a folder, not an XML file" in err
    f = tmp_path / "inf.xml"; f.write_text(re.sub(r"<xCoord>\d+</xCoord>", "<xCoord>inf</xCoord>", src, count=1))
    code, _, err = _run(capsys, "lidc-xml", f)
    assert code == 1 and "Traceback" not in err and f"{f}: reader 367265244, nodule Nodule 001" in err
    f = tmp_path / "nine.xml"; f.write_text(re.sub(r"<malignancy>\d</malignancy>", "<malignancy>9</malignancy>", src, count=1))
    code, out, _ = _run(capsys, "lidc-xml", f)
    assert code == 0 and "warning:" in out and "malignancy 9 is outside the LIDC scale 1-5" in out


def test_installed_command_prints_no_traceback(lidc_base, tmp_path):
    exe = Path(sys.executable).parent / "medcnn-data"
    if not exe.exists(): pytest.skip("console scripts not installed (pip install -e .)")
    root = tmp_path / "data"; shutil.copytree(lidc_base, root)
    named = xml(_first(r"<xCoord>\d+</xCoord>", "<xCoord>inf</xCoord>"))(find_lidc_cases(root)[1])
    r = subprocess.run([str(exe), "lidc", str(root)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    assert f"problem: {named}: reader 367265244" in r.stdout and "3 case(s), 1 failed" in r.stdout


# ---------------------------------------------------------------- BraTS
def nifti(key, change):
    "A mutation of one file of the case (`key`: a modality or 'seg'): `change(array) -> array`, saved with the same affine."
    def mutate(case: Path) -> Path:
        f = brats_layout(case)[2][key]
        img = nib.load(f)
        nib.save(nib.Nifti1Image(change(np.asarray(img.dataobj)), img.affine), f)
        return f
    return mutate


def _relabel(fn):
    return nifti("seg", lambda a: fn(a.astype(np.int16)).astype(np.int16))


def _zscore(case):
    files = brats_layout(case)[2]
    for m in ("t1", "t1ce", "t2", "flair"):
        img = nib.load(files[m]); a = np.asarray(img.dataobj, np.float32)
        nib.save(nib.Nifti1Image(((a - a.mean()) / a.std()).astype(np.float32), img.affine), files[m])
    return files["t1"]


def _noise_background(case):
    files = brats_layout(case)[2]
    for m in ("t1", "t1ce", "t2", "flair"):
        img = nib.load(files[m]); a = np.asarray(img.dataobj, np.float32)
        a = a + np.random.default_rng(0).uniform(1, 5, a.shape).astype(np.float32)
        nib.save(nib.Nifti1Image(a, img.affine), files[m])
    return files["t1"]


def _remove(key):
    def mutate(case):
        f = brats_layout(case)[2][key]; f.unlink(); return case
    return mutate


def _cut(key, keep=200):
    def mutate(case):
        f = brats_layout(case)[2][key]; f.write_bytes(f.read_bytes()[:keep]); return f
    return mutate


def _other_affine(case):
    f = brats_layout(case)[2]["t2"]; img = nib.load(f)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([2.0, 1, 1, 1])), f); return f


def _twice(case):
    f = brats_layout(case)[2]["flair"]; twin = f.with_name(f.name.replace(".nii.gz", ".nii"))
    nib.save(nib.load(f), twin); return case


def _misnamed_seg(case):
    f = brats_layout(case)[2]["seg"]; g = f.with_name("segmentation_final.nii.gz"); f.rename(g); return case


BRATS_CORPUS = [
    Bad("label 5", _relabel(lambda a: np.where(a == 2, 5, a)), 1, ("unknown label values [5]", "no BraTS release uses these values")),
    Bad("2015-2016 labels (3 = non-enhancing)", _relabel(lambda a: np.where(a == 1, 3, a)), 1,
        ("unknown label values [3]", "fit the 2015-2016 convention", "--labels 2015")),
    Bad("2023 labels in the 2021 naming", _relabel(lambda a: np.where(a == 4, 3, a)), 1,
        ("unknown label values [3]", "2023+ convention", "--labels 2023")),
    Bad("negative label", _relabel(lambda a: np.where(a == 2, -1, a)), 1, ("unknown label values [-1]",)),
    Bad("fractional label", nifti("seg", lambda a: np.where(a == 2, 1.5, a).astype(np.float32)), 1,
        ("unknown label values [1.5]", "whole numbers")),
    Bad("NaN in a modality", nifti("t1", lambda a: np.where(a > 0, np.nan, a).astype(np.float32)), 1, ("NaN or infinite",)),
    Bad("a 4D modality", nifti("t2", lambda a: np.stack([a, a], -1)), 1, ("expected a 3D volume",)),
    Bad("a modality of another shape", nifti("t1ce", lambda a: a[:, :, :-1]), 1, ("differs from", "share one grid")),
    Bad("a modality on another grid", _other_affine, 1, ("affine differs from",)),
    Bad("a seg of another shape", nifti("seg", lambda a: a[:-2]), 1, ("shape", "differs from")),
    Bad("a missing modality", _remove("t2"), 1, ("missing modality: t2",)),
    Bad("a truncated modality", _cut("flair"), 1, ("cannot read NIfTI",)),
    Bad("an empty file", _cut("t1ce", 0), 1, ("cannot read NIfTI",)),
    Bad("one modality twice", _twice, 1, ("keep one",)),
    Bad("z-scored input", _zscore, 0, ("not 0 (z-scored input?)",), accepted=True),
    Bad("no background at all", _noise_background, 0, ("brain mask covers 100% of the volume",), accepted=True),
    Bad("a misnamed seg", _misnamed_seg, 0, ("ignored NIfTI files not in BraTS 2021 naming", "segmentation_final.nii.gz"), accepted=True),
]


@pytest.fixture(scope="module")
def brats_base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad") / "brats"
    write_brats_phantoms(out, patients=3, seed=2, year=2021, size=32, slices=16)
    return out


@pytest.mark.parametrize("bad", BRATS_CORPUS, ids=lambda b: b.name)
def test_brats_bad_input(bad, brats_base, tmp_path, capsys):
    _spoil_one_case(capsys, "brats", brats_base, find_brats_cases, bad, tmp_path)


def test_brats_labels_option_reads_the_older_convention(brats_base, tmp_path, capsys):
    root = tmp_path / "data"; shutil.copytree(brats_base, root)
    victims = find_brats_cases(root)
    for case in victims:  # every case in the 2015-2016 convention: NCR/NET 1 split into necrosis 1 and non-enhancing 3
        f = brats_layout(case)[2]["seg"]; img = nib.load(f); a = np.asarray(img.dataobj).astype(np.int16)
        nib.save(nib.Nifti1Image(np.where((a == 1) & (np.indices(a.shape)[0] % 2 == 0), 3, a).astype(np.int16), img.affine), f)
    assert _run(capsys, "brats", root, "--json")[0] == 1
    code, out, _ = _run(capsys, "brats", root, "--labels", "2015", "--json")
    rows = json.loads(out)
    assert code == 0 and all(r["ok"] and set(r["labels"]) <= {0, 1, 2, 3} for r in rows)
    assert all(any("2015-2016 convention, as asked" in a for a in r["assumptions"]) for r in rows)


# ---------------------------------------------------------------- the check before training (medcnn-paper)
def test_validate_dataset_lists_loaded_and_skipped_with_causes(lidc_base, brats_base, tmp_path):
    lidc, brats = tmp_path / "lidc", tmp_path / "brats"
    shutil.copytree(lidc_base, lidc); shutil.copytree(brats_base, brats)
    named = xml(_first(r"<xCoord>\d+</xCoord>", "<xCoord>inf</xCoord>"))(find_lidc_cases(lidc)[1])
    nolabel = _remove("seg")(find_brats_cases(brats)[2])
    checks = [validate_dataset("lidc", lidc), validate_dataset("brats", brats)]
    assert [len(c["loaded"]) for c in checks] == [2, 2] and [len(c["skipped"]) for c in checks] == [1, 1]
    assert str(named) in checks[0]["skipped"][0]["cause"] and "not a finite number" in checks[0]["skipped"][0]["cause"]
    assert checks[1]["skipped"][0]["path"] == str(nolabel) and "no segmentation file" in checks[1]["skipped"][0]["cause"]
    text = validation_summary(checks)
    assert "data check, lidc" in text and "1 skipped" in text and f"skipped LIDC-IDRI-0002: {named}" in text


@pytest.mark.slow  # imports Keras for the environment line: ~10-60 s on a loaded 2-core machine
def test_paper_strict_stops_before_training(lidc_base, brats_base, tmp_path, capsys):
    from medcnn_nb.paper import main
    lidc, brats = tmp_path / "lidc", tmp_path / "brats"
    shutil.copytree(lidc_base, lidc); shutil.copytree(brats_base, brats)
    named = xml(_first(r"<xCoord>\d+</xCoord>", "<xCoord>inf</xCoord>"))(find_lidc_cases(lidc)[1])
    code = main(["--profile", "smoke", "--lidc", str(lidc), "--brats", str(brats), "--out", str(tmp_path / "out"),
                 "--strict", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    assert f"skipped LIDC-IDRI-0002: {named}: reader 367265244, nodule Nodule 001" in out
    assert "data check, brats" in out and "3 case(s) loaded, 0 skipped" in out and "--strict: 1 case(s)" in err
    assert not list((tmp_path / "out").rglob("metrics.json")) and not list((tmp_path / "out").rglob("*.ipynb"))


@pytest.mark.parametrize("what", ["lidc", "brats"])
def test_broken_link_to_a_case_is_reported(what, lidc_base, brats_base, tmp_path, capsys):
    root = tmp_path / "data"; shutil.copytree(lidc_base if what == "lidc" else brats_base, root)
    dangling = root / "moved-away"; dangling.symlink_to(tmp_path / "unmounted-disk" / "case", target_is_directory=True)
    code, out, err = _run(capsys, what, root, "--json")
    rows = json.loads(out)
    assert code == 1 and "Traceback" not in out + err and sum(r["ok"] for r in rows) == 3
    assert [r["problems"] for r in rows if not r["ok"]] == [[f"{dangling}: a broken link, skipped"]]
