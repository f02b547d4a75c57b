"""Faces from an SCRFD detector and 98 WFLW landmarks from PFLD, both through onnxruntime.

The detector is insightface's SCRFD-2.5G-KPS and the landmark model PFLD-GhostOne
(98 points in the WFLW layout), the pair SyncTalk_2D's own preprocessing uses.
Unlike the mediapipe mesh this backend has no tracking: every frame is detected
afresh, which makes its output independent of frame order.

Detection. SCRFD predicts, per anchor location of three feature maps (strides
8, 16, 32, two anchors each), a face score, the box as distances from the
anchor centre to its four sides and five keypoints, all in units of the
stride. It only finds faces between about 16 and 300 input pixels wide: a
512x512 talking-head frame scaled up to the usual 640 input scores as low as
0.46 for a face half the frame wide, and a face 60% of the frame wide is not
found at all, while at 384 the same frames score 0.8-0.9. Talking-head footage
is mostly large faces, so the frame is letterboxed to 384 on its long side
(faces from 5% to 75% of it are found) and, only when that finds nothing, to
256 (close-ups up to the whole frame). The exported graph has a fixed 640x640
input but nothing in it depends on that size, so its input height and width
are made dynamic on load and the letterboxed frame is padded only up to a
multiple of 32: a 1920x1080 frame runs as 384x224, far cheaper than 640x640.

Landmarks. PFLD was trained on square crops centred on the landmarks' own
bounding box, 1.2x its longer side. The SCRFD box starts higher (it includes
the forehead) and is narrower than the ear-to-ear contour, so the crop is
`crop_scale` x the box's longer side around the box centre moved down by
`crop_shift` x the box height; both were fitted so the crop matches the
training crop on six test clips (values and their fit beside the constants).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from synctalk.face.landmarks import Face

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)
ANCHORS_PER_LOCATION = 2
PFLD_SIZE = 112
# Long sides the frame is letterboxed to for SCRFD, tried in order until one finds a face.
DETECT_SIZES = (384, 256)
# PFLD crop: CROP_SCALE x the SCRFD box's longer side, centred CROP_SHIFT x its height
# below the box centre. Fitted so the crop is PFLD's training crop (1.2x the landmarks'
# extent, centred on them): on 48 frames of 6 clips the fit converges to 0.943 (sd 0.03)
# and 0.114 (sd 0.013), with no horizontal offset (-0.001 of the width).
CROP_SCALE = 0.95
CROP_SHIFT = 0.11

# WFLW-98 indices of the named anchors (see synctalk.face.landmarks.ANCHOR_NAMES).
# 0-32 contour (0 at image left, by the ear; 16 chin), 51-54 nose bridge top to tip,
# 76-87 outer lip (76 and 82 the corners), 88-95 inner lip (90 top middle, 94 bottom middle).
WFLW98_ANCHORS: dict[str, tuple[int, ...]] = {
    "cheek_left": (1,),
    "cheek_right": (31,),
    "nose_bridge": (51,),
    "mouth_left": (76,),
    "mouth_right": (82,),
    "lip_top": (90,),
    "lip_bottom": (94,),
}


def _session(model, threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _dynamic_hw(path: Path) -> bytes:
    """The detector graph with its input height/width (and anchor counts) made symbolic."""
    import onnx

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[1].dim_param = "anchors"
    del model.graph.value_info[:]  # stale fixed shapes; onnxruntime re-infers them
    return model.SerializeToString()


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Indices of the boxes kept by greedy non-maximum suppression, highest score first."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0) * (y1 - y0)
    order = np.argsort(-scores)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        h = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= threshold]
    return keep


def square_crop(image: np.ndarray, cx: float, cy: float, side: int) -> tuple[np.ndarray, int, int]:
    """The side x side square of `image` centred on (cx, cy), black where it leaves the image
    (as PFLD's training crops were padded). Returns the crop and its top-left corner."""
    h, w = image.shape[:2]
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    x1, y1 = x0 + side, y0 + side
    crop = np.zeros((side, side, *image.shape[2:]), image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return crop, x0, y0


class OnnxFaceBackend:
    """SCRFD boxes + PFLD 98-point landmarks; see the module docstring."""

    name = "onnx"
    anchors = WFLW98_ANCHORS

    def __init__(
        self,
        detector_path: str | Path,
        landmark_path: str | Path,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        crop_scale: float = CROP_SCALE,
        threads: int | None = None,
        *,
        crop_shift: float = CROP_SHIFT,
        detect_sizes: tuple[int, ...] = DETECT_SIZES,
    ):
        detector_path, landmark_path = Path(detector_path), Path(landmark_path)
        for path in (detector_path, landmark_path):
            if not path.is_file():
                raise FileNotFoundError(f"face model not found: {path}")
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.crop_scale = crop_scale
        self.crop_shift = crop_shift
        self.detect_sizes = tuple(detect_sizes)
        self._detector = _session(_dynamic_hw(detector_path), threads)
        self._detector_input = self._detector.get_inputs()[0].name
        self._landmarks = _session(str(landmark_path), threads)
        self._landmarks_input = self._landmarks.get_inputs()[0].name
        self._centres: dict[tuple[int, int], list[np.ndarray]] = {}
        log.debug("onnx face backend: %s + %s", detector_path.name, landmark_path.name)

    def _anchor_centres(self, height: int, width: int) -> list[np.ndarray]:
        """Per stride, float32 [N, 2] anchor centres (x, y) in the order SCRFD emits them."""
        key = (height, width)
        if key not in self._centres:
            centres = []
            for stride in STRIDES:
                ys, xs = np.mgrid[: height // stride, : width // stride]
                grid = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
                centres.append(np.repeat(grid, ANCHORS_PER_LOCATION, axis=0))
            self._centres[key] = centres
        return self._centres[key]

    def _detect_at(self, frame_bgr: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """SCRFD on the frame letterboxed to `size` on its long side; boxes in frame pixels."""
        h, w = frame_bgr.shape[:2]
        scale = size / max(h, w)
        rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(frame_bgr, (rw, rh), interpolation=interp)
        step = STRIDES[-1]
        ih, iw = -(-rh // step) * step, -(-rw // step) * step
        canvas = np.zeros((ih, iw, 3), np.uint8)  # top-left aligned, zero padded
        canvas[:rh, :rw] = resized
        blob = (canvas[:, :, ::-1].astype(np.float32) - 127.5) / 128.0
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])
        outputs = self._detector.run(None, {self._detector_input: blob})

        boxes, scores = [], []
        centres_by_level = self._anchor_centres(ih, iw)
        for level, (stride, centres) in enumerate(zip(STRIDES, centres_by_level, strict=True)):
            level_scores = outputs[level][0, :, 0]
            keep = level_scores >= self.score_threshold
            if keep.any():
                dist = outputs[level + len(STRIDES)][0][keep] * stride
                c = centres[keep]
                boxes.append(np.concatenate([c - dist[:, :2], c + dist[:, 2:]], axis=1))
                scores.append(level_scores[keep])
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        all_boxes, all_scores = np.concatenate(boxes) / scale, np.concatenate(scores)
        keep = nms(all_boxes, all_scores, self.nms_threshold)
        return all_boxes[keep].astype(np.float32), all_scores[keep].astype(np.float32)

    def detect_boxes(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SCRFD alone: float32 boxes [F, 4] (x0, y0, x1, y1 pixels) and scores [F], best score
        first. Boxes are not clipped to the frame (a face can run past its edge)."""
        for size in self.detect_sizes:
            boxes, scores = self._detect_at(frame_bgr, size)
            if len(boxes):
                break
        return boxes, scores

    def landmarks(self, frame_bgr: np.ndarray, box: np.ndarray) -> np.ndarray:
        """float32 [98, 2]: PFLD's points, in frame pixels, for the face SCRFD boxed as `box`."""
        x0, y0, x1, y1 = (float(v) for v in box)
        bw, bh = x1 - x0, y1 - y0
        side = max(1, int(round(self.crop_scale * max(bw, bh))))
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + self.crop_shift * bh
        crop, left, top = square_crop(frame_bgr, cx, cy, side)
        interp = cv2.INTER_AREA if side > PFLD_SIZE else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (PFLD_SIZE, PFLD_SIZE), interpolation=interp)
        blob = (crop[:, :, ::-1].astype(np.float32) / 255.0 - 0.5) / 0.5
        blob = np.ascontiguousarray(blob.transpose(2, 0, 1)[None])
        out = self._landmarks.run(None, {self._landmarks_input: blob})[0]
        return (out.reshape(-1, 2) * side + np.array([left, top], np.float32)).astype(np.float32)

    def detect(self, frame_bgr: np.ndarray) -> list[Face]:
        """All faces in one BGR uint8 frame, largest confident face (score x area) first.

        `Face.box` is the SCRFD box clipped to the frame; the landmark crop uses the
        unclipped box so a face at the edge keeps its crop centred."""
        h, w = frame_bgr.shape[:2]
        faces = []
        for box, score in zip(*self.detect_boxes(frame_bgr), strict=True):
            points = self.landmarks(frame_bgr, box)
            clipped = np.clip(box, 0, [w, h, w, h]).astype(np.float32)
            faces.append(Face(box=clipped, score=float(score), points=points))
        return sorted(faces, key=lambda f: f.score * f.area, reverse=True)

    def close(self) -> None:
        self._detector = self._landmarks = None

    def __enter__(self) -> OnnxFaceBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
