"""Annotated copies of images: each detection's box outlined in its class colour and tagged
"name: NN%" (TAO's tags), readable on a thumbnail and on a photo of 4000 pixels alike.

Detections are drawn worst first, so the best one's box and tag end up on top where they
overlap others. Line width and font size grow with the image's short side: about TAO's 5 px
boxes on a 1000 px image, never thinner than 2 px. A tag sits on the box's top edge, inside
it when there is no room above, and is shifted to lie wholly inside the image (unless it
is wider than the image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # the runtimes import TensorFlow, which drawing does not need
    from effdet.runtimes import Detections

# Distinct, saturated colours readable on photos; class id picks one (cycling).
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
           (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
           (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128))
MIN_LINE_WIDTH = 2
PIXELS_PER_LINE = 200  # short side / line width: 5 px at 1000 px, as TAO draws
MIN_FONT_SIZE = 10
FONT_PER_LINE = 5  # font size / line width
# Capitals and descenders: every tag of one font gets the same height.
REFERENCE_TEXT = "Ag"


@dataclass(frozen=True)
class Style:
    line_width: int
    font_size: int

    @property
    def padding(self) -> int:
        return max(1, self.line_width // 2)


def style_for(size: tuple[int, int]) -> Style:
    """Line width and font size for an image of `size` (width, height)."""
    line = max(MIN_LINE_WIDTH, round(min(size) / PIXELS_PER_LINE))
    return Style(line, max(MIN_FONT_SIZE, FONT_PER_LINE * line))


@lru_cache(maxsize=8)
def font_of(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's own scalable font (bundled since 10.1): no font file to find or download.
    return ImageFont.load_default(size=size)


def tag_text(label: str, score: float) -> str:
    return f"{label}: {round(100 * score)}%"


def tag_box(box: Sequence[float], text: str, image_size: tuple[int, int],
            style: Style) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), inclusive: the tag of `text` for `box` (x1, y1, x2, y2)."""
    width, height = tag_size(text, style)
    x1, y1, _, _ = pixel_box(box, image_size)
    top = y1 - height if y1 >= height else y1  # on the box's top edge, else just inside it
    left = max(0, min(x1, image_size[0] - width))
    top = max(0, min(top, image_size[1] - height))
    return left, top, left + width - 1, top + height - 1


def tag_size(text: str, style: Style) -> tuple[int, int]:
    left, top, right, bottom = _ink(text, style.font_size)
    return right - left + 2 * style.padding, bottom - top + 2 * style.padding


def draw_detections(image: Image.Image, found: Detections, labels: Sequence[str]) -> Image.Image:
    """A copy of `image` with each detection's box and "name: NN%" tag in its class colour."""
    annotated = image.copy()
    draw = ImageDraw.Draw(annotated)
    style = style_for(image.size)
    font = font_of(style.font_size)
    for i in np.argsort(found.scores, kind="stable"):  # worst first: the best ends on top
        colour = PALETTE[int(found.classes[i]) % len(PALETTE)]
        draw.rectangle(pixel_box(found.boxes[i], image.size), outline=colour,
                       width=style.line_width)
        text = tag_text(labels[i], float(found.scores[i]))
        left, top, right, bottom = tag_box(found.boxes[i], text, image.size, style)
        draw.rectangle((left, top, right, bottom), fill=colour)
        ink_left, ink_top, _, _ = _ink(text, style.font_size)
        draw.text((left + style.padding - ink_left, top + style.padding - ink_top), text,
                  fill=text_colour(colour), font=font, anchor="ls")
    return annotated


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light class colours, white on dark ones (ITU-R BT.601 luma)."""
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue >= 128 else (255, 255, 255)


def _ink(text: str, font_size: int) -> tuple[int, int, int, int]:
    """The box `text` inks around its baseline origin, as tall as REFERENCE_TEXT at least."""
    font = font_of(font_size)
    left, top, right, bottom = font.getbbox(text, anchor="ls")
    _, ref_top, _, ref_bottom = font.getbbox(REFERENCE_TEXT, anchor="ls")
    return int(left), int(min(top, ref_top)), int(right), int(max(bottom, ref_bottom))


def pixel_box(box: Sequence[float], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """`box` (x1, y1, x2, y2) rounded to pixels inside the image, never inverted."""
    width, height = image_size
    x1, x2 = (max(0, min(round(float(v)), width - 1)) for v in (box[0], box[2]))
    y1, y2 = (max(0, min(round(float(v)), height - 1)) for v in (box[1], box[3]))
    return x1, y1, max(x1, x2), max(y1, y2)
