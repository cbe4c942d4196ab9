"""Synthetic face-like images whose age is learnable from the pixels, packed like UTKFace.

Age shows the way it does in real faces: a child's head is rounder, with large eyes set low under
a big forehead; adults have longer faces; hair greys and recedes, and wrinkles (forehead lines,
crow's feet, nasolabial folds) deepen with age. Skin tone, hair colour and length, pose, lighting,
background and sensor noise vary independently of age, so a model must learn the age cues.

A second, smaller set draws other people in another style (:func:`restyle`): a test source unlike the
training images, as users' own photos are.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from tqdm import tqdm

from faceage.sections import DemoParams

SKIN_TONES = {  # UTKFace race code -> base skin colour
    0: (232, 198, 172),
    1: (122, 84, 60),
    2: (226, 192, 154),
    3: (176, 128, 94),
    4: (200, 158, 120),
}
HAIR_COLOURS = ((38, 28, 22), (88, 58, 36), (18, 16, 16), (150, 108, 62), (110, 40, 20))
GREY = np.array((205, 205, 205))
ARCHIVE_FOLDER = "UTKFace"
FIRST_TIMESTAMP = datetime(2017, 1, 1)
SYNTHETIC_MARK = "faceage.synthetic"  # PAX header of the archives the demo writes: their faces are drawn


@dataclass(frozen=True)
class Person:
    """The labels of one synthetic face."""

    age: int
    gender: int  # 0 male, 1 female, as in UTKFace
    race: int  # 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others


def sample_person(rng: np.random.Generator) -> Person:
    """Draw labels with a UTKFace-like age distribution: infants, many young adults, a long tail."""
    kind = rng.random()
    if kind < 0.12:
        age = rng.integers(1, 11)
    elif kind < 0.70:
        age = rng.normal(30, 9)
    else:
        age = rng.uniform(40, 100)
    return Person(age=int(np.clip(round(age), 1, 110)), gender=int(rng.integers(0, 2)), race=int(rng.integers(0, 5)))


def _mix(a: tuple[int, ...] | np.ndarray, b: tuple[int, ...] | np.ndarray, t: float) -> tuple[int, ...]:
    return tuple(round(x) for x in (1 - t) * np.asarray(a, float) + t * np.asarray(b, float))


@dataclass(frozen=True)
class FaceBox:
    """Where the face sits in the image: centre, size and the ellipse's bounds, in pixels."""

    cx: float
    cy: float
    width: float
    height: float

    @property
    def top(self) -> float:
        return self.cy - self.height / 2

    @property
    def bottom(self) -> float:
        return self.cy + self.height / 2


def draw_face(person: Person, size: int, rng: np.random.Generator) -> Image.Image:
    """Render one face of ``person`` as an RGB image of ``size`` x ``size`` pixels."""
    age, s = person.age, float(size)
    growth = min(age / 18.0, 1.0)
    background = tuple(int(v) for v in rng.integers(40, 220, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)

    face_h = s * (0.50 + 0.14 * growth) * rng.uniform(0.95, 1.05)
    face = FaceBox(s / 2, s * 0.52, face_h * (0.92 - 0.14 * growth) * rng.uniform(0.96, 1.04), face_h)
    skin = _mix(
        np.array(SKIN_TONES[person.race]) + rng.integers(-12, 13, 3), (170, 150, 140), 0.15 * max(age - 50, 0) / 50
    )
    grey = float(np.clip((age - 35) / 40, 0, 1))
    hair = _mix(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], GREY, grey)
    recede = _draw_head(draw, person, face, s, skin, hair, rng)
    _draw_features(draw, person, face, s, skin, hair, recede)
    return _photograph(image, background, rng)


def _draw_head(
    draw: ImageDraw.ImageDraw,
    person: Person,
    face: FaceBox,
    s: float,
    skin: tuple[int, ...],
    hair: tuple[int, ...],
    rng: np.random.Generator,
) -> float:
    """Clothes, neck, hair and the face's outline; how far the hairline has receded, in pixels."""
    cx, cy, face_w, face_h = face.cx, face.cy, face.width, face.height
    clothes = tuple(int(v) for v in rng.integers(0, 256, 3))
    draw.ellipse((cx - s * 0.45, s * 0.88, cx + s * 0.45, s * 1.4), fill=clothes)
    draw.rectangle((cx - face_w * 0.22, cy, cx + face_w * 0.22, s * 0.95), fill=skin)
    long_hair = person.gender == 1 or rng.random() < 0.1
    hair_bottom = face.bottom + face_h * 0.15 if long_hair else cy - face_h * 0.05
    recede = face_h * 0.12 * float(np.clip((person.age - 45) / 35, 0, 1)) if person.gender == 0 else 0.0
    margin = s * rng.uniform(0.03, 0.07)
    left, right = cx - face_w / 2, cx + face_w / 2
    draw.rounded_rectangle(
        (left - margin, face.top - margin + recede, right + margin, hair_bottom), radius=face_w * 0.45, fill=hair
    )
    draw.ellipse((left, face.top, right, face.bottom), fill=skin)
    return recede


def _draw_features(
    draw: ImageDraw.ImageDraw,
    person: Person,
    face: FaceBox,
    s: float,
    skin: tuple[int, ...],
    hair: tuple[int, ...],
    recede: float,
) -> None:
    """Eyes, brows, nose and mouth, with the lines that age adds (crow's feet, lids, forehead, folds)."""
    age, cx, face_w, face_h = person.age, face.cx, face.width, face.height
    growth = min(age / 18.0, 1.0)
    line = _mix(skin, (60, 40, 35), 0.25 + 0.45 * float(np.clip((age - 25) / 50, 0, 1)))
    width = max(1, round(s / 100))
    eye_y = face.top + face_h * (0.60 - 0.13 * growth)
    eye_dx, eye_r = face_w * 0.22, face_h * (0.075 - 0.028 * growth)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse((ex - eye_r * 1.4, eye_y - eye_r, ex + eye_r * 1.4, eye_y + eye_r), fill=(240, 240, 236))
        draw.ellipse((ex - eye_r * 0.7, eye_y - eye_r * 0.7, ex + eye_r * 0.7, eye_y + eye_r * 0.7), fill=(50, 35, 25))
        brow_y = eye_y - eye_r * 1.9
        draw.line((ex - eye_r * 1.5, brow_y, ex + eye_r * 1.5, brow_y - side * 0.5), fill=hair, width=2 * width)
        if age > 35:  # crow's feet
            outer = ex + side * eye_r * 1.6
            for k in range(min(3, (age - 30) // 10)):
                dy = (k - 1) * eye_r * 0.6
                draw.line((outer, eye_y + dy * 0.3, outer + side * eye_r * 0.9, eye_y + dy), fill=line, width=width)
        if age > 55:  # drooping lids
            lid = (ex - eye_r * 1.4, eye_y - eye_r * 1.3, ex + eye_r * 1.4, eye_y + eye_r * 0.6)
            draw.arc(lid, 200, 340, fill=line, width=width)

    for k in range(int(np.clip((age - 25) / 12, 0, 5))):  # forehead lines
        y = face.top + face_h * 0.14 + k * face_h * 0.035 + recede
        draw.arc((cx - face_w * 0.3, y, cx + face_w * 0.3, y + face_h * 0.06), 200, 340, fill=line, width=width)

    nose_y = eye_y + face_h * (0.14 + 0.04 * growth)
    draw.line((cx, eye_y + eye_r, cx - face_w * 0.04, nose_y), fill=line, width=width)
    draw.line((cx - face_w * 0.04, nose_y, cx + face_w * 0.04, nose_y), fill=line, width=width)
    mouth_y = nose_y + face_h * (0.10 + 0.04 * growth)
    lips = (170, 70, 80) if person.gender == 1 else _mix(skin, (150, 70, 70), 0.6)
    mouth_w = face_w * 0.18
    draw.chord((cx - mouth_w, mouth_y - face_h * 0.03, cx + mouth_w, mouth_y + face_h * 0.04), 0, 180, fill=lips)
    if age > 40:  # nasolabial folds
        for side in (-1, 1):
            x0 = cx + side * face_w * 0.10
            draw.line((x0, nose_y, x0 + side * face_w * 0.08, mouth_y + face_h * 0.05), fill=line, width=width)


def _photograph(image: Image.Image, background: tuple[int, ...], rng: np.random.Generator) -> Image.Image:
    """Add pose, lighting and sensor noise."""
    size = image.width
    image = image.rotate(
        rng.uniform(-10, 10),
        resample=Image.Resampling.BILINEAR,
        translate=tuple(rng.integers(-size // 25, size // 25 + 1, 2)),
        fillcolor=background,
    )
    pixels = np.asarray(image, dtype=np.float32)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    coords = (np.mgrid[0:size, 0:size] / size - 0.5).transpose(1, 2, 0) @ direction
    light = rng.uniform(0.8, 1.1) + rng.uniform(0.1, 0.4) * coords
    pixels = pixels * light[..., None] + rng.normal(0, rng.uniform(2, 8), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def restyle(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The face as a print in another style: a few tones of a two-colour palette, softened. The shapes and
    lines that show age stay; colour, texture and contrast do not."""
    tones = ImageOps.posterize(ImageOps.grayscale(image), 2)
    ink, paper = (tuple(int(v) for v in rng.integers(low, high, 3)) for low, high in ((0, 110), (170, 256)))
    toned = ImageOps.colorize(ImageOps.autocontrast(tones), black=ink, white=paper)
    return toned.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))


def file_name(person: Person, index: int) -> str:
    """UTKFace's name for an aligned and cropped face: ``<age>_<gender>_<race>_<datetime>.jpg.chip.jpg``."""
    stamp = FIRST_TIMESTAMP + timedelta(seconds=37 * index)
    return f"{person.age}_{person.gender}_{person.race}_{stamp:%Y%m%d%H%M%S}{index % 1000:03d}.jpg.chip.jpg"


def write_demo_archive(path: str | Path, params: DemoParams, restyled: bool = False) -> None:
    """Write ``params.num_images`` faces as JPEGs into a UTKFace-style ``.tar.gz``, byte-identical per seed;
    with ``restyled``, ``params.restyled_images`` other people drawn in another style."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(
            fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, pax_headers={SYNTHETIC_MARK: "faces drawn by faceage"}
        ) as tar,
    ):
        folder = tarfile.TarInfo(ARCHIVE_FOLDER)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        count = params.restyled_images if restyled else params.num_images
        for index in tqdm(range(count), desc="demo faces", unit="img", disable=None):
            rng = np.random.default_rng([params.seed, index, 1] if restyled else [params.seed, index])
            person = sample_person(rng)
            face = draw_face(person, params.image_size, rng)
            buffer = io.BytesIO()
            (restyle(face, rng) if restyled else face).save(buffer, format="JPEG", quality=params.jpeg_quality)
            member = tarfile.TarInfo(f"{ARCHIVE_FOLDER}/{file_name(person, index)}")
            member.size, member.mode = buffer.tell(), 0o644
            buffer.seek(0)
            tar.addfile(member, buffer)
