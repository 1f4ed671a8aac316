"Losses (nbs/03b_losses.ipynb) against NumPy hand computations and Keras' own losses."
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from medcnn_nb.losses import DiceBCELoss, DiceFocalLoss, DiceLoss, FocalLoss, LOSSES, get_loss, soft_dice

RNG = np.random.default_rng(0)


def np_dice_loss(g, p, squared=True, smooth=1.0, per_sample=True):
    "Plain NumPy version of the paper's formula: one Dice per image and channel, channel mean, batch mean."
    g, p = g.astype(np.float64), p.astype(np.float64)
    if not per_sample: g, p = g.reshape(1, -1, g.shape[-1]), p.reshape(1, -1, p.shape[-1])
    out = []
    for gi, pi in zip(g, p):
        per_channel = []
        for c in range(g.shape[-1]):
            gc, pc = gi[..., c].ravel(), pi[..., c].ravel()
            den = (pc**2).sum() + (gc**2).sum() if squared else pc.sum() + gc.sum()
            per_channel.append(1 - (2 * (pc * gc).sum() + smooth) / (den + smooth))
        out.append(np.mean(per_channel))
    return np.mean(out)


def np_focal(g, p, alpha, gamma):
    "Lin et al. 2017 for 0/1 labels: -alpha_t (1 - p_t)^gamma log(p_t), mean over everything."
    p_t = np.where(g == 1, p, 1 - p)
    a_t = np.ones_like(p) if alpha is None else np.where(g == 1, alpha, 1 - alpha)
    return np.mean(-a_t * (1 - p_t) ** gamma * np.log(p_t))


def batch(shape=(3, 6, 5, 2), density=0.3):
    g = (RNG.random(shape) < density).astype("float32")
    p = RNG.uniform(0.02, 0.98, shape).astype("float32")
    return g, p


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("per_sample", [True, False])
def test_dice_loss_matches_numpy_formula(squared, smooth, per_sample):
    g, p = batch()
    got = float(DiceLoss(squared=squared, smooth=smooth, per_sample=per_sample)(g, p))
    np.testing.assert_allclose(got, np_dice_loss(g, p, squared, smooth, per_sample), rtol=1e-5)


def test_dice_loss_hand_computed_tiny_case():
    # p = [.9 .2; .1 .8], g = [1 0; 0 1]: sum pg = 1.7, sum p^2 = 1.5, sum g^2 = 2
    g = np.array([1, 0, 0, 1], "float32").reshape(1, 2, 2, 1)
    p = np.array([.9, .2, .1, .8], "float32").reshape(1, 2, 2, 1)
    np.testing.assert_allclose(float(DiceLoss(smooth=0)(g, p)), 1 - 3.4 / 3.5, rtol=1e-5)
    np.testing.assert_allclose(float(DiceLoss(squared=False, smooth=0)(g, p)), 1 - 3.4 / 4.0, rtol=1e-5)


def test_dice_loss_perfect_disjoint_and_empty():
    g = np.zeros((2, 8, 8, 3), "float32"); g[0, 1:4, 2:6] = 1; g[1, 5:, :3] = 1
    for squared in (True, False):
        assert float(DiceLoss(squared=squared, smooth=0)(g, g)) == pytest.approx(0.0, abs=1e-6)
        assert float(DiceLoss(squared=squared, smooth=0)(g, 1 - g)) == pytest.approx(1.0, abs=1e-6)
    empty = np.zeros((2, 8, 8, 1), "float32")
    assert float(DiceLoss(smooth=1.0)(empty, empty)) == pytest.approx(0.0, abs=1e-7)
    assert float(DiceLoss(smooth=0.0)(empty, empty)) == pytest.approx(0.0, abs=1e-7)  # defined as Dice 1


def test_dice_loss_returns_one_value_per_image():
    g, p = batch((4, 5, 5, 1))
    per_image = keras.ops.convert_to_numpy(DiceLoss(reduction=None)(g, p))
    assert per_image.shape == (4,)
    np.testing.assert_allclose(per_image, [np_dice_loss(g[i:i + 1], p[i:i + 1]) for i in range(4)], rtol=1e-5)


def test_soft_dice_rejects_unbatched_input():
    with pytest.raises(ValueError, match=r"\(N, \.\.\., C\)"):
        soft_dice(np.ones(4, "float32"), np.ones(4, "float32"))


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.6, 1.0), (None, 3.0), (0.25, 0.0)])
def test_binary_focal_matches_lin_formula_and_keras(alpha, gamma):
    g, p = batch()
    got = float(FocalLoss(alpha=alpha, gamma=gamma)(g, p))
    np.testing.assert_allclose(got, np_focal(g, p, alpha, gamma), rtol=1e-5)
    ref = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=alpha is not None,
                                                alpha=0.25 if alpha is None else alpha, gamma=gamma)
    np.testing.assert_allclose(got, float(ref(g, p)), rtol=1e-5)


def test_focal_gamma_zero_is_alpha_weighted_bce():
    g, p = batch()
    bce = -(g * np.log(p) + (1 - g) * np.log(1 - p))
    weighted = np.mean(np.where(g == 1, 0.3, 0.7) * bce)
    np.testing.assert_allclose(float(FocalLoss(alpha=0.3, gamma=0)(g, p)), weighted, rtol=1e-5)
    np.testing.assert_allclose(float(FocalLoss(alpha=None, gamma=0)(g, p)),
                               float(keras.losses.BinaryCrossentropy()(g, p)), rtol=1e-5)


def test_focal_from_logits_equals_probabilities():
    g, p = batch()
    logits = np.log(p / (1 - p))
    np.testing.assert_allclose(float(FocalLoss(from_logits=True)(g, logits)), float(FocalLoss()(g, p)), rtol=1e-4)


def test_multiclass_focal_matches_formula_and_keras():
    logits = RNG.normal(size=(4, 5, 5, 3)).astype("float32")
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    g = np.eye(3, dtype="float32")[RNG.integers(0, 3, size=(4, 5, 5))]
    by_hand = np.mean(np.sum(-0.25 * (1 - p) ** 2 * g * np.log(p), axis=-1))
    np.testing.assert_allclose(float(FocalLoss(multiclass=True)(g, p)), by_hand, rtol=1e-5)
    np.testing.assert_allclose(float(FocalLoss(multiclass=True, from_logits=True)(g, logits)), by_hand, rtol=1e-4)
    np.testing.assert_allclose(float(FocalLoss(multiclass=True)(g, p)),
                               float(keras.losses.CategoricalFocalCrossentropy()(g, p)), rtol=1e-5)


def test_weighted_sums():
    g, p = batch()
    bce = float(keras.losses.BinaryCrossentropy()(g, p))
    np.testing.assert_allclose(float(DiceBCELoss(0.3, 2.0, smooth=0)(g, p)),
                               0.3 * np_dice_loss(g, p, smooth=0) + 2.0 * bce, rtol=1e-5)
    np.testing.assert_allclose(float(DiceFocalLoss(2.0, 5.0, alpha=0.4, gamma=1.5, squared=False)(g, p)),
                               2.0 * np_dice_loss(g, p, squared=False) + 5.0 * np_focal(g, p, 0.4, 1.5), rtol=1e-5)
    # pooled Dice + per-image pixel loss
    np.testing.assert_allclose(float(DiceBCELoss(per_sample=False)(g, p)),
                               np_dice_loss(g, p, per_sample=False) + bce, rtol=1e-5)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_gradients_finite_on_all_zero_masks(name, smooth):
    tf = pytest.importorskip("tensorflow")
    kwargs = {} if name in ("bce", "focal") else {"smooth": smooth}
    loss = get_loss(name, **kwargs)
    zeros = np.zeros((2, 8, 8, 1), "float32")
    for start in (np.zeros_like(zeros), np.full_like(zeros, 0.5), np.ones_like(zeros)):
        logits = tf.Variable(np.where(start == 0, -20.0, np.where(start == 1, 20.0, 0.0)).astype("float32"))
        with tf.GradientTape() as tape:
            value = loss(zeros, keras.ops.sigmoid(logits))
        grad = tape.gradient(value, logits)
        assert np.isfinite(float(value)), (name, smooth, start.max())
        assert grad is not None and np.isfinite(grad.numpy()).all(), (name, smooth, start.max())
    # the raw probability 0 itself (no sigmoid in between), where p^2 and the where() branch meet
    if name.startswith("dice"):
        p = tf.Variable(zeros)
        with tf.GradientTape() as tape: value = loss(zeros, p)
        assert np.isfinite(tape.gradient(value, p).numpy()).all()


def test_get_loss_names_and_errors():
    assert isinstance(get_loss("bce"), keras.losses.BinaryCrossentropy)
    assert get_loss("focal", gamma=1.0).gamma == 1.0
    with pytest.raises(ValueError, match="unknown loss 'tversky'"):
        get_loss("tversky")


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # saved before any training step
@pytest.mark.parametrize("loss", [DiceLoss(squared=False, smooth=0.5, per_sample=False), FocalLoss(alpha=0.7, gamma=1.0),
                                  DiceFocalLoss(2.0, 0.5, gamma=3.0), DiceBCELoss(1.0, 0.25, squared=False)])
def test_saved_model_reloads_with_its_loss(tmp_path, loss):
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inp))
    model.compile(optimizer="adam", loss=loss)
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)  # no custom_objects: the losses are registered
    assert type(again.loss) is type(loss)
    assert again.loss.get_config() == loss.get_config()
    g, _ = batch((2, 8, 8, 1))
    x = RNG.random((2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(again.evaluate(x, g, verbose=0), model.evaluate(x, g, verbose=0), rtol=1e-5)


TRAIN_STEP = textwrap.dedent("""
    import json, numpy as np, keras
    from medcnn_nb.losses import LOSSES, get_loss
    rng = np.random.default_rng(0)
    x = rng.random((4, 16, 16, 1)).astype("float32")
    y = np.zeros((4, 16, 16, 3), "float32"); y[:2, 4:9, 5:10] = 1
    out = {}
    for name in LOSSES:
        keras.utils.set_random_seed(0)
        inp = keras.Input((16, 16, 1))
        model = keras.Model(inp, keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid")(inp))
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=get_loss(name))
        before = [w.copy() for w in model.get_weights()]
        first = float(model.train_on_batch(x, y))
        changed = any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
        out[name] = [first, changed]
    print("RESULT", json.dumps({"backend": keras.backend.backend(), "steps": out}))
""")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_one_train_step_per_installed_backend(backend):
    if importlib.util.find_spec(backend) is None: pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run([sys.executable, "-c", TRAIN_STEP], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT", 1)[1])
    assert result["backend"] == backend
    for name, (loss, changed) in result["steps"].items():
        assert np.isfinite(loss) and loss > 0, (name, loss)
        assert changed, f"{name}: one train step left the weights unchanged"
