"""``faceage serve``: the page's API answers as ``faceage predict`` does and refuses bad input in one message
(an in-process server); the page itself, driven in Debian's headless Chromium against the command as users
start it (skipped, with the reason, where Chromium or its driver is missing)."""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ASTRONAUT, huge_png, image_bytes
from PIL import Image
from team_services import answers, free_port, wait_until

from benchmarks.page import served_in_thread
from faceage.serving.loading import load_any
from faceage.serving.page import create_app
from faceage.serving.photos import read_and_find_faces

UPLOAD_LIMIT = 2**20  # bytes, the in-process server's limit (the command's is MAX_FILE_BYTES)
SCREENSHOT = os.environ.get("FACEAGE_SCREENSHOT")  # where the browser test also saves its screenshot


def two_faces() -> bytes:
    """The astronaut photo twice, side by side: a photo with two faces."""
    with Image.open(ASTRONAUT) as astronaut:
        photo = Image.new("RGB", (astronaut.width * 2, astronaut.height))
        photo.paste(astronaut, (0, 0))
        photo.paste(astronaut, (astronaut.width, 0))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def loaded(tiny_model):
    return load_any(str(tiny_model))


@pytest.fixture(scope="module")
def api(loaded):
    """The page's app served in this process on a free loopback port: its base URL."""
    with served_in_thread(create_app(loaded, UPLOAD_LIMIT)) as base:
        yield base


def post(base: str, body: bytes, **query: str) -> tuple[int, dict]:
    """POST a photo's bytes: the status and the JSON answer."""
    url = f"{base}api/photos?{urllib.parse.urlencode({'name': 'photo', **query})}"
    request = urllib.request.Request(url, body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_photo_gets_the_answer_faceage_predict_gives(api, loaded):
    status, answer = post(api, ASTRONAUT.read_bytes(), name="astronaut.jpg", over="18")
    found = read_and_find_faces((str(ASTRONAUT), loaded.estimator.chip_size, loaded.estimator.faces, False))
    (expected,) = loaded.estimator.results([found], over=18)
    assert status == 200 and answer == {**expected, "file": "astronaut.jpg"}
    (face,) = answer["faces"]
    assert face["over"] in ("yes", "no", "uncertain") and face["age_low"] <= face["age_years"] <= face["age_high"]


def test_the_page_describes_its_model(api, tiny_model):
    with urllib.request.urlopen(f"{api}api/model") as response:
        described = json.loads(response.read())
    assert described["model"] == str(tiny_model) and described["interval_level"] == pytest.approx(0.9)
    with urllib.request.urlopen(api) as response:
        page = response.read().decode()
    assert "<title>faceage</title>" in page and not re.search(r"(src|href)=\"?(https?:)?//", page)  # works offline


@pytest.mark.parametrize(
    ("body", "faces", "error"),
    [
        (image_bytes((128, 128, 128), (300, 200)), 0, None),
        (b"", None, "not an image"),
        (b"name,age\nx,3\n", None, "not an image"),
        (ASTRONAUT.read_bytes()[:400], None, "unreadable image"),
        (huge_png(8000, 7000), None, "too large: 8000x7000 pixels is over the limit of 50 megapixels"),
        (huge_png(12000, 12000), None, "too large"),
    ],
    ids=["no face", "empty", "text", "truncated", "56 megapixels", "144 megapixels"],
)
def test_bad_photos_are_answered_with_a_reason(api, body, faces, error):
    status, answer = post(api, body)
    assert status == 200
    if error is None:
        assert len(answer["faces"]) == faces and "error" not in answer
    else:
        assert answer["error"].startswith(error) and "faces" not in answer


@pytest.mark.parametrize("over", ["abc", "-1", "151", "nan", "inf", "1e309"])
def test_a_threshold_that_is_not_an_age_is_refused(api, over):
    status, answer = post(api, ASTRONAUT.read_bytes(), over=over)
    assert status == 400 and "not an age" in answer["detail"]


@pytest.mark.parametrize("size", [UPLOAD_LIMIT + 1, 3 * UPLOAD_LIMIT])
def test_an_upload_over_the_limit_is_refused(api, size):
    status, answer = post(api, b"\xff" * size)
    assert status == 413 and "over the page's limit of 1 MiB" in answer["detail"]


def test_a_burst_of_requests_leaves_the_page_answering(api):
    bodies = [ASTRONAUT.read_bytes(), b"not a photo", huge_png(12000, 12000), image_bytes(size=(64, 64))]
    with ThreadPoolExecutor(10) as pool:  # 50 requests, at most 10 in flight
        statuses = list(pool.map(lambda i: post(api, bodies[i % len(bodies)])[0], range(50)))
    assert statuses == [200] * 50
    status, answer = post(api, ASTRONAUT.read_bytes())
    assert status == 200 and len(answer["faces"]) == 1


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    """``faceage serve`` started as a user starts it, on a free loopback port; stopped by its PID."""
    folder, port = tmp_path_factory.mktemp("page"), free_port()
    command = [str(Path(sys.executable).with_name("faceage")), "serve", "--model", str(tiny_model)]
    log = (folder / "serve.log").open("w")
    process = subprocess.Popen(
        [*command, "--port", str(port)], cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_until(answers(f"http://127.0.0.1:{port}/api/model"), "faceage serve", process, 120)
        yield f"http://127.0.0.1:{port}/"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        process.wait(30)
        log.close()


@pytest.mark.slow
@pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs Debian's chromium and chromium-driver (make test installs them)"
)
def test_photos_dropped_on_the_page_show_their_faces_in_a_real_browser(served, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photos = {
        "astronaut.jpg": ASTRONAUT.read_bytes(),
        "two.jpg": two_faces(),
        "wall.png": image_bytes((128, 128, 128), (300, 200), "PNG"),
        "notes.txt": b"not a photo\n",
        "huge.png": huge_png(8000, 7000),
    }
    for name, data in photos.items():
        (tmp_path / name).write_bytes(data)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1900"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        browser.get(served)
        WebDriverWait(browser, 30).until(lambda b: "90 % intervals" in b.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "over").send_keys("18")
        browser.find_element(By.ID, "files").send_keys("\n".join(str(tmp_path / name) for name in photos))
        WebDriverWait(browser, 120).until(lambda b: "5 photo(s) done" in b.find_element(By.ID, "status").text)
        cards = {
            card.find_element(By.TAG_NAME, "h2").text: card for card in browser.find_elements(By.CLASS_NAME, "photo")
        }
        assert list(cards) == list(photos)
        astronaut = cards["astronaut.jpg"]
        WebDriverWait(browser, 10).until(lambda b: astronaut.find_elements(By.CLASS_NAME, "box"))
        (box,) = astronaut.find_elements(By.CLASS_NAME, "box")
        (row,) = astronaut.find_elements(By.CSS_SELECTOR, "tr.face")
        assert re.fullmatch(r"\d+ years? \d+ months?", row.find_element(By.CLASS_NAME, "age").text)
        assert row.find_element(By.CLASS_NAME, "over").text in ("yes", "no", "uncertain")
        assert re.fullmatch(r"1: \d+ \(\d+-\d+\)", box.text) and box.size["width"] > 20
        WebDriverWait(browser, 10).until(lambda b: len(cards["two.jpg"].find_elements(By.CLASS_NAME, "box")) == 2)
        assert "No face found." in cards["wall.png"].text
        assert "not an image" in cards["notes.txt"].text
        assert "over the limit of 50 megapixels" in cards["huge.png"].text
        browser.save_screenshot(str(tmp_path / "page.png"))
        if SCREENSHOT:  # the README's picture, as JPEG
            Image.open(tmp_path / "page.png").convert("RGB").save(SCREENSHOT, quality=80)
    finally:
        browser.quit()
    assert (tmp_path / "page.png").stat().st_size > 10_000
