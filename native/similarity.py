"""Exact top-k inner-product search over stored vectors: float32, float16 or int8 rows.

``search(matrix, query, k)`` scans every row (no approximate index: at a million rows a scan is
memory-bound and takes milliseconds) and returns the ``k`` rows with the highest inner product,
best first, as ``TopK(indices, scores)``. ``search_batch`` does the same for ``m`` queries in one
pass over the matrix and returns ``(m, k)`` arrays.

Storage types and how they are scanned:

- float32 and float16 rows, accumulated in float32; float16 is converted in registers
  (``vcvtph2ps``: numba has no CPU float16 type, so the kernels read the uint16 bits).
- int8 rows with one float32 scale per row, ``row_i ~= int8_i * scale_i`` (``quantize_int8``
  makes them). A single query is quantised to int16 (relative error ~3e-5, far below the int8
  rows' own) and dotted in int32 (``vpmaddwd``); a batch dequantises each row to float32 instead.
- ``search``: one row at a time, the dot product vectorised over d. ``search_batch``: each pair
  of rows converted once into a float32 buffer and scored against 4 queries at a time.

Row filter (the semantic cache's partitions and deleted rows): ``labels`` is one int64 per row.
A negative label marks a row that never matches (a deleted row). ``want=None`` accepts every
row with a non-negative label; ``want=w`` (w >= 0) only rows whose label is ``w``. Without
``labels`` every row is a candidate. The filter is applied after scoring: every row is scored
whatever its label (``search`` reads a label only for a score that would enter the top k,
``search_batch`` reads each row's), so a filtered search runs at the unfiltered speed and its
time does not depend on which rows match (no timing oracle on other partitions' contents).

Results: indices are int64 row numbers, scores float32, best first; equal scores go to the lower
row number, and a row's score does not depend on the number of threads. ``search`` and
``search_batch`` sum in different orders (and differ for int8 as above), so their scores may
differ slightly. With fewer than ``k`` candidates the tail is padded with index ``-1`` and score
``-inf``. A row whose score is NaN or ``-inf`` is never returned.

Inputs may be read-only (a memory map, ``np.frombuffer``); they must be C-contiguous and of the
exact dtype (ValueError otherwise: the kernels never copy a matrix behind the caller's back).

Threads: a scan of 32 MiB or more (bytes x queries for a batch) runs in parallel over row chunks
(numba ``prange``, one chunk per thread, each keeping its own top-k, then merged); smaller ones
run on the calling thread, which on a 2-core VM was as fast (waking the pool costs 0.1-1 ms).
Every kernel releases the GIL, so concurrent small searches from several threads run at once;
parallel scans are serialised by a lock (they use every core anyway, and numba's fallback
``workqueue`` threading layer does not allow concurrent launches).

Compilation: the kernels have explicit signatures but are compiled (or loaded from numba's
on-disk cache, ``cache=True``) on first use, not at import. Importing this module costs importing
numba (about 0.2-0.3 s here) and nothing else; ``warm_up()`` compiles every search kernel (about
10 s on a 2-core VM the first time, 0.2-0.3 s from the cache). Set ``NUMBA_CACHE_DIR`` to a
writable folder before importing: numba refuses to cache where it cannot write. ``llvmlite`` is
imported for one intrinsic (the half-to-float conversion); it is numba's own code generator,
installed with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

log = logging.getLogger(__name__)

F32Vector = npt.NDArray[np.float32]
I64Vector = npt.NDArray[np.int64]

# reassoc lets LLVM split each dot product over several vector accumulators; contract allows FMA.
# Not the full "fast" set: that assumes no NaN/inf, and the heaps start at -inf.
_FASTMATH: Final = {"reassoc", "contract"}
# A single query scans in parallel from this many bytes of rows on (below: the thread-pool wake-up
# costs more than it saves). A batch counts bytes x queries.
_PARALLEL_MIN_BYTES: Final = 32 << 20
# Query quantisation for int8 rows: |int8| <= 128, so d * 128 * _Q16_MAX must fit in int32.
_Q16_MAX: Final = 32767
_INT32_MAX: Final = 2**31 - 1
_ANY: Final = -1  # the kernels' "any non-negative label"

_F = TypeVar("_F", bound=Callable[..., Any])


class TopK(NamedTuple):
    """Best-first row numbers (int64, -1 = padding) and their scores (float32, -inf = padding)."""

    indices: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]


# -- numba plumbing -------------------------------------------------------------------------------

_SIGNATURES: dict[str, tuple[Any, str]] = {}  # kernel name -> (dispatcher, signature)
_SEARCH_KERNELS: list[str] = []  # what warm_up() compiles
_compile_lock = threading.Lock()
_parallel_lock = threading.Lock()
_compiled: set[str] = set()


def _helper(func: _F) -> _F:
    """A small jitted helper, inlined into the kernels that call it."""
    return cast(_F, numba.njit(inline="always", nogil=True, fastmath=_FASTMATH)(func))


def _subroutine(func: _F) -> _F:
    """A jitted function called (not inlined) from kernels: compiled once, keeps them small."""
    return cast(_F, numba.njit(nogil=True, fastmath=_FASTMATH)(func))


def _kernel(signature: str, *, parallel: bool = False, search: bool = True) -> Callable[[_F], _F]:
    """A kernel with an explicit signature, compiled (or loaded from cache) on first use."""

    def decorate(func: _F) -> _F:
        dispatcher = numba.njit(cache=True, nogil=True, fastmath=_FASTMATH, parallel=parallel)(func)
        _SIGNATURES[func.__name__] = (dispatcher, signature)
        if search:
            _SEARCH_KERNELS.append(func.__name__)
        return cast(_F, dispatcher)

    return decorate


def _in(dtype: str, ndim: int) -> str:
    """An input array in a signature: C-contiguous, read-only (a writable array converts to it)."""
    return f"Array({dtype}, {ndim}, 'C', readonly=True)"


def _ready(name: str) -> Any:
    """The compiled kernel `name`; compiles it (and nothing else) the first time."""
    dispatcher, signature = _SIGNATURES[name]
    if name not in _compiled:
        with _compile_lock:
            if name not in _compiled:
                dispatcher.compile(signature)
                dispatcher.disable_compile()  # any other argument types: TypeError, not a new build
                _compiled.add(name)
    return dispatcher


def _half_to_float_typing(typingctx: Any, bits: Any) -> Any:
    """IEEE half (as its uint16 bits) to float32: one vcvtph2ps lane when vectorised."""
    if bits != types.uint16:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


# numba CPU has no float16 type: float16 matrices are passed as their uint16 bits.
_half_to_float = cast(Callable[[Any], Any], intrinsic(_half_to_float_typing))


# The hot loops index 2-D arrays directly (matrix[row, j], heap_s[q, 0]) rather than through row
# views: each view costs an atomic reference-count increment and decrement.


@_subroutine
def _push(heap_s: Any, heap_i: Any, q: int, score: Any, index: int, size: int) -> None:
    """Put (score, index) at the root of the min-heap heap[q, :size] and sift it down.

    The root is the worst entry: lowest score, then highest index (so lower rows win ties).
    """
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        if right < size and (
            heap_s[q, right] < heap_s[q, child]
            or (heap_s[q, right] == heap_s[q, child] and heap_i[q, right] > heap_i[q, child])
        ):
            child = right
        if heap_s[q, child] < score or (heap_s[q, child] == score and heap_i[q, child] > index):
            heap_s[q, pos] = heap_s[q, child]
            heap_i[q, pos] = heap_i[q, child]
            pos = child
        else:
            break
    heap_s[q, pos] = score
    heap_i[q, pos] = index


@_helper
def _wanted(labels: I64Vector, use_labels: bool, want: int, row: int) -> bool:
    if not use_labels:
        return True
    label = labels[row]
    return label >= 0 and (want < 0 or label == want)


@_helper
def _offer(heap_s: Any, heap_i: Any, q: int, score: Any, row: int) -> None:
    """Push (score, row) into query q's heap if it beats the worst there; row < 0: drop it."""
    if row >= 0 and score > heap_s[q, 0]:
        _push(heap_s, heap_i, q, score, row, heap_s.shape[1])


# -- single query: one row at a time, the dot product vectorised over d --------------------------
# Rows are scanned in increasing order, so `score > heap root` is the whole tie rule here. Every
# row is scored; the label is read only for a score that would enter the heap.

# labels, use_labels, want, first row, end row, heap scores (1, k), heap rows (1, k)
_SCAN_ARGS = f"{_in('int64', 1)}, boolean, int64, int64, int64, float32[:, ::1], int64[:, ::1]"


@_kernel(f"void({_in('float32', 2)}, {_in('float32', 1)}, {_SCAN_ARGS})")
def _scan_f32(
    matrix: Any, query: Any, labels: Any, use_labels: bool, want: int, lo: int, hi: int, heap_s: Any, heap_i: Any
) -> None:
    d, k = query.size, heap_s.shape[1]
    for row in range(lo, hi):
        s = np.float32(0.0)
        for j in range(d):
            s += matrix[row, j] * query[j]
        if s > heap_s[0, 0] and _wanted(labels, use_labels, want, row):
            _push(heap_s, heap_i, 0, s, row, k)


@_kernel(f"void({_in('uint16', 2)}, {_in('float32', 1)}, {_SCAN_ARGS})")
def _scan_f16(
    matrix: Any, query: Any, labels: Any, use_labels: bool, want: int, lo: int, hi: int, heap_s: Any, heap_i: Any
) -> None:
    d, k = query.size, heap_s.shape[1]
    for row in range(lo, hi):
        s = np.float32(0.0)
        for j in range(d):
            s += _half_to_float(matrix[row, j]) * query[j]
        if s > heap_s[0, 0] and _wanted(labels, use_labels, want, row):
            _push(heap_s, heap_i, 0, s, row, k)


@_kernel(f"void({_in('int8', 2)}, {_in('float32', 1)}, {_in('int16', 1)}, float32, {_SCAN_ARGS})")
def _scan_i8(
    matrix: Any,
    scales: Any,
    query: Any,
    query_scale: float,
    labels: Any,
    use_labels: bool,
    want: int,
    lo: int,
    hi: int,
    heap_s: Any,
    heap_i: Any,
) -> None:
    d, k = query.size, heap_s.shape[1]
    for row in range(lo, hi):
        acc = np.int32(0)
        for j in range(d):  # int16 x int16 -> int32: LLVM emits vpmaddwd
            acc = np.int32(acc + np.int32(np.int16(matrix[row, j]) * query[j]))
        s = np.float32(acc) * (scales[row] * query_scale)
        if s > heap_s[0, 0] and _wanted(labels, use_labels, want, row):
            _push(heap_s, heap_i, 0, s, row, k)


# -- batches: rows copied (or converted) to two float32 buffers, scored 2 rows x 4 queries at once --
# Even rows always take buffer a and odd rows buffer b, and _score_rows is one compiled function
# (inlined copies could be vectorised, so rounded, differently): a row's score does not depend on
# how the rows were chunked.

_BATCH_ARGS = f"{_in('int64', 1)}, boolean, int64, int64, int64, float32[:, ::1], int64[:, ::1]"


@_subroutine
def _score_rows(bufs: Any, ra: int, rb: int, queries: Any, heap_s: Any, heap_i: Any) -> None:
    """Score the buffered rows ra (bufs[0], even) and rb (bufs[1], odd) against every query.

    A negative row number marks an empty or unwanted buffer: it is scored but dropped. (No label
    array in here: an array handed to an inlined helper costs reference counting at each call.)
    """
    m, d = queries.shape
    m4 = m - m % 4
    for qb in range(0, m4, 4):
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        b0 = np.float32(0.0)
        b1 = np.float32(0.0)
        b2 = np.float32(0.0)
        b3 = np.float32(0.0)
        for j in range(d):
            xj = bufs[0, j]
            yj = bufs[1, j]
            v = queries[qb, j]
            a0 += xj * v
            b0 += yj * v
            v = queries[qb + 1, j]
            a1 += xj * v
            b1 += yj * v
            v = queries[qb + 2, j]
            a2 += xj * v
            b2 += yj * v
            v = queries[qb + 3, j]
            a3 += xj * v
            b3 += yj * v
        _offer(heap_s, heap_i, qb, a0, ra)
        _offer(heap_s, heap_i, qb, b0, rb)
        _offer(heap_s, heap_i, qb + 1, a1, ra)
        _offer(heap_s, heap_i, qb + 1, b1, rb)
        _offer(heap_s, heap_i, qb + 2, a2, ra)
        _offer(heap_s, heap_i, qb + 2, b2, rb)
        _offer(heap_s, heap_i, qb + 3, a3, ra)
        _offer(heap_s, heap_i, qb + 3, b3, rb)
    for qi in range(m4, m):
        sa = np.float32(0.0)
        sb = np.float32(0.0)
        for j in range(d):
            v = queries[qi, j]
            sa += bufs[0, j] * v
            sb += bufs[1, j] * v
        _offer(heap_s, heap_i, qi, sa, ra)
        _offer(heap_s, heap_i, qi, sb, rb)


@_kernel(f"void({_in('float32', 2)}, {_in('float32', 2)}, {_BATCH_ARGS})")
def _batch_f32(
    matrix: Any, queries: Any, labels: Any, use_labels: bool, want: int, lo: int, hi: int, heap_s: Any, heap_i: Any
) -> None:
    d = queries.shape[1]
    bufs = np.zeros((2, d), np.float32)
    row = lo
    while row < hi:
        ra = row if row % 2 == 0 else -1  # an odd first row leaves buffer a empty
        rb = ra + 1 if ra >= 0 else row
        if rb >= hi:  # an even last row leaves buffer b empty
            rb = -1
        if ra >= 0:
            for j in range(d):
                bufs[0, j] = matrix[ra, j]
        if rb >= 0:
            for j in range(d):
                bufs[1, j] = matrix[rb, j]
        keep_a = ra if ra >= 0 and _wanted(labels, use_labels, want, ra) else -1
        keep_b = rb if rb >= 0 and _wanted(labels, use_labels, want, rb) else -1
        _score_rows(bufs, keep_a, keep_b, queries, heap_s, heap_i)
        row = max(ra, rb) + 1


@_kernel(f"void({_in('uint16', 2)}, {_in('float32', 2)}, {_BATCH_ARGS})")
def _batch_f16(
    matrix: Any, queries: Any, labels: Any, use_labels: bool, want: int, lo: int, hi: int, heap_s: Any, heap_i: Any
) -> None:
    d = queries.shape[1]
    bufs = np.zeros((2, d), np.float32)
    row = lo
    while row < hi:
        ra = row if row % 2 == 0 else -1  # an odd first row leaves buffer a empty
        rb = ra + 1 if ra >= 0 else row
        if rb >= hi:  # an even last row leaves buffer b empty
            rb = -1
        if ra >= 0:
            for j in range(d):
                bufs[0, j] = _half_to_float(matrix[ra, j])
        if rb >= 0:
            for j in range(d):
                bufs[1, j] = _half_to_float(matrix[rb, j])
        keep_a = ra if ra >= 0 and _wanted(labels, use_labels, want, ra) else -1
        keep_b = rb if rb >= 0 and _wanted(labels, use_labels, want, rb) else -1
        _score_rows(bufs, keep_a, keep_b, queries, heap_s, heap_i)
        row = max(ra, rb) + 1


@_kernel(f"void({_in('int8', 2)}, {_in('float32', 1)}, {_in('float32', 2)}, {_BATCH_ARGS})")
def _batch_i8(
    matrix: Any,
    scales: Any,
    queries: Any,
    labels: Any,
    use_labels: bool,
    want: int,
    lo: int,
    hi: int,
    heap_s: Any,
    heap_i: Any,
) -> None:
    d = queries.shape[1]
    bufs = np.zeros((2, d), np.float32)  # dequantised rows: the float32 path, queries unquantised
    row = lo
    while row < hi:
        ra = row if row % 2 == 0 else -1  # an odd first row leaves buffer a empty
        rb = ra + 1 if ra >= 0 else row
        if rb >= hi:  # an even last row leaves buffer b empty
            rb = -1
        if ra >= 0:
            scale = scales[ra]
            for j in range(d):
                bufs[0, j] = np.float32(matrix[ra, j]) * scale
        if rb >= 0:
            scale = scales[rb]
            for j in range(d):
                bufs[1, j] = np.float32(matrix[rb, j]) * scale
        keep_a = ra if ra >= 0 and _wanted(labels, use_labels, want, ra) else -1
        keep_b = rb if rb >= 0 and _wanted(labels, use_labels, want, rb) else -1
        _score_rows(bufs, keep_a, keep_b, queries, heap_s, heap_i)
        row = max(ra, rb) + 1


# -- parallel drivers: one chunk of rows per heap, chunks spread over the threads ----------------


@_helper
def _chunk(n: int, chunks: int, c: int) -> tuple[int, int]:
    step = (n + chunks - 1) // chunks
    return min(n, c * step), min(n, (c + 1) * step)


_PAR_ARGS = f"{_in('int64', 1)}, boolean, int64, float32[:, :, ::1], int64[:, :, ::1]"


@_kernel(f"void({_in('float32', 2)}, {_in('float32', 1)}, {_PAR_ARGS})", parallel=True)
def _par_f32(matrix: Any, query: Any, labels: Any, use_labels: bool, want: int, heap_s: Any, heap_i: Any) -> None:
    chunks = heap_s.shape[0]
    for c in prange(chunks):
        lo, hi = _chunk(matrix.shape[0], chunks, c)
        _scan_f32(matrix, query, labels, use_labels, want, lo, hi, heap_s[c], heap_i[c])


@_kernel(f"void({_in('uint16', 2)}, {_in('float32', 1)}, {_PAR_ARGS})", parallel=True)
def _par_f16(matrix: Any, query: Any, labels: Any, use_labels: bool, want: int, heap_s: Any, heap_i: Any) -> None:
    chunks = heap_s.shape[0]
    for c in prange(chunks):
        lo, hi = _chunk(matrix.shape[0], chunks, c)
        _scan_f16(matrix, query, labels, use_labels, want, lo, hi, heap_s[c], heap_i[c])


@_kernel(f"void({_in('int8', 2)}, {_in('float32', 1)}, {_in('int16', 1)}, float32, {_PAR_ARGS})", parallel=True)
def _par_i8(
    matrix: Any,
    scales: Any,
    query: Any,
    query_scale: float,
    labels: Any,
    use_labels: bool,
    want: int,
    heap_s: Any,
    heap_i: Any,
) -> None:
    chunks = heap_s.shape[0]
    for c in prange(chunks):
        lo, hi = _chunk(matrix.shape[0], chunks, c)
        _scan_i8(matrix, scales, query, query_scale, labels, use_labels, want, lo, hi, heap_s[c], heap_i[c])


@_kernel(f"void({_in('float32', 2)}, {_in('float32', 2)}, {_PAR_ARGS})", parallel=True)
def _par_batch_f32(
    matrix: Any, queries: Any, labels: Any, use_labels: bool, want: int, heap_s: Any, heap_i: Any
) -> None:
    chunks = heap_s.shape[0]
    for c in prange(chunks):
        lo, hi = _chunk(matrix.shape[0], chunks, c)
        _batch_f32(matrix, queries, labels, use_labels, want, lo, hi, heap_s[c], heap_i[c])


@_kernel(f"void({_in('uint16', 2)}, {_in('float32', 2)}, {_PAR_ARGS})", parallel=True)
def _par_batch_f16(
    matrix: Any, queries: Any, labels: Any, use_labels: bool, want: int, heap_s: Any, heap_i: Any
) -> None:
    chunks = heap_s.shape[0]
    for c in prange(chunks):
        lo, hi = _chunk(matrix.shape[0], chunks, c)
        _batch_f16(matrix, queries, labels, use_labels, want, lo, hi, heap_s[c], heap_i[c])


@_kernel(f"void({_in('int8', 2)}, {_in('float32', 1)}, {_in('float32', 2)}, {_PAR_ARGS})", parallel=True)
def _par_batch_i8(
    matrix: Any,
    scales: Any,
    queries: Any,
    labels: Any,
    use_labels: bool,
    want: int,
    heap_s: Any,
    heap_i: Any,
) -> None:
    chunks = heap_s.shape[0]
    for c in prange(chunks):
        lo, hi = _chunk(matrix.shape[0], chunks, c)
        _batch_i8(matrix, scales, queries, labels, use_labels, want, lo, hi, heap_s[c], heap_i[c])


@_kernel("void(float32[:, :, ::1], int64[:, :, ::1], float32[:, ::1], int64[:, ::1])")
def _merge(heap_s: Any, heap_i: Any, out_s: Any, out_i: Any) -> None:
    """Merge the chunks' heaps into one best-first (m, k) result, padded with (-inf, -1)."""
    chunks, m, k = heap_s.shape
    out_s[:] = -np.inf
    out_i[:] = -1
    for q in range(m):
        for c in range(chunks):
            for t in range(k):
                s = heap_s[c, q, t]
                i = heap_i[c, q, t]
                if i >= 0 and (s > out_s[q, 0] or (s == out_s[q, 0] and (out_i[q, 0] < 0 or i < out_i[q, 0]))):
                    _push(out_s, out_i, q, s, i, k)
        for size in range(k - 1, 0, -1):  # heap sort: the worst goes to the back
            s, i = out_s[q, 0], out_i[q, 0]
            _push(out_s, out_i, q, out_s[q, size], out_i[q, size], size)
            out_s[q, size] = s
            out_i[q, size] = i


@_kernel(f"uint64({_in('uint64', 1)}, int64)", parallel=True, search=False)
def _read_through(words: Any, chunks: int) -> int:
    sums = np.zeros(chunks, np.uint64)
    for c in prange(chunks):
        lo, hi = _chunk(words.size, chunks, c)
        part = words[lo:hi]  # a slice: its loop vectorises, words[lo + i] would not
        total = np.uint64(0)
        for i in range(part.size):
            total += part[i]
        sums[c] = total
    return int(sums.sum())


# -- the Python API --------------------------------------------------------------------------------


def quantize_int8(matrix: npt.NDArray[np.floating[Any]]) -> tuple[npt.NDArray[np.int8], F32Vector]:
    """Per-row symmetric int8 quantisation: ``row_i ~= q_i * scale_i``, |error| <= scale_i / 2.

    ``scale_i = max|row_i| / 127`` (0 for an all-zero row). Returns C-contiguous arrays.
    """
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2:
        raise ValueError("quantize_int8 expects a 2-D array")
    if matrix.dtype not in (np.float32, np.float64, np.float16):
        raise ValueError(f"quantize_int8 expects floating-point rows, not {matrix.dtype}")
    rows = matrix.astype(np.float32, copy=False)
    if not np.isfinite(rows).all():
        raise ValueError("quantize_int8: the matrix holds NaN or infinity")
    scales = np.abs(rows).max(axis=1, initial=0.0) / np.float32(127.0)
    divisors = np.where(scales > 0, scales, np.float32(1.0))
    quantised = np.clip(np.rint(rows / divisors[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(quantised), np.ascontiguousarray(scales, dtype=np.float32)


def search(
    matrix: npt.NDArray[Any],
    query: F32Vector,
    k: int,
    *,
    labels: I64Vector | None = None,
    want: int | None = None,
    scales: F32Vector | None = None,
) -> TopK:
    """The k rows of `matrix` with the highest inner product with `query`, best first.

    `matrix`: (n, d) C-contiguous float32, float16 or int8 (then `scales`, (n,) float32, is
    required); `query`: (d,) float32. Returns arrays of shape (k,). See the module docstring for
    `labels`/`want`, padding and ties. Raises ValueError on bad shapes, dtypes or layouts.
    """
    if not isinstance(query, np.ndarray) or query.ndim != 1:
        raise ValueError("query must be a 1-D numpy array")
    result = _search(matrix, query[None, :], k, labels, want, scales, True)
    return TopK(result.indices[0], result.scores[0])


def search_batch(
    matrix: npt.NDArray[Any],
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    labels: I64Vector | None = None,
    want: int | None = None,
    scales: F32Vector | None = None,
) -> TopK:
    """`search` for m queries ((m, d) float32, C-contiguous) in one pass: (m, k) arrays."""
    if not isinstance(queries, np.ndarray) or queries.ndim != 2:
        raise ValueError("queries must be a 2-D numpy array of shape (m, d)")
    return _search(matrix, queries, k, labels, want, scales, False)


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel, then run each once on tiny inputs."""
    started = time.perf_counter()
    for name in _SEARCH_KERNELS:
        _ready(name)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((8, 16)).astype(np.float32)
    quantised, scales = quantize_int8(rows)
    labels = np.zeros(8, np.int64)
    for matrix, row_scales in ((rows, None), (rows.astype(np.float16), None), (quantised, scales)):
        search(matrix, rows[0], 3, scales=row_scales, labels=labels, want=0)
        search_batch(matrix, rows[:5], 3, scales=row_scales)
        for single in (True, False):  # the parallel drivers too, whatever the size threshold
            queries = rows[:1] if single else rows[:5]
            _run(matrix, queries, 3, labels, 0, row_scales, single, chunks=2)
    log.debug("similarity kernels ready in %.2f s", time.perf_counter() - started)


def read_through(buffer: npt.NDArray[Any]) -> int:
    """Read every byte of a C-contiguous array once, on every thread, as a scan does.

    Returns a checksum (so the reads cannot be optimised away). The benchmark times it to measure
    the memory bandwidth a scan of the same buffer can reach. A tail of under 8 bytes is skipped.
    """
    if not isinstance(buffer, np.ndarray) or not buffer.flags.c_contiguous:
        raise ValueError("read_through needs a C-contiguous numpy array")
    raw = buffer.reshape(-1).view(np.uint8)
    words = raw[: raw.size // 8 * 8].view(np.uint64)
    return int(_ready("_read_through")(words, numba.get_num_threads()))


def _search(
    matrix: npt.NDArray[Any],
    queries: npt.NDArray[Any],
    k: int,
    labels: I64Vector | None,
    want: int | None,
    scales: F32Vector | None,
    single: bool,
) -> TopK:
    _validate(matrix, queries, k, labels, want, scales)
    n, d = matrix.shape
    work_bytes = n * d * matrix.itemsize * (1 if single else queries.shape[0])
    threads = numba.get_num_threads()
    chunks = threads if threads > 1 and work_bytes >= _PARALLEL_MIN_BYTES else 1
    return _run(matrix, queries, k, labels, want, scales, single, chunks)


def _run(
    matrix: npt.NDArray[Any],
    queries: npt.NDArray[Any],
    k: int,
    labels: I64Vector | None,
    want: int | None,
    scales: F32Vector | None,
    single: bool,
    chunks: int,
) -> TopK:
    n = matrix.shape[0]
    m = queries.shape[0]
    use_labels = labels is not None
    label_arg = labels if labels is not None else np.empty(0, np.int64)
    want_arg = _ANY if want is None else int(want)
    heap_s = np.full((chunks, m, k), -np.inf, np.float32)
    heap_i = np.full((chunks, m, k), -1, np.int64)
    kind = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.int8): "i8"}[matrix.dtype]
    stored = matrix.view(np.uint16) if kind == "f16" else matrix
    args: tuple[Any, ...]
    if kind == "i8" and single:
        q16, q_scales = _quantize_queries(queries)
        args = (stored, scales, q16[0], q_scales[0])
    elif kind == "i8":
        args = (stored, scales, queries)
    else:
        args = (stored, queries[0]) if single else (stored, queries)
    filter_args = (label_arg, use_labels, want_arg)
    if chunks == 1:
        name = f"_scan_{kind}" if single else f"_batch_{kind}"
        _ready(name)(*args, *filter_args, 0, n, heap_s[0], heap_i[0])
    else:
        name = f"_par_{kind}" if single else f"_par_batch_{kind}"
        kernel = _ready(name)
        with _parallel_lock:
            kernel(*args, *filter_args, heap_s, heap_i)
    out_s = np.empty((m, k), np.float32)
    out_i = np.empty((m, k), np.int64)
    _ready("_merge")(heap_s, heap_i, out_s, out_i)
    return TopK(out_i, out_s)


def _quantize_queries(queries: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int16], F32Vector]:
    """Each query to int16 with its own scale, small enough that the int32 dot cannot overflow."""
    d = queries.shape[1]
    q_max = min(_Q16_MAX, _INT32_MAX // (128 * d))
    top = np.abs(queries).max(axis=1)
    q_scales = np.where(top > 0, top / np.float32(q_max), np.float32(1.0)).astype(np.float32)
    q16 = np.rint(queries / q_scales[:, None]).astype(np.int16)
    return np.ascontiguousarray(q16), q_scales


_DTYPES: Final = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int8))


def _validate(
    matrix: npt.NDArray[Any],
    queries: npt.NDArray[Any],
    k: int,
    labels: I64Vector | None,
    want: int | None,
    scales: F32Vector | None,
) -> None:
    if not isinstance(matrix, np.ndarray) or matrix.ndim != 2:
        raise ValueError("matrix must be a 2-D numpy array of shape (n, d)")
    if matrix.dtype not in _DTYPES:
        raise ValueError(f"matrix dtype must be float32, float16 or int8, not {matrix.dtype}")
    if not matrix.flags.c_contiguous:
        raise ValueError("matrix must be C-contiguous (np.ascontiguousarray copies it once)")
    n, d = matrix.shape
    if d == 0:
        raise ValueError("matrix rows are empty (d == 0)")
    if queries.dtype != np.float32:
        raise ValueError(f"queries must be float32, not {queries.dtype}")
    if queries.shape[1] != d:
        raise ValueError(f"query dimension {queries.shape[1]} does not match the matrix's {d}")
    if not queries.flags.c_contiguous:
        raise ValueError("queries must be C-contiguous")
    if not np.isfinite(queries).all():
        raise ValueError("queries hold NaN or infinity")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, not {k!r}")
    if matrix.dtype == np.int8:
        if scales is None:
            raise ValueError("int8 rows need their scales (quantize_int8 returns them)")
        _check_vector(scales, "scales", np.float32, n)
    elif scales is not None:
        raise ValueError(f"scales only apply to int8 rows, not {matrix.dtype}")
    if labels is not None:
        _check_vector(labels, "labels", np.int64, n)
    if want is not None:
        if labels is None:
            raise ValueError("want needs labels")
        if isinstance(want, bool) or not isinstance(want, int | np.integer) or want < 0:
            raise ValueError(f"want must be a non-negative integer label, not {want!r}")


def _check_vector(array: Any, name: str, dtype: type[np.generic], n: int) -> None:
    if not isinstance(array, np.ndarray) or array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array with one entry per row ({n})")
    if array.dtype != dtype:
        raise ValueError(f"{name} must be {np.dtype(dtype)}, not {array.dtype}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
