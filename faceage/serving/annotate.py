"""Copies of photos (and frames of videos) with each face's box, predicted age and interval drawn on them."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from faceage.model.intervals import interval_text

BOX_COLOUR = (255, 214, 0)
TEXT_COLOUR = (0, 0, 0)


def annotate_photo(path: Path, faces: list[dict], out: Path) -> None:
    """Draw each face's box and age (as in :meth:`AgeEstimator.results`) on a copy of the photo at ``out``."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    draw_faces(image, faces)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, **({"quality": 90} if out.suffix.lower() in (".jpg", ".jpeg") else {}))


def draw_faces(image: Image.Image, faces: list[dict]) -> None:
    """Draw each face's box (``box``) and age (``age_years`` and, if given, ``age_low`` and ``age_high``) on
    ``image``. A face without a box (a ready crop) gets its age in the top-left corner."""
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(image.size) / 300))
    font = ImageFont.load_default(size=max(14, round(max(image.size) / 28)))
    for face in faces:
        left, top = (face["box"] or (0, 0))[:2]
        if face["box"] is not None:
            draw.rectangle(face["box"], outline=BOX_COLOUR, width=line)
        label = f"{face['age_years']:.0f}"
        if "age_low" in face:
            label += f" ({interval_text(face['age_low'], face['age_high'])})"
        text_box = draw.textbbox((left, top), label, font=font)
        height = text_box[3] - text_box[1] + 2 * line
        origin = (left, max(0, top - height)) if face["box"] is not None else (0, 0)
        text_box = draw.textbbox((origin[0] + line, origin[1] + line), label, font=font)
        draw.rectangle((origin[0], origin[1], text_box[2] + line, text_box[3] + line), fill=BOX_COLOUR)
        draw.text((origin[0] + line, origin[1] + line), label, fill=TEXT_COLOUR, font=font)
