"""`aifinops bench similarity`: our top-k kernels against numpy, faiss and the memory floor.

For each size and storage type, in one process: the single-query p50 latency and the batch
throughput of ``native.similarity``; the memory bandwidth a parallel read of the same matrix
reaches (measured alternately with the searches, so both see the same machine state), the floor
it implies (bytes scanned / bandwidth) and our ratio to it; numpy (``X @ q`` + argpartition, on
the stored type as numpy handles it); faiss ``IndexFlatIP`` on float32 (its single queries
alternate with ours too) and faiss's scalar quantiser of the same width (when faiss is
installed); and the recall of float16 and int8
against exact float32 search on noisy copies of stored rows (the shape of a cache lookup: a
paraphrase lands near its original).

Vectors are random normal, L2-normalised, from a fixed seed. Set ``OMP_WAIT_POLICY=PASSIVE``
before the process loads an OpenMP runtime (``run_similarity_bench`` sets it if unset, which
helps only when nothing loaded one yet): spinning thread pools on few cores distort latencies.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DTYPES = ("float32", "float16", "int8")
SEED = 20240601
NOISE = 0.3  # query = normalize(row + NOISE * random unit vector): cosine ~0.96 to its row
NUMPY_BUDGET_S = 5.0  # numpy on float16 has no BLAS path: stop its repeats after this long
PAUSE_S = 0.3  # between phases, so one library's spinning threads do not slow the next

F32Matrix = npt.NDArray[np.float32]


def run_similarity_bench(
    ns: list[int],
    dtypes: list[str],
    d: int = 384,
    k: int = 10,
    repeats: int = 20,
    batch: int = 32,
    recall_queries: int = 200,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every (n, dtype) pair; returns a JSON-able dict (see `format_markdown`)."""
    unknown = sorted(set(dtypes) - set(DTYPES))
    if unknown or not dtypes:
        raise ValueError(f"dtypes must be among {', '.join(DTYPES)}; got {', '.join(dtypes) or 'none'}")
    if not ns or min(ns) < 1 or d < 1 or k < 1 or repeats < 1 or batch < 1 or recall_queries < 1:
        raise ValueError("n, d, k, repeats, batch and recall_queries must be positive")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    say = progress or (lambda message: None)

    import numba

    from native import similarity

    started = time.perf_counter()
    similarity.warm_up()
    warm_up_s = time.perf_counter() - started
    faiss, faiss_note = _import_faiss()
    notes: list[str] = [faiss_note] if faiss is None else []
    if faiss is not None:
        notes.append(
            "faiss runs with the better of 1 thread and all threads (one query split over threads can be "
            "slower); its flat float32 single queries alternate with ours, so each row's speedup compares "
            "the two under the same machine state"
        )

    rng = np.random.default_rng(SEED)
    say(f"generating {max(ns):,} x {d} vectors")
    base = _unit_rows(rng.standard_normal((max(ns), d), dtype=np.float32))
    rows: list[dict[str, Any]] = []
    for n in sorted(set(ns)):
        vectors = base[:n]
        singles = _noisy_copies(vectors, repeats, rng)
        queries = _noisy_copies(vectors, batch, rng)
        probes = _noisy_copies(vectors, recall_queries, rng)
        say(f"n={n:,}: exact float32 neighbours of {recall_queries} queries")
        exact = _exact_top(vectors, probes, k)
        flat_index = _faiss_index(faiss, vectors, "flat") if faiss is not None else None
        flat = _faiss_timings(faiss, flat_index, singles, queries, k, repeats) if faiss is not None else {}
        for dtype in (t for t in DTYPES if t in dtypes):
            say(f"n={n:,} {dtype}")
            stored, scales = _store(vectors, dtype)
            row: dict[str, Any] = {"n": n, "dtype": dtype, "d": d, "k": k}
            row |= _our_timings(similarity, stored, scales, singles, queries, k, repeats, faiss, flat_index, flat)
            time.sleep(PAUSE_S)
            row |= _numpy_timings(stored, scales, singles, queries, k, repeats)
            time.sleep(PAUSE_S)
            row["faiss_flat_f32_threads"] = flat.get("threads")
            row["faiss_flat_f32_batch_qps"] = flat.get("batch_qps")
            if faiss is not None:
                if dtype == "float32":
                    same = flat | {"p50_ms": row["faiss_flat_f32_p50_ms"]}
                else:
                    same = _faiss_timings(faiss, _faiss_index(faiss, vectors, dtype), singles, queries, k, repeats)
                row["faiss_same_type"] = same.get("index")
                row["faiss_same_type_p50_ms"] = same.get("p50_ms")
                row["faiss_same_type_batch_qps"] = same.get("batch_qps")
                time.sleep(PAUSE_S)
            found = similarity.search_batch(stored, probes, k, scales=scales).indices
            row["recall_at_1"] = float(np.mean(found[:, 0] == exact[:, 0]))
            row["recall_at_k"] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact, strict=True)]))
            if row.get("faiss_flat_f32_p50_ms"):
                row["speedup_vs_faiss_flat_f32"] = row["faiss_flat_f32_p50_ms"] / row["ours_p50_ms"]
            rows.append(row)
            del stored, scales
        del flat_index
    return {
        "machine": _machine(numba) | {"stream_1gib_gbps": _stream_gbps(similarity, repeats)},
        "params": {
            "d": d,
            "k": k,
            "repeats": repeats,
            "batch": batch,
            "recall_queries": recall_queries,
            "noise": NOISE,
            "seed": SEED,
        },
        "warm_up_s": warm_up_s,
        "rows": rows,
        "notes": notes,
    }


def format_markdown(result: dict[str, Any]) -> str:
    """One table for the docs, with the machine and the parameters above it."""
    m, p = result["machine"], result["params"]
    head = (
        f"{m['cpu']}, {m['cores']} cores, numba {m['numba']} ({m['threading_layer']} threads: "
        f"{m['numba_threads']}), numpy {m['numpy']}, faiss {m['faiss'] or 'not installed'}, "
        f"OMP_WAIT_POLICY={m['omp_wait_policy'] or 'unset'}; parallel read of 1 GiB: "
        f"{m['stream_1gib_gbps']:.1f} GB/s.\n"
        f"d={p['d']}, top-{p['k']}, p50 of {p['repeats']} single queries, batches of {p['batch']}; "
        f"recall over {p['recall_queries']} noisy copies of stored rows (noise {p['noise']}) "
        f"against exact float32. Kernels ready in {result['warm_up_s']:.2f} s.\n\n"
    )
    columns = [
        ("n", "n", "{:,}"),
        ("dtype", "dtype", "{}"),
        ("ours p50 (ms)", "ours_p50_ms", "{:.2f}"),
        ("floor (ms)", "floor_ms", "{:.2f}"),
        ("ratio to floor", "ratio_to_floor", "{:.2f}"),
        ("bandwidth (GB/s)", "bandwidth_gbps", "{:.1f}"),
        (f"ours batch-{p['batch']} (q/s)", "ours_batch_qps", "{:,.0f}"),
        ("numpy p50 (ms)", "numpy_p50_ms", "{:.2f}"),
        (f"numpy batch-{p['batch']} (q/s)", "numpy_batch_qps", "{:,.0f}"),
        ("faiss flat f32 p50 (ms)", "faiss_flat_f32_p50_ms", "{:.2f}"),
        ("faiss flat f32 batch (q/s)", "faiss_flat_f32_batch_qps", "{:,.0f}"),
        ("faiss same type p50 (ms)", "faiss_same_type_p50_ms", "{:.2f}"),
        ("x faster than faiss flat f32", "speedup_vs_faiss_flat_f32", "{:.2f}"),
        ("recall@1", "recall_at_1", "{:.3f}"),
        (f"recall@{p['k']}", "recall_at_k", "{:.3f}"),
    ]
    lines = ["| " + " | ".join(title for title, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in result["rows"]:
        cells = [_cell(row.get(key), fmt) for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {note}" for note in result["notes"]]
    notes += [f"- n={r['n']:,} {r['dtype']}: {r['numpy_note']}" for r in result["rows"] if r.get("numpy_note")]
    notes += [
        f"- faiss same type for {r['dtype']}: {r['faiss_same_type']}"
        for r in result["rows"]
        if r.get("faiss_same_type") and r["n"] == result["rows"][0]["n"]
    ]
    return head + "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


# -- measurements -----------------------------------------------------------------------------------


def _our_timings(
    similarity: Any,
    stored: npt.NDArray[Any],
    scales: npt.NDArray[np.float32] | None,
    singles: F32Matrix,
    queries: F32Matrix,
    k: int,
    repeats: int,
    faiss: Any,
    flat_index: Any,
    flat: dict[str, Any],
) -> dict[str, Any]:
    """Single queries, each after a parallel read of the same bytes (and before a faiss flat query
    when faiss is here), so the three see the same machine state; then batches."""
    scanned = stored.nbytes + (scales.nbytes if scales is not None else 0)
    similarity.read_through(stored)
    similarity.search(stored, singles[0], k, scales=scales)
    latency_s, bandwidth, baseline_s = [], [], []
    default_threads = faiss.omp_get_max_threads() if faiss is not None else 0
    try:
        if faiss is not None:
            faiss.omp_set_num_threads(flat["threads"])
        for query in singles[:repeats]:
            t0 = time.perf_counter()
            similarity.read_through(stored)
            t1 = time.perf_counter()
            similarity.search(stored, query, k, scales=scales)
            t2 = time.perf_counter()
            if flat_index is not None:
                flat_index.search(query[None, :], k)
                baseline_s.append(time.perf_counter() - t2)
            bandwidth.append(stored.nbytes / (t1 - t0) / 1e9)
            latency_s.append(t2 - t1)
    finally:
        if faiss is not None:
            faiss.omp_set_num_threads(default_threads)
    p50_ms = float(np.median(latency_s)) * 1e3
    gbps = float(np.median(bandwidth))
    floor_ms = scanned / (gbps * 1e9) * 1e3
    batch_s = _runs(lambda: similarity.search_batch(stored, queries, k, scales=scales), max(3, repeats // 4))
    return {
        "bytes_scanned": scanned,
        "ours_p50_ms": p50_ms,
        "ours_batch_qps": len(queries) / float(np.median(batch_s)),
        "bandwidth_gbps": gbps,
        "floor_ms": floor_ms,
        "ratio_to_floor": p50_ms / floor_ms,
        "faiss_flat_f32_p50_ms": float(np.median(baseline_s)) * 1e3 if baseline_s else None,
    }


def _numpy_timings(
    stored: npt.NDArray[Any],
    scales: npt.NDArray[np.float32] | None,
    singles: F32Matrix,
    queries: F32Matrix,
    k: int,
    repeats: int,
) -> dict[str, Any]:
    """numpy as a user would write it on the stored type: `X @ q`, then argpartition."""
    if stored.dtype == np.float16:  # float16 @ float16: numpy's own loop, no BLAS

        def scores(q: F32Matrix) -> npt.NDArray[Any]:
            return stored @ q.astype(np.float16)
    elif scales is not None:  # int8 @ float32: numpy casts the rows to float32 on every call
        row_scales = scales

        def scores(q: F32Matrix) -> npt.NDArray[Any]:
            return (stored @ q) * (row_scales if q.ndim == 1 else row_scales[:, None])
    else:

        def scores(q: F32Matrix) -> npt.NDArray[Any]:
            return stored @ q

    pending = iter(singles)
    single_s = _runs(lambda: _top_k(scores(next(pending)), k), repeats, budget_s=NUMPY_BUDGET_S)
    row: dict[str, Any] = {"numpy_p50_ms": float(np.median(single_s)) * 1e3, "numpy_runs": len(single_s)}
    if len(single_s) < repeats:
        row["numpy_note"] = (
            f"numpy ({stored.dtype} @ {'float16' if stored.dtype == np.float16 else 'float32'}) took "
            f"{row['numpy_p50_ms']:.0f} ms a query: {len(single_s)} runs only"
        )
    if stored.dtype == np.float32:
        batch_s = _runs(lambda: _top_k(scores(queries.T), k), max(3, repeats // 4), budget_s=NUMPY_BUDGET_S)
        row["numpy_batch_qps"] = len(queries) / float(np.median(batch_s))
    return row


def _faiss_index(faiss: Any, vectors: F32Matrix, kind: str) -> Any:
    """IndexFlatIP (kind "flat"), or faiss's scalar quantiser for float16 / int8 (8-bit, per dimension)."""
    d = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        qtype = faiss.ScalarQuantizer.QT_fp16 if kind == "float16" else faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexScalarQuantizer(d, qtype, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    index.add(vectors)
    return index


def _faiss_timings(
    faiss: Any, index: Any, singles: F32Matrix, queries: F32Matrix, k: int, repeats: int
) -> dict[str, Any]:
    """Single-query p50 and batch throughput, each the better of 1 thread and all of faiss's threads."""
    names = {"IndexFlatIP": "IndexFlatIP (float32)", "IndexScalarQuantizer": "IndexScalarQuantizer"}
    name = names.get(type(index).__name__, type(index).__name__)
    if name == "IndexScalarQuantizer":
        name += " QT_fp16" if index.sq.qtype == faiss.ScalarQuantizer.QT_fp16 else " QT_8bit (per-dimension ranges)"
    threads = faiss.omp_get_max_threads()
    best: dict[str, Any] = {"index": name}
    try:  # faiss splits one query over its threads; on few cores that can be much slower: try both
        for count in sorted({1, threads}):
            faiss.omp_set_num_threads(count)
            index.search(singles[:1], k)
            p50_ms = float(np.median(_each(lambda q: index.search(q[None, :], k), singles[:repeats]))) * 1e3
            batch_s = float(np.median(_runs(lambda: index.search(queries, k), max(3, repeats // 4))))
            if p50_ms < best.get("p50_ms", np.inf):
                best |= {"p50_ms": p50_ms, "threads": count}
            if len(queries) / batch_s > best.get("batch_qps", 0.0):
                best |= {"batch_qps": len(queries) / batch_s, "batch_threads": count}
    finally:
        faiss.omp_set_num_threads(threads)
    return best


def _each(call: Callable[[npt.NDArray[np.float32]], object], queries: F32Matrix) -> list[float]:
    """Seconds per call, one call per query."""
    times = []
    for query in queries:
        t0 = time.perf_counter()
        call(query)
        times.append(time.perf_counter() - t0)
    return times


def _stream_gbps(similarity: Any, repeats: int) -> float:
    """Bandwidth of a parallel read of a fresh 1 GiB array (context for the per-matrix figures)."""
    buffer = np.ones(1 << 27, np.uint64)
    similarity.read_through(buffer)
    return buffer.nbytes / float(np.median(_runs(lambda: similarity.read_through(buffer), repeats))) / 1e9


def _runs(call: Callable[[], object], count: int, budget_s: float | None = None) -> list[float]:
    """Seconds per call for `count` calls, or fewer once `budget_s` is spent (at least one)."""
    times: list[float] = []
    spent = 0.0
    while len(times) < count and (budget_s is None or spent < budget_s or not times):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return times


# -- data ----------------------------------------------------------------------------------------------


def _unit_rows(rows: F32Matrix) -> F32Matrix:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def _noisy_copies(vectors: F32Matrix, count: int, rng: np.random.Generator) -> F32Matrix:
    picked = rng.choice(len(vectors), count, replace=count > len(vectors))
    noise = _unit_rows(rng.standard_normal((count, vectors.shape[1]), dtype=np.float32))
    return np.ascontiguousarray(_unit_rows(vectors[picked] + np.float32(NOISE) * noise))


def _store(vectors: F32Matrix, dtype: str) -> tuple[npt.NDArray[Any], npt.NDArray[np.float32] | None]:
    from native.similarity import quantize_int8

    if dtype == "int8":
        return quantize_int8(vectors)
    return np.ascontiguousarray(vectors, dtype=dtype), None


def _top_k(scores: npt.NDArray[Any], k: int) -> npt.NDArray[np.intp]:
    """Best-first indices of the k highest scores along the first axis (one query or many)."""
    k = min(k, scores.shape[0])
    top = np.argpartition(-scores, k - 1, axis=0)[:k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=0), axis=0, kind="stable")
    return np.take_along_axis(top, order, axis=0)


def _exact_top(vectors: F32Matrix, queries: F32Matrix, k: int, chunk: int = 131072) -> npt.NDArray[np.intp]:
    """Exact float32 top-k of each query (numpy BLAS, in row chunks): (queries, k)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.intp)
    for lo in range(0, len(vectors), chunk):
        scores = queries @ vectors[lo : lo + chunk].T
        top = _top_k(scores.T, k).T
        best_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
        best_i = np.concatenate([best_i, top + lo], axis=1)
        keep = _top_k(best_s.T, k).T
        best_s, best_i = np.take_along_axis(best_s, keep, axis=1), np.take_along_axis(best_i, keep, axis=1)
    return best_i


# -- context ------------------------------------------------------------------------------------------


def _import_faiss() -> tuple[Any, str]:
    try:
        import faiss
    except ImportError as e:
        return None, f"faiss is not installed ({e}): pip install 'aifinops[bench]' for its columns"
    return faiss, ""


def _machine(numba: Any) -> dict[str, Any]:
    faiss, _ = _import_faiss()
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "threading_layer": numba.threading_layer(),
        "numpy": np.__version__,
        "faiss": getattr(faiss, "__version__", None) if faiss is not None else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
