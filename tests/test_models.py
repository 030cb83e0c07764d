import pytest
import torch

from conftest import build_small_sam2
from usam import sam2_adapter
from usam.errors import CheckpointError, InvalidInputError
from usam.models import SAM2_MODELS, get_model_spec


def test_known_models_and_their_files():
    assert len(SAM2_MODELS) == 8
    spec = get_model_spec("sam2.1-base-plus")
    assert spec.config == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert spec.checkpoint_name == "sam2.1_hiera_base_plus.pt"
    assert spec.url == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt"
    assert spec.hf_id == "facebook/sam2.1-hiera-base-plus"
    assert spec.head_name == "iou_base_plus"
    old = get_model_spec("sam2-large")
    assert old.url == "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt"
    assert old.config == "configs/sam2/sam2_hiera_l.yaml"


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("facebook/sam2.1-hiera-tiny", "sam2.1-tiny"),
        ("sam2.1_hiera_small.pt", "sam2.1-small"),
        ("sam2_hiera_b+", "sam2-base-plus"),
        ("SAM2.1-B+", "sam2.1-base-plus"),
        ("sam2.0-large", "sam2-large"),
    ],
)
def test_aliases(alias, name):
    assert get_model_spec(alias).name == name


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(InvalidInputError, match=r"sam2\.1-tiny"):
        get_model_spec("sam3-huge")


@pytest.mark.parametrize("name", list(SAM2_MODELS))
def test_every_config_exists_in_the_sam2_package(name):
    from importlib import resources

    spec = SAM2_MODELS[name]
    sam2_adapter._import_sam2()
    assert (resources.files("sam2") / spec.config).is_file()


def _save_checkpoint(model, path):
    torch.save({"model": model.state_dict()}, path)
    return path


def test_checkpoint_loads_strictly_and_safely(tmp_path):
    source = build_small_sam2(seed=1)
    path = _save_checkpoint(source, tmp_path / "small.pt")
    target = build_small_sam2(seed=2)
    sam2_adapter.load_sam2_checkpoint(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_build_with_checkpoint(tmp_path):
    source = build_small_sam2(seed=1)
    path = _save_checkpoint(source, tmp_path / "small.pt")
    built = sam2_adapter.build_sam2_model(
        "sam2.1-tiny", path, device="cpu", hydra_overrides=sam2_adapter.small_model_overrides(128)
    )
    assert torch.equal(built.sam_mask_decoder.iou_token.weight, source.sam_mask_decoder.iou_token.weight)
    assert built.usam_model_name == "sam2.1-tiny"


def test_truncated_checkpoint(tmp_path):
    path = _save_checkpoint(build_small_sam2(seed=1), tmp_path / "small.pt")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        sam2_adapter.load_sam2_checkpoint(build_small_sam2(), path)


def test_checkpoint_of_another_model(tmp_path):
    path = _save_checkpoint(build_small_sam2("sam2.1-small", seed=1, image_size=256), tmp_path / "other.pt")
    small = sam2_adapter.build_sam2_model(
        "sam2.1-tiny", device="cpu", random_weights=True, hydra_overrides=sam2_adapter.small_model_overrides(128, False)
    )
    with pytest.raises(CheckpointError, match="does not fit"):
        sam2_adapter.load_sam2_checkpoint(small, path)


class _Payload:
    pass


def test_checkpoint_with_code_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(CheckpointError, match="not a weights file"):
        sam2_adapter.load_sam2_checkpoint(build_small_sam2(), path)
    torch.save({"weights": {}}, path)
    with pytest.raises(CheckpointError, match="no 'model' state dict"):
        sam2_adapter.load_sam2_checkpoint(build_small_sam2(), path)


def test_torchvision_transforms_import():
    sam2_adapter.ensure_torchvision()
    import torchvision.transforms

    assert torchvision.transforms.Resize
