import cv2
import numpy as np
import pytest

from usam.extraction.augment import AUGMENTATIONS, augment_image, augmented_images, gaussian_blur, jpeg_compress


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    base = (rng.random((37, 53, 3)) * 255).astype(np.uint8)
    base[10:20, 5:40] = (250, 10, 10)
    return base


def test_blur_matches_opencv(image):
    expected = cv2.GaussianBlur(image, (5, 5), 0)
    difference = np.abs(gaussian_blur(image).astype(int) - expected.astype(int))
    assert difference.max() <= 1  # rounding of the fixed-point kernel OpenCV uses for uint8


def test_jpeg_quality_changes_the_image_more_at_low_quality(image):
    low = np.abs(jpeg_compress(image, 10).astype(int) - image).mean()
    high = np.abs(jpeg_compress(image, 30).astype(int) - image).mean()
    assert low > high > 0


def test_noise_has_the_paper_variance_and_is_seeded_by_key():
    flat = np.full((200, 200, 3), 128, np.uint8)
    noisy = augment_image(flat, "gaussian_noise_5000", seed=1, image_key="a")
    # Clipping at 0 and 255 trims the tails of a std-70.7 noise around 128 a little.
    assert 55 < (noisy.astype(float) - 128).std() < 72
    again = augment_image(flat, "gaussian_noise_5000", seed=1, image_key="a")
    other = augment_image(flat, "gaussian_noise_5000", seed=1, image_key="b")
    np.testing.assert_array_equal(noisy, again)
    assert not np.array_equal(noisy, other)


def test_five_versions_unchanged_first(image):
    versions = augmented_images(image, seed=0, image_key="k")
    assert len(versions) == len(AUGMENTATIONS) == 5
    np.testing.assert_array_equal(versions[0], image)
    for version in versions:
        assert version.shape == image.shape
        assert version.dtype == np.uint8
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_image(image, "rotate")
