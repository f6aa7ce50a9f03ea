"""The bundle's read-only models folder: used first when its build-time manifest matches the
catalogue and the size is right, without hashing or copying; otherwise ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent.bundle import MODELS_MANIFEST
from agent.models.catalog import ModelAsset, PyPIFile
from agent.models.store import ModelStore

CONTENT = b"GGUF a bundled stand-in for a model"
ASSET = ModelAsset(
    name="tiny-bundled-model",
    kind="chat-gguf",
    filename="tiny.gguf",
    sha256=hashlib.sha256(CONTENT).hexdigest(),
    size_bytes=len(CONTENT),
    source=PyPIFile("aifinops-no-such-package", "0.0.0", "tiny/tiny.gguf"),
    license="Apache-2.0",
    description="a test asset",
)


@pytest.fixture(autouse=True)
def no_fetching_or_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the store fetched or hashed a model it should have taken from the bundle")

    monkeypatch.setattr(ModelStore, "_install_from_pypi", refuse)
    monkeypatch.setattr(ModelStore, "_hash_file", refuse)


def bundled(tmp_path: Path, content: bytes = CONTENT, sha256: str = ASSET.sha256) -> Path:
    folder = tmp_path / "bundle" / "models"
    (folder / ASSET.name).mkdir(parents=True)
    (folder / ASSET.name / ASSET.filename).write_bytes(content)
    entry = {"file": ASSET.filename, "sha256": sha256, "size_bytes": len(content)}
    (folder / MODELS_MANIFEST).write_text(json.dumps({ASSET.name: entry}))
    return folder


def test_bundled_copy_is_used_in_place(tmp_path: Path) -> None:
    folder = bundled(tmp_path)
    store = ModelStore(tmp_path / "models", bundled_dir=folder)
    status = store.status(ASSET)
    assert (status.path, status.present, status.verified, status.bundled) == (
        folder / ASSET.name / ASSET.filename,
        True,
        True,
        True,
    )
    assert store.pull(ASSET) == folder / ASSET.name / ASSET.filename
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    ("content", "sha256"),
    [
        (CONTENT, "0" * 64),  # the bundle was built for another catalogue file
        (CONTENT[:-1], ASSET.sha256),  # truncated since
    ],
)
def test_mismatched_bundled_copy_is_ignored(tmp_path: Path, content: bytes, sha256: str) -> None:
    store = ModelStore(tmp_path / "models", bundled_dir=bundled(tmp_path, content, sha256))
    assert store.bundled(ASSET) is None
    assert store.status(ASSET).path == tmp_path / "models" / ASSET.name / ASSET.filename
    assert not store.status(ASSET).present
    assert not store.status(ASSET).bundled


def test_unreadable_manifest_means_no_bundled_models(tmp_path: Path) -> None:
    folder = bundled(tmp_path)
    (folder / MODELS_MANIFEST).write_text("{not json")
    assert ModelStore(tmp_path / "models", bundled_dir=folder).bundled(ASSET) is None
