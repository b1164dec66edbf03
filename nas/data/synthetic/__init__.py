"""The built-in synthetic datasets: COCO-format images (`images`) and PoseTrack18-format videos (`video`).

Both draw the same stick-figure people (`skeleton` for the kinematics, `person` for the drawing) on the same
scenery (`scenery`); `detections` imitates a person detector for the image set. Generated data is cached
under $POSENAS_CACHE (default ~/.cache/posenas), keyed by a hash of the spec.
"""
from nas.data.synthetic.detections import DETECTION_STREAM, DETECTIONS_FILE, detect
from nas.data.synthetic.images import (GENERATOR_VERSION, OCCLUDER, OWNER_STRIDE, SPLITS, SyntheticSpec,
                                       dataset_name, default_cache_dir, ensure_synthetic, generate,
                                       label_keypoints, render_scene)
from nas.data.synthetic.skeleton import Pose, PoseParams, pose_from_params, sample_params, sample_pose

__all__ = [
    "DETECTION_STREAM", "DETECTIONS_FILE", "GENERATOR_VERSION", "OCCLUDER", "OWNER_STRIDE", "SPLITS", "Pose",
    "PoseParams", "SyntheticSpec", "dataset_name", "default_cache_dir", "detect", "ensure_synthetic",
    "generate", "label_keypoints", "pose_from_params", "render_scene", "sample_params", "sample_pose",
]
