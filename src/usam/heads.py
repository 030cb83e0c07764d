"""The UncertainSAM heads: small MLPs on SAM2's decoder tokens, run as one fused computation.

Each head maps ``concat(iou_token, mask_token)`` (2 x 256 values, IoU token first) through
Linear(512, 512) -> ReLU -> Linear(512, 512) -> ReLU -> Linear(512, 1) -> sigmoid. ``iou_*`` heads report the
sigmoid (a predicted IoU); ``*_gap`` heads report ``sigmoid - 0.5`` (a predicted IoU gain in [-0.5, 0.5]).

:class:`UncertaintyHeads` stores the weights of all loaded heads stacked along a leading head axis, so that every
head runs in three batched matrix products over all prompts and masks of a call: the first layer is a single
matrix product (all heads read the same input), the second and third are batched over heads.

Files: our own format is one safetensors file whose header carries the JSON metadata (:class:`HeadsMetadata`).
The paper authors released a folder ``<name>/model.pth`` per head; :func:`load_heads` reads both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from usam.calibration import HeadsCalibration
from usam.errors import HeadsFileError, InvalidInputError, UsamWarning
from usam.files import atomic_path
from usam.head_table import HEAD_NAMES, HEADS, HeadKind, Pairing
from usam.signals import SIGNAL_DIM, SignalNormalization
from usam.validation import StrEnum

TOKEN_INPUTS: tuple[str, ...] = ("iou_token", "mask_token")
"""The tokens a head reads by default, in order. Ablations may train heads on one of the two tokens only."""
SIGNAL_INPUT = "signals"
"""The input part that is a mask's signal vector (:func:`usam.signals.signal_features`), normalised; always last."""
HEAD_INPUTS: tuple[str, ...] = (*TOKEN_INPUTS, SIGNAL_INPUT)
"""Every input part a head may read, in the order a head's features concatenate them."""


class InputsVariant(StrEnum):
    """What a heads file reads: the paper's tokens, SAM2's scalar signals, or both (``usam train --inputs``)."""

    TOKENS = "tokens"
    """``[IoU token ‖ mask token]``, as the paper (and every heads file without signals)."""
    SIGNALS = "signals"
    """The mask's signal vector only."""
    TOKENS_SIGNALS = "tokens+signals"
    """``[IoU token ‖ mask token ‖ signal vector]``."""


INPUTS_OF_VARIANT: dict[InputsVariant, tuple[str, ...]] = {
    InputsVariant.TOKENS: TOKEN_INPUTS,
    InputsVariant.SIGNALS: (SIGNAL_INPUT,),
    InputsVariant.TOKENS_SIGNALS: HEAD_INPUTS,
}
"""The input parts of each variant."""


def inputs_variant(inputs: Sequence[str]) -> InputsVariant | None:
    """The variant whose parts ``inputs`` are, or None (a single-token ablation).

    Example:
        >>> inputs_variant(["iou_token", "mask_token", "signals"]), inputs_variant(["iou_token"])
        (<InputsVariant.TOKENS_SIGNALS: 'tokens+signals'>, None)
    """
    return next((variant for variant, parts in INPUTS_OF_VARIANT.items() if tuple(inputs) == parts), None)


def input_width(inputs: Sequence[str], token_dim: int) -> int:
    """Number of features of the input parts: ``token_dim`` per token, :data:`usam.signals.SIGNAL_DIM` for signals.

    Example:
        >>> input_width(["iou_token", "mask_token"], 256), input_width(["signals"], 256)
        (512, 25)
    """
    return sum(SIGNAL_DIM if part == SIGNAL_INPUT else token_dim for part in inputs)


FORMAT_NAME = "usam-heads"
FORMAT_VERSION = 1
_METADATA_KEY = "usam"
_HEAD_STATE_KEYS = (
    "layers.0.weight",
    "layers.0.bias",
    "layers.1.weight",
    "layers.1.bias",
    "layers.2.weight",
    "layers.2.bias",
)


@dataclasses.dataclass
class HeadsMetadata:
    """What a heads file says about its heads.

    Attributes:
        names: Head names, in the order of the stacked weights.
        token_dim: Size of one SAM2 decoder token (256 for every released SAM2).
        hidden_dim: Width of the two hidden layers.
        inputs: What a head reads, concatenated in this order: tokens of :data:`TOKEN_INPUTS` and, last,
            ``"signals"`` (the mask's signal vector, see :mod:`usam.signals`). Absent in a file: both tokens.
        pairing: Which mask token scores a returned mask: ``"true"`` or ``"as-released"``.
        sam2_version: SAM2 version the heads were trained for (``"sam2"``, ``"sam2.1"``), or None if unknown.
        training: Free-form record of how the heads were trained (data, hyper-parameters, metrics).
        signal_normalization: For heads that read signals, the mean and standard deviation that normalise the
            signal vector (``{"mean": [...], "std": [...]}``, :class:`usam.signals.SignalNormalization`), so that
            inference needs nothing but the file; None otherwise.
        calibration: The IoU heads' calibration and conformal quantiles
            (:meth:`usam.calibration.HeadsCalibration.to_json`, written by ``usam calibrate``), or None.
    """

    names: list[str]
    token_dim: int = 256
    hidden_dim: int = 512
    inputs: list[str] = dataclasses.field(default_factory=lambda: list(TOKEN_INPUTS))
    pairing: Pairing = Pairing.TRUE
    sam2_version: str | None = None
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    signal_normalization: dict[str, list[float]] | None = None
    calibration: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        unknown = [name for name in self.names if name not in HEAD_NAMES]
        if unknown:
            raise HeadsFileError(f"unknown head name(s) {unknown}; known heads are {list(HEAD_NAMES)}")
        if len(set(self.names)) != len(self.names):
            raise HeadsFileError(f"head names must be unique, got {self.names}")
        if not self.names:
            raise HeadsFileError("a heads file must contain at least one head")
        if self.pairing not in Pairing.values():
            raise HeadsFileError(f"unknown token pairing {self.pairing!r}; use one of {Pairing.values()}")
        self.pairing = Pairing(self.pairing)
        self.inputs = list(self.inputs)
        unknown = [part for part in self.inputs if part not in HEAD_INPUTS]
        if not self.inputs or unknown or (SIGNAL_INPUT in self.inputs and self.inputs[-1] != SIGNAL_INPUT):
            raise HeadsFileError(
                f"heads inputs must be a non-empty list of distinct parts of {list(HEAD_INPUTS)} with "
                f"{SIGNAL_INPUT!r} last, got {self.inputs}"
            )
        if len(set(self.inputs)) != len(self.inputs):
            raise HeadsFileError(f"heads inputs must not repeat a part, got {self.inputs}")
        if self.reads_signals != (self.signal_normalization is not None):
            raise HeadsFileError(
                "heads that read signals need their signal_normalization (and others must not have one); "
                "the file is incomplete: train the heads again"
            )
        if self.signal_normalization is not None:
            try:
                SignalNormalization.from_dict(self.signal_normalization)
            except (KeyError, TypeError, ValueError) as error:
                raise HeadsFileError(f"the heads' signal_normalization is malformed ({error})") from None
        if self.calibration is not None:
            self.parsed_calibration()  # a malformed calibration is refused when the file is read, not at predict

    def parsed_calibration(self) -> HeadsCalibration | None:
        """The calibration of the IoU heads among :attr:`names`, or None if they are not calibrated.

        Raises:
            HeadsFileError: If the calibration is malformed or names a head that is not an IoU head.
        """
        if self.calibration is None:
            return None
        if not isinstance(self.calibration, Mapping):
            raise HeadsFileError(f"the heads' calibration must be a JSON object, got {type(self.calibration).__name__}")
        calibration = HeadsCalibration.from_json(self.calibration)
        not_iou = [name for name in calibration.heads if name not in HEADS or HEADS[name].kind is not HeadKind.IOU]
        if not_iou:
            raise HeadsFileError(f"the heads' calibration names {not_iou}, which are not IoU heads")
        calibration.heads = {name: head for name, head in calibration.heads.items() if name in self.names}
        return calibration if calibration.heads else None

    @property
    def input_dim(self) -> int:
        """Number of input features of every head."""
        return input_width(self.inputs, self.token_dim)

    @property
    def reads_signals(self) -> bool:
        """Whether the heads read the signal vector (and need SAM2's scalar signals at inference)."""
        return SIGNAL_INPUT in self.inputs

    @property
    def token_inputs(self) -> list[str]:
        """The tokens the heads read, in order (none for signal-only heads)."""
        return [part for part in self.inputs if part != SIGNAL_INPUT]

    @property
    def normalization(self) -> SignalNormalization | None:
        """The normalisation of the signal vector, for heads that read it."""
        return None if self.signal_normalization is None else SignalNormalization.from_dict(self.signal_normalization)

    def to_json(self) -> str:
        """Serialise, with the format name and version, as one JSON string."""
        return json.dumps({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)})

    @classmethod
    def from_json(cls, text: str, source: str = "heads file") -> HeadsMetadata:
        """Parse metadata written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise HeadsFileError(f"{source}: its metadata is not valid JSON ({error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise HeadsFileError(f"{source}: not a usam heads file (its metadata has no format {FORMAT_NAME!r})")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise HeadsFileError(
                f"{source}: written by a newer usam (heads format {data['format_version']}, this usam reads "
                f"{FORMAT_VERSION}); upgrade usam"
            )
        fields = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in fields})


class UncertaintyHeads(nn.Module):
    """Any subset of the UncertainSAM heads, with stacked weights and one fused forward pass.

    Parameters follow ``nn.Linear``'s (out, in) layout with a leading head axis: ``weight1`` (H, hidden, in),
    ``bias1`` (H, hidden), ``weight2`` (H, hidden, hidden), ``bias2`` (H, hidden), ``weight3`` (H, hidden),
    ``bias3`` (H,). The module is trainable (see the trainer) and used as-is for inference.
    """

    def __init__(self, metadata: HeadsMetadata) -> None:
        super().__init__()
        self.metadata = metadata
        num_heads, hidden, inputs = len(metadata.names), metadata.hidden_dim, metadata.input_dim
        self.weight1 = nn.Parameter(torch.empty(num_heads, hidden, inputs))
        self.bias1 = nn.Parameter(torch.empty(num_heads, hidden))
        self.weight2 = nn.Parameter(torch.empty(num_heads, hidden, hidden))
        self.bias2 = nn.Parameter(torch.empty(num_heads, hidden))
        self.weight3 = nn.Parameter(torch.empty(num_heads, hidden))
        self.bias3 = nn.Parameter(torch.empty(num_heads))
        # 1 for gap heads: they report sigmoid - 0.5. A buffer so the subtraction stays inside the fused pass.
        self.register_buffer(
            "output_offset",
            torch.tensor([HEADS[name].output_offset for name in metadata.names]),
            persistent=False,
        )
        self.reset_parameters()

    @property
    def names(self) -> list[str]:
        """Head names, in the order of the first axis of every output."""
        return list(self.metadata.names)

    @property
    def calibration(self) -> HeadsCalibration | None:
        """The calibration of the loaded IoU heads (``usam calibrate``), or None if none of them is calibrated."""
        return self.metadata.parsed_calibration()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise every head as ``nn.Linear`` does (Kaiming-uniform weights, uniform biases)."""
        with torch.no_grad():
            for weight, bias in (
                (self.weight1, self.bias1),
                (self.weight2, self.bias2),
                (self.weight3.unsqueeze(1), self.bias3.unsqueeze(1)),
            ):
                bound = 1.0 / weight.shape[-1] ** 0.5
                # uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) is what nn.Linear's kaiming_uniform_(a=sqrt(5)) gives.
                weight.uniform_(-bound, bound, generator=generator)
                bias.uniform_(-bound, bound, generator=generator)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid outputs of all heads.

        Args:
            features: (N, in) inputs shared by all heads, or (H, N, in) one input set per head.

        Returns:
            (H, N) logits.
        """
        num_heads, hidden = self.weight1.shape[:2]
        if features.dim() == 2:
            # All heads read the same rows: their first layers are one (H * hidden, in) x (in, N) product.
            first = torch.addmm(self.bias1.reshape(-1, 1), self.weight1.reshape(num_heads * hidden, -1), features.t())
        elif features.dim() == 3 and features.shape[0] == num_heads:
            first = torch.baddbmm(self.bias1.unsqueeze(2), self.weight1, features.transpose(1, 2))
        else:
            raise ValueError(
                f"features must be (N, {self.metadata.input_dim}) or ({num_heads}, N, {self.metadata.input_dim}), "
                f"got {tuple(features.shape)}"
            )
        # Weights on the left and activations as a transposed view on the right: for the few rows of a predict
        # call this is the layout in which the CPU's matrix kernels stream the 19 MB of weights fastest (measured
        # 2x faster than activations on the left). The copy below only moves the small activations.
        hidden_rows = first.view(num_heads, hidden, -1).relu_().transpose(1, 2).contiguous()
        second = torch.baddbmm(self.bias2.unsqueeze(2), self.weight2, hidden_rows.transpose(1, 2)).relu_()
        return torch.bmm(self.weight3.unsqueeze(1), second).squeeze(1) + self.bias3.unsqueeze(1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Reported values of all heads: the sigmoid for ``iou_*`` heads, sigmoid - 0.5 for ``*_gap`` heads.

        Args:
            features: (N, in) shared inputs or (H, N, in) per-head inputs.

        Returns:
            (H, N) values, in the order of :attr:`names`.
        """
        return torch.sigmoid(self.logits(features)) - self.output_offset.unsqueeze(1)

    def predict(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Like :meth:`forward`, as a mapping from head name to an (N,) tensor."""
        values = self(features)
        return {name: values[index] for index, name in enumerate(self.metadata.names)}

    def head_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The weights of one head in the authors' layout (``layers.{0,1,2}.{weight,bias}``)."""
        index = self.metadata.names.index(name)
        return {
            "layers.0.weight": self.weight1[index].detach().clone(),
            "layers.0.bias": self.bias1[index].detach().clone(),
            "layers.1.weight": self.weight2[index].detach().clone(),
            "layers.1.bias": self.bias2[index].detach().clone(),
            "layers.2.weight": self.weight3[index].detach().clone().unsqueeze(0),
            "layers.2.bias": self.bias3[index].detach().clone().unsqueeze(0),
        }

    def load_head_state_dict(self, name: str, state: Mapping[str, torch.Tensor]) -> None:
        """Copy one head's weights, given in the authors' layout, into the stacked parameters."""
        index = self.metadata.names.index(name)
        with torch.no_grad():
            self.weight1[index].copy_(state["layers.0.weight"])
            self.bias1[index].copy_(state["layers.0.bias"])
            self.weight2[index].copy_(state["layers.1.weight"])
            self.bias2[index].copy_(state["layers.1.bias"])
            self.weight3[index].copy_(state["layers.2.weight"].reshape(-1))
            self.bias3[index].copy_(state["layers.2.bias"].reshape(()))

    def select(self, names: Sequence[str]) -> UncertaintyHeads:
        """A new module with a subset of the heads (weights copied)."""
        missing = [name for name in names if name not in self.metadata.names]
        if missing:
            raise HeadsFileError(f"head(s) {missing} are not loaded; loaded heads are {self.metadata.names}")
        subset = UncertaintyHeads(dataclasses.replace(self.metadata, names=list(names)))
        for name in names:
            subset.load_head_state_dict(name, self.head_state_dict(name))
        return subset.to(self.weight1.device)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the heads to one safetensors file with the metadata in its header, atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors: dict[str, torch.Tensor] = {}
        for name in self.metadata.names:
            for key, tensor in self.head_state_dict(name).items():
                tensors[f"{name}.{key}"] = tensor.float().cpu().contiguous()
        with atomic_path(path) as temporary:
            save_file(tensors, str(temporary), metadata={_METADATA_KEY: self.metadata.to_json()})
        return path


def _check_head_state(state: Mapping[str, Any], name: str, source: str, metadata: HeadsMetadata) -> None:
    hidden_dim = metadata.hidden_dim
    expected = {
        "layers.0.weight": (hidden_dim, metadata.input_dim),
        "layers.0.bias": (hidden_dim,),
        "layers.1.weight": (hidden_dim, hidden_dim),
        "layers.1.bias": (hidden_dim,),
        "layers.2.weight": (1, hidden_dim),
        "layers.2.bias": (1,),
    }
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise HeadsFileError(
            f"{source}: head {name!r} has missing keys {missing} / unexpected keys {unexpected}; "
            f"expected exactly {sorted(expected)}"
        )
    for key, shape in expected.items():
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise HeadsFileError(f"{source}: head {name!r} key {key!r} has shape {got}, expected {shape}")
        if not torch.isfinite(tensor).all():
            raise HeadsFileError(f"{source}: head {name!r} key {key!r} contains NaN or infinite values")


def _load_safetensors(path: Path) -> UncertaintyHeads:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            if _METADATA_KEY not in header:
                raise HeadsFileError(f"{path}: a safetensors file without usam metadata; is it a usam heads file?")
            metadata = HeadsMetadata.from_json(header[_METADATA_KEY], source=str(path))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as error:
        raise HeadsFileError(f"{path}: truncated or corrupt heads file ({error})") from None
    except (OSError, ValueError, RuntimeError) as error:
        raise HeadsFileError(f"{path}: cannot read heads file ({error})") from None
    heads = UncertaintyHeads(metadata)
    expected_keys = {f"{name}.{key}" for name in metadata.names for key in _HEAD_STATE_KEYS}
    if set(tensors) != expected_keys:
        raise HeadsFileError(
            f"{path}: tensors do not match the heads named in its metadata "
            f"(missing {sorted(expected_keys - set(tensors))[:3]}, extra {sorted(set(tensors) - expected_keys)[:3]})"
        )
    for name in metadata.names:
        state = {key: tensors[f"{name}.{key}"] for key in _HEAD_STATE_KEYS}
        _check_head_state(state, name, str(path), metadata)
        heads.load_head_state_dict(name, state)
    return heads


def sam2_version_from_folder_name(folder: str | os.PathLike[str]) -> str | None:
    """The SAM2 version (``"sam2"`` or ``"sam2.1"``) an authors' heads folder is named after, or None.

    The authors ship ``models/mlps/sam2.0`` and ``models/mlps/sam2.1``; the folder or its parent must carry the
    version (``sam2.0``, ``sam2``, ``sam2_0``, ``2.0``, ``sam2.1``, ``sam2_1``, ``2.1``).
    """
    folder = Path(folder)
    for part in (folder.name, folder.parent.name):
        if part in ("sam2.1", "sam2_1", "2.1"):
            return "sam2.1"
        if part in ("sam2.0", "sam2", "sam2_0", "2.0"):
            return "sam2"
    return None


def _load_authors_folder(folder: Path, names: Sequence[str] | None, sam2_version: str | None) -> UncertaintyHeads:
    subfolders = sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    head_folders = {entry.name: entry for entry in subfolders if (entry / "model.pth").is_file()}
    if not head_folders:
        nested = [entry.name for entry in subfolders if any(child.is_dir() for child in entry.iterdir())]
        hint = f"; it holds {nested}: pass one of those folders" if nested else ""
        raise HeadsFileError(f"{folder}: no '<head name>/model.pth' files found{hint}")
    unknown = sorted(set(head_folders) - set(HEAD_NAMES))
    if unknown:
        raise HeadsFileError(
            f"{folder}: unknown head folder(s) {unknown}; known heads are {list(HEAD_NAMES)} "
            "(rename or remove the others)"
        )
    wanted = [name for name in HEAD_NAMES if name in head_folders] if names is None else list(names)
    missing = [name for name in wanted if name not in head_folders]
    if missing:
        raise HeadsFileError(f"{folder}: requested head(s) {missing} not found; it has {sorted(head_folders)}")
    sam2_version = sam2_version or sam2_version_from_folder_name(folder)
    metadata = HeadsMetadata(
        names=wanted,
        pairing=Pairing.AS_RELEASED,
        sam2_version=sam2_version,
        training={"source": "UncertainSAM authors' released heads", "folder": str(folder)},
    )
    heads = UncertaintyHeads(metadata)
    for name in wanted:
        weights_path = head_folders[name] / "model.pth"
        try:
            # weights_only: a released .pth is a pickle; never let it run code.
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for truncated zips and refused pickles
            raise HeadsFileError(
                f"{weights_path}: cannot be read as a plain state dict of tensors "
                f"(truncated, corrupt or not a weights file: {str(error).splitlines()[0]})"
            ) from None
        if not isinstance(state, Mapping):
            raise HeadsFileError(f"{weights_path}: expected a state dict, found {type(state).__name__}")
        _check_head_state(state, name, str(weights_path), metadata)
        heads.load_head_state_dict(name, {key: value.float() for key, value in state.items()})
    if sam2_version is None:  # only for heads that loaded: a broken folder gets its error alone
        warnings.warn(
            f"cannot tell the SAM2 version of the heads in {folder} from the folder name, so a mismatch with the "
            "model goes unnoticed; pass sam2_version='sam2' or 'sam2.1' (usam convert-heads --sam2-version)",
            UsamWarning,
            stacklevel=3,
        )
    return heads


def load_heads(
    path: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    *,
    sam2_version: str | None = None,
    device: str | torch.device | None = None,
) -> UncertaintyHeads:
    """Load heads from a usam heads file or from the paper authors' released folder.

    Args:
        path: A ``.safetensors`` file written by :meth:`UncertaintyHeads.save`, or a folder holding
            ``<head name>/model.pth`` files (the authors' release, e.g. ``models/mlps/sam2.1``).
        names: Load only these heads (default: all that the file or folder has).
        sam2_version: For an authors' folder, the SAM2 version its heads were trained for
            (guessed from a folder named ``sam2.0``/``sam2.1`` when not given).
        device: Where to put the weights (default CPU).

    Returns:
        The heads, in evaluation mode.

    Raises:
        HeadsFileError: The path is missing, corrupt, has unknown heads or wrongly shaped weights.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise HeadsFileError(f"{path}: no such heads file or folder")
    if path.is_dir():
        heads = _load_authors_folder(path, names, sam2_version)
    else:
        heads = _load_safetensors(path)
        if names is not None:
            heads = heads.select(names)
    heads.eval()
    heads.requires_grad_(False)
    return heads.to(device) if device is not None else heads


def heads_fingerprint(heads: UncertaintyHeads) -> str:
    """SHA-256 of the heads' metadata and weights: equal for the same heads, whatever file they came from."""
    import hashlib

    digest = hashlib.sha256(heads.metadata.to_json().encode())
    for name, tensor in sorted(heads.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def refuse_signal_heads(heads: UncertaintyHeads | None, where: str) -> None:
    """Raise if ``heads`` read SAM2's scalar signals, which ``where`` cannot give them.

    Raises:
        InvalidInputError: The heads read signals.
    """
    if heads is not None and heads.metadata.reads_signals:
        raise InvalidInputError(
            f"{where} gives the heads tokens only, and these heads also read SAM2's scalar signals "
            f"(inputs {'+'.join(heads.metadata.inputs)}); use heads trained with 'usam train --inputs tokens'"
        )


def random_heads(
    names: Sequence[str] = HEAD_NAMES,
    *,
    seed: int = 0,
    pairing: Pairing | str = Pairing.TRUE,
    token_dim: int = 256,
    sam2_version: str | None = None,
    inputs: Sequence[str] = TOKEN_INPUTS,
) -> UncertaintyHeads:
    """Heads with random weights, for self-checks and tests; their outputs mean nothing.

    Heads that read signals (``inputs`` with ``"signals"``) get the identity normalisation.
    """
    from usam.signals import SIGNAL_DIM, SignalNormalization

    reads_signals = SIGNAL_INPUT in inputs
    identity = SignalNormalization((0.0,) * SIGNAL_DIM, (1.0,) * SIGNAL_DIM).to_dict() if reads_signals else None
    heads = UncertaintyHeads(
        HeadsMetadata(
            names=list(names),
            token_dim=token_dim,
            pairing=pairing,
            sam2_version=sam2_version,
            training={"source": "random initialisation (meaningless numbers)", "seed": seed},
            inputs=list(inputs),
            signal_normalization=identity,
        )
    )
    heads.reset_parameters(torch.Generator().manual_seed(seed))
    heads.eval()
    heads.requires_grad_(False)
    return heads
