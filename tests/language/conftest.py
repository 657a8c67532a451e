"""Fixtures of the language tests: the shipped synthetic models, loaded once."""

from __future__ import annotations

import pytest

from gradcam.language.models import SceneCaptioner, SceneVQA, load_captioner, load_vqa


@pytest.fixture(scope="session")
def captioner() -> SceneCaptioner:
    return load_captioner()


@pytest.fixture(scope="session")
def vqa() -> SceneVQA:
    return load_vqa()
