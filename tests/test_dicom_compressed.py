"""Compressed DICOM (issue 10): the pixel-data plugins that ship as runtime requirements (pylibjpeg with its
libjpeg and openjpeg plugins) decode JPEG baseline, JPEG extended, JPEG lossless, JPEG-LS, JPEG 2000 and RLE.

Oracles: pydicom's own test files, which ship inside its wheel (no download), checked against the lossless
reference encodings of the same images; and real CT slices (tests/data/real) that this test compresses itself
(RLE, JPEG 2000 lossless, JPEG-LS lossless and near-lossless) and reads back through the project's reader,
compared with the uncompressed slices: lossless must be exact, JPEG-LS near-lossless within its NEAR bound.
The JPEG-LS encoder (pyjpegls, CharLS) is a test requirement only; decoding uses the runtime plugins alone.
"""
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder
from pydicom.uid import (JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless,
                         JPEGLSNearLossless, RLELossless, JPEG2000)

from medcnn_nb.data.lidc import read_series

RUNTIME = "pylibjpeg"  # the plugin of the runtime requirements (pydicom decodes RLE natively with NumPy)


@pytest.fixture(scope="module")
def testdata():
    "pydicom's bundled test files, fetched with every network connection refused: they are in the wheel."
    real_connect = socket.socket.connect
    def refuse(*a, **k): raise OSError("network disabled by the test")
    socket.socket.connect = refuse
    try:
        names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm",
                 "SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_dcmtk_+eb+cr.dcm", "JPGExtended.dcm",
                 "JPEG2000.dcm", "693_J2KI.dcm"]
        files = {n: get_testdata_file(n, download=False) for n in names}
    finally:
        socket.socket.connect = real_connect
    bundled = Path(pydicom.__file__).parent / "data" / "test_files"
    assert all(f is not None and Path(f).parent == bundled for f in files.values()), files
    return {n: pydicom.dcmread(f) for n, f in files.items()}


def _decode(ds, plugin=RUNTIME):
    "Decode `ds` with `plugin` only (pydicom would otherwise take any installed one)."
    ts = ds.file_meta.TransferSyntaxUID
    if ts == RLELossless: plugin = "pydicom"
    arr, _ = get_decoder(ts).as_array(ds, decoding_plugin=plugin)
    return arr


def test_runtime_plugins_cover_every_compressed_syntax():
    for ts in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
               JPEG2000Lossless, JPEG2000):
        assert RUNTIME in get_decoder(ts).available_plugins, ts.name


@pytest.mark.parametrize("name,syntax", [("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless),
                                         ("MR_small_jp2klossless.dcm", JPEG2000Lossless),
                                         ("MR_small_RLE.dcm", RLELossless)])
def test_lossless_mr_equals_the_uncompressed_file(testdata, name, syntax):
    ds = testdata[name]
    assert ds.file_meta.TransferSyntaxUID == syntax
    reference = testdata["MR_small.dcm"].pixel_array  # Explicit VR Little Endian: no codec involved
    got = _decode(ds)
    assert got.dtype == reference.dtype == np.int16 and got.shape == (64, 64)
    np.testing.assert_array_equal(got, reference)


def test_jpeg_lossless_and_baseline_against_rle(testdata):
    reference = _decode(testdata["SC_rgb_rle.dcm"])            # RLE: pydicom's own NumPy decoder
    lossless = testdata["SC_rgb_jpeg_gdcm.dcm"]
    assert lossless.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    np.testing.assert_array_equal(_decode(lossless), reference)
    baseline = testdata["SC_rgb_dcmtk_+eb+cr.dcm"]
    assert baseline.file_meta.TransferSyntaxUID == JPEGBaseline8Bit and baseline.PhotometricInterpretation == "RGB"
    error = np.abs(_decode(baseline).astype(int) - reference)
    assert error.max() <= 2 and error.mean() < 0.5              # lossy, but the same picture


def test_jpeg_extended_12bit_and_jpeg2000_show_the_same_scan(testdata):
    ext, j2k = testdata["JPGExtended.dcm"], testdata["JPEG2000.dcm"]
    assert ext.file_meta.TransferSyntaxUID == JPEGExtended12Bit and ext.BitsStored == 12
    a, b = _decode(ext).astype(float), _decode(j2k).astype(float)
    assert a.shape == b.shape == (1024, 256) and 0 <= a.min() and a.max() < 2 ** 12
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_jpeg2000_lossy_ct_decodes_to_hounsfield_units(testdata):
    ds = testdata["693_J2KI.dcm"]
    assert ds.file_meta.TransferSyntaxUID == JPEG2000 and ds.Modality == "CT"
    hu = _decode(ds) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu.shape == (512, 512)
    # a CT slice: air outside the body around -1000 HU, soft tissue around 0-100 HU
    assert np.percentile(hu, 5) < -900 and -200 < np.median(hu[200:300, 200:300]) < 200


# ---------------------------------------------------------------- real CT, compressed by the test
ENCODINGS = {"rle": (RLELossless, {}), "j2k": (JPEG2000Lossless, {}), "jpegls": (JPEGLSLossless, {}),
             "jpegls_near2": (JPEGLSNearLossless, {"jls_error": 2})}


@pytest.fixture(scope="module")
def compressed_series(real_data, tmp_path_factory):
    "The 5-slice real CT series written again under each compressed transfer syntax."
    import jpeg_ls  # noqa: F401  pyjpegls, a test requirement, encodes JPEG-LS
    src = real_data / "ct-series-unsorted"
    out = {}
    for label, (syntax, kw) in ENCODINGS.items():
        folder = tmp_path_factory.mktemp(label)
        for f in sorted(src.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            ds.compress(syntax, **kw)
            ds.save_as(folder / f.name, enforce_file_format=True)
        out[label] = folder
    return src, out


READ = """import sys, json, numpy as np
sys.modules["jpeg_ls"] = None  # no pyjpegls: only the runtime requirements decode
from medcnn_nb.data.lidc import read_series
import pydicom
s = read_series(sys.argv[1])
np.save(sys.argv[2], s.hu)
print(json.dumps([pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID for f in s.files]))
"""


@pytest.mark.parametrize("label", list(ENCODINGS))
def test_project_reader_decodes_compressed_real_ct(compressed_series, label, tmp_path):
    src, folders = compressed_series
    plain = read_series(src)
    syntax, kw = ENCODINGS[label]
    run = subprocess.run([sys.executable, "-c", READ, str(folders[label]), str(tmp_path / "hu.npy")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert set(json.loads(run.stdout)) == {syntax}
    hu = np.load(tmp_path / "hu.npy")
    assert hu.shape == plain.hu.shape == (5, 512, 512)
    if "near" in label:  # JPEG-LS near-lossless: every stored value within NEAR of the original, and not all equal
        slope = float(pydicom.dcmread(plain.files[0]).RescaleSlope)
        error = np.abs(hu - plain.hu)
        assert error.max() <= kw["jls_error"] * slope and error.max() > 0
    else:
        np.testing.assert_array_equal(hu, plain.hu)
