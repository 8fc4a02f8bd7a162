"""tf.data input pipelines over dataset_convert's TFRecord shards (TAO's feature keys).

Training stream — a pure function of (tf_random_seed, k), k the global image index:
  * The shards are indexed once when the dataset is built (a scan of the record headers:
    seeks, no payload reads), giving N records and each one's (file, byte offset, length).
  * The stream is an endless sequence of passes over the N records; pass p visits them in
    the order `numpy.random.default_rng([seed, p]).permutation(N)` — a full uniform shuffle
    with no shuffle buffer, so it does not depend on TF's global seed or on buffer sizes.
  * Image k = record perm_{k // N}[k % N], read at its byte offset (a small Python generator:
    seek + read of the serialized bytes; everything after it is TF ops in parallel maps).
  * Augmentation draws come from `tf.random.stateless_uniform(seed=[seed, k])`, so parallel
    maps stay deterministic; `options.deterministic = True` keeps the order.
  * Resuming at `start_step` starts the stream at its first image: O(1), nothing is read.
  * With an `input_context`, pipeline i of n takes the images k = i, i + n, i + 2n, ... and
    batches them with the given (per-replica) batch size; computing that size
    (`input_context.get_per_replica_batch_size`) is the caller's job.

Record checksums are not verified on the training path (the generator reads raw payloads);
a damaged record fails to parse or decode instead. Wrap iteration in `data_errors()` to turn
the data errors this module can attribute into one-line `EffdetError`s.
"""

from __future__ import annotations

import contextlib
import logging
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from effdet.anchors import Anchors, assign_targets
from effdet.data.preprocess import fit_size, normalize_image, pad_to, resize_and_pad
from effdet.data.records import FEATURES
from effdet.errors import EffdetError
from effdet.spec.config import AugmentationConfig, DatasetConfig, ExperimentConfig

logger = logging.getLogger("effdet")

# Prefix of in-graph assertion messages that `data_errors` turns into EffdetErrors.
_MARKER = "effdet-data: "
_PARSED_KEYS = (
    "image/encoded", "image/filename", "image/source_id",
    "image/object/bbox/ymin", "image/object/bbox/xmin",
    "image/object/bbox/ymax", "image/object/bbox/xmax",
    "image/object/class/label", "image/object/is_crowd",
)
# Signatures of the formats tf.io.decode_image reads (JPEG, PNG, GIF, BMP).
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")
_TFRECORD_HEADER = 12  # uint64 length + uint32 masked crc of the length
_TFRECORD_FOOTER = 4  # uint32 masked crc of the payload


# ---------------------------------------------------------------------------- parsing


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """One serialized tf.train.Example -> its training/eval fields.

    encoded (string), filename (string), source_id (string, as stored),
    boxes float32 [N, 4] normalised [ymin, xmin, ymax, xmax], classes int32 [N] (category
    ids as in the json), is_crowd int32 [N].
    """
    parsed = tf.io.parse_single_example(serialized, {k: FEATURES[k] for k in _PARSED_KEYS})

    def dense(key: str) -> tf.Tensor:
        return tf.sparse.to_dense(parsed[key])

    boxes = tf.stack([dense(f"image/object/bbox/{k}") for k in ("ymin", "xmin", "ymax", "xmax")],
                     axis=-1)
    return {
        "encoded": parsed["image/encoded"],
        "filename": parsed["image/filename"],
        "source_id": parsed["image/source_id"],
        "boxes": tf.reshape(boxes, [-1, 4]),
        "classes": tf.cast(dense("image/object/class/label"), tf.int32),
        "is_crowd": tf.cast(dense("image/object/is_crowd"), tf.int32),
    }


def decode_image(parsed: dict[str, tf.Tensor], origin: tf.Tensor | str = "") -> tf.Tensor:
    """uint8 RGB [h, w, 3]; a payload that is no known image format fails with a message
    naming the image and `origin` (its shard), which `data_errors` reports."""
    encoded = parsed["encoded"]
    known = tf.reduce_any([tf.strings.substr(encoded, 0, len(m)) == m for m in _IMAGE_MAGIC])
    message = tf.strings.join([_MARKER, "cannot decode image ", parsed["filename"],
                               " (source_id ", parsed["source_id"], ") in ", origin])
    with tf.control_dependencies([tf.debugging.Assert(known, [message])]):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Re-raise input-data failures seen while iterating a pipeline as one-line EffdetErrors.

    Other TF errors (the model's) pass through untouched.
    """
    try:
        yield
    except tf.errors.OpError as error:
        message = _data_error_message(error)
        if message is None:
            raise
        raise EffdetError(message) from None


def _data_error_message(error: tf.errors.OpError) -> str | None:
    found = re.search(re.escape(_MARKER) + r"([^\]\n]*)", error.message)
    if found:
        # Eager execution prints the Assert data as a quoted string.
        return found.group(1).strip().rstrip("'\"")
    if isinstance(error, tf.errors.DataLossError):
        return f"corrupt TFRecord data: {error.message.splitlines()[0]}"
    return None


def match_files(pattern: str, field: str) -> list[str]:
    """The sorted files matching `pattern`; EffdetError when there are none."""
    if not pattern:
        raise EffdetError(f"{field} is empty: set it to the TFRecord shards' file pattern")
    try:
        files = sorted(tf.io.gfile.glob(pattern))
    except tf.errors.OpError:
        files = []
    if not files:
        raise EffdetError(f"{field} {pattern}: no TFRecord files match")
    return files


# ---------------------------------------------------------------------- record index


@dataclass(frozen=True)
class RecordIndex:
    """Where every serialized record lives, in shard order."""

    files: tuple[str, ...]
    file_ids: np.ndarray  # [N] int32 index into files
    offsets: np.ndarray  # [N] int64 byte offset of the payload
    lengths: np.ndarray  # [N] int64 payload length

    def __len__(self) -> int:
        return len(self.offsets)


def index_records(files: list[str]) -> RecordIndex:
    """Scan the TFRecord framing of `files` (headers only). A file whose framing does not add
    up (truncated, or not a TFRecord file) raises EffdetError naming it."""
    file_ids, offsets, lengths = [], [], []
    for file_id, path in enumerate(files):
        for offset, length in _scan_tfrecord(path):
            file_ids.append(file_id)
            offsets.append(offset)
            lengths.append(length)
    return RecordIndex(tuple(files), np.asarray(file_ids, np.int32),
                       np.asarray(offsets, np.int64), np.asarray(lengths, np.int64))


def _scan_tfrecord(path: str) -> Iterator[tuple[int, int]]:
    with tf.io.gfile.GFile(path, "rb") as f:
        size = f.size()
        position = 0
        while position < size:
            header = f.read(_TFRECORD_HEADER)
            length = struct.unpack("<Q", header[:8])[0] if len(header) == _TFRECORD_HEADER else size
            end = position + _TFRECORD_HEADER + length + _TFRECORD_FOOTER
            if end > size:  # also what a non-TFRecord file's "length" field gives
                raise EffdetError(
                    f"{path}: truncated or not a TFRecord file (record at byte {position})")
            yield position + _TFRECORD_HEADER, length
            position = end
            f.seek(position)


def pass_order(seed: int, pass_index: int, num_records: int) -> np.ndarray:
    """The record order of one pass over the data: a permutation fixed by (seed, pass)."""
    return np.random.default_rng([seed % 2**63, pass_index]).permutation(num_records)


def _record_stream(index: RecordIndex, seed: int, first: int,
                   stride: int) -> Iterator[tuple[int, bytes, str]]:
    """(k, serialized record, origin) for k = first, first + stride, ... forever."""
    handles: dict[int, tf.io.gfile.GFile] = {}
    order_pass, order = -1, np.empty(0, np.int64)
    try:
        for k in range(first, 2**62, stride):
            pass_index, position = divmod(k, len(index))
            if pass_index != order_pass:
                order_pass, order = pass_index, pass_order(seed, pass_index, len(index))
            record = order[position]
            file_id = int(index.file_ids[record])
            if file_id not in handles:
                handles[file_id] = tf.io.gfile.GFile(index.files[file_id], "rb")
            handle = handles[file_id]
            handle.seek(int(index.offsets[record]))
            payload = handle.read(int(index.lengths[record]))
            origin = index.files[file_id]
            if len(payload) != index.lengths[record]:
                raise EffdetError(f"{_MARKER}{origin}: shrank while reading it")
            yield k, payload, origin
    finally:
        for handle in handles.values():
            handle.close()


# ---------------------------------------------------------------- training transforms


def augment(image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor, image_size: tuple[int, int],
            augmentation: AugmentationConfig,
            seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """automl's training geometry: random flip, random scale, random crop, normalise, pad.

    image: uint8 [h, w, 3]; boxes: [N, 4] normalised [ymin, xmin, ymax, xmax]; classes [N];
    seed: int [2] stateless seed. The image is resized so it fits inside
    image_size * s (s uniform in [random_crop_min_scale, random_crop_max_scale]), a random
    image_size window of it is kept and the rest padded with the mean colour. Returns the
    normalised float32 [H, W, 3] image and the surviving boxes in its pixels (clipped to the
    visible image; boxes left with no area are dropped together with their classes).
    """
    draws = tf.random.stateless_uniform([4], seed=seed)
    if augmentation.rand_hflip:
        flip = draws[0] < 0.5
        image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
        mirrored = tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], -1)
        boxes = tf.where(flip, mirrored, boxes)

    low, high = augmentation.random_crop_min_scale, augmentation.random_crop_max_scale
    random_scale = low + (high - low) * draws[1]
    shape = tf.shape(image)
    target = (random_scale * image_size[0], random_scale * image_size[1])
    _, height, width = fit_size(shape[0], shape[1], target)
    top = _random_offset(height - image_size[0], draws[2])
    left = _random_offset(width - image_size[1], draws[3])
    resized = tf.image.resize(image, tf.stack([height, width]), method="bilinear")
    window = resized[top:top + image_size[0], left:left + image_size[1]]
    # Normalising after the crop is cheaper and equal: it is per-pixel affine.
    out_image = pad_to(normalize_image(window), image_size)

    size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    shift = tf.cast(tf.stack([top, left, top, left]), tf.float32)
    visible = tf.cast(tf.stack([tf.minimum(height - top, image_size[0]),
                                tf.minimum(width - left, image_size[1])]), tf.float32)
    pixels = tf.clip_by_value(boxes * size - shift, 0.0, tf.tile(visible, [2]))
    keep = (pixels[:, 2] > pixels[:, 0]) & (pixels[:, 3] > pixels[:, 1])
    return out_image, tf.boolean_mask(pixels, keep), tf.boolean_mask(classes, keep)


def _random_offset(slack: tf.Tensor, draw: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.cast(tf.maximum(slack, 0), tf.float32) * draw, tf.int32)


def pad_instances(boxes: tf.Tensor, classes: tf.Tensor,
                  max_instances: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Truncate/pad to exactly max_instances rows: boxes with zeros, classes with -1 (which
    `assign_targets` treats as padding)."""
    boxes, classes = boxes[:max_instances], classes[:max_instances]
    missing = max_instances - tf.shape(boxes)[0]
    boxes = tf.pad(boxes, [[0, missing], [0, 0]])
    classes = tf.pad(classes, [[0, missing]], constant_values=-1)
    return tf.ensure_shape(boxes, [max_instances, 4]), tf.ensure_shape(classes, [max_instances])


def train_example(serialized: tf.Tensor, k: tf.Tensor, config: ExperimentConfig,
                  origin: tf.Tensor | str = "") -> dict[str, tf.Tensor]:
    """Image k of the training stream before target assignment.

    Returns image float32 [H, W, 3] (normalised), boxes float32 [M, 4] in network-input
    pixels [ymin, xmin, ymax, xmax] and classes int32 [M] (category ids, -1 = padding),
    M = max_instances_per_image.
    """
    dataset = config.dataset_config
    parsed = parse_example(serialized)
    boxes, classes = parsed["boxes"], parsed["classes"]
    if dataset.skip_crowd_during_training:
        keep = tf.equal(parsed["is_crowd"], 0)
        boxes, classes = tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep)
    with tf.control_dependencies(check_objects(parsed, classes, dataset, origin)):
        boxes = tf.identity(boxes)
    seed = tf.stack([tf.constant(config.training_config.tf_random_seed, tf.int64),
                     tf.cast(k, tf.int64)])
    image, boxes, classes = augment(decode_image(parsed, origin), boxes, classes,
                                    tuple(dataset.image_size), config.augmentation_config, seed)
    boxes, classes = pad_instances(boxes, classes, dataset.max_instances_per_image)
    return {"image": image, "boxes": boxes, "classes": classes}


def check_objects(parsed: dict[str, tf.Tensor], classes: tf.Tensor, dataset: DatasetConfig,
                  origin: tf.Tensor | str) -> list[tf.Operation]:
    """Fail on the first record whose labels the model cannot learn as given: a category id
    outside 1..num_classes-1 (it would be trained as background), or more objects than
    max_instances_per_image (TAO's dataloader stops there too, dataloader.py:240-242; here the
    count is taken before augmentation, so the check does not depend on the random crop)."""
    image = tf.strings.join(["image ", parsed["filename"], " (source_id ", parsed["source_id"],
                             ") in ", origin])
    labels = parsed["classes"]
    in_range = tf.logical_and(labels >= 1, labels < dataset.num_classes)
    bad = tf.concat([tf.boolean_mask(labels, tf.logical_not(in_range)), [0]], axis=0)
    count = tf.size(classes)
    return [
        tf.debugging.Assert(tf.reduce_all(in_range), [tf.strings.join([
            _MARKER, "category id ", tf.strings.as_string(bad[0]), " of ", image, " is outside 1..",
            str(dataset.num_classes - 1), " (dataset_config.num_classes is ",
            str(dataset.num_classes), ", the background included)"])]),
        tf.debugging.Assert(count <= dataset.max_instances_per_image, [tf.strings.join([
            _MARKER, image, " has ", tf.strings.as_string(count),
            " objects, more than dataset_config.max_instances_per_image (",
            str(dataset.max_instances_per_image), "); raise it"])]),
    ]


# ------------------------------------------------------------------------- datasets


def train_dataset(config: ExperimentConfig, anchors: Anchors, *, batch_size: int,
                  start_step: int = 0,
                  input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Endless, deterministic, resumable training batches (see the module docstring).

    Yields (images float32 [B, H, W, 3], labels) with labels the batched `assign_targets`
    output: cls_targets_{l} int32 [B, h, w, A], box_targets_{l} float32 [B, h, w, A*4],
    num_positives float32 [B]. `batch_size` is per replica; step s of this pipeline is
    its images [s * batch_size * r, (s + 1) * batch_size * r) with r the replicas it feeds.
    """
    dataset_config = config.dataset_config
    image_size = tuple(dataset_config.image_size)
    if tuple(anchors.image_size) != image_size:
        raise ValueError(f"anchors are for {anchors.image_size}, the dataset for {image_size}")
    pattern = dataset_config.training_file_pattern
    files = match_files(pattern, "dataset_config.training_file_pattern")
    index = index_records(files)
    if not len(index):
        raise EffdetError(f"{pattern}: the TFRecord files hold no records")
    logger.info("training data: %d records in %d files", len(index), len(files))

    pipelines, pipeline_id, replicas = 1, 0, 1
    if input_context is not None:
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
        replicas = max(1, input_context.num_replicas_in_sync // pipelines)
    first = pipeline_id + pipelines * start_step * batch_size * replicas
    seed = config.training_config.tf_random_seed

    def records() -> Iterator[tuple[int, bytes, str]]:
        return _record_stream(index, seed, first, pipelines)

    def to_training(k: tf.Tensor, serialized: tf.Tensor,
                    origin: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        example = train_example(serialized, k, config, origin)
        return example["image"], assign_targets(example["boxes"], example["classes"], anchors)

    stream = tf.data.Dataset.from_generator(records, output_signature=(
        tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string)))
    batches = (stream.map(to_training, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size, drop_remainder=True)
               .prefetch(tf.data.AUTOTUNE))
    return batches.with_options(_deterministic())


def eval_dataset(config: ExperimentConfig, *, batch_size: int,
                 limit: int | None = None) -> tf.data.Dataset:
    """Validation batches in shard order, no augmentation, the last batch possibly short.

    Yields (images float32 [B, H, W, 3], meta) with meta source_id int64 [B] (the COCO
    image id), image_scale float32 [B] (resized / original: divide detections by it) and
    original_size int32 [B, 2] (height, width). `limit` keeps the first N images.
    """
    pattern = config.dataset_config.validation_file_pattern
    files = match_files(pattern, "dataset_config.validation_file_pattern")
    image_size = tuple(config.dataset_config.image_size)

    def with_origin(path: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(path).map(lambda serialized: (serialized, path))

    def to_eval(serialized: tf.Tensor, origin: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        parsed = parse_example(serialized)
        image = decode_image(parsed, origin)
        padded, scale = resize_and_pad(normalize_image(image), image_size)
        return padded, {
            "source_id": tf.strings.to_number(parsed["source_id"], tf.int64),
            "image_scale": scale,
            "original_size": tf.shape(image)[:2],
        }

    records = tf.data.Dataset.from_tensor_slices(files).flat_map(with_origin)
    if limit is not None:
        records = records.take(limit)
    batches = (records.map(to_eval, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size)
               .prefetch(tf.data.AUTOTUNE))
    return batches.with_options(_deterministic())


def _deterministic() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options
