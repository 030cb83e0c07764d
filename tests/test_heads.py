import struct

import numpy as np
import pytest
import torch

from conftest import reference_head, write_authors_heads
from usam.errors import HeadsFileError
from usam.head_table import GAP_HEAD_NAMES, HEAD_NAMES, Pairing
from usam.heads import HeadsMetadata, UncertaintyHeads, load_heads, random_heads


def test_fused_heads_equal_nine_separate_mlps(tmp_path):
    states = write_authors_heads(tmp_path / "sam2.1")
    heads = load_heads(tmp_path / "sam2.1")
    assert heads.names == list(HEAD_NAMES)
    features = np.random.default_rng(1).normal(size=(7, 512))
    fused = heads(torch.from_numpy(features).float()).numpy()
    assert fused.shape == (9, 7)
    for index, name in enumerate(HEAD_NAMES):
        expected = reference_head(states[name], features, gap=name in GAP_HEAD_NAMES)
        np.testing.assert_allclose(fused[index], expected, atol=2e-5)


def test_gap_heads_lie_in_half_interval_and_iou_heads_in_unit_interval():
    heads = random_heads(seed=3)
    values = heads(torch.randn(50, 512) * 30).numpy()
    for index, name in enumerate(heads.names):
        low, high = (-0.5, 0.5) if name.endswith("_gap") else (0.0, 1.0)
        assert values[index].min() >= low
        assert values[index].max() <= high


def test_per_head_inputs_match_shared_inputs():
    heads = random_heads(seed=1)
    shared = torch.randn(5, 512)
    per_head = shared.expand(len(heads.names), -1, -1)
    torch.testing.assert_close(heads(shared), heads(per_head))
    with pytest.raises(ValueError, match="features must be"):
        heads(torch.randn(3, 5, 512))


def test_authors_folder_metadata(tmp_path):
    write_authors_heads(tmp_path / "mlps" / "sam2.0", names=["iou_tiny", "task_gap"])
    heads = load_heads(tmp_path / "mlps" / "sam2.0")
    assert heads.names == ["iou_tiny", "task_gap"]
    assert heads.metadata.pairing == Pairing.AS_RELEASED
    assert heads.metadata.sam2_version == "sam2"
    assert not any(parameter.requires_grad for parameter in heads.parameters())


def test_save_load_round_trip_is_exact(tmp_path):
    heads = random_heads(seed=5, pairing=Pairing.AS_RELEASED, sam2_version="sam2.1")
    heads.metadata.training = {"lr": 0.0087, "note": "x"}
    path = heads.save(tmp_path / "heads.safetensors")
    loaded = load_heads(path)
    assert loaded.metadata == heads.metadata
    for name, tensor in heads.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


def test_convert_authors_folder_round_trip(tmp_path):
    states = write_authors_heads(tmp_path / "sam2.1")
    converted = load_heads(tmp_path / "sam2.1").save(tmp_path / "converted.safetensors")
    loaded = load_heads(converted)
    for name in HEAD_NAMES:
        for key, tensor in loaded.head_state_dict(name).items():
            assert torch.equal(tensor, states[name][key])


def test_subset_of_heads(tmp_path):
    path = random_heads(seed=2).save(tmp_path / "h.safetensors")
    full = load_heads(path)
    subset = load_heads(path, names=["task_gap", "iou_large"])
    features = torch.randn(4, 512)
    torch.testing.assert_close(subset(features)[0], full(features)[HEAD_NAMES.index("task_gap")])
    with pytest.raises(HeadsFileError, match="not loaded"):
        load_heads(path, names=["nope"])


def test_unknown_head_folder_is_named(tmp_path):
    write_authors_heads(tmp_path / "heads", names=["iou_tiny"])
    write_authors_heads(tmp_path / "heads", names=["iou_tiny"])
    (tmp_path / "heads" / "iou_huge").mkdir()
    torch.save({}, tmp_path / "heads" / "iou_huge" / "model.pth")
    with pytest.raises(HeadsFileError, match="iou_huge"):
        load_heads(tmp_path / "heads")


def test_parent_folder_of_versions_gets_a_hint(tmp_path):
    write_authors_heads(tmp_path / "mlps" / "sam2.1", names=["iou_tiny"])
    with pytest.raises(HeadsFileError, match=r"sam2\.1"):
        load_heads(tmp_path / "mlps")


def test_truncated_pth_is_reported(tmp_path):
    write_authors_heads(tmp_path / "heads", names=["iou_tiny"])
    path = tmp_path / "heads" / "iou_tiny" / "model.pth"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(HeadsFileError, match=r"model\.pth"):
        load_heads(tmp_path / "heads")


class _NotWeights:
    pass


def test_pickled_objects_are_refused(tmp_path):
    (tmp_path / "heads" / "iou_tiny").mkdir(parents=True)
    torch.save({"layers.0.weight": _NotWeights()}, tmp_path / "heads" / "iou_tiny" / "model.pth")
    with pytest.raises(HeadsFileError, match="plain state dict"):
        load_heads(tmp_path / "heads")


def test_wrong_shapes_are_reported(tmp_path):
    states = write_authors_heads(tmp_path / "heads", names=["iou_tiny"])
    states["iou_tiny"]["layers.0.weight"] = torch.zeros(512, 256)
    torch.save(states["iou_tiny"], tmp_path / "heads" / "iou_tiny" / "model.pth")
    with pytest.raises(HeadsFileError, match=r"layers\.0\.weight.*\(512, 256\)"):
        load_heads(tmp_path / "heads")


def test_truncated_safetensors_is_reported(tmp_path):
    path = random_heads(seed=0).save(tmp_path / "h.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(HeadsFileError, match=r"h\.safetensors"):
        load_heads(path)


def test_garbage_file_is_reported(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", 10) + b"not json!!")
    with pytest.raises(HeadsFileError):
        load_heads(path)
    with pytest.raises(HeadsFileError, match="no such"):
        load_heads(tmp_path / "missing.safetensors")


def test_metadata_validation():
    with pytest.raises(HeadsFileError, match="unknown head"):
        HeadsMetadata(names=["iou_giant"])
    with pytest.raises(HeadsFileError, match="pairing"):
        HeadsMetadata(names=["iou_tiny"], pairing="sideways")
    with pytest.raises(HeadsFileError, match="at least one"):
        HeadsMetadata(names=[])


def test_single_token_ablation_heads_have_half_the_inputs(tmp_path):
    heads = UncertaintyHeads(HeadsMetadata(names=["iou_tiny"], inputs=["mask_token"]))
    assert heads.weight1.shape == (1, 512, 256)
    loaded = load_heads(heads.save(tmp_path / "a.safetensors"))
    assert loaded.metadata.inputs == ["mask_token"]
    assert loaded(torch.randn(3, 256)).shape == (1, 3)


def test_an_authors_folder_without_a_version_in_its_name_warns(tmp_path):
    from usam.errors import UsamWarning

    write_authors_heads(tmp_path / "my_heads", names=["task_gap"])
    with pytest.warns(UsamWarning, match="cannot tell the SAM2 version"):
        heads = load_heads(tmp_path / "my_heads")
    assert heads.metadata.sam2_version is None
    write_authors_heads(tmp_path / "sam2.1", names=["task_gap"])
    assert load_heads(tmp_path / "sam2.1").metadata.sam2_version == "sam2.1"
    assert load_heads(tmp_path / "my_heads", sam2_version="sam2").metadata.sam2_version == "sam2"
