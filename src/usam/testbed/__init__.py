"""The trained test-bed: a small, reproducible world in which usam's estimates can be measured without downloads.

Modules:

- :mod:`usam.testbed.scenes`: seeded synthetic scenes that are ambiguous by construction (objects with nested
  parts), and the ``folder`` dataset written from them with a label of each target's kind.
"""

from usam.testbed.scenes import (
    LABELS_FILE,
    MANIFEST_FILE,
    Scene,
    SceneObject,
    SceneTarget,
    Shape,
    TargetKind,
    Texture,
    make_scene,
    read_scene_labels,
    scene_name,
    scene_seed,
    write_scene_dataset,
)

__all__ = [
    "LABELS_FILE",
    "MANIFEST_FILE",
    "Scene",
    "SceneObject",
    "SceneTarget",
    "Shape",
    "TargetKind",
    "Texture",
    "make_scene",
    "read_scene_labels",
    "scene_name",
    "scene_seed",
    "write_scene_dataset",
]
