"""``usam video``: track objects through a video with SAM2 and write per-frame estimates as JSON and a figure."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from usam.cli.common import add_model_options, note, prepare_output_folder
from usam.errors import UsamError

OUTPUT_SUFFIX = ".usam-video"
"""Outputs are ``DIR/<video name>.usam-video.json`` and ``.png``."""

DEFAULT_OBJECT_ID = 1


@dataclasses.dataclass(frozen=True)
class VideoPrompt:
    """One ``--point``/``--negative-point``/``--box`` option: where (frame), what (points or box), which object."""

    frame: int
    object_id: int
    kind: str  # "point", "negative_point" or "box"
    values: tuple[float, ...]


def _prompt_parser(kind: str, count: int, form: str) -> Any:
    def parse(text: str) -> VideoPrompt:
        parts = text.split(",")
        if len(parts) not in (count + 1, count + 2):
            raise argparse.ArgumentTypeError(f"expected {form} (numbers separated by commas), got {text!r}")
        try:
            frame = int(parts[0])
            values = tuple(float(part) for part in parts[1 : count + 1])
            object_id = int(parts[count + 1]) if len(parts) == count + 2 else DEFAULT_OBJECT_ID
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {form} with a whole frame number and object id, got {text!r}"
            ) from None
        if frame < 0 or not all(np.isfinite(values)):
            raise argparse.ArgumentTypeError(f"expected {form} with a frame number >= 0 and finite numbers: {text!r}")
        return VideoPrompt(frame, object_id, kind, values)

    return parse


def add_video(subparsers: Any) -> None:
    """Add the ``video`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "video",
        help="track objects through a video with SAM2 and estimate each frame's uncertainty",
        description="Prompt objects on frames of FRAMES (a folder of JPEG frames named 00000.jpg, 00001.jpg, ..., or "
        "an .mp4 where SAM2 can read one), track them with SAM2's video predictor (forward from the first prompted "
        "frame, then backward to frame 0), and write DIR/<name>.usam-video.json (per frame and object: the heads' "
        "estimates, SAM2's IoU prediction and object score, entropy, the mask as compressed COCO RLE) and "
        "DIR/<name>.usam-video.png (predicted IoU per frame and object with its drops marked, and a strip of frames).",
    )
    parser.add_argument("frames", type=Path, metavar="FRAMES", help="folder of JPEG frames (or an .mp4 file)")
    add_model_options(parser)
    parser.add_argument("--heads", type=Path, help="heads file (.safetensors) or the authors' released heads folder")
    parser.add_argument(
        "--point",
        type=_prompt_parser("point", 2, "F,X,Y[,OBJ]"),
        action="append",
        default=[],
        metavar="F,X,Y[,OBJ]",
        help=f"foreground click on frame F at pixel X,Y for object OBJ (default {DEFAULT_OBJECT_ID}); repeatable; a "
        "click on a frame already tracked corrects the object there",
    )
    parser.add_argument(
        "--negative-point",
        type=_prompt_parser("negative_point", 2, "F,X,Y[,OBJ]"),
        action="append",
        default=[],
        metavar="F,X,Y[,OBJ]",
        help="background click (repeatable)",
    )
    parser.add_argument(
        "--box",
        type=_prompt_parser("box", 4, "F,X0,Y0,X1,Y1[,OBJ]"),
        action="append",
        default=[],
        metavar="F,X0,Y0,X1,Y1[,OBJ]",
        help="box on frame F for object OBJ (at most one per object and frame)",
    )
    parser.add_argument(
        "--reprompt-below",
        type=float,
        metavar="IOU",
        help="list the frames where the predicted IoU falls below IOU as 're-prompt here' (JSON, figure, output)",
    )
    parser.add_argument(
        "--drop",
        type=float,
        default=0.1,
        help="mark frames where the predicted IoU falls by more than this from the frame before (default %(default)s)",
    )
    parser.add_argument("--strip", type=int, default=5, help="frames in the figure's overlay strip (default 5)")
    parser.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        help="what SAM2 runs in (default: bfloat16 on CUDA, float32 elsewhere); SAM2 keeps its memory in bfloat16 "
        "and some backward tracking fails without bfloat16 autocast",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output folder (created if needed; checked first)"
    )
    parser.set_defaults(handler=_run_video)


def group_prompts(prompts: Sequence[VideoPrompt]) -> dict[tuple[int, int], dict[str, Any]]:
    """SAM2 calls from the prompt options: (frame, object) -> ``points``, ``labels``, ``box``, in frame order.

    Raises:
        UsamError: No prompt, or two boxes for one object on one frame.
    """
    if not prompts:
        raise UsamError("no prompt given: pass --point F,X,Y[,OBJ] (repeatable) and/or --box F,X0,Y0,X1,Y1[,OBJ]")
    calls: dict[tuple[int, int], dict[str, Any]] = {}
    for prompt in sorted(prompts, key=lambda item: (item.frame, item.object_id)):
        call = calls.setdefault((prompt.frame, prompt.object_id), {"points": [], "labels": [], "box": None})
        if prompt.kind == "box":
            if call["box"] is not None:
                raise UsamError(
                    f"two --box prompts for object {prompt.object_id} on frame {prompt.frame}; SAM2 takes one box per "
                    "object and frame"
                )
            call["box"] = list(prompt.values)
        else:
            call["points"].append(list(prompt.values))
            call["labels"].append(1 if prompt.kind == "point" else 0)
    return calls


def check_prompts_fit(calls: dict[tuple[int, int], dict[str, Any]], num_frames: int, width: int, height: int) -> None:
    """Refuse a prompt on a frame the video does not have, or outside the frame.

    Raises:
        UsamError: Naming the prompt and the valid range.
    """
    for (frame, object_id), call in calls.items():
        if frame >= num_frames:
            raise UsamError(
                f"a prompt for object {object_id} is on frame {frame}, but the video has {num_frames} frames "
                f"(0 to {num_frames - 1})"
            )
        coordinates = list(call["points"]) + ([call["box"][:2], call["box"][2:]] if call["box"] else [])
        for x, y in coordinates:
            if not (0 <= x <= width and 0 <= y <= height):
                raise UsamError(
                    f"prompt point {x:g},{y:g} of object {object_id} on frame {frame} is outside the {width}x{height} "
                    "frame"
                )
        if call["box"] and (call["box"][2] < call["box"][0] or call["box"][3] < call["box"][1]):
            raise UsamError(f"the box of object {object_id} on frame {frame} must be X0,Y0,X1,Y1 with X0<=X1, Y0<=Y1")


def _run_video(args: argparse.Namespace) -> int:
    from usam.heads import load_heads
    from usam.model_card import resolve_model
    from usam.video import check_video_source

    calls = group_prompts([*args.point, *args.negative_point, *args.box])
    if args.reprompt_below is not None and not 0.0 <= args.reprompt_below <= 1.0:
        raise UsamError(f"--reprompt-below must be an IoU between 0 and 1, got {args.reprompt_below}")
    if args.strip < 0 or args.drop < 0:
        raise UsamError("--strip and --drop must not be negative")
    check_video_source(args.frames)
    if args.frames.is_dir():  # check the prompts against the frames before loading any model
        from usam.images import open_image_file
        from usam.video import jpeg_frames

        frame_files = jpeg_frames(args.frames)
        try:
            with open_image_file(frame_files[0]) as picture:
                width, height = picture.size
        except OSError as error:
            raise UsamError(f"cannot read the frame {frame_files[0]} ({error}); is it a JPEG file?") from None
        check_prompts_fit(calls, len(frame_files), width, height)
    model_spec = resolve_model(args.model)
    name = args.frames.resolve().name if args.frames.is_dir() else args.frames.stem
    json_path, png_path = args.out / f"{name}{OUTPUT_SUFFIX}.json", args.out / f"{name}{OUTPUT_SUFFIX}.png"
    prepare_output_folder(args.out)
    heads = load_heads(args.heads) if args.heads is not None else None
    if heads is None:
        note("no --heads given; the figure follows SAM2's own IoU prediction")
    from usam.video import UncertainVideoSAM

    model = UncertainVideoSAM.from_pretrained(
        model_spec,
        heads,
        checkpoint=args.checkpoint,
        device=args.device,
        precision=args.precision,
        hydra_overrides=args.hydra_override,
    )
    results = track_video(model, args.frames, calls, progress=not args.no_progress)
    write_video_outputs(
        model,
        results,
        args.frames,
        calls,
        json_path,
        png_path,
        threshold=args.reprompt_below,
        drop=args.drop,
        strip=args.strip,
        context={"model": str(args.model), "heads": str(args.heads) if args.heads else None},
    )
    return 0


class _WithoutProgressBars(io.TextIOBase):
    """A stderr that passes text on but drops progress-bar updates (tqdm redraws its bar after a carriage return)."""

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self._in_bar = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if "\r" in text or "\x1b[" in text:
            self._in_bar = True
        elif self._in_bar and not text.strip():
            self._in_bar = False  # the newline that closes a bar
        else:
            self._in_bar = False
            self.target.write(text)
        return len(text)

    def flush(self) -> None:
        self.target.flush()


@contextlib.contextmanager
def _sam2_bars_hidden() -> Iterator[None]:
    """Hide SAM2's own progress bars (frame loading, one per propagation): usam shows one bar over all frames."""
    with contextlib.redirect_stderr(_WithoutProgressBars(sys.stderr)):
        yield


def track_video(model: Any, frames: Path, calls: dict[tuple[int, int], dict[str, Any]], *, progress: bool) -> list:
    """Prompt, then propagate forward from the first prompted frame and backward from it to frame 0.

    Returns:
        One :class:`usam.video.VideoFrameResult` per tracked frame, in frame order.
    """
    from tqdm import tqdm

    with _sam2_bars_hidden():
        state = model.init_state(frames)
    check_prompts_fit(calls, state["num_frames"], state["video_width"], state["video_height"])
    for (frame, object_id), call in calls.items():
        points = call["points"] or None
        model.add_new_points_or_box(
            state, frame, object_id, points=points, labels=call["labels"] if points else None, box=call["box"]
        )
    first = min(frame for frame, _ in calls)
    by_frame = {}
    passes = [{"start_frame_idx": first}] + ([{"start_frame_idx": first, "reverse": True}] if first > 0 else [])
    with tqdm(total=state["num_frames"], desc="usam video", unit="frame", disable=not progress) as bar:
        for options in passes:
            steps = model.propagate_in_video(state, **options)
            while True:
                # SAM2 draws its bar while it computes a frame: hide it then, and only then.
                with _sam2_bars_hidden():
                    result = next(steps, None)
                if result is None:
                    break
                bar.update(0 if result.frame_index in by_frame else 1)
                by_frame[result.frame_index] = result
    return [by_frame[frame] for frame in sorted(by_frame)]


def write_video_outputs(
    model: Any,
    results: list,
    frames: Path,
    calls: dict[tuple[int, int], dict[str, Any]],
    json_path: Path,
    png_path: Path,
    *,
    threshold: float | None,
    drop: float,
    strip: int,
    context: dict[str, Any],
    footnote: str | None = None,
) -> dict[str, Any]:
    """Write the JSON and the figure of a tracked video and print a summary per object; returns the record."""
    from usam import sam2_adapter
    from usam.files import write_json_atomically
    from usam.images import load_image
    from usam.video import jpeg_frames
    from usam.video_outputs import object_series, tracked_estimate, video_record
    from usam.visualize_video import render_video

    head_names = list(model.heads.names) if model.heads is not None else []
    estimate = tracked_estimate(head_names, sam2_adapter.model_name_of(model.predictor))
    prompts: dict[int, list[dict[str, Any]]] = {}
    for (frame, object_id), call in calls.items():
        prompts.setdefault(object_id, []).append({"frame": frame, **call})
    record = video_record(
        results, prompts=prompts, estimate=estimate, threshold=threshold, drop=drop, video=str(frames), **context
    )
    write_json_atomically(record, json_path)
    frame_files = jpeg_frames(frames) if frames.is_dir() else None
    render_video(
        results,
        png_path,
        estimate=estimate,
        load_frame=lambda index: load_image(frame_files[index]) if frame_files is not None else None,
        threshold=threshold,
        drop=drop,
        strip=strip,
        title=f"{frames.name} - {context.get('model', '')}",
        footnote=footnote,
    )
    for item in object_series(results):
        values = item.values[estimate]
        if not np.isfinite(values).any():
            print(f"object {item.object_id}: no estimate")
            continue
        lowest = int(item.frames[np.nanargmin(values)])
        line = (
            f"object {item.object_id}: {estimate} mean {np.nanmean(values):.3f}, lowest {np.nanmin(values):.3f} "
            f"(frame {lowest}), drops at frames {item.drops(estimate, drop).tolist()}"
        )
        if threshold is not None:
            line += f"; re-prompt here: frames {item.below(estimate, threshold).tolist()}"
        print(line)
    print(f"wrote {json_path} and {png_path}")
    return record
