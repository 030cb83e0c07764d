"""``usam demo``: the browser demo on a local web server (gradio)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from usam.cli.common import add_model_options, note

EXAMPLE_SCENES = 4
"""How many test-bed scenes a model card's demo offers as examples."""


def add_demo(subparsers: Any) -> None:
    """Add the ``demo`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "demo",
        help="click on an image in the browser and watch the masks and estimates react (needs usam[demo])",
        description="Start a local web page (gradio) where you upload or pick an image, click (positive or negative) "
        "or set a box by two corners, and see the masks, the per-pixel uncertainty, every estimate in words, SAM's "
        "pick versus usam's, and the suggested next click. Without --heads (or with --random-weights) the numbers "
        "are meaningless, and the page says so.",
    )
    add_model_options(parser)
    parser.add_argument("--heads", type=Path, help="heads file or folder (default: random heads, meaningless)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build the SAM2 config with random weights (offline; the numbers are meaningless)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port (default %(default)s)")
    parser.add_argument(
        "--share", action="store_true", help="also open a public gradio share link (off by default: local only)"
    )
    parser.set_defaults(handler=_run_demo)


def build_demo_session(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The demo's session and its example images from the parsed options."""
    from importlib import resources

    from usam.demo import DemoSession
    from usam.head_table import HEAD_NAMES
    from usam.heads import load_heads, random_heads
    from usam.images import load_image
    from usam.model_card import ModelCard, resolve_model
    from usam.predictor import UncertainSAM

    model_spec = resolve_model(args.model)
    heads = load_heads(args.heads) if args.heads is not None else random_heads(HEAD_NAMES)
    build: dict[str, Any] = {"device": args.device, "hydra_overrides": args.hydra_override}
    if args.random_weights:
        build["random_weights"] = True
    model = UncertainSAM.from_pretrained(model_spec, heads, checkpoint=args.checkpoint, **build)
    session = DemoSession(model, meaningless=args.heads is None or args.random_weights)
    if isinstance(model_spec, ModelCard):  # a test-bed model: it knows synthetic scenes, not photos
        from usam.testbed.scenes import make_scene

        examples = [make_scene(index).image for index in range(EXAMPLE_SCENES)]
    else:
        examples = [load_image(Path(str(resources.files("usam") / "assets" / "example.jpg")))]
    return session, examples


def _run_demo(args: argparse.Namespace) -> int:
    from usam.demo import build_app, import_gradio
    from usam.validation import check_int

    import_gradio()  # before the model loads: a missing gradio is reported at once
    port = check_int(args.port, "--port", minimum=1, maximum=65535)
    session, examples = build_demo_session(args)
    if session.meaningless:
        note("random weights: the demo's masks and numbers are meaningless")
    app = build_app(session, examples)
    app.launch(server_name=args.host, server_port=port, share=args.share)
    return 0
