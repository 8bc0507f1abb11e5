"""Card-face images of the visual AP: 1-bit PNGs of the printed fields, a JPEG 2000 face.

Real cards hold the name, address, security code and My Number as 1-bit PNGs and the photo as a
greyscale JPEG 2000 in a JP2 container (docs/card-interface.md §4.7). The images here are real, decodable files,
but the emulator carries no Japanese font (Pillow's built-in font has Latin only, and a system
font would make the bytes depend on the machine). So:

* ASCII, and full-width ASCII forms (the address's block numbers), are drawn with Pillow's fixed
  6x11 bitmap font: the same glyph width real cards use (a 12-digit My Number is 72x12 pixels,
  a security code 24x12, as measured by MCARD).
* Any other character (kanji, kana) is drawn as a 12x12 "glyph box": a frame with a 4x4 dot
  pattern from the low 16 bits of its code point, so that different characters look different
  and the same text always gives the same bytes.
* The face is a simple drawn silhouette whose proportions are derived from non-secret persona
  values (never from the My Number or the security code), so it is stable per persona.
"""

from __future__ import annotations

import hashlib
import io
import random
import unicodedata
from functools import cache
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from .persona import Persona

__all__ = [
    "address_png",
    "face_jp2",
    "my_number_png",
    "name_png",
    "render_text_png",
    "security_code_png",
]

LINE_HEIGHT = 12
NARROW = 6  # an ASCII cell: the bitmap font's advance
WIDE = 12  # a full-width cell
ADDRESS_WRAP = 16  # full-width cells per address line

_INK, _PAPER = 0, 1


@cache
def _font() -> ImageFont.ImageFont:
    # The bitmap font is built into Pillow and identical on every machine, unlike FreeType output.
    return ImageFont.load_default_imagefont()


def _ascii_form(ch: str) -> str | None:
    """The printable ASCII character `ch` stands for (full-width forms included), if any."""
    folded = unicodedata.normalize("NFKC", ch)
    if len(folded) == 1 and " " <= folded <= "~":
        return folded
    return None


def _cells(line: str) -> list[tuple[str, int]]:
    """(character, cell width) for every character: narrow for ASCII, wide for everything else."""
    return [(ch, NARROW if ch.isascii() else WIDE) for ch in line]


def _draw_glyph_box(draw: ImageDraw.ImageDraw, x: int, y: int, code_point: int) -> None:
    draw.rectangle((x + 1, y + 1, x + 10, y + 10), outline=_INK)
    bits = code_point & 0xFFFF
    for i in range(16):
        if bits >> i & 1:
            dx, dy = x + 2 + 2 * (i % 4), y + 2 + 2 * (i // 4)
            draw.rectangle((dx, dy, dx + 1, dy + 1), fill=_INK)


def render_text_png(text: str, *, wrap: int | None = None) -> bytes:
    """`text` as a 1-bit PNG, one 12-pixel line per line; `wrap` limits a line to that many
    wide cells (a narrow cell counts half)."""
    lines: list[list[tuple[str, int]]] = []
    for paragraph in text.split("\n"):
        line: list[tuple[str, int]] = []
        for cell in _cells(paragraph):
            if wrap is not None and line and sum(w for _, w in line) + cell[1] > wrap * WIDE:
                lines.append(line)
                line = []
            line.append(cell)
        lines.append(line)
    width = max(1, *(sum(w for _, w in line) for line in lines))
    image = Image.new("1", (width, LINE_HEIGHT * len(lines)), _PAPER)
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        x, y = 0, row * LINE_HEIGHT
        for ch, cell in line:
            ascii_ch = _ascii_form(ch)
            if ascii_ch is not None and ascii_ch != " ":
                # Centre a narrow glyph in a wide cell (full-width digits of the address).
                draw.text((x + (cell - NARROW) // 2, y), ascii_ch, font=_font(), fill=_INK)
            elif ascii_ch is None and not ch.isspace():
                _draw_glyph_box(draw, x, y, ord(ch))
            x += cell
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def name_png(persona: Persona) -> bytes:
    """The name as printed (family, U+3000, given)."""
    return render_text_png(persona.name)


def address_png(persona: Persona) -> bytes:
    """The address as printed, wrapped at 16 full-width characters."""
    return render_text_png(persona.address, wrap=ADDRESS_WRAP)


def security_code_png(persona: Persona) -> bytes:
    """The 4-digit security code, 24x12."""
    return render_text_png(persona.security_code)


def my_number_png(persona: Persona) -> bytes:
    """The 12-digit My Number, 72x12."""
    return render_text_png(persona.my_number)


FACE_SIZE = (96, 128)


def face_jp2(persona: Persona) -> bytes:
    """A greyscale JPEG 2000 (JP2 container) placeholder face, the same for the same persona."""
    # Seeded from values printed openly on the card; never from a secret.
    seed = f"{persona.card_serial}|{persona.name}|{persona.birth.isoformat()}|{persona.sex}"
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    w, h = FACE_SIZE
    image = Image.new("L", FACE_SIZE, rng.randint(180, 230))
    draw = ImageDraw.Draw(image)
    cx = w // 2 + rng.randint(-4, 4)
    head_w, head_h = rng.randint(30, 38), rng.randint(40, 48)
    top = rng.randint(18, 26)
    skin, hair, clothes = rng.randint(140, 190), rng.randint(20, 70), rng.randint(40, 110)
    draw.ellipse((cx - 40, top + head_h + 8, cx + 40, h + 40), fill=clothes)  # shoulders
    draw.rectangle((cx - 7, top + head_h - 6, cx + 7, top + head_h + 14), fill=skin)  # neck
    draw.ellipse((cx - head_w // 2, top, cx + head_w // 2, top + head_h), fill=skin)  # head
    draw.chord((cx - head_w // 2 - 2, top - 4, cx + head_w // 2 + 2, top + head_h // 2 + 6), 180, 360, fill=hair)
    eye_y = top + head_h // 2 + 2
    for side in (-1, 1):
        ex = cx + side * head_w // 5
        draw.ellipse((ex - 3, eye_y - 2, ex + 3, eye_y + 2), fill=30)
    mouth_y = top + head_h * 3 // 4 + 2
    draw.arc((cx - 7, mouth_y - 4, cx + 7, mouth_y + 3), 20, 160, fill=80)
    out = io.BytesIO()
    # Lossy wavelet at 1:6 keeps the file near 2 KB; irreversible=True is the 9/7 transform.
    image.save(out, format="JPEG2000", quality_mode="rates", quality_layers=[6], irreversible=True, no_jp2=False)
    return out.getvalue()
