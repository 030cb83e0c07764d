"""``usam models``, ``usam convert-heads`` and ``usam heads-info``: what models and heads usam knows."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from usam.errors import UsamError
from usam.models import VERSIONS


def add_models(subparsers: Any) -> None:
    """Add the ``models`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "models",
        help="list the known SAM2 models and whether their checkpoints are cached",
        description="List the released SAM2 models usam knows, their checkpoint URLs, and the cache status.",
    )
    parser.set_defaults(handler=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from usam.download import cache_dir
    from usam.models import SAM2_MODELS

    folder = cache_dir() / "checkpoints"
    print(f"cache folder: {folder}")
    for spec in SAM2_MODELS.values():
        cached = "cached" if (folder / spec.checkpoint_name).is_file() else "not downloaded"
        print(f"{spec.name:<18} {spec.hf_id:<30} {cached:<15} {spec.url}")
    return 0


def add_convert_heads(subparsers: Any) -> None:
    """Add the ``convert-heads`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "convert-heads",
        help="convert the authors' released heads folder to a usam heads file",
        description="Read a folder of '<head>/model.pth' state dicts (the UncertainSAM authors' release, e.g. "
        "models/mlps/sam2.1) without unpickling anything but tensors, and write one .safetensors heads file.",
    )
    parser.add_argument("folder", type=Path, help="the authors' heads folder, holding <head name>/model.pth files")
    parser.add_argument("out", type=Path, help="output .safetensors file")
    parser.add_argument(
        "--sam2-version",
        choices=VERSIONS,
        help="SAM2 version the heads were trained for; required unless the folder (or its parent) is named after "
        "it, like the authors' sam2.0 and sam2.1",
    )
    parser.set_defaults(handler=_run_convert_heads)


def _run_convert_heads(args: argparse.Namespace) -> int:
    from usam.heads import load_heads, sam2_version_from_folder_name

    if args.folder.exists() and not args.folder.is_dir():
        raise UsamError(f"{args.folder} is a file; convert-heads reads the authors' heads folder")
    version = args.sam2_version or sam2_version_from_folder_name(args.folder)
    if version is None:
        raise UsamError(
            f"cannot tell the SAM2 version from the folder name {args.folder}; pass --sam2-version {'|'.join(VERSIONS)}"
        )
    heads = load_heads(args.folder, sam2_version=version)
    path = heads.save(args.out)
    print(f"wrote {path}: heads {heads.names}, pairing {heads.metadata.pairing}, for {heads.metadata.sam2_version}")
    return 0


def add_heads_info(subparsers: Any) -> None:
    """Add the ``heads-info`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "heads-info",
        help="show what a heads file contains",
        description="Print the metadata of a heads file or folder as JSON.",
    )
    parser.add_argument("heads", type=Path, help="heads file (.safetensors) or the authors' heads folder")
    parser.set_defaults(handler=_run_heads_info)


def _run_heads_info(args: argparse.Namespace) -> int:
    import json

    from usam.heads import load_heads

    heads = load_heads(args.heads)
    print(json.dumps(json.loads(heads.metadata.to_json()), indent=2))
    return 0
