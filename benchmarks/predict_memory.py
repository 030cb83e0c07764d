"""Peak memory of ``usam predict`` per image pixel.

Runs the whole command (load the PNG, SAM2 sam2.1-tiny with random weights saved as a checkpoint, nine random heads,
three masks, JSON with RLE, figure) in a fresh process per image size and reads that process's peak resident memory
(``ru_maxrss``). The fixed part (Python, torch, the model) is the peak of a 64 x 64 image; the figure reported is

    bytes per pixel = (peak - peak at 64 x 64) / pixels

for the whole command and for the part from ``set_image`` on (segmentation, JSON, figure; the image array is resident
then, sampled every millisecond). Loading the checkpoint peaks higher than the rest for images up to about
4000 x 4000, so the whole-command figure understates the per-pixel cost there; the second figure does not.

SAM2's own ``predict`` upsamples the three low-resolution logits to the image as float32 (12 bytes per pixel) and
returns float32 0/1 masks (12 more) before usam keeps them as booleans; those buffers are SAM2's and usam cannot
avoid them without patching SAM2.

    .venv/bin/python benchmarks/predict_memory.py [--sizes 2000 4000 6000]

Random weights: memory does not depend on the values. Each size runs about as long as one ``usam predict``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# The child reports two peaks: of the whole command (VmHWM), and from set_image on, sampled every millisecond by a
# thread (VmRSS): loading the checkpoint peaks higher than the rest for images up to about 4000 x 4000 and would
# hide them in the first figure.
_CHILD = """
import sys
import threading
import time

import usam.predictor


def kib(field):
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1])


segment_peak = [0]
done = threading.Event()


def sample():
    while not done.is_set():
        segment_peak[0] = max(segment_peak[0], kib("VmRSS"))
        time.sleep(0.001)


original = usam.predictor.UncertainSAM.set_image


def set_image(self, image):
    threading.Thread(target=sample, daemon=True).start()
    return original(self, image)


usam.predictor.UncertainSAM.set_image = set_image
from usam.cli import main

status = main(sys.argv[1:])
done.set()
if status:
    sys.exit(status)
print("PEAK_KIB", kib("VmHWM"), segment_peak[0])
"""


def write_image(path: Path, side: int) -> None:
    """A smooth RGB image (compresses well, decodes like any photo of that size)."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    image = np.empty((side, side, 3), np.uint8)
    image[..., 0] = ramp[None, :]
    image[..., 1] = ramp[:, None]
    image[..., 2] = 128
    Image.fromarray(image).save(path, compress_level=1)


def peak_bytes(folder: Path, image: Path, checkpoint: Path, heads: Path) -> tuple[int, int]:
    """Peak resident bytes of one ``usam predict`` run on ``image``: whole command, and from ``set_image`` on."""
    side = Image.open(image).size[0]
    argv = [str(image), "--checkpoint", str(checkpoint), "--heads", str(heads), "--device", "cpu"]
    argv += ["--point", f"{side // 2},{side // 2}", "--out", str(folder / "out")]
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, "predict", *argv], capture_output=True, text=True, check=False
    )
    if completed.returncode:
        raise SystemExit(f"usam predict failed on {image}:\n{completed.stderr}")
    line = next(line for line in completed.stdout.splitlines() if line.startswith("PEAK_KIB"))
    whole, segmentation = (int(value) * 1024 for value in line.split()[1:3])
    return whole, segmentation


def main() -> None:
    """Measure and print peak memory per pixel for each size."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000], help="image sides in pixels")
    args = parser.parse_args()

    from usam import sam2_adapter
    from usam.heads import random_heads

    with tempfile.TemporaryDirectory(prefix="usam-predict-memory-") as name:
        folder = Path(name)
        checkpoint = folder / "sam2.1_hiera_tiny_random.pt"
        model = sam2_adapter.build_sam2_model("sam2.1-tiny", device="cpu", random_weights=True)
        torch.save({"model": model.state_dict()}, checkpoint)
        del model
        heads = random_heads(sam2_version="sam2.1").save(folder / "heads.safetensors")
        write_image(folder / "base.png", 64)
        base = peak_bytes(folder, folder / "base.png", checkpoint, heads)
        print(f"fixed part (64 x 64 image): {base[0] / 2**20:.0f} MiB, from set_image on {base[1] / 2**20:.0f} MiB")
        results: dict[str, dict[str, float]] = {"command": {}, "from_set_image": {}}
        for side in args.sizes:
            image = folder / f"{side}.png"
            write_image(image, side)
            peaks = peak_bytes(folder, image, checkpoint, heads)
            whole, segmentation = ((peak - fixed) / side**2 for peak, fixed in zip(peaks, base, strict=True))
            results["command"][f"{side}x{side}"] = round(whole, 1)
            results["from_set_image"][f"{side}x{side}"] = round(segmentation, 1)
            print(
                f"{side} x {side}: peak {peaks[0] / 2**20:.0f} MiB; bytes per pixel above the fixed part: "
                f"{whole:.1f} (whole command), {segmentation:.1f} (from set_image on)"
            )
            image.unlink()
        print(json.dumps({"bytes_per_pixel": results}))


if __name__ == "__main__":
    main()
