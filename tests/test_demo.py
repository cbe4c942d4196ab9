import io
import tarfile

import numpy as np
from conftest import settings
from PIL import Image
from sklearn.linear_model import RidgeCV

from faceage.data.demo import draw_face, sample_person, write_demo_archive
from faceage.data.layouts import UTKFaceLayout
from faceage.sections import DemoParams


def test_archive_is_byte_identical_for_a_seed_and_differs_across_seeds(tmp_path):
    params = settings(DemoParams, num_images=12, image_size=48, seed=3)
    write_demo_archive(tmp_path / "a.tar.gz", params)
    write_demo_archive(tmp_path / "b.tar.gz", params)
    write_demo_archive(tmp_path / "c.tar.gz", settings(DemoParams, num_images=12, image_size=48, seed=4))
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert (tmp_path / "a.tar.gz").read_bytes() != (tmp_path / "c.tar.gz").read_bytes()


def test_archive_follows_the_utkface_format(tmp_path):
    write_demo_archive(tmp_path / "demo.tar.gz", settings(DemoParams, num_images=20, image_size=40))
    with tarfile.open(tmp_path / "demo.tar.gz") as tar:
        members = [m for m in tar if m.isfile()]
        assert len(members) == 20
        layout = UTKFaceLayout()
        for member in members:
            assert member.name.startswith("UTKFace/") and member.name.endswith(".jpg.chip.jpg")
            label = layout.label(member.name)
            assert 1 <= label.age <= 110 and label.gender in (0, 1) and label.race in range(5)
            image = Image.open(io.BytesIO(tar.extractfile(member).read()))
            assert image.format == "JPEG" and image.size == (40, 40)


def test_age_is_learnable_from_the_pixels():
    features, ages = [], []
    for index in range(500):
        rng = np.random.default_rng([0, index])
        person = sample_person(rng)
        image = draw_face(person, 64, rng).convert("L").resize((24, 24))
        features.append(np.asarray(image, float).ravel() / 255)
        ages.append(person.age)
    features, ages = np.array(features), np.array(ages)
    model = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(features[:400], ages[:400])
    model_mae = np.abs(model.predict(features[400:]) - ages[400:]).mean()
    constant_mae = np.abs(np.median(ages[:400]) - ages[400:]).mean()
    assert model_mae < 0.7 * constant_mae
