"""Ages of the people in a video: frames decoded with PyAV, faces found in frames sampled at a set rate, each face
followed from frame to frame by the overlap of its boxes (a track), and one age and interval per track: the mean
of its frames' ages and interval bounds, so that a person's age does not jump from frame to frame.

Each frame's interval is calibrated as a photo's; the track's, the mean of its frames' bounds, is not calibrated
again (the frames of one face err together, so it is about as wide as one frame's).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from faceage.data.chunks import mapped_ahead
from faceage.data.faces import Face, face_finder
from faceage.runtime import worker_pool
from faceage.sections import FacesParams
from faceage.serving.annotate import draw_faces
from faceage.serving.photos import AgeEstimator, age_fields

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")
MIN_OVERLAP = 0.3  # intersection over union with a track's last box for a face to continue the track
MAX_GAP = 1.0  # seconds a track may go unseen before it ends
FRAMES_PER_BLOCK = 16  # frames whose faces are found at once (two blocks in memory)
ANNOTATED_CODECS = ("libx264", "mpeg4")  # the first PyAV's FFmpeg can write


class VideoError(ValueError):
    """The file is not a video faceage can read, or its frames are too large."""


def is_video_name(name: str) -> bool:
    """Whether the file name has a common video extension."""
    return name.lower().endswith(VIDEO_SUFFIXES)


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its number in the video, its time in seconds and its RGB pixels."""

    index: int
    seconds: float
    pixels: np.ndarray


def video_frames(path: Path, per_second: float, max_pixels: int) -> Iterator[Frame]:
    """The frames of the file's first video stream, about ``per_second`` of them per second of video (0: all of
    them). Frames over ``max_pixels`` are refused from the stream's header, before any is decoded.

    Raises:
        VideoError: the file cannot be opened or decoded as a video, has no video stream, or its frames are too
            large.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > max_pixels:
                limit = f"the limit of {max_pixels / 1e6:g} megapixels (faces.max_megapixels)"
                raise VideoError(f"frames of {width}x{height} pixels are over {limit}")
            rate = float(stream.average_rate or 25)
            due = 0.0
            for index, frame in enumerate(container.decode(stream)):
                seconds = float(frame.time) if frame.time is not None else index / rate
                if seconds >= due - 0.5 / rate:
                    due = seconds + 1 / per_second if per_second else seconds
                    yield Frame(index, seconds, frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as error:
        raise VideoError(f"unreadable video: {error.strerror or error}") from None


@dataclass
class Track:
    """One face followed through the video: the frames it was seen in, its box and outputs in each."""

    number: int
    frames: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    outputs: list[dict[str, float]] = field(default_factory=list)

    def add(self, frame: Frame, box: tuple[int, int, int, int], outputs: dict[str, float]) -> None:
        self.frames.append(frame.index)
        self.seconds.append(frame.seconds)
        self.boxes.append(box)
        self.outputs.append(outputs)

    def result(self, level: float | None, over: float | None) -> dict:
        """The JSON-ready result: the frames and seconds it spans, its mean age and interval
        (:func:`~faceage.serving.photos.age_fields`), how much its frames' ages spread, and each sighting (frame,
        seconds, box, that frame's age)."""
        ages = np.array([outputs["age"] for outputs in self.outputs])
        mean = {key: float(np.mean([outputs[key] for outputs in self.outputs])) for key in self.outputs[0]}
        return {
            "track": self.number,
            "first_frame": self.frames[0],
            "last_frame": self.frames[-1],
            "start_seconds": round(self.seconds[0], 3),
            "end_seconds": round(self.seconds[-1], 3),
            "frames_seen": len(self.frames),
            **age_fields(mean, level, over),
            "frame_age_spread": round(float(ages.std()), 2),
            "sightings": [
                {"frame": frame, "seconds": round(seconds, 3), "box": list(box), "age_years": round(age, 2)}
                for frame, seconds, box, age in zip(self.frames, self.seconds, self.boxes, ages, strict=True)
            ],
        }


def overlap(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union


class Tracker:
    """Faces followed from frame to frame: a face continues the open track whose last box it overlaps most (by at
    least :data:`MIN_OVERLAP`; one face per track and frame), else starts a track; a track unseen for more than
    :data:`MAX_GAP` seconds ends."""

    def __init__(self) -> None:
        self.tracks: list[Track] = []
        self.open: list[Track] = []

    def add(self, frame: Frame, boxes: list[tuple[int, int, int, int]], outputs: list[dict[str, float]]) -> None:
        self.open = [track for track in self.open if frame.seconds - track.seconds[-1] <= MAX_GAP]
        pairs = sorted(
            ((overlap(track.boxes[-1], box), t, f) for t, track in enumerate(self.open) for f, box in enumerate(boxes)),
            reverse=True,
        )
        chosen: dict[int, Track] = {}
        for score, t, f in pairs:
            if score < MIN_OVERLAP:
                break
            if f not in chosen and self.open[t] not in chosen.values():
                chosen[f] = self.open[t]
        for f, box in enumerate(boxes):
            track = chosen.get(f)
            if track is None:
                track = Track(len(self.tracks) + 1)
                self.tracks.append(track)
                self.open.append(track)
            track.add(frame, box, outputs[f])


def find_in_frame(frame: Frame, chip_size: int, faces: FacesParams) -> list[Face]:
    return face_finder(faces).find(frame.pixels, chip_size)


def predict_video(estimator: AgeEstimator, path: Path, per_second: float, workers: int, over: float | None) -> dict:
    """The result for one video: ``file``, ``video`` (frames analysed, at what rate) and ``tracks``
    (:meth:`Track.result`, in order of first sighting), or ``error`` (one line) when it cannot be read. Faces are
    found by ``workers`` processes, a block of frames at a time, while the next block is decoded."""
    tracker, analysed = Tracker(), 0
    frames = video_frames(path, per_second, estimator.faces.max_pixels)
    find = functools.partial(find_in_frame, chip_size=estimator.chip_size, faces=estimator.faces)
    try:
        with worker_pool(workers) as pool, tqdm(desc=path.name, unit="frame", disable=None) as progress:
            for block, found in mapped_ahead(pool, find, frames, FRAMES_PER_BLOCK):
                for frame, faces, outputs in zip(block, found, estimator.face_outputs(found), strict=True):
                    tracker.add(frame, [face.box for face in faces], outputs)
                analysed += len(block)
                progress.update(len(block))
    except VideoError as error:
        return {"file": str(path), "error": str(error)}
    tracks = [track.result(estimator.level, over) for track in tracker.tracks]
    return {"file": str(path), "video": {"frames_analysed": analysed, "per_second": per_second}, "tracks": tracks}


def annotate_video(path: Path, result: dict, out: Path) -> None:
    """Write a copy of the video at ``out`` (H.264 MP4 where PyAV's FFmpeg has it) with each track's box (from its
    latest sighting) and its one age drawn on every frame it spans."""
    import av

    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path)) as source, av.open(str(out), "w") as target:
        stream_in = source.streams.video[0]
        codec = next(name for name in ANNOTATED_CODECS if name in av.codecs_available)
        stream = target.add_stream(codec, rate=stream_in.average_rate or 25)
        stream.width, stream.height = (stream_in.codec_context.width // 2 * 2, stream_in.codec_context.height // 2 * 2)
        stream.pix_fmt = "yuv420p"
        for index, frame in enumerate(source.decode(stream_in)):
            image = frame.to_image().crop((0, 0, stream.width, stream.height))
            draw_faces(image, shown_faces(result["tracks"], index))
            target.mux(stream.encode(av.VideoFrame.from_image(image)))
        target.mux(stream.encode())


def shown_faces(tracks: list[dict], frame: int) -> list[dict]:
    """The faces drawn on ``frame``: each track spanning it, at its box of its latest sighting, with its age."""
    shown = []
    for track in tracks:
        if track["first_frame"] <= frame <= track["last_frame"]:
            latest = next(seen for seen in reversed(track["sightings"]) if seen["frame"] <= frame)
            shown.append({**track, "box": latest["box"]})
    return shown
