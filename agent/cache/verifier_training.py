"""Making the cache verifier: fine-tune a cross-encoder on labelled question pairs, calibrate it.

Run by ``aifinops cache train-verifier`` (off-line, by a developer), never by the agent. Needs
PyTorch and transformers (``pip install torch transformers onnx``), which the agent and its
installers do not ship: what ships is the int8 ONNX file this writes, and its calibration.

The pairs are split by ``pair_hash`` (so the split does not depend on file order): 70% to fit,
10% to calibrate (the threshold table that ``cache.min_precision`` reads), 20% held out for the
report. The calibration and the report score the shipped int8 model through the agent's own
code (``PairVerifier``, the embedder, the guard), not the PyTorch model it came from.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.benchmarks.cache_quality import Pair
from agent.cache.guard import facets, same_question
from agent.cache.verifier import FORMAT, MAX_PAIR_TOKENS, MIN_PRECISION_SWEEP, pair_hash

TRAIN, CALIBRATE, HELD_OUT = "train", "calibrate", "held_out"
FLOOR = 0.75  # cosine from which a stored question is a candidate (recall ceiling on dev: see the report)


def split_of(pair: Pair) -> str:
    bucket = pair_hash(pair.q1, pair.q2) % 10
    return TRAIN if bucket < 7 else CALIBRATE if bucket == 7 else HELD_OUT


@dataclass(frozen=True)
class TrainOptions:
    base: Path  # a BERT-family sentence model folder: config.json, model.safetensors, tokenizer.json
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 4e-5
    layers: int = 6
    seed: int = 1
    threads: int = 2


def fine_tune(pairs: Sequence[Pair], options: TrainOptions, out_onnx: Path, log: Callable[[str], None]) -> None:
    """Fit a cross-encoder (mean-pooled BERT + one linear unit) on both orders of each pair, then
    write it as int8 ONNX (inputs input_ids, attention_mask, token_type_ids; output one logit)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)  # noqa: S311 - shuffling training examples
    config = BertConfig.from_pretrained(str(options.base))
    config.num_hidden_layers = options.layers
    config._attn_implementation = "eager"  # traced to ONNX with the padding mask as a real input

    class CrossEncoder(torch.nn.Module):  # type: ignore[misc]
        def __init__(self, pretrained: bool) -> None:
            super().__init__()
            self.bert = (
                BertModel.from_pretrained(str(options.base), config=config, add_pooling_layer=False)
                if pretrained
                else BertModel(config, add_pooling_layer=False)
            )
            self.head = torch.nn.Linear(config.hidden_size, 1)

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).float()
            return self.head((hidden * mask).sum(1) / mask.sum(1)).squeeze(-1)

    tokenizer = Tokenizer.from_file(str(options.base / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_PAIR_TOKENS)
    tokenizer.no_padding()

    def batch(texts: list[tuple[str, str]]) -> tuple[Any, Any, Any]:
        encodings = tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = torch.zeros(len(encodings), width, dtype=torch.long)
        mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
        for i, e in enumerate(encodings):
            n = len(e.ids)
            ids[i, :n], mask[i, :n], types[i, :n] = torch.tensor(e.ids), 1, torch.tensor(e.type_ids)
        return ids, mask, types

    model = CrossEncoder(pretrained=True)
    examples = [((p.q1, p.q2), float(p.duplicate)) for p in pairs] + [((p.q2, p.q1), float(p.duplicate)) for p in pairs]
    steps = max(1, int(len(examples) * options.epochs / options.batch_size))
    warm = max(1, steps // 10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / max(steps - warm, 1))
    )
    model.train()
    order: list[int] = []
    started = time.monotonic()
    for step in range(steps):
        if not order:
            order = list(range(len(examples)))
            rng.shuffle(order)
        chosen = [order.pop() for _ in range(min(options.batch_size, len(order)))]
        inputs = batch([examples[i][0] for i in chosen])
        labels = torch.tensor([examples[i][1] for i in chosen])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(*inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step + 1}/{steps}: loss {loss.item():.4f} ({time.monotonic() - started:.0f} s)")
    model.eval()
    float_onnx = out_onnx.with_suffix(".float.onnx")
    # Two pairs of different lengths: the trace must see padding, or it drops the mask.
    sample = batch([("warm up", "a question"), ("a longer question to pad the other one", "and its match")])
    torch.onnx.export(
        model,
        sample,
        str(float_onnx),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["logit"],
        dynamic_axes={name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "token_type_ids")}
        | {"logit": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(float_onnx), str(out_onnx), weight_type=QuantType.QInt8)
    float_onnx.unlink()


@dataclass(frozen=True)
class Scored:
    """One pair as the lookup sees it: similarity, guard, verifier."""

    pairs: list[Pair]
    similarity: npt.NDArray[np.float64]
    guard_ok: npt.NDArray[np.bool_]
    verifier: npt.NDArray[np.float64]

    @property
    def labels(self) -> npt.NDArray[np.bool_]:
        return np.array([p.duplicate for p in self.pairs], dtype=bool)

    def hits(self, threshold: float, floor: float = FLOOR) -> npt.NDArray[np.bool_]:
        hit: npt.NDArray[np.bool_] = (self.similarity >= floor) & self.guard_ok & (self.verifier >= threshold)
        return hit


def score_pairs(
    pairs: list[Pair],
    embed: Callable[[list[str]], npt.NDArray[np.float32]],
    verify: Callable[[str, list[str]], npt.NDArray[np.float64]],
) -> Scored:
    """Each pair's cosine, guard verdict and verifier score, as a lookup of q2 against q1 makes them."""
    v1, v2 = embed([p.q1 for p in pairs]), embed([p.q2 for p in pairs])
    similarity = np.sum(v1 * v2, axis=1).astype(np.float64)
    guard_ok = np.array([same_question(facets(p.q2), facets(p.q1))[0] for p in pairs], dtype=bool)
    verifier = np.array([float(verify(p.q2, [p.q1])[0]) for p in pairs])
    return Scored(pairs, similarity, guard_ok, verifier)


MIN_HITS = 20  # a threshold passing fewer calibration pairs measures nothing: left out of the table


def calibration_table(scored: Scored, floor: float = FLOOR) -> dict[str, npt.NDArray[np.float64]]:
    """Precision and recall of the whole lookup at each candidate threshold (ascending).

    The thresholds are 200 quantiles of the scores of the pairs that reach the verifier (the
    model's scores crowd near 0 and 1, so a fixed grid would be blind where it matters)."""
    labels = scored.labels
    candidates = scored.verifier[(scored.similarity >= floor) & scored.guard_ok]
    grid = np.quantile(candidates, np.linspace(0, 1, 201)) if len(candidates) else np.array([0.5])
    thresholds, precision, recall = [], [], []
    for t in np.unique(grid):
        hit = scored.hits(float(t), floor)
        if hit.sum() < MIN_HITS:
            continue
        correct = int((hit & labels).sum())
        thresholds.append(float(t))
        precision.append(correct / hit.sum())
        recall.append(correct / max(int(labels.sum()), 1))
    if not thresholds:  # too few pairs to measure: a table that serves nothing
        thresholds, precision, recall = [1.0], [1.0], [0.0]
    return {"thresholds": np.array(thresholds), "precision": np.array(precision), "recall": np.array(recall)}


def report(held_out: Scored, table: dict[str, npt.NDArray[np.float64]]) -> dict[str, Any]:
    """What the lookup does on the held-out pairs at each cache.min_precision setting."""
    from agent.cache.verifier import Calibration

    calibration = Calibration(table["thresholds"], table["precision"], table["recall"], FLOOR)
    labels = held_out.labels
    rows = []
    for min_precision in MIN_PRECISION_SWEEP:
        threshold = calibration.threshold_for(min_precision)
        hit = held_out.hits(threshold)
        correct = int((hit & labels).sum())
        rows.append({
            "min_precision": min_precision,
            "threshold": round(threshold, 4),
            "precision": round(correct / hit.sum(), 4) if hit.sum() else None,
            "recall": round(correct / max(int(labels.sum()), 1), 4),
            "hits": int(hit.sum()),
            "wrong": int(hit.sum()) - correct,
        })  # fmt: skip
    candidates = (held_out.similarity >= FLOOR) & held_out.guard_ok
    return {
        "held_out": rows,
        "held_out_pairs": len(labels),
        "held_out_duplicates": int(labels.sum()),
        "recall_ceiling": round(int((candidates & labels).sum()) / max(int(labels.sum()), 1), 4),
        "floor": FLOOR,
    }


def save_artifact(
    directory: Path,
    table: dict[str, npt.NDArray[np.float64]],
    trained: list[Pair],
    report: dict[str, Any],
    onnx_sha256: str,
) -> Path:
    out = directory / "default_verifier.npz"
    hashes = np.array(sorted({pair_hash(p.q1, p.q2) for p in trained}), dtype=np.uint64)
    np.savez_compressed(
        out,
        format=np.array(FORMAT),
        floor=np.array(FLOOR),
        onnx_sha256=np.array(onnx_sha256),
        trained_pairs=hashes,
        report=np.array(json.dumps(report, indent=1, sort_keys=True)),
        thresholds=table["thresholds"],
        precision=table["precision"],
        recall=table["recall"],
    )
    return out


