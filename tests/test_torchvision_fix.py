import subprocess
import sys


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_sam2_imports_after_import_usam():
    completed = _run(
        "import usam\n"
        "from sam2.sam2_image_predictor import SAM2ImagePredictor\n"
        "import torchvision, torchvision.transforms\n"
        "assert type(torchvision.__loader__).__name__ != '_RetryingLoader'\n"
        "print('ok')"
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_import_usam_does_not_import_torchvision_or_sam2():
    completed = _run("import sys, usam\nprint(sorted(n for n in ('sam2', 'torchvision') if n in sys.modules))")
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_a_find_spec_before_the_import_leaves_the_repair_in_place():
    # transformers checks importlib.util.find_spec("torchvision") long before it imports torchvision.
    completed = _run(
        "import importlib.util, sys, usam\n"
        "from usam import torchvision_fix\n"
        "assert importlib.util.find_spec('torchvision') is not None\n"
        "import torchvision.transforms\n"
        "assert torchvision_fix._FINDER not in sys.meta_path\n"
        "print('ok')"
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"
