"""Annotated images, read back from their pixels: the best detection's tag is whole, inside
the image and on top of the others; lines and text grow with the image."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from effdet.annotate import (
    PALETTE,
    draw_detections,
    style_for,
    tag_box,
    tag_text,
    text_colour,
)
from effdet.runtimes.base import Detections

BACKGROUND = (30, 30, 30)  # in no class colour and neither text colour
NAMES = {1: "diamond", 3: "circle", 4: "triangle"}
SIZES = [(128, 128), (4000, 3000)]


def detections(rows: list[tuple[tuple[float, float, float, float], float, int]]) -> Detections:
    """Detections from (box, score, class id) rows, in the given order."""
    return Detections(np.array([r[0] for r in rows], np.float32),
                      np.array([r[1] for r in rows], np.float32),
                      np.array([r[2] for r in rows], np.int64))


def draw(size: tuple[int, int], found: Detections) -> np.ndarray:
    image = Image.new("RGB", size, BACKGROUND)
    return np.asarray(draw_detections(image, found, [NAMES[int(c)] for c in found.classes]))


def crop(pixels: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    left, top, right, bottom = rect
    return pixels[top:bottom + 1, left:right + 1]


def edge_scene(size: tuple[int, int]) -> tuple[Detections, tuple[int, int, int, int]]:
    """The best detection in the top-right corner (no room above its box, nor to the right
    for its tag) and a worse one whose tag lands on the best's; (detections, best's tag)."""
    width, height = size
    side = min(size)
    best = ((width - 0.1 * side, 0.0, float(width), 0.3 * height), 0.97, 1)
    worse = ((width - 0.15 * side, 0.02 * side, width - 0.01 * side, 0.35 * height), 0.55, 3)
    found = detections([best, worse])  # best first, as every runtime returns them
    rect = tag_box(best[0], tag_text(NAMES[1], 0.97), size, style_for(size))
    return found, rect


@pytest.mark.parametrize("size", SIZES)
def test_best_tag_is_whole_inside_the_image_and_on_top(size):
    found, rect = edge_scene(size)
    width, height = size
    left, top, right, bottom = rect
    assert 0 <= left and right == width - 1 and top == 0 and bottom < height  # shifted in
    pixels = draw(size, found)
    tag = crop(pixels, rect)
    fill, ink = np.array(PALETTE[1]), np.array(text_colour(PALETTE[1]))
    # Its whole frame of fill colour is in the image: no edge is cut off.
    ring = np.concatenate([tag[0], tag[-1], tag[:, 0], tag[:, -1]])
    assert (ring == fill).all()
    assert (np.abs(tag.astype(int) - ink).sum(axis=-1) < 60).sum() > 0.03 * tag[..., 0].size
    # The worse tag lands on the best one's place: only the drawing order keeps it hidden.
    worse_alone = draw(size, detections([(tuple(found.boxes[1]), 0.55, 3)]))
    assert (crop(worse_alone, rect) == PALETTE[3]).all(axis=-1).mean() > 0.15
    # Every pixel of the tag is as when the best detection is drawn alone, away from any
    # edge: the text is complete and nothing of the other detection shows over it.
    width_tag, height_tag = right - left + 1, bottom - top + 1
    box = (0.3 * width, 0.4 * height, 0.3 * width + 0.2 * min(size), 0.7 * height)
    alone = draw(size, detections([(box, 0.97, 1)]))
    alone_rect = tag_box(box, tag_text(NAMES[1], 0.97), size, style_for(size))
    assert alone_rect[2] - alone_rect[0] + 1 == width_tag
    assert alone_rect[1] > 0 and alone_rect[3] - alone_rect[1] + 1 == height_tag  # above
    np.testing.assert_array_equal(tag, crop(alone, alone_rect))


@pytest.mark.parametrize("size, line", [((128, 128), 2), ((1000, 800), 4), ((1000, 1000), 5),
                                        ((4000, 3000), 15)])
def test_line_width_and_text_grow_with_the_short_side(size, line):
    width, height = size
    box = (0.3 * width, 0.4 * height, 0.7 * width, 0.8 * height)
    pixels = draw(size, detections([(box, 0.5, 3)]))
    colour = np.array(PALETTE[3])
    row = pixels[round(0.6 * height)]
    drawn = np.flatnonzero((row == colour).all(axis=-1))
    assert drawn[0] == round(box[0]) and drawn[drawn < width // 2][-1] == round(box[0]) + line - 1
    # The tag sits on the box's top edge: its column of fill colour above the box.
    column = pixels[:round(box[1]), round(box[0])]
    above = (column == colour).all(axis=-1)[::-1]
    tag_height = int(np.argmin(above))
    font = style_for(size).font_size
    assert font == max(10, 5 * line)
    assert font <= tag_height <= 2 * font


def test_text_size_is_readable_from_a_thumbnail_to_a_photo():
    small, large = style_for((128, 128)), style_for((4000, 3000))
    assert small.line_width == 2 and small.font_size == 10
    assert large.font_size / 3000 > 0.02  # a photo's tags read at screen size
    assert large.font_size >= 5 * small.font_size


def test_tag_names_the_class_and_the_score_in_percent():
    assert tag_text("diamond", 0.974) == "diamond: 97%"
    assert tag_text("RBC", 1.0) == "RBC: 100%" and tag_text("x", 0.305) == "x: 30%"


def test_a_tag_goes_inside_the_box_top_edge_only_without_room_above():
    style = style_for((128, 128))
    _, top_above, _, bottom_above = tag_box((20, 60, 90, 100), "circle: 50%", (128, 128), style)
    assert bottom_above == 59 and top_above > 0
    left, top_inside, _, _ = tag_box((-5, 3, 90, 100), "circle: 50%", (128, 128), style)
    assert top_inside == 3 and left == 0
