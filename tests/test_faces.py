import dataclasses
import io
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ASTRONAUT, ASTRONAUT_FACE, SHARED, encode, paste, settings
from PIL import Image

from faceage.data.faces import LANDMARKS_FILE, FaceFinder, landmarks_path
from faceage.errors import FaceageError
from faceage.model.age_model import AgeModel
from faceage.model.checkpoint import checkpoint_of, save_checkpoint
from faceage.model.networks import build_network
from faceage.params import saved_faces
from faceage.sections import FacesParams, ModelParams
from faceage.serving.photos import AgeEstimator, find_faces


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(ASTRONAUT))


def detector_settings(detector: str, **changes) -> FacesParams:
    """The project's face settings with ``detector``: HOG searches the full 512-px photo (a copy at
    ``faces.max_side`` 384 would shrink her 87-px face under its 80-px window), MTCNN the default copy."""
    full_size = {"max_side": 1280, "min_size": 32} if detector == "hog" else {}
    return settings(FacesParams, detector=detector, **full_size | changes)


@pytest.fixture(scope="module")
def hog() -> FaceFinder:
    return FaceFinder(detector_settings("hog"))


@pytest.fixture(scope="module", params=["hog", "mtcnn"])
def finder(request) -> FaceFinder:
    return FaceFinder(detector_settings(request.param))


def overlap(a, b) -> float:
    """Intersection over union of two boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0, width) * max(0, height)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_finds_her_face_and_not_the_mission_patch(photo, hog):
    (face,) = hog.find(photo, 64)
    assert overlap(face.box, ASTRONAUT_FACE) > 0.9 and face.score > 1.0
    assert face.chip.shape == (64, 64, 3) and face.chip.dtype == np.uint8
    # The patch scores ~0.1: a threshold below it lets it in, so the default threshold is what excludes it.
    loose = FaceFinder(detector_settings("hog", min_score=-0.2)).find(photo, 64)
    assert len(loose) >= 2 and any(overlap(f.box, ASTRONAUT_FACE) < 0.1 for f in loose)


def test_mtcnn_frames_her_face_as_hog_does_and_cuts_the_same_chip(photo, hog):
    """MTCNN's box (brow to chin) is reframed as HOG's; the chip comes from the same 5 landmarks."""
    (face,) = FaceFinder(detector_settings("mtcnn")).find(photo, 128)
    assert overlap(face.box, ASTRONAUT_FACE) > 0.8 and 0.9 < face.score <= 1.0
    assert np.abs(face.chip.astype(int) - hog.find(photo, 128)[0].chip).mean() < 5
    strict = FaceFinder(detector_settings("mtcnn", mtcnn_thresholds=(0.6, 0.7, 0.99999999)))
    assert strict.find(photo, 64) == []  # the last stage's threshold is applied


def test_downscaled_detection_maps_the_box_back(photo, finder):
    (full,) = FaceFinder(dataclasses.replace(finder.params, max_side=1280)).find(photo, 64)
    smaller = dataclasses.replace(finder.params, max_side=384)
    small = max(FaceFinder(smaller).find(photo, 64), key=lambda face: face.score)
    assert overlap(full.box, small.box) > 0.8
    assert np.abs(full.chip.astype(int) - small.chip).mean() < 10  # landmarks run on the full-size photo


@pytest.mark.parametrize("angle", [0, 8, 10, -20, 25])
def test_a_rotated_face_in_a_larger_photo_gives_back_the_same_chip(photo, finder, angle):
    chip, big_chip = finder.find(photo, 128)[0].chip, finder.find(photo, 200)[0].chip
    (face,) = finder.find(paste(big_chip, angle), 128)
    assert np.abs(face.chip.astype(int) - chip).mean() < 8
    shifted = np.abs(np.roll(chip, 6, axis=1).astype(int) - chip).mean()
    assert shifted > 20  # a 6-pixel misalignment would show


def test_turned_copies_find_what_the_upright_search_misses(photo, hog):
    tilted = paste(hog.find(photo, 200)[0].chip, 45)  # HOG's own filters miss this face at 45 degrees
    assert FaceFinder(detector_settings("hog", rotations=())).find(tilted, 128) == []
    (face,) = FaceFinder(detector_settings("hog", rotations=(-30.0, 30.0))).find(tilted, 128)
    left, top, right, bottom = face.box
    assert 480 < left < right < 800 and 280 < top < bottom < 600  # the pasted, turned chip spans 500..783, 300..583
    assert np.abs(face.chip.astype(int) - hog.find(photo, 128)[0].chip).mean() < 7  # landmarks turned back


def test_small_faces_and_empty_photos_give_no_face(photo, finder):
    assert FaceFinder(dataclasses.replace(finder.params, min_size=200)).find(photo, 64) == []
    assert finder.find(np.full((300, 400, 3), 128, np.uint8), 64) == []


def test_mtcnn_finds_faces_under_hogs_window_down_to_min_size(photo, hog):
    chip = hog.find(photo, 200)[0].chip
    small = paste(np.asarray(Image.fromarray(chip).resize((56, 56))), 0, (640, 480), (300, 200))  # a ~44-px face
    assert hog.find(small, 64) == []  # under the 80-px window of HOG without upsampling
    mtcnn = detector_settings("mtcnn", max_side=1280)
    (face,) = FaceFinder(dataclasses.replace(mtcnn, min_size=32)).find(small, 64)
    assert overlap(face.box, (300, 200, 356, 256)) > 0.5
    assert FaceFinder(dataclasses.replace(mtcnn, min_size=64)).find(small, 64) == []


def test_mtcnn_finds_what_facenet_pytorchs_own_mtcnn_finds(photo, hog):
    """Its networks run channels-last (faster pooling): the same boxes and probabilities as the package's own
    networks, on faces of many sizes in photos of many sizes, and on noise."""
    from facenet_pytorch import MTCNN
    from facenet_pytorch.models.utils.detect_face import detect_face

    from faceage.data.detectors import MtcnnDetector

    ours, own = MtcnnDetector(settings(FacesParams)), MTCNN(device="cpu")
    chip = hog.find(photo, 200)[0].chip
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (97, 130, 3), dtype=np.uint8)]
    sizes = ((40, 160, 120), (70, 384, 288), (120, 300, 400), (200, 640, 480), (330, 500, 500))
    for (side, width, height), angle in zip(sizes, (-15, 0, 8, -4, 12), strict=True):
        face = np.asarray(Image.fromarray(chip).resize((side, side)))
        room = width - int(side * 1.3), height - int(side * 1.3)  # a turned face's square grows up to 1.3x
        photos.append(
            paste(face, angle, (width, height), (int(rng.integers(0, room[0])), int(rng.integers(0, room[1]))))
        )
    found = 0
    for image in photos:
        with torch.inference_mode():
            (boxes,), _ = detect_face(
                image[None], 20, own.pnet, own.rnet, own.onet, ours.thresholds, ours.PYRAMID_STEP, "cpu"
            )
        theirs = np.asarray(boxes, dtype=float).reshape(-1, 5)
        mine = ours(image, 20)
        assert len(mine) == len(theirs)
        for (box, score), expected in zip(mine, theirs, strict=True):
            np.testing.assert_allclose(box, MtcnnDetector.reframed(expected[:4]), atol=0.01)
            assert score == pytest.approx(expected[4], abs=1e-4)
        found += len(mine)
    assert found >= 4  # the faces were there to find


@pytest.mark.parametrize(
    "height, width", [(1, 1), (5, 300), (300, 5), (11, 11), (12, 12), (79, 79), (80, 80), (81, 97)]
)
def test_photos_of_any_size_give_faces_or_none(finder, height, width):
    """Photos smaller than the detectors' windows and than faces.min_size included: an answer, not an error."""
    noise = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    for min_size in (1, 12, 80):
        faces = FaceFinder(dataclasses.replace(finder.params, min_size=min_size)).find(noise, 32)
        assert all(face.chip.shape == (32, 32, 3) for face in faces)


def test_faces_are_ordered_left_to_right(photo, finder):
    pair = np.concatenate([photo, photo[:, ::-1]], axis=1)
    faces = finder.find(pair, 64)
    assert len(faces) == 2 and faces[0].box[0] < faces[1].box[0]


def test_missing_landmark_file_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FaceageError, match=rf"{LANDMARKS_FILE} in {tmp_path}/hub/checkpoints") as error:
        landmarks_path()
    assert "\n" not in str(error.value)


def test_mtcnn_without_its_package_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    with pytest.raises(FaceageError, match=r"^faces.detector: mtcnn needs the facenet-pytorch package") as error:
        FaceFinder(settings(FacesParams, detector="mtcnn"))
    assert "\n" not in str(error.value)


def test_wrong_landmark_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / LANDMARKS_FILE).write_bytes(b"not a landmark model")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FaceageError, match="SHA-256 differs"):
        landmarks_path()


@pytest.mark.parametrize(
    "values, key",
    [
        ({"upsample": -1}, "faces.upsample"),
        ({"max_side": 10}, "faces.max_side"),
        ({"min_score": float("nan")}, "min"),
        ({"detector": "cnn"}, "faces.detector"),
        ({"mtcnn_thresholds": (0.6, 0.7)}, "faces.mtcnn_thresholds"),
        ({"mtcnn_thresholds": (0.6, 0.7, 1.0)}, "faces.mtcnn_thresholds"),
    ],
)
def test_face_settings_are_checked(values, key):
    with pytest.raises(FaceageError, match=key):
        settings(FacesParams, **values)


UTKFACE = SHARED / "datasets" / "UTKFace.tar.gz"


@pytest.fixture(scope="module")
def dlib_age_model(tmp_path_factory) -> Path:
    """dlib's own age model as a checkpoint (head started from its classifier, no training)."""
    params = settings(ModelParams, backbone="dlib_age_resnet10", input_size=64, hidden=0, dropout=0.0, head_init="dlib")
    path = tmp_path_factory.mktemp("dlib") / "model.pt"
    model = AgeModel([build_network(params, (1, 116))], [64], 0.0, (1, 116), 128)
    save_checkpoint(checkpoint_of(model, [params], faces=settings(FacesParams)), path)
    return path


@pytest.mark.skipif(not UTKFACE.is_file(), reason=f"UTKFace is not at {UTKFACE}")
def test_utkface_crops_pasted_into_photos_and_turned_15_degrees_keep_their_age(dlib_age_model):
    crops = []
    with tarfile.open(UTKFACE, "r|gz") as archive:
        for index, member in enumerate(archive):
            if member.isfile() and index % 13 == 0:
                crops.append(archive.extractfile(member).read())
            if len(crops) == 40:
                break
    estimator = AgeEstimator(dlib_age_model)
    on_crops, on_photos = [], []
    for crop in crops:
        ready = find_faces("crop", crop, 128, estimator.faces, aligned=True)
        on_crops.append(estimator.results([ready])[0]["faces"][0]["age_years"])
        big = np.asarray(Image.open(io.BytesIO(crop)).convert("RGB"))
        photo = encode(paste(big, 15, (1024, 768), (400, 250)))
        faces = estimator.results([find_faces("photo", photo, 128, estimator.faces)])[0]["faces"]
        on_photos.append(faces[0]["age_years"] if len(faces) == 1 else np.nan)
    on_crops, on_photos = np.array(on_crops), np.array(on_photos)
    found = ~np.isnan(on_photos)
    differences = np.abs(on_photos[found] - on_crops[found])
    assert found.sum() >= 36  # measured: 37 of 40
    assert np.median(differences) <= 1.5  # measured: 0.91 years
    assert abs(on_photos[found].mean() - on_crops[found].mean()) <= 1.0  # no drift in one direction


def test_models_saved_before_the_detector_setting_keep_hog():
    added = ("detector", "mtcnn_thresholds")
    before = {k: v for k, v in dataclasses.asdict(settings(FacesParams)).items() if k not in added}
    faces = saved_faces(before, "old.pt: faces")
    assert faces.detector == "hog" and faces.mtcnn_thresholds == settings(FacesParams).mtcnn_thresholds
    assert saved_faces(dataclasses.asdict(settings(FacesParams)), "new.pt: faces") == settings(FacesParams)
