"Augmentation keeps image and mask aligned; checked against NumPy's exact moves."
import numpy as np
import pytest

from medcnn_nb.augment import affine_matrix, apply_affine, random_affine


def planted(size=64, top=20, left=26, side=14):
    img = np.zeros((size, size, 2), np.float32); img[top:top + side, left:left + side] = 1
    mask = np.zeros((size, size, 3), np.uint8); mask[top:top + side, left:left + side] = 1
    mask[top + 4:top + 8, left + 4:left + 8, 1:] = 0  # a hole in TC/ET: channels differ
    return img, mask


@pytest.mark.parametrize("seed", range(5))
def test_square_stays_aligned(seed):
    img, mask = planted()
    rng = np.random.default_rng(seed)
    for _ in range(40):
        a, m, mat = random_affine(img, mask, rng, max_rotation=180, scale_range=(0.7, 1.3), max_shift=0.15,
                                  return_matrix=True)
        assert a.dtype == np.float32 and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
        wt = m[..., 0].astype(bool)
        # bilinear > 3/4 implies the nearest input pixel is inside; < 1/4 implies it is outside
        assert wt[a[..., 0] > 0.75].all() and not wt[a[..., 0] < 0.25].any()
        np.testing.assert_array_equal(a[..., 0], a[..., 1])          # channels share the transform
        np.testing.assert_array_equal(m[..., 1], m[..., 2])
        assert (m[..., 1] <= m[..., 0]).all()                         # nesting survives nearest neighbour
        centre = mat @ np.array([26.5, 32.5, 1.0])                      # where the square's centre must go
        np.testing.assert_allclose(np.argwhere(wt).mean(0), centre[:2], atol=0.6)
        area_scale = abs(np.linalg.det(mat[:2, :2]))
        assert abs(wt.sum() / (196 * area_scale) - 1) < 0.12


def test_exact_moves_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.random((15, 15, 3))
    np.testing.assert_allclose(apply_affine(x, affine_matrix(x.shape, flip=(True, True))), x[::-1, ::-1], atol=1e-9)
    np.testing.assert_allclose(apply_affine(x, affine_matrix(x.shape, angle=180)), x[::-1, ::-1], atol=1e-9)
    np.testing.assert_allclose(apply_affine(x, affine_matrix(x.shape, angle=-90)), np.rot90(x, k=-1), atol=1e-9)
    y = apply_affine(x, affine_matrix(x.shape, shift=(-3, 4)), order=0)
    np.testing.assert_array_equal(y[:-3, 4:], x[3:, :-4]); assert y[:, :4].max() == 0
    # scaling by 2 about the centre: the central pixel stays, its neighbour moves two pixels away
    s = apply_affine(x, affine_matrix(x.shape, scale=2.0), order=1)
    np.testing.assert_allclose(s[7, 7], x[7, 7]); np.testing.assert_allclose(s[9, 7], x[8, 7])


def test_seeded_and_checked():
    img, mask = planted()
    a1 = random_affine(img, mask, np.random.default_rng(11))
    a2 = random_affine(img, mask, np.random.default_rng(11))
    a3 = random_affine(img, mask, np.random.default_rng(12))
    np.testing.assert_array_equal(a1[0], a2[0]); np.testing.assert_array_equal(a1[1], a2[1])
    assert not np.array_equal(a1[0], a3[0])
    with pytest.raises(ValueError, match="differ in-plane"): random_affine(img, mask[:5], np.random.default_rng(0))
