"""Detector output layouts (``detection_format``, issue 14) served live: the toy of each family
(tests/toy_models.py) on both backends, archived as a user would (the model file, its labels and the
format's settings with ``--set``, no settings.json) and registered on the run's TorchServe."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import registered
from tests.helpers import BACKENDS, FORMAT_OUTPUTS, FORMAT_SETTINGS, SCENES, assert_box_on_rectangle, png
from tests.scenes import bright_box_scene


@pytest.fixture(scope="module", autouse=True)
def format_archives(served, format_exports):
    archives = {}
    for fmt in FORMAT_OUTPUTS:
        settings = {"detection_format": fmt, **FORMAT_SETTINGS[fmt]}
        sets = [f"--set={key}={json.dumps(value)}" for key, value in settings.items()]
        for backend, filename in BACKENDS.items():
            archives[f"toy_{fmt}_{backend}"] = ["--model", str(format_exports / fmt / filename), "--task", "detection",
                                                "--labels", str(format_exports / fmt / "labels.json"), "--workers", "1",
                                                *sets]
    with registered(served, archives) as names:
        yield names


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("fmt", list(FORMAT_OUTPUTS))
def test_served_box_lands_on_the_rectangle(served, fmt, backend):
    """Served live: the box of each format's toy lies within 1 px of the drawn rectangle on
    333×777 and 1280×720 images (through the format's letterbox or stretch and back)."""
    for width, height in SCENES:
        image, truth = bright_box_scene(width, height)
        response = served.predict(f"toy_{fmt}_{backend}", png(image), content_type="image/png")
        assert response.status_code == 200, response.text
        assert_box_on_rectangle(response.json(), truth, fmt, backend, image.size)
