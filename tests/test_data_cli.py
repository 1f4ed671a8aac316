"""The data command lines: medcnn-phantom and medcnn-data, called as functions and as installed scripts."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medcnn_nb.datasets import data_main, phantom_main
from medcnn_nb.data.lidc import find_lidc_cases, parse_lidc_xml


def _run(capsys, main, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def lidc_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "lidc"
    assert phantom_main(["lidc", "--out", str(out), "--patients", "3", "--seed", "4", "--size", "64", "--slices", "16"]) == 0
    return out


def test_phantom_lidc_writes_tcia_layout(lidc_dir):
    patients = sorted(p.name for p in lidc_dir.iterdir())
    assert patients == ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"]
    for series in find_lidc_cases(lidc_dir):
        assert len(series.relative_to(lidc_dir).parts) == 3          # patient/study/series
        assert len(list(series.glob("*.dcm"))) == 16 and len(list(series.glob("*.xml"))) == 1


def test_data_lidc_text_and_json(lidc_dir, capsys):
    code, out, _ = _run(capsys, data_main, "lidc", lidc_dir)
    assert code == 0 and "3 case(s), 0 failed" in out and "LIDC-IDRI-0002: 16 slices" in out
    code, out, _ = _run(capsys, data_main, "lidc", lidc_dir, "--json")
    rows = json.loads(out)
    assert code == 0 and [r["case_id"] for r in rows] == ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0003"]
    for r in rows:
        assert set(r) == {"case_id", "path", "ok", "slices", "spacing", "nodules", "consensus_nodules", "problems", "assumptions"}
        xml = parse_lidc_xml(next(Path(r["path"]).glob("*.xml")))
        assert r["nodules"] == sum(len(rd.nodules) for rd in xml.readers)
        assert r["consensus_nodules"] <= r["nodules"]


def test_data_lidc_broken_case_exit_1(lidc_dir, tmp_path, capsys):
    root = tmp_path / "copy"; shutil.copytree(lidc_dir, root)
    victim = sorted(find_lidc_cases(root)[2].glob("*.dcm"))[5]
    victim.write_bytes(victim.read_bytes()[:700])
    code, out, _ = _run(capsys, data_main, "lidc", root, "--json")
    rows = json.loads(out)
    assert code == 1 and [r["ok"] for r in rows] == [True, True, False]
    assert victim.name in rows[2]["problems"][0]
    (tmp_path / "empty").mkdir()
    code, out, err = _run(capsys, data_main, "lidc", tmp_path / "empty")
    assert code == 1 and "empty" in err and "no DICOM series found" in err


def test_lidc_xml_json_on_real_files(real_data, tmp_path, capsys):
    files = sorted((real_data / "lidc" / "xml").glob("*.xml")) + [real_data / "lidc" / "LIDC-IDRI-0001" / "069.xml"]
    for f in files:
        code, out, _ = _run(capsys, data_main, "lidc-xml", f, "--json")
        doc, text = json.loads(out), f.read_text()
        assert code == 0 and set(doc) == {"series_uid", "kind", "readers", "problems"}
        if "<IdriReadMessage" in text:
            assert doc["kind"] == "xray" and doc["readers"] == []
            continue
        assert doc["kind"] == "ct" and doc["series_uid"] in text
        assert len(doc["readers"]) == text.count("<readingSession>")
        assert sum(len(r["nodules"]) + r["small_nodules"] for r in doc["readers"]) == text.count("<unblindedReadNodule>")
        assert sum(r["non_nodules"] for r in doc["readers"]) == text.count("<nonNodule>")
        assert all(n["characteristics"] is True and isinstance(n["malignancy"], int) for r in doc["readers"] for n in r["nodules"])
        assert sum(n["rois"] for r in doc["readers"] for n in r["nodules"]) + sum(r["small_nodules"] for r in doc["readers"]) \
            <= text.count("<roi>")
    not_xml = tmp_path / "subject_id.txt"
    not_xml.write_text("Brats18_CBICA_AOO_1\n")  # a text file that is not XML
    code, out, err = _run(capsys, data_main, "lidc-xml", not_xml)
    assert code == 1 and "subject_id.txt" in err


def test_lidc_xml_counts_069(real_data, capsys):
    code, out, _ = _run(capsys, data_main, "lidc-xml", real_data / "lidc" / "LIDC-IDRI-0001" / "069.xml", "--json")
    doc = json.loads(out)
    assert doc["series_uid"] == "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
    assert sum(n["rois"] for r in doc["readers"] for n in r["nodules"]) + sum(r["small_nodules"] for r in doc["readers"]) == 41


def test_brats_subcommands(tmp_path, capsys):
    pytest.importorskip("medcnn_nb.data.phantom_brats")
    assert phantom_main(["brats", "--out", str(tmp_path / "b"), "--patients", "2", "--seed", "1", "--year", "2020",
                         "--size", "32", "--slices", "16"]) == 0
    capsys.readouterr()
    code, out, _ = _run(capsys, data_main, "brats", tmp_path / "b", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 2 and all(r["ok"] and r["year"] == 2020 and r["shape"] == [32, 32, 16] for r in rows)
    assert all(set(r["labels"]) <= {0, 1, 2, 3} for r in rows)


def test_brats_real_samples(real_brats, capsys):
    pytest.importorskip("medcnn_nb.data.brats")
    code, out, _ = _run(capsys, data_main, "brats", real_brats, "--json")
    rows = {r["case_id"]: r for r in json.loads(out)}
    assert code == 1
    gli = rows["BraTS-GLI-00001-000"]
    assert gli["ok"] and gli["year"] == 2023 and gli["shape"] == [240, 240, 155] and gli["labels"] is None
    assert sorted(gli["modalities"]) == sorted(["t1", "t1ce", "t2", "flair"])
    assert not rows["Brats18_CBICA_AOO_1"]["ok"] and "not a BraTS case" in rows["Brats18_CBICA_AOO_1"]["problems"][0]


def test_installed_console_scripts(lidc_dir):
    exe = Path(sys.executable).parent / "medcnn-data"
    if not exe.exists(): pytest.skip("console scripts not installed (pip install -e .)")
    r = subprocess.run([str(exe), "lidc", str(lidc_dir)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and re.search(r"3 case\(s\), 0 failed", r.stdout)
    r = subprocess.run([str(Path(sys.executable).parent / "medcnn-phantom"), "lidc"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--out" in r.stderr  # argparse names the missing options
