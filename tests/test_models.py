"""Models (issue 5): architectures against hand-counted parameters and FLOPs, paper Eq. (1) against
Keras Conv2D, save/load, and one training step on every installed Keras backend."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from medcnn_nb.basics import conv2d_eq1, max_pool2d, receptive_field
from medcnn_nb.models import (CLASSIFIER_ARCHS, SEGMENTATION_ARCHS, build_model, describe, forward_flops)


def plain_unet_params(c_in, out, bf, depth):
    "Hand count: conv3x3 without bias + BN (4 numbers per channel) twice per block."
    block = lambda ci, w: 9 * ci * w + 4 * w + 9 * w * w + 4 * w
    total, ci = 0, c_in
    for level in range(depth):
        w = bf * 2**level; total += block(ci, w); ci = w
    total += block(ci, bf * 2**depth)
    for level in reversed(range(depth)):
        w = bf * 2**level
        total += 4 * (2 * w) * w + w  # 2x2 transposed conv with bias, from 2w channels
        total += block(2 * w, w)      # after concatenating the skip: 2w channels in
    return total + bf * out + out     # 1x1 sigmoid head with bias


def plain_unet_flops(h, c_in, out, bf, depth):
    "Hand count of forward FLOPs, 2 per multiply-accumulate."
    conv = lambda size, ci, co, k=3: 2 * size * size * k * k * ci * co
    total, ci, size = 0, c_in, h
    for level in range(depth):
        w = bf * 2**level; total += conv(size, ci, w) + conv(size, w, w); ci = w; size //= 2
    w = bf * 2**depth; total += conv(size, ci, w) + conv(size, w, w)
    for level in reversed(range(depth)):
        w = bf * 2**level
        total += conv(size, 2 * w, w, k=2); size *= 2  # transposed conv: per input pixel
        total += conv(size, 2 * w, w) + conv(size, w, w)
    return total + conv(size, bf, out, k=1)


@pytest.mark.parametrize("c_in,out,bf,depth", [(1, 1, 16, 3), (4, 3, 8, 2), (1, 1, 32, 4)])
def test_plain_unet_matches_hand_count(c_in, out, bf, depth):
    model = build_model("unet", (64, 64, c_in), out_channels=out, base_filters=bf, depth=depth)
    assert model.count_params() == plain_unet_params(c_in, out, bf, depth)
    assert forward_flops(model) == plain_unet_flops(64, c_in, out, bf, depth)


@pytest.mark.parametrize("bf,depth", [(16, 3), (32, 4)])
def test_unets_have_comparable_size(bf, depth):
    counts = {a: build_model(a, (64, 64, 1), base_filters=bf, depth=depth).count_params() for a in SEGMENTATION_ARCHS}
    for arch in ("resunet", "denseunet"):
        assert abs(counts[arch] / counts["unet"] - 1) < 0.10, counts


def test_output_contract():
    x = np.random.default_rng(0).random((2, 32, 48, 4), dtype=np.float32)
    for arch in SEGMENTATION_ARCHS:
        y = keras.ops.convert_to_numpy(build_model(arch, (32, 48, 4), out_channels=3, base_filters=8, depth=2)(x))
        assert y.shape == (2, 32, 48, 3) and ((y > 0) & (y < 1)).all()
    for arch in CLASSIFIER_ARCHS:
        y = keras.ops.convert_to_numpy(build_model(arch, (32, 48, 4), out_channels=2, base_filters=8, depth=2)(x))
        assert y.shape == (2, 2) and ((y > 0) & (y < 1)).all()


def test_blocks_have_their_structure():
    res = build_model("resunet", (32, 32, 1), base_filters=8, depth=2)
    adds = [l for l in res.layers if isinstance(l, keras.layers.Add)]
    assert len(adds) == 2 * 2 + 1  # one per encoder, decoder and bottleneck block
    dense = build_model("denseunet", (32, 32, 1), base_filters=16, depth=2)
    # the transition of the first encoder block sees the input channel plus 4 layers of growth 16 // 3 = 5
    assert dense.get_layer("enc1_tr_conv").input.shape[-1] == 1 + 4 * 5
    plain = build_model("unet", (32, 32, 1), base_filters=8, depth=2)
    assert not any(isinstance(l, keras.layers.Add) for l in plain.layers)


def test_describe_follows_the_model():
    model = build_model("denseunet", (32, 32, 1), base_filters=8, depth=2)
    stages = describe(model)
    assert [s["role"] for s in stages] == ["input", "encoder", "downsample", "encoder", "downsample", "bottleneck",
                                           "upsample", "decoder", "upsample", "decoder", "head"]
    assert sum(s["params"] for s in stages) == model.count_params()
    assert sum(s["layers"] for s in stages) == len(model.layers)
    assert stages[5]["output_shape"] == (8, 8, 32)
    assert [s["role"] for s in describe("cnn", (32, 32, 1), depth=1)] == ["input", "encoder", "downsample", "bottleneck", "head"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown arch"): build_model("vnet", (32, 32, 1))
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 8"): build_model("unet", (36, 36, 1), depth=3)
    with pytest.raises(ValueError, match=r"\(H, W, C\)"): build_model("unet", (32, 32))


def test_save_and_load_roundtrip(tmp_path):
    x = np.random.default_rng(1).random((2, 32, 32, 1), dtype=np.float32)
    for arch in ("resunet", "densenet"):
        model = build_model(arch, (32, 32, 1), base_filters=8, depth=2)
        model.save(tmp_path / f"{arch}.keras")
        again = keras.models.load_model(tmp_path / f"{arch}.keras")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(again(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)


# --- paper Eq. (1) ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,c_in,k,stride,padding", [((3, 3), 1, 4, 1, "valid"), ((5, 3), 3, 2, 1, "same"),
                                                          ((3, 3), 4, 8, 2, "same"), ((4, 4), 2, 3, 3, "valid")])
def test_eq1_equals_keras_conv2d(kernel, c_in, k, stride, padding):
    rng = np.random.default_rng(sum(kernel) + c_in + k)
    X = rng.normal(size=(3, 19, 14, c_in)).astype("float32")
    W, b = rng.normal(size=kernel + (c_in, k)).astype("float32"), rng.normal(size=k).astype("float32")
    layer = keras.layers.Conv2D(k, kernel, strides=stride, padding=padding, activation="relu")
    layer.build(X.shape); layer.set_weights([W, b])
    np.testing.assert_allclose(conv2d_eq1(X, W, b, stride=stride, padding=padding),
                               keras.ops.convert_to_numpy(layer(X)), atol=1e-4)


def test_eq1_by_hand_and_single_channel_form():
    X = np.arange(16, dtype=float).reshape(4, 4)
    W = np.zeros((2, 2, 2)); W[0, 0, 0] = 1; W[1, 1, 1] = -1  # kernel 0 picks X[i, j]; kernel 1 -X[i+1, j+1]
    Y = conv2d_eq1(X, W, np.array([0.5, 20.0]), f=None)
    np.testing.assert_array_equal(Y[..., 0], X[:3, :3] + 0.5)
    np.testing.assert_array_equal(Y[..., 1], 20.0 - X[1:, 1:])
    with pytest.raises(ValueError, match="b must have shape"): conv2d_eq1(X, W, np.zeros(3))
    with pytest.raises(ValueError, match="padding must be"): conv2d_eq1(X, W, np.zeros(2), padding="full")


def test_pooling_and_receptive_field():
    X = np.random.default_rng(2).normal(size=(2, 10, 7, 3)).astype("float32")
    np.testing.assert_allclose(max_pool2d(X, 3, 2), keras.ops.convert_to_numpy(keras.layers.MaxPooling2D(3, 2)(X)))
    assert receptive_field([(3, 1), (3, 1)]) == (5, 1)
    assert receptive_field([(3, 1), (2, 2), (3, 1)]) == (1 + 2 + 1 + 2 * 2, 2)


# --- one training step per backend ---------------------------------------------------------------------
TRAIN_STEP = textwrap.dedent("""
    import json, numpy as np, keras
    from keras import ops
    from medcnn_nb.models import build_model
    try:
        from medcnn_nb.losses import DiceLoss
        loss, loss_name = DiceLoss(), "medcnn_nb.losses.DiceLoss"
    except ImportError:  # the losses chapter is not there: the paper's Dice loss inline, keras.ops only
        def loss(y_true, y_pred):
            inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
            return 1 - (2 * inter + 1) / (ops.sum(y_true**2, axis=(1, 2, 3)) + ops.sum(y_pred**2, axis=(1, 2, 3)) + 1)
        loss_name = "inline dice"
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((4, 32, 32, 1), dtype=np.float32); y = (x > 0.8).astype("float32")
    model = build_model("resunet", (32, 32, 1), base_filters=8, depth=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    before = [np.array(w) for w in model.get_weights()]
    value = float(model.train_on_batch(x, y))
    changed = sum(not np.array_equal(a, np.array(b)) for a, b in zip(before, model.get_weights()))
    print(json.dumps({"backend": keras.backend.backend(), "loss": value, "changed": changed,
                      "n_weights": len(before), "loss_name": loss_name}))
""")

BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_one_train_step_on_each_backend(backend):
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        pytest.skip(f"Keras backend {backend!r}: the {BACKENDS[backend]} package is not installed in this environment")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run([sys.executable, "-c", TRAIN_STEP], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    assert np.isfinite(result["loss"]) and 0 < result["loss"] <= 1  # a Dice loss lies in [0, 1]
    assert result["changed"] > 0  # the step updated weights (moving BN statistics at least)
