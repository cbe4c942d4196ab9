"""Videos: faces followed from frame to frame, one age per person, annotated copies, and broken files accounted for."""

import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import ASTRONAUT, ASTRONAUT_CLIP
from PIL import Image

from faceage.cli import main
from faceage.serving.photos import AgeEstimator, find_faces
from faceage.serving.video import Frame, Tracker, overlap, predict_video, video_frames

FRAMES, FPS, SIZE = 30, 10, (480, 360)


@pytest.fixture(scope="module")
def clip() -> Path:
    return ASTRONAUT_CLIP


def test_the_committed_clip_is_the_astronaut_panned_and_zoomed(tmp_path):
    """``tests/data/astronaut.mp4`` is what :func:`pan_and_zoom` makes of the photo (up to the encoder's noise)."""
    pan_and_zoom(ASTRONAUT, tmp_path / "again.mp4")
    with av.open(str(ASTRONAUT_CLIP)) as committed, av.open(str(tmp_path / "again.mp4")) as again:
        pairs = zip(committed.decode(video=0), again.decode(video=0), strict=True)
        difference = [
            np.abs(a.to_ndarray(format="rgb24") - b.to_ndarray(format="rgb24").astype(int)).mean() for a, b in pairs
        ]
    assert len(difference) == FRAMES and max(difference) < 2


def pan_and_zoom(photo_path: Path, out: Path) -> None:
    """3 s of the photo, panned and zoomed in: her face moves and grows across the frames (H.264, 10 frames/s)."""
    photo = Image.open(photo_path).convert("RGB")
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for index in range(FRAMES):
            step = index / (FRAMES - 1)
            left, top, width = 80 + 60 * step, 20 + 30 * step, 400 - 120 * step
            window = photo.resize(SIZE, Image.Resampling.BILINEAR, box=(left, top, left + width, top + width * 0.75))
            container.mux(stream.encode(av.VideoFrame.from_image(window)))
        container.mux(stream.encode())


def predicted(args: list[str], capsys) -> dict:
    assert main(["predict", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_one_person_panned_and_zoomed_is_one_track_with_one_stable_age(tiny_model, clip, tmp_path, capsys):
    document = predicted([str(clip), "--model", str(tiny_model), "--frames-per-second", "0", "--over", "18"], capsys)
    assert (document["videos"], document["tracks"], document["photos"]) == (1, 1, 0)
    (result,) = document["results"]
    assert result["video"]["frames_analysed"] == FRAMES
    (track,) = result["tracks"]
    assert track["frames_seen"] >= FRAMES - 2 and (track["first_frame"], track["last_frame"]) == (0, FRAMES - 1)
    assert track["end_seconds"] == pytest.approx((FRAMES - 1) / FPS, abs=0.01)
    sightings = track["sightings"]
    ages = np.array([seen["age_years"] for seen in sightings])
    assert track["age_years"] == pytest.approx(ages.mean(), abs=0.01)  # one age: the mean over its frames
    assert track["frame_age_spread"] == pytest.approx(ages.std(), abs=0.01) and track["frame_age_spread"] < 3
    assert track["age_low"] < track["age_years"] < track["age_high"] and track["over"] in ("yes", "no", "uncertain")
    # each frame's age is the photo's: the frame decoded and predicted as a still gives it
    estimator = AgeEstimator(tiny_model)
    frames = {frame.index: frame for frame in video_frames(clip, 0, estimator.faces.max_pixels)}
    for seen in sightings[:: len(sightings) // 3]:
        still = Image.fromarray(frames[seen["frame"]].pixels)
        buffer = tmp_path / "still.png"
        still.save(buffer)
        photo = find_faces("still", buffer.read_bytes(), estimator.chip_size, estimator.faces)
        (face,) = estimator.results([photo])[0]["faces"]
        assert face["box"] == seen["box"] and face["age_years"] == pytest.approx(seen["age_years"], abs=0.02)
    # the face grows as the camera zooms in
    first, last = sightings[0]["box"], sightings[-1]["box"]
    assert last[2] - last[0] > 1.2 * (first[2] - first[0])


def test_frames_are_sampled_at_the_rate_asked_and_lines_name_each_person(tiny_model, clip, capsys):
    (result,) = predicted([str(clip), "--model", str(tiny_model), "--frames-per-second", "5"], capsys)["results"]
    assert result["video"]["frames_analysed"] == FRAMES // 2
    assert all(seen["frame"] % 2 == 0 for seen in result["tracks"][0]["sightings"])
    assert main(["predict", str(clip), "--model", str(tiny_model)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{clip} person 1 (0.0-2.8 s, seen in ") and "(90 %: " in line


def test_the_annotated_video_has_every_frame_with_the_persons_box_and_age(tiny_model, clip, tmp_path, capsys):
    out = tmp_path / "annotated"
    document = predicted([str(clip), "--model", str(tiny_model), "--annotate", str(out)], capsys)
    track = document["results"][0]["tracks"][0]
    with av.open(str(out / "astronaut.mp4")) as written, av.open(str(clip)) as original:
        drawn = [frame.to_ndarray(format="rgb24").astype(int) for frame in written.decode(video=0)]
        plain = [frame.to_ndarray(format="rgb24").astype(int) for frame in original.decode(video=0)]
    assert len(drawn) == len(plain) == FRAMES
    middle = FRAMES // 2
    seen = max((s for s in track["sightings"] if s["frame"] <= middle), key=lambda s: s["frame"])
    left, top, _, bottom = seen["box"]
    edge = np.abs(drawn[middle][top + 5 : bottom - 5, left] - plain[middle][top + 5 : bottom - 5, left]).mean()
    assert edge > 40  # the box's left edge
    assert np.abs(drawn[middle][-40:, :40] - plain[middle][-40:, :40]).mean() < 6  # elsewhere only coding noise


def test_the_tracker_follows_overlapping_boxes_and_ends_a_track_after_a_gap():
    tracker = Tracker()
    ages = [{"age": 30.0}, {"age": 60.0}]
    for index, (seconds, boxes) in enumerate(
        [
            (0.0, [(0, 0, 10, 10), (50, 50, 60, 60)]),
            (0.2, [(51, 51, 61, 61), (1, 0, 11, 10)]),  # both moved a little, listed the other way round
            (0.4, [(30, 30, 40, 40)]),  # a third face, overlapping neither
            (2.0, [(1, 0, 11, 10)]),  # the first face again, after more than MAX_GAP unseen: a new track
        ]
    ):
        tracker.add(Frame(index, seconds, np.zeros(1)), boxes, ages[: len(boxes)])
    assert [track.frames for track in tracker.tracks] == [[0, 1], [0, 1], [2], [3]]
    assert tracker.tracks[0].boxes == [(0, 0, 10, 10), (1, 0, 11, 10)]
    assert overlap((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert overlap((0, 0, 10, 10), (10, 0, 20, 10)) == 0


def damaged(clip: bytes, seed: int) -> bytes:
    """The clip cut short, or with a run of its bytes overwritten, at a place drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    at = int(rng.integers(0, len(clip)))
    if seed % 2:
        return clip[:at]
    run = rng.integers(0, 256, int(rng.integers(1, 2000)), dtype=np.uint8).tobytes()
    return clip[:at] + run + clip[at + len(run) :]


def test_broken_and_oversized_videos_are_each_one_line_or_an_accounted_result(tiny_model, clip, tmp_path, capsys):
    files = {"garbage.mp4": b"\x00\x01 not a video" * 100, "empty.mkv": b""}
    files |= {f"damaged{seed}.mp4": damaged(clip.read_bytes(), seed) for seed in range(16)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    code = main(["predict", str(tmp_path), "--model", str(tiny_model), "--json"])
    out, err = capsys.readouterr()
    results = {Path(result["file"]).name: result for result in json.loads(out)["results"]}
    assert set(results) == set(files)
    for name, result in results.items():  # each read as far as it goes, or refused with a reason
        assert ("tracks" in result) != ("error" in result), name
        assert "error" not in result or len(result["error"].splitlines()) == 1
    assert results["garbage.mp4"]["error"].startswith("unreadable video")
    assert code == 1 and "Traceback" not in err
    estimator = AgeEstimator(tiny_model)
    estimator.faces = dataclasses.replace(estimator.faces, max_megapixels=0.1)
    refused = predict_video(estimator, clip, 5, 1, None)
    assert refused["error"] == "frames of 480x360 pixels are over the limit of 0.1 megapixels (faces.max_megapixels)"
