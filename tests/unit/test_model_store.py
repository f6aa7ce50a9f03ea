"""The model store: share copies are hash-checked, verified once, and never half-installed.

A small made-up asset stands in for the real models; nothing here may reach the package index.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.errors import ModelError, ModelNotFound
from agent.models import store as store_module
from agent.models.catalog import CATALOG, ModelAsset, PyPIFile
from agent.models.store import ModelStore

CONTENT = b"GGUF not really a model, but 64 bytes of it will do for a test!!"
ASSET = ModelAsset(
    name="tiny-test-model",
    kind="chat-gguf",
    filename="tiny-test-model.gguf",
    sha256=hashlib.sha256(CONTENT).hexdigest(),
    size_bytes=len(CONTENT),
    source=PyPIFile("aifinops-no-such-package", "0.0.0", "tiny/tiny-test-model.gguf"),
    license="Apache-2.0",
    description="a test asset",
)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the model store tried to download from the package index")

    monkeypatch.setattr(ModelStore, "_install_from_pypi", refuse)


@pytest.fixture
def known_asset(monkeypatch: pytest.MonkeyPatch) -> ModelAsset:
    """Make the test asset a catalogue name, as far as ModelStore.resolve can tell."""
    catalog = {asset.name: asset for asset in (*CATALOG, ASSET)}
    monkeypatch.setattr(store_module, "find_asset", catalog.get)
    return ASSET


def share_with(tmp_path: Path, content: bytes, *, nested: bool = False) -> Path:
    share = tmp_path / "share"
    folder = share / "models" / ASSET.name if nested else share / "models"
    folder.mkdir(parents=True)
    (folder / ASSET.filename).write_bytes(content)
    return share


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def forbid_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> str:
        raise AssertionError("a verified file was hashed again")

    monkeypatch.setattr(ModelStore, "_hash_file", staticmethod(refuse))
    monkeypatch.setattr(ModelStore, "_install", refuse)


@pytest.mark.parametrize("nested", [False, True], ids=["share/models/file", "share/models/name/file"])
def test_resolve_copies_a_good_file_from_the_share_and_notes_it_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, known_asset: ModelAsset, nested: bool
) -> None:
    store = ModelStore(tmp_path / "models", share_with(tmp_path, CONTENT, nested=nested))
    assert store.status(known_asset).present is False

    progress: list[int] = []
    path = store.resolve(known_asset.name, progress.append)

    assert path == store.path_for(known_asset) == tmp_path / "models" / ASSET.name / ASSET.filename
    assert path.read_bytes() == CONTENT
    assert sum(progress) == len(CONTENT)
    assert files_in(tmp_path / "models") == {ASSET.filename, ASSET.filename + ".verified"}
    status = store.status(known_asset)
    assert (status.present, status.verified) == (True, True)

    # A second look trusts the note: no hashing, no copying.
    forbid_hashing(monkeypatch)
    again = ModelStore(tmp_path / "models", tmp_path / "share")
    assert again.status(known_asset).verified is True
    assert again.resolve(known_asset.name) == path
    assert again.pull(known_asset) == path


def test_a_share_file_with_the_wrong_content_is_refused_and_not_installed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", share_with(tmp_path, CONTENT[:-1] + b"?"))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        store.pull(ASSET)
    target = store.path_for(ASSET)
    assert not target.exists()
    assert files_in(tmp_path / "models") == set()  # no .partial, no .verified
    assert store.status(ASSET).verified is False


def test_a_file_changed_after_verification_is_no_longer_trusted(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", share_with(tmp_path, CONTENT))
    path = store.pull(ASSET)
    path.write_bytes(CONTENT + b"tampered")
    assert store.status(ASSET).verified is False
    assert store.pull(ASSET) == path  # fetched again from the share
    assert path.read_bytes() == CONTENT
    assert store.status(ASSET).verified is True


def test_a_good_file_already_in_place_is_hashed_once_and_noted(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")  # no share, and downloads are refused
    target = store.path_for(ASSET)
    target.parent.mkdir(parents=True)
    target.write_bytes(CONTENT)
    assert store.status(ASSET).verified is False
    assert store.pull(ASSET) == target
    assert store.status(ASSET).verified is True


def test_without_a_share_or_a_good_file_the_store_goes_to_the_package_index(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", share_dir=tmp_path / "empty-share")
    with pytest.raises(AssertionError, match="package index"):
        store.pull(ASSET)


def test_a_path_that_exists_is_returned_as_is(tmp_path: Path) -> None:
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"whatever")
    store = ModelStore(tmp_path / "models")
    assert store.resolve(str(model)) == model
    assert files_in(tmp_path / "models") == set()  # not copied, not noted


def test_an_unknown_name_is_model_not_found(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelNotFound, match="no-such-model"):
        store.resolve("no-such-model")


def test_a_directory_is_not_a_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        ModelStore(tmp_path / "models").resolve(str(tmp_path))


def test_statuses_cover_the_catalogue(tmp_path: Path) -> None:
    statuses = ModelStore(tmp_path / "models").statuses()
    assert [s.asset.name for s in statuses] == [a.name for a in CATALOG]
    assert not any(s.present or s.verified for s in statuses)


def test_catalogue_entries_are_well_formed() -> None:
    assert len({a.name for a in CATALOG}) == len(CATALOG)
    for asset in CATALOG:
        assert len(asset.sha256) == 64 and int(asset.sha256, 16) >= 0
        assert asset.size_bytes > 0
        assert asset.source.member.endswith(asset.filename.rsplit(".", 1)[-1])
