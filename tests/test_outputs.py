import numpy as np
import pytest

from usam.errors import InvalidInputError
from usam.outputs import compress_counts, decode_counts, decode_rle, encode_rle, rle_counts

SHAPES = [(1, 1), (1, 7), (9, 1), (2, 3), (17, 31), (60, 80), (480, 640)]


def _masks(shape, rng):
    yield np.zeros(shape, bool)
    yield np.ones(shape, bool)
    yield rng.random(shape) < 0.5
    yield rng.random(shape) < 0.02  # long runs: counts need several 5-bit groups and negative deltas
    blob = np.zeros(shape, bool)
    blob[shape[0] // 4 : shape[0] // 2 + 1, shape[1] // 3 :] = True
    yield blob


@pytest.mark.parametrize("shape", SHAPES)
def test_rle_is_what_pycocotools_writes(shape):
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(sum(shape))
    for mask in _masks(shape, rng):
        expected = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle = encode_rle(mask)
        assert rle["counts"] == expected["counts"].decode("ascii")
        assert rle["size"] == [int(side) for side in expected["size"]]
        np.testing.assert_array_equal(mask_api.decode(rle), mask)
        np.testing.assert_array_equal(decode_rle(rle), mask)


def test_counts_round_trip_and_start_with_background():
    mask = np.array([[1, 0, 1], [1, 1, 0]], dtype=np.uint8)
    counts = rle_counts(mask)
    assert counts.tolist() == [0, 2, 1, 2, 1]  # column-major: 1 1 | 0 1 | 1 0
    assert decode_counts(compress_counts(counts)).tolist() == counts.tolist()
    np.testing.assert_array_equal(decode_rle({"size": [2, 3], "counts": counts.tolist()}), mask.astype(bool))


def test_bad_rle_input_is_refused():
    with pytest.raises(InvalidInputError, match="2-D"):
        encode_rle(np.zeros((2, 2, 2), bool))
    with pytest.raises(InvalidInputError, match="sum"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})
