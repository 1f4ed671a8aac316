"""Transfer learning (issue 5, paper §4): keras.applications encoders in a U-Net, weights from the Keras
cache or a local file (never a download), freezing and fine-tuning."""
import warnings

import h5py
import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras.src.utils import file_utils

from medcnn_nb.data.core import DataError
from medcnn_nb.transfer import (BACKBONES, build_transfer_unet, imagenet_weights_file, save_encoder_weights,
                                unfreeze_top)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    "An empty Keras cache, and a get_file that fails the test if anything tries to download."
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    def no_download(*args, **kwargs): raise AssertionError(f"a download was attempted: {args}")
    monkeypatch.setattr(file_utils, "get_file", no_download)
    return tmp_path / "keras_home" / "models"


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_imagenet_offline_fails_with_the_file_to_download(backbone, offline_cache):
    with pytest.raises(FileNotFoundError) as err:
        build_transfer_unet(backbone, (96, 96, 1), weights="imagenet")
    message = str(err.value)
    assert BACKBONES[backbone]["file"] in message and str(offline_cache) in message
    assert "https://storage.googleapis.com/tensorflow/keras-applications/" in message


def test_imagenet_file_in_the_cache_is_loaded_without_download(offline_cache):
    # a legacy (Keras 2 style) .h5 file with the official name, as a real download would be
    keras.utils.set_random_seed(3)
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    offline_cache.mkdir(parents=True)
    from keras.src.legacy.saving import legacy_h5_format
    with h5py.File(offline_cache / BACKBONES["vgg16"]["file"], "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    assert imagenet_weights_file("vgg16") == offline_cache / BACKBONES["vgg16"]["file"]
    model = build_transfer_unet("vgg16", (64, 64, 1), weights="imagenet")
    encoder = model.get_layer("encoder")
    for name in ("block1_conv1", "block5_conv3"):
        for a, b in zip(encoder.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backbone,shape", [("vgg16", (32, 48, 1)), ("resnet50", (64, 40, 1)),
                                            ("inceptionv3", (75, 75, 1)), ("inceptionv3", (80, 96, 4)),
                                            ("densenet121", (64, 64, 4))])
def test_output_has_the_input_size(backbone, shape):
    model = build_transfer_unet(backbone, shape, out_channels=3)
    x = np.random.default_rng(0).random((1,) + shape, dtype=np.float32)
    y = keras.ops.convert_to_numpy(model(x))
    assert y.shape == (1,) + shape[:2] + (3,) and ((y > 0) & (y < 1)).all()
    assert ("adapter_repeat" if shape[-1] == 1 else "adapter_conv") in [l.name for l in model.layers]


def test_grey_is_repeated_into_three_channels():
    model = build_transfer_unet("inceptionv3", (75, 75, 1))
    probe = keras.Model(model.input, model.get_layer("scaling").output)
    x = np.random.default_rng(1).random((1, 75, 75, 1), dtype=np.float32)
    out = keras.ops.convert_to_numpy(probe(x))
    np.testing.assert_allclose(out, np.repeat(2 * x - 1, 3, axis=-1), atol=1e-6)  # Inception: [0, 1] -> [-1, 1]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone"): build_transfer_unet("alexnet", (64, 64, 1))
    with pytest.raises(ValueError, match="at least 75x75"): build_transfer_unet("inceptionv3", (64, 64, 1))
    with pytest.raises(ValueError, match="needs one channel"): build_transfer_unet("vgg16", (64, 64, 4), adapter="repeat")
    with pytest.raises(DataError, match="not found"): build_transfer_unet("vgg16", (64, 64, 1), weights=tmp_path / "x.h5")
    with pytest.raises(ValueError, match=r"\.weights\.h5"): save_encoder_weights(build_transfer_unet("vgg16", (32, 32, 1)), tmp_path / "a.h5")


@pytest.mark.parametrize("backbone", ["inceptionv3", "densenet121"])
def test_encoder_weights_move_between_datasets(backbone, tmp_path):
    keras.utils.set_random_seed(5)
    source = build_transfer_unet(backbone, (96, 96, 4), out_channels=3)  # BraTS-like: 4 modalities, 3 regions
    path = save_encoder_weights(source, tmp_path / "enc.weights.h5")
    # building other models first shifts Keras' automatic layer names (InceptionV3's stem has such names)
    build_transfer_unet(backbone, (96, 96, 1))
    keras.utils.set_random_seed(6)
    target = build_transfer_unet(backbone, (128, 128, 1), out_channels=1, weights=path)  # LIDC-like, another size
    src, tgt = source.get_layer("encoder").get_weights(), target.get_layer("encoder").get_weights()
    assert len(src) == len(tgt) > 100
    for a, b in zip(src, tgt): np.testing.assert_array_equal(a, b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match="cannot load these weights"):
            build_transfer_unet("vgg16", (96, 96, 1), weights=path)
    # the error says it once: Keras's warnings of the failed load (one per nested container, "Affected layers will
    # retain their freshly-initialized weights") are not passed on
    assert not [w for w in caught if "freshly-initialized" in str(w.message)]


def test_unfreeze_top_counts_weighted_layers_and_keeps_bn_frozen():
    model = build_transfer_unet("resnet50", (32, 32, 1))
    encoder = model.get_layer("encoder")
    assert not encoder.trainable and all(not w.trainable for w in encoder.weights)
    names = unfreeze_top(model, 4)
    assert names == ["conv5_block2_3_conv", "conv5_block3_1_conv", "conv5_block3_2_conv", "conv5_block3_3_conv"]
    trainable = {l.name for l in encoder.layers if l.trainable and l.weights}
    assert trainable == set(names)
    assert not any(l.trainable for l in encoder.layers if isinstance(l, keras.layers.BatchNormalization))
    assert unfreeze_top(model, 0) == [] and not any(w.trainable for w in encoder.weights)


def test_frozen_then_fine_tuned_training_moves_only_what_it_should():
    rng = np.random.default_rng(2)
    x = rng.random((4, 32, 32, 1), dtype=np.float32); y = (x > 0.7).astype("float32")
    model = build_transfer_unet("vgg16", (32, 32, 1), decoder_filters=(16, 16, 8, 8, 8))
    encoder = model.get_layer("encoder")
    start = {l.name: [w.copy() for w in l.get_weights()] for l in encoder.layers}
    moved = lambda: {l.name for l in encoder.layers if any(not np.array_equal(a, b) for a, b in zip(start[l.name], l.get_weights()))}
    decoder_start = model.get_layer("dec1_a_conv").get_weights()[0].copy()
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.train_on_batch(x, y)
    assert moved() == set()  # frozen encoder
    assert not np.array_equal(decoder_start, model.get_layer("dec1_a_conv").get_weights()[0])
    unfreeze_top(model, 2)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.train_on_batch(x, y)
    assert moved() == {"block5_conv2", "block5_conv3"}
