"""dataset_convert: COCO json + images → TFRecord shards in TAO's layout.

Images are sorted by id and image i goes to shard i % num_shards, as TAO's converter
deals them out; within a shard records follow image id. Records are built in worker
processes (reading, integrity check, masks, serialisation and framing all happen there,
without TensorFlow) and come back in order through `imap`, so the output is byte-identical
for the same inputs whatever the number of workers.

Cheap checks (the json, every image file exists) run before anything is written. Image
problems found by the workers are collected over the whole set, then reported together;
no shard is renamed into place unless every image was good (see `effdet.data.shards`).

Workers come from a forkserver, which imports the caller's main module in each worker as
multiprocessing always does outside fork: a script calling dataset_convert needs the usual
`if __name__ == "__main__":` guard and should keep TensorFlow imports out of module level.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from effdet.data.coco import CocoImage, load_coco
from effdet.data.images import ImageProblem, prepare_image
from effdet.data.objects import build_objects
from effdet.data.problems import raise_problems
from effdet.data.shards import ShardWriter
from effdet.data.tfexample import bytes_feature, float_feature, int64_feature, serialize_example
from effdet.data.tfrecord import frame_record
from effdet.errors import EffdetError
from effdet.lifecycle import die_with_parent

log = logging.getLogger("effdet")

Task = tuple[CocoImage, Sequence[Mapping[str, Any]]]
Mapper = Callable[[Callable[[Task], "_Result"], Iterable[Task]], Iterator["_Result"]]


@dataclass(frozen=True)
class ConvertSummary:
    images: int
    boxes: int  # objects written
    skipped_boxes: int  # boxes outside their image or without area: not written
    masks_outside_box: int  # written, but reported in the warnings file
    shards: int
    shard_paths: tuple[Path, ...]
    warnings_file: Path | None


@dataclass(frozen=True)
class _Context:
    image_dir: Path
    categories: Mapping[int, str]
    include_mask: bool


@dataclass(frozen=True)
class _Result:
    image_id: int
    record: bytes = b""
    problem: str | None = None
    boxes: int = 0
    bad_boxes: tuple[int, ...] = ()
    bad_masks: tuple[int, ...] = ()


def dataset_convert(
    image_dir: Path,
    annotations_file: Path,
    output_dir: Path,
    tag: str | None = None,
    num_shards: int = 256,
    include_mask: bool = False,
    workers: int | None = None,
) -> ConvertSummary:
    """Convert a COCO dataset to `output_dir/<tag>-%05d-of-%05d.tfrecord` shards.

    `tag` defaults to the annotation file's stem; the shard count is capped at the number
    of images; `workers` defaults to the CPUs this process may use. Raises EffdetError for
    any problem with the inputs, leaving no new shard behind.
    """
    image_dir, annotations_file, output_dir = Path(image_dir), Path(annotations_file), Path(output_dir)
    tag = annotations_file.stem if tag is None else tag
    if not tag or tag.startswith(".") or "/" in tag or os.sep in tag:
        raise EffdetError(f"--tag {tag!r}: must be a plain file-name prefix")
    if num_shards < 1:
        raise EffdetError(f"--num_shards {num_shards}: must be at least 1")
    if not image_dir.is_dir():
        raise EffdetError(f"{image_dir}: image directory not found")
    dataset = load_coco(annotations_file, require_segmentation=include_mask)
    where = str(annotations_file)
    if not dataset.images:
        raise EffdetError(f"{where}: no images")
    raise_problems(
        where,
        [
            f"image {im.id} '{im.file_name}': missing file in {image_dir}"
            for im in dataset.images
            if not (image_dir / im.file_name).is_file()
        ],
    )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EffdetError(f"{output_dir}: cannot create output directory: {e.strerror}") from None

    n = len(dataset.images)
    num_shards = min(num_shards, n)
    workers = min(workers or len(os.sched_getaffinity(0)), n)
    context = _Context(image_dir, dataset.categories, include_mask)
    tasks = ((im, dataset.annotations[im.id]) for im in dataset.images)
    problems: list[str] = []
    warnings: dict[str, dict[str, list[int]]] = {}
    boxes = skipped = bad_masks = 0
    with ShardWriter(output_dir, tag, num_shards) as writer, _mapper(workers, n) as map_:
        results = map_(partial(_convert_one, context), tasks)
        progress = tqdm(results, total=n, unit="img", file=sys.stderr, disable=not sys.stderr.isatty())
        for i, result in enumerate(progress):
            if result.problem is not None:
                problems.append(result.problem)
                continue
            if not problems:  # once the run is doomed, only keep checking
                writer.append(i % num_shards, result.record)
            boxes += result.boxes
            skipped += len(result.bad_boxes)
            bad_masks += len(result.bad_masks)
            if result.bad_boxes or result.bad_masks:
                warnings[str(result.image_id)] = {
                    "box": list(result.bad_boxes),
                    "mask": list(result.bad_masks),
                }
        raise_problems(where, problems)
        # Before the shards: a crash in between must not leave new shards beside old warnings.
        warnings_file = _write_warnings(output_dir / f"{tag}_warnings.json", warnings)
        writer.commit()

    log.info(
        "dataset_convert: %d images, %d objects in %d shards of %s",
        n, boxes, num_shards, output_dir / f"{tag}-*.tfrecord",
    )
    if warnings_file:
        log.warning(
            "dataset_convert: %d boxes outside their image or without area were not written; "
            "%d masks extend outside their box; see %s",
            skipped, bad_masks, warnings_file,
        )
    return ConvertSummary(
        images=n,
        boxes=boxes,
        skipped_boxes=skipped,
        masks_outside_box=bad_masks,
        shards=num_shards,
        shard_paths=tuple(writer.paths),
        warnings_file=warnings_file,
    )


@contextlib.contextmanager
def _mapper(workers: int, n: int) -> Iterator[Mapper]:
    """An ordered, lazy map over tasks: in this process, or over a pool of `workers`."""
    if workers <= 1:
        yield map
        return
    # forkserver: workers must not inherit a parent that may have TensorFlow's threads
    # running (fork) nor re-import the caller's __main__ (spawn); preloading this module
    # makes each worker start in milliseconds.
    mp = multiprocessing.get_context("forkserver")
    mp.set_forkserver_preload(["effdet.data.worker_signals", __name__])
    chunksize = max(1, min(16, n // (8 * workers)))
    with mp.Pool(workers, initializer=_worker_start) as pool:
        yield partial(pool.imap, chunksize=chunksize)


def _worker_start() -> None:
    """Ctrl-C reaches the whole process group: only the parent reports it (one line), the
    workers ignore it from birth (`effdet.data.worker_signals`) and end when the pool does. A
    worker whose forkserver is gone (the parent was killed) is killed too instead of
    lingering. SIGTERM keeps its default, a quiet exit, which is also how Pool.terminate
    stops the workers."""
    die_with_parent()


def _convert_one(context: _Context, task: Task) -> _Result:
    """Build one framed record; runs in a worker process."""
    image, annotations = task
    name = f"image {image.id} '{image.file_name}'"
    try:
        data = (context.image_dir / image.file_name).read_bytes()
        prepared = prepare_image(data)
    except OSError as e:
        return _Result(image.id, problem=f"{name}: cannot read: {e.strerror or e}")
    except ImageProblem as e:
        return _Result(image.id, problem=f"{name}: {e}")
    if (prepared.width, prepared.height) != (image.width, image.height):
        return _Result(
            image.id,
            problem=f"{name}: file is {prepared.width}x{prepared.height} but the json says "
            f"{image.width}x{image.height}",
        )
    objects = build_objects(
        annotations, image.width, image.height, context.categories, context.include_mask
    )
    features = {
        "image/height": int64_feature([image.height]),
        "image/width": int64_feature([image.width]),
        "image/filename": bytes_feature([image.file_name.encode()]),
        "image/source_id": bytes_feature([str(image.id).encode()]),
        "image/key/sha256": bytes_feature([hashlib.sha256(prepared.encoded).hexdigest().encode()]),
        "image/encoded": bytes_feature([prepared.encoded]),
        "image/format": bytes_feature([prepared.format.encode()]),
        "image/object/bbox/xmin": float_feature(objects.xmin),
        "image/object/bbox/xmax": float_feature(objects.xmax),
        "image/object/bbox/ymin": float_feature(objects.ymin),
        "image/object/bbox/ymax": float_feature(objects.ymax),
        "image/object/class/text": bytes_feature(objects.class_text),
        "image/object/class/label": int64_feature(objects.class_label),
        "image/object/is_crowd": int64_feature(objects.is_crowd),
        "image/object/area": float_feature(objects.area),
    }
    if context.include_mask:
        features["image/object/mask"] = bytes_feature(objects.masks_png)
    return _Result(
        image.id,
        record=frame_record(serialize_example(features)),
        boxes=len(objects.xmin),
        bad_boxes=tuple(objects.bad_boxes),
        bad_masks=tuple(objects.bad_masks),
    )


def _write_warnings(path: Path, warnings: Mapping[str, Mapping[str, list[int]]]) -> Path | None:
    """Write TAO's warnings file, or remove a stale one when there is nothing to say."""
    if not warnings:
        path.unlink(missing_ok=True)
        return None
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text(json.dumps(warnings, indent=2) + "\n")
    os.replace(temp, path)
    return path
