"""The detector interface shared by the Keras, ONNX Runtime and TensorRT runtimes.

Every runtime takes decoded RGB uint8 images of any size and returns detections in the
original image's pixels, so callers never see the network's input geometry. Preprocessing
is the training pipeline's: keep the aspect ratio, resize bilinearly into image_size,
anchor at the top-left and pad bottom/right with the mean colour (0 after normalisation).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from effdet.data.preprocess import fit_size, normalize_image


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first, all above the detector's min_score."""

    boxes: np.ndarray  # [K, 4] float32 x1, y1, x2, y2 in original image pixels
    scores: np.ndarray  # [K] float32
    classes: np.ndarray  # [K] int64 category ids (head channel + 1)

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass(frozen=True)
class Letterboxed:
    """A batch ready for the network, with what is needed to map boxes back."""

    images: np.ndarray  # [B, H, W, 3] float32
    scales: np.ndarray  # [B] float32, resized / original
    sizes: np.ndarray  # [B, 2] int32 original (height, width)


@dataclass
class Detector(abc.ABC):
    """A loaded model: `detect` turns a batch of RGB uint8 images into Detections."""

    image_size: tuple[int, int]  # network input (height, width)
    min_score: float
    class_names: dict[int, str] = field(default_factory=dict)  # from the model, when it has them

    @abc.abstractmethod
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """images: RGB uint8 [h, w, 3] arrays, any sizes; one Detections per image."""

    def close(self) -> None:
        """Release runtime resources (device memory, sessions); the default holds none."""


def letterbox(images: Sequence[np.ndarray], image_size: tuple[int, int],
              pad_value: Sequence[float], *, normalize: bool = False) -> Letterboxed:
    """Resize each image into image_size (aspect kept) and pad bottom/right with pad_value.

    With normalize=True the image is normalised before resizing and padding, exactly as the
    training pipeline does; bilinear resizing is linear, so normalising afterwards (inside an
    exported graph) gives the same pixels when the padding is the mean colour.
    """
    height, width = image_size
    batch = np.empty((len(images), height, width, 3), np.float32)
    batch[...] = np.asarray(pad_value, np.float32)
    scales = np.empty(len(images), np.float32)
    sizes = np.empty((len(images), 2), np.int32)
    for i, image in enumerate(images):
        pixels = normalize_image(image) if normalize else tf.cast(image, tf.float32)
        scale, new_h, new_w = fit_size(image.shape[0], image.shape[1], image_size)
        resized = tf.image.resize(pixels, tf.stack([new_h, new_w]), method="bilinear").numpy()
        batch[i, :resized.shape[0], :resized.shape[1]] = resized
        scales[i] = float(scale)
        sizes[i] = image.shape[:2]
    return Letterboxed(batch, scales, sizes)


def from_outputs(outputs: Mapping[str, np.ndarray], index: int,
                 min_score: float) -> Detections:
    """Image `index`'s rows of the four exported outputs scoring strictly above min_score.

    Strictly above, as postprocess' own score floor. Boxes stay in the outputs' pixels.
    """
    count = int(np.asarray(outputs["num_detections"])[index].reshape(-1)[0])
    scores = np.asarray(outputs["detection_scores"][index, :count], np.float32)
    classes = np.asarray(outputs["detection_classes"][index, :count]).astype(np.int64)
    boxes = np.asarray(outputs["detection_boxes"][index, :count], np.float32).reshape(-1, 4)
    keep = scores > min_score
    return Detections(boxes[keep][:, [1, 0, 3, 2]], scores[keep], classes[keep])


def to_original(detections: Detections, scale: float, size: Sequence[int]) -> Detections:
    """Network-input boxes → original-image pixels (divide by resized/original), clipped;
    boxes left without area (they were in the padding) are dropped."""
    boxes = np.clip(detections.boxes / np.float32(scale), 0.0,
                    np.array([size[1], size[0], size[1], size[0]], np.float32))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return Detections(boxes[keep], detections.scores[keep], detections.classes[keep])
