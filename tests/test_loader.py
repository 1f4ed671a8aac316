"The slice loader on a real cache: coverage, determinism, alignment, Keras' own parallel iteration."
import pickle

import numpy as np
import pytest

from medcnn_nb.config import get_config
from medcnn_nb.loader import SliceLoader
from medcnn_nb.datasets import load_slices
from medcnn_nb.preprocess import training_indices


@pytest.fixture(scope="module")
def sliceset(tmp_path_factory):
    from medcnn_nb.data.phantom_lidc import write_lidc_phantoms
    root = tmp_path_factory.mktemp("loader")
    write_lidc_phantoms(root / "data", patients=3, seed=2, size=64, slices=16)
    return load_slices("lidc", root / "data", get_config("smoke"), cache_dir=root / "cache", progress=False)


def epoch_rows(loader, sl):
    "Which cached slice each delivered image is (unaugmented loaders deliver exact copies)."
    flat = np.asarray(sl.images).reshape(len(sl), -1)
    rows = []
    for b in range(len(loader)):
        x, y = loader[b]
        for im, m in zip(x, y):
            r = int(np.argmin(np.abs(flat - im.reshape(-1)).sum(1)))
            np.testing.assert_array_equal(im, sl.images[r]); np.testing.assert_array_equal(m, sl.masks[r])
            rows.append(r)
    return rows


def test_epochs_cover_indices_and_reshuffle(sliceset):
    idx = training_indices(sliceset, sliceset.cases[:2], negatives_ratio=1.0, seed=0)
    ld = SliceLoader(sliceset, idx, batch_size=4, seed=5)
    e0 = epoch_rows(ld, sliceset)
    assert sorted(e0) == sorted(idx.tolist())
    ld.on_epoch_end()
    e1 = epoch_rows(ld, sliceset)
    assert sorted(e1) == sorted(idx.tolist()) and e1 != e0
    assert epoch_rows(SliceLoader(sliceset, idx, batch_size=4, seed=5), sliceset) == e0
    x, y = ld[0]
    assert x.dtype == np.float32 and y.dtype == np.float32 and x.shape == (4, 64, 64, 1)


def test_augmented_batches_aligned_and_reproducible(sliceset):
    idx = np.nonzero(sliceset.positive)[0]
    a = SliceLoader(sliceset, idx, batch_size=6, augment=True, seed=1, augment_kwargs=dict(max_rotation=30))
    b = SliceLoader(sliceset, idx, batch_size=6, augment=True, seed=1, augment_kwargs=dict(max_rotation=30))
    last = len(a) - 1
    np.testing.assert_array_equal(a[last][0], b[last][0])   # order of requests does not matter
    x, y = a[0]
    np.testing.assert_array_equal(x, b[0][0]); np.testing.assert_array_equal(y, b[0][1])
    plain = SliceLoader(sliceset, idx, batch_size=6, seed=1)[0]
    assert not np.array_equal(x, plain[0])
    assert set(np.unique(y)) <= {0.0, 1.0}
    # every augmented mask still sits on the same tissue: its area changes only by the random zoom
    np.testing.assert_allclose(y.sum((1, 2, 3)), plain[1].sum((1, 2, 3)), rtol=0.35, atol=3)


def test_keras_parallel_iteration_gives_the_same_batches(sliceset):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    idx = np.arange(len(sliceset))
    ref = [SliceLoader(sliceset, idx, 8, augment=True, seed=3)[b] for b in range(len(idx) // 8 + (len(idx) % 8 > 0))]
    threaded = SliceLoader(sliceset, idx, 8, augment=True, seed=3, workers=2)
    got = list(PyDatasetAdapter(threaded, shuffle=False).get_numpy_iterator())
    assert len(got) == len(ref)
    for (gx, gy), (rx, ry) in zip(got, ref):
        np.testing.assert_array_equal(gx, rx); np.testing.assert_array_equal(gy, ry)


def test_pickles_as_a_cache_reference(sliceset):
    blob = pickle.dumps(SliceLoader(sliceset, np.arange(10), 4, augment=True, seed=0))
    assert len(blob) < np.asarray(sliceset.images).nbytes / 4
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy[1][0], SliceLoader(sliceset, np.arange(10), 4, augment=True, seed=0)[1][0])
