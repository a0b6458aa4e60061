r"""Matrix multiplication ``out (+)= a @ b``: a BLIS-style GEMM in Numba with a SIMD micro-kernel,
whose operands may be *gathered* -- which makes it a convolution without an im2col matrix.

    a (M, K) @ b (K, N) -> out (M, N)        out[i, j] = sum_p a[i, p] b[p, j]

**Operands as offsets.** Every matrix here is a flat buffer plus one offset per row and one per
column: element ``(i, j)`` is ``flat[rows[i] + cols[j]]``. A strided array is the special case
``rows = i * stride_0``, ``cols = j * stride_1`` (:func:`matmul` takes ordinary arrays and builds
those). The im2col matrix of a convolution is another: with ``rows`` the offsets of the kernel
taps in the padded input and ``cols`` those of the output pixels, ``xp.flat[tap + pixel]`` is the
input value that tap reads for that pixel, so the GEMM packs its operand straight from the input
and no column matrix is ever written (an "implicit GEMM"). An ``out`` whose offsets overlap --
col2im's, where neighbouring windows share input pixels -- is a scatter-*add*: the products are
added in turn, so overlapping entries sum (``accumulate=True``).

:func:`gemm_numpy`, the NumPy twin, says exactly that: gather ``a`` and ``b`` by fancy indexing,
``np.matmul``, then set ``out``'s entries or add to them (``np.bincount`` sums duplicates).

**The Numba route** is Goto & van de Geijn (2008), "Anatomy of High-Performance Matrix
Multiplication", as laid out by BLIS (Van Zee & van de Geijn 2015):

.. code-block:: text

    for jc in 0..N step NC:                          # a block of NC columns of b and out
        for pc in 0..K step KC:                      # a K-slab: rank-KC update of out[:, jc block]
            pack b[pc:pc+KC, jc:jc+NC] -> bp  (slivers of NR columns, row by row: bp[s][p][0:NR])
            for ic in 0..M step MC:
                pack a[ic:ic+MC, pc:pc+KC] -> ap  (slivers of MR rows, column by column: ap[r][p][0:MR])
                for s in slivers of bp:              # bp[s] (KC x NR) stays in L1/L2
                    for r in slivers of ap:
                        out[MR x NR tile] (+)= sum_p outer(ap[r][p], bp[s][p])     # the micro-kernel

Packing copies a block into the order the micro-kernel reads, so whatever the operand's layout
(strided, transposed, gathered) the inner loop streams contiguous memory. A sliver whose
columns run consecutively (a convolution's pixels along an output row) is copied row by row,
run by run; otherwise the K axis is the one in runs and the sliver is transposed 8 x 8 in
registers (:func:`_transpose8`), or, where nothing runs, gathered entry by entry.

The micro-kernel keeps the whole ``MR x NR`` tile of ``out`` in vector registers for the K loop
(``MR * NR / W`` accumulators of ``W`` lanes; float32: 8 x 32 = 16 registers of 16 lanes,
float64: 8 x 16 = 16 registers of 8 lanes) and per step ``p`` loads ``NR / W`` vectors of ``bp``,
broadcasts ``MR`` scalars of ``ap`` and issues ``MR * NR / W`` fused multiply-adds. LLVM does not
find this schedule in plain loops (it spills the tile to memory, far below the peak), so
the kernel is written as LLVM IR vector operations through a Numba ``@intrinsic``; everything
around it (packing, edges, blocking) is ordinary Numba (its measured speed is in
docs/benchmarks.md). The vectors are LLVM's: on a
machine without AVX-512 they are split into the registers it has (correct, slower).

The micro-kernel writes each tile row straight into ``out`` when the tile's columns are
consecutive in memory (row ``i`` at ``out[rows[i] + cols[j0]:][:NR]``); edge tiles and tiles
whose columns come in several runs go through a scratch tile and are copied (or added) run by
run.

The kernel is serial; callers that want both cores split their work (the convolution splits its
batch, see ``scratchlm.functional.conv``). :func:`gemm` checks every length and that every offset
stays inside its buffer before a kernel runs (Numba does no bounds checking). ``out`` must not
overlap ``a`` or ``b`` (a later K-slab would read what an earlier one wrote), and with
``accumulate=False`` its entries must be distinct.
"""

import functools
import math
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numpy.lib.stride_tricks import as_strided

from . import FAST, dispatch

try:
    _PTR = ir.PointerType().intrinsic_name          # llvmlite >= 0.44 (opaque pointers): "p0"
except TypeError:                                   # older llvmlite: typed pointers
    _PTR = "p0i8"

_u = np.uint64   # an unsigned index: Numba skips the negative-index wrap test

#: micro-tile rows (broadcast scalars of ``a`` per step)
MR = 8
#: micro-tile columns per dtype: two vectors of AVX-512's lane count (16 x float32, 8 x float64).
#: 8 x 32 and 6 x 64 tiles ran equally fast alone; 8 x 32 wastes less on the
#: thin products of convolutions (32 or 144 columns) and keeps a KC x NR sliver of ``b`` in L1.
NR_F32, NR_F64 = 32, 16
#: K-slab depth, M-block height (a KC x MC block of ``a`` packed is ~100-200 KB: L2-sized) and
#: N-block width (a KC x NC block of ``b`` packed: 1 MB in float32)
KC, MC, NC = 256, 96, 1024


def _ir_helpers(context, builder, signature, args):
    """For an intrinsic's code generator: ``c64(v)`` an int64 constant, ``as_i64(k)`` argument
    ``k`` as an int64, ``data(k)`` the data pointer of array argument ``k``."""
    i64 = ir.IntType(64)

    def c64(v):
        return ir.Constant(i64, v)

    def as_i64(k):
        return context.cast(builder, args[k], signature.args[k], types.int64)

    def data(k):
        return context.make_array(signature.args[k])(context, builder, args[k]).data

    return c64, as_i64, data


def prefetch_write(builder, ptr):
    """For an intrinsic's code generator: hint that the cache line holding ``ptr`` will be written
    soon (``llvm.prefetch`` with rw = 1, high locality, data cache: ``prefetchw`` on x86). A hint
    changes no value and never faults."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fn = builder.module.declare_intrinsic(
        f"llvm.prefetch.{_PTR}", fnty=ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
    builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 1), ir.Constant(i32, 3),
                      ir.Constant(i32, 1)])


def _micro_kernel(accumulate):
    """Build the intrinsic ``micro(ap, a_off, bp, b_off, out, out_rows, i0, col0, kc)``:

    ``out[out_rows[i0 + i] + col0 + j] (+)= sum_{p<kc} ap[a_off + p*MR + i] * bp[b_off + p*NR + j]``

    for ``i < MR``, ``j < NR``: ``ap``/``bp`` are the flat packed buffers, ``out`` a flat buffer
    whose tile rows start at ``out_rows[i0 + i] + col0``. ``accumulate`` adds to ``out``;
    otherwise it is overwritten. Rows are written in order, so rows that overlap add up.
    """

    @intrinsic
    def micro(typingctx, ap, a_off, bp, b_off, out, out_rows, i0, col0, kc):
        sig = types.void(ap, a_off, bp, b_off, out, out_rows, i0, col0, kc)
        dtype = ap.dtype

        def codegen(context, builder, signature, args):
            scalar = context.get_value_type(dtype)
            lanes = 16 if dtype == types.float32 else 8
            nr = NR_F32 if dtype == types.float32 else NR_F64
            nv = nr // lanes                                          # vectors per tile row
            vec = ir.VectorType(scalar, lanes)
            c64, as_i64, data = _ir_helpers(context, builder, signature, args)
            a_ptr = builder.gep(data(0), [as_i64(1)])
            b_ptr = builder.gep(data(2), [as_i64(3)])
            out_ptr = builder.gep(data(4), [as_i64(7)])                       # + col0
            row_ptr = builder.gep(data(5), [as_i64(6)])                       # &out_rows[i0]
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec] * 3),
                f"llvm.fma.v{lanes}{'f32' if dtype == types.float32 else 'f64'}")
            with builder.goto_entry_block():                  # the tile: MR x nv vector registers
                acc = [builder.alloca(vec) for _ in range(MR * nv)]
            for a in acc:
                builder.store(ir.Constant(vec, [0.0] * lanes), a)
            # ask for the tile's rows of out now, so that their misses overlap the K loop instead
            # of stalling the writes after it (each row: NR entries, 128 bytes; 2-3 cache lines)
            for i in range(MR):
                c_row = builder.bitcast(
                    builder.gep(out_ptr, [builder.load(builder.gep(row_ptr, [c64(i)]))]),
                    ir.IntType(8).as_pointer())
                for byte in (0, 64, nr * (4 if dtype == types.float32 else 8) - 1):
                    prefetch_write(builder, builder.gep(c_row, [c64(byte)]))
            splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            with cgutils.for_range(builder, as_i64(8)) as loop:           # for p in range(kc):
                b_row = builder.gep(b_ptr, [builder.mul(loop.index, c64(nr))])
                b = [builder.load(builder.bitcast(builder.gep(b_row, [c64(v * lanes)]),
                                                  vec.as_pointer()), align=4)
                     for v in range(nv)]                                     # bp[p, :] (nv vectors)
                a_row = builder.gep(a_ptr, [builder.mul(loop.index, c64(MR))])
                for i in range(MR):
                    a = builder.load(builder.gep(a_row, [c64(i)]))                        # ap[p, i]
                    a = builder.shuffle_vector(
                        builder.insert_element(ir.Constant(vec, ir.Undefined), a,
                                               ir.Constant(ir.IntType(32), 0)),
                        ir.Constant(vec, ir.Undefined), splat)                   # broadcast
                    for v in range(nv):                      # acc[i, v] += ap[p, i] * bp[p, v]
                        cell = acc[i * nv + v]
                        builder.store(builder.call(fma, [a, b[v], builder.load(cell)]), cell)
            for i in range(MR):                                               # write the tile
                c_row = builder.gep(out_ptr, [builder.load(builder.gep(row_ptr, [c64(i)]))])
                for v in range(nv):
                    ptr = builder.bitcast(builder.gep(c_row, [c64(v * lanes)]), vec.as_pointer())
                    value = builder.load(acc[i * nv + v])
                    if accumulate:
                        value = builder.fadd(builder.load(ptr, align=4), value)
                    builder.store(value, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return micro


_micro_set = _micro_kernel(accumulate=False)
_micro_add = _micro_kernel(accumulate=True)


@intrinsic
def _transpose8(typingctx, flat, cols, q0, start, dst, d_off, width):
    """``dst[d_off + p*width + j] = flat[start + cols[q0 + j] + p]`` for ``j, p < 8``: an 8 x 8
    block, eight rows of eight adjacent entries written as eight runs of eight.

    Packing is a transpose whenever the K axis is the one that runs in memory (``a`` = the
    im2col matrix in a convolution's weight gradient, whose pixels are the K axis; a transposed
    ``b``). Entry by entry that is a scattered store per entry (about 45 us for one sample of a
    (16, 32, 32) 3x3 im2col matrix); here the eight rows are loaded as vectors and interleaved in
    registers, three rounds of shuffles (pairs, quads, octets): 12 us. Eight lanes, not
    AVX-512's sixteen: the 16-lane version measured twice as slow (its 128-entry shuffles)."""
    sig = types.void(flat, cols, q0, start, dst, d_off, width)
    dtype = flat.dtype

    def codegen(context, builder, signature, args):
        lanes = 8
        vec, i32 = ir.VectorType(context.get_value_type(dtype), lanes), ir.IntType(32)
        c64, as_i64, data = _ir_helpers(context, builder, signature, args)

        def shuffle(x, y, mask):
            return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, len(mask)), mask))

        col_ptr = builder.gep(data(1), [as_i64(2)])
        level = []                                       # row j: flat[start + cols[q0 + j]:][:L]
        for j in range(8):
            at = builder.add(builder.load(builder.gep(col_ptr, [c64(j)])), as_i64(3))
            level.append(builder.load(builder.bitcast(builder.gep(data(0), [at]),
                                                      vec.as_pointer()), align=4))
        g = 1                       # each vector holds, p by p, the entries of g consecutive rows
        while len(level) > 1:
            n = g * lanes
            mask = [k for p in range(lanes) for k in [p * g + i for i in range(g)]
                    + [n + p * g + i for i in range(g)]]
            level = [shuffle(x, y, mask) for x, y in zip(level[0::2], level[1::2])]
            g *= 2
        rows = level[0]                                  # the 8 x 8 block, p-major
        dst_ptr = builder.gep(data(4), [as_i64(5)])
        for p in range(lanes):
            values = shuffle(rows, ir.Constant(rows.type, ir.Undefined), list(range(8 * p, 8 * p + 8)))
            ptr = builder.gep(dst_ptr, [builder.mul(c64(p), as_i64(6))])
            builder.store(values, builder.bitcast(ptr, vec.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _copy8(typingctx, flat, start, dst, d_off):
    """``dst[d_off:d_off + 8] = flat[start:start + 8]``: one 8-lane vector load and store (a loop
    of eight scalar copies is what LLVM makes of it otherwise: it cannot tell that ``dst`` and
    ``flat`` are different buffers, so it keeps each load after the previous store)."""
    sig = types.void(flat, start, dst, d_off)
    dtype = flat.dtype

    def codegen(context, builder, signature, args):
        vec = ir.VectorType(context.get_value_type(dtype), 8)
        c64, as_i64, data = _ir_helpers(context, builder, signature, args)
        src = builder.bitcast(builder.gep(data(0), [as_i64(1)]), vec.as_pointer())
        at = builder.bitcast(builder.gep(data(2), [as_i64(3)]), vec.as_pointer())
        builder.store(builder.load(src, align=4), at, align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _is_run(offsets, start, n):
    """offsets[start:start+n] are consecutive (each one more than the last)."""
    first = offsets[start]
    for j in range(1, n):
        if offsets[start + j] != first + j:
            return False
    return True


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _runs(offsets, start, n, ends):
    """Split offsets[start:start+n] into runs of consecutive offsets; ``ends[k]`` is where run
    ``k`` stops (relative to ``start``). Returns the number of runs. (A convolution's pixels run
    along each output row: a sliver of 32 pixels over rows 28 wide is two or three runs.)"""
    count = 0
    for j in range(1, n):
        if offsets[start + j] != offsets[start + j - 1] + 1:
            ends[count] = j
            count += 1
    ends[count] = n
    return count + 1


@njit(cache=True, error_model="numpy", nogil=True, inline="always")
def _pack(flat, rows, r0, kc, cols, c0, nc, width, dst, ends):
    """Pack the block ``flat[rows[r0 + p] + cols[c0 + q]]`` (p < kc, q < nc) into slivers of
    ``width`` columns: ``dst[s*kc*width + p*width + j] = block[p, s*width + j]``, zero-padded past
    ``nc``. For ``b`` the block's rows are b's rows (the K axis); ``a`` is packed as its
    transpose (rows: a's columns, the K axis; columns: a's rows), slivers MR wide. ``ends``:
    scratch for :func:`_runs` (``width`` entries)."""
    for s in range((nc + width - 1) // width):
        q0 = c0 + s * width
        w = min(width, nc - s * width)
        base = s * kc * width
        n_runs = _runs(cols, q0, w, ends)
        if n_runs == 1 and w == width:             # one run, the whole sliver: by vectors
            for p in range(kc):
                src, at = rows[r0 + p] + cols[q0], base + p * width
                for j in range(0, width, 8):
                    _copy8(flat, src + j, dst, at + j)
        elif 4 * n_runs <= w:                      # the columns run (4 or more on average):
            for p in range(kc):                    # copy row by row, run by run
                row = rows[r0 + p]
                j0 = 0
                for k in range(n_runs):
                    src, at = _u(row + cols[q0 + j0]), _u(base + p * width + j0)
                    for j in range(ends[k] - j0):
                        dst[at + _u(j)] = flat[src + _u(j)]
                    j0 = ends[k]
        else:                     # a transpose: by vectors where the rows run, else one by one
            p = 0
            while p < kc:
                if w == width and p + 8 <= kc and _is_run(rows, r0 + p, 8):
                    for j in range(0, width, 8):
                        _transpose8(flat, cols, q0 + j, rows[r0 + p], dst, base + p * width + j,
                                    width)
                    p += 8
                else:
                    for j in range(w):
                        dst[_u(base + p * width + j)] = flat[_u(rows[r0 + p] + cols[q0 + j])]
                    p += 1
        for p in range(kc):
            for j in range(w, width):
                dst[_u(base + p * width + j)] = 0.0


@njit(cache=True, error_model="numpy", nogil=True)
def _slab(a, a_rows, a_cols, pc, kc, jc, nc, bp, out, out_rows, out_cols, overwrite, ap, tile,
          tile_rows, ends):
    # out[:, jc:jc+nc] (+)= a[:, pc:pc+kc] @ b[pc:pc+kc, jc:jc+nc], with that block of b packed
    # in bp; overwrite: the first K-slab writes, the others add
    M = a_rows.shape[0]
    nr = NR_F32 if out.itemsize == 4 else NR_F64
    for ic in range(0, M, MC):
        mc = min(MC, M - ic)
        _pack(a, a_cols, pc, kc, a_rows, ic, mc, MR, ap, ends)
        for s in range((nc + nr - 1) // nr):
            j0 = jc + s * nr
            w = min(nr, nc - s * nr)
            n_runs = _runs(out_cols, j0, w, ends)        # 1 and w == nr: written in place
            for r in range((mc + MR - 1) // MR):
                i0 = ic + r * MR
                if n_runs == 1 and w == nr and i0 + MR <= M:
                    if overwrite:
                        _micro_set(ap, r * kc * MR, bp, s * kc * nr, out, out_rows, i0,
                                   out_cols[j0], kc)
                    else:
                        _micro_add(ap, r * kc * MR, bp, s * kc * nr, out, out_rows, i0,
                                   out_cols[j0], kc)
                    continue
                # an edge tile or scattered columns: via the scratch tile, run by run
                _micro_set(ap, r * kc * MR, bp, s * kc * nr, tile, tile_rows, 0, 0, kc)
                for ii in range(min(MR, M - i0)):
                    row = out_rows[i0 + ii]
                    jj0 = 0
                    for k in range(n_runs):
                        at, t0 = _u(row + out_cols[j0 + jj0]), ii * nr + jj0
                        for jj in range(ends[k] - jj0):
                            if overwrite:
                                out[at + _u(jj)] = tile[t0 + jj]
                            else:
                                out[at + _u(jj)] += tile[t0 + jj]
                        jj0 = ends[k]


@njit(cache=True, error_model="numpy", nogil=True)
def _scratch(M, dtype_of):
    # the packed block of a, the scratch tile and its row offsets, the run ends
    nr = NR_F32 if dtype_of.itemsize == 4 else NR_F64
    ap = np.empty(((min(MC, M) + MR - 1) // MR) * MR * KC, dtype_of.dtype)
    tile = np.empty(MR * nr, dtype_of.dtype)
    return ap, tile, np.arange(MR) * nr, np.empty(max(nr, MR), np.int64)


@njit(cache=True, error_model="numpy", nogil=True)
def _zero(out, out_rows, out_cols):
    for i in range(out_rows.shape[0]):
        for j in range(out_cols.shape[0]):
            out[_u(out_rows[i] + out_cols[j])] = 0.0


@njit(cache=True, error_model="numpy", nogil=True)
def _gemm(a, a_rows, a_cols, b, b_rows, b_cols, out, out_rows, out_cols, accumulate):
    # a, b, out: flat buffers; a[a_rows[i] + a_cols[p]] is a (M, K), b (K, N) and out (M, N) alike
    M, N = a_rows.shape[0], b_cols.shape[0]
    nr = NR_F32 if out.itemsize == 4 else NR_F64
    bp = np.empty(((min(NC, N) + nr - 1) // nr) * nr * KC, out.dtype)
    ap, tile, tile_rows, ends = _scratch(M, out)
    _gemm_in(a, a_rows, a_cols, b, b_rows, b_cols, out, out_rows, out_cols, accumulate, bp, ap,
             tile, tile_rows, ends)


@njit(cache=True, error_model="numpy", nogil=True)
def workspace(M, N, like):
    """The scratch of a product with up to M rows and N columns in ``like``'s dtype, for
    :func:`_gemm_in` (a kernel that multiplies many small tiles allocates it once)."""
    nr = NR_F32 if like.itemsize == 4 else NR_F64
    bp = np.empty(((min(NC, N) + nr - 1) // nr) * nr * KC, like.dtype)
    ap, tile, tile_rows, ends = _scratch(M, like)
    return bp, ap, tile, tile_rows, ends


@njit(cache=True, error_model="numpy", nogil=True)
def _gemm_in(a, a_rows, a_cols, b, b_rows, b_cols, out, out_rows, out_cols, accumulate, bp, ap,
             tile, tile_rows, ends):
    # _gemm with its scratch given (from workspace(M, N) with M, N at least this product's)
    K, N = a_cols.shape[0], b_cols.shape[0]
    nr = NR_F32 if out.itemsize == 4 else NR_F64
    if K == 0 and not accumulate:
        _zero(out, out_rows, out_cols)
    for jc in range(0, N, NC):
        nc = min(NC, N - jc)
        for pc in range(0, K, KC):
            kc = min(KC, K - pc)
            _pack(b, b_rows, pc, kc, b_cols, jc, nc, nr, bp, ends)
            _slab(a, a_rows, a_cols, pc, kc, jc, nc, bp, out, out_rows, out_cols,
                  pc == 0 and not accumulate, ap, tile, tile_rows, ends)


@njit(cache=True, error_model="numpy", nogil=True)
def _pack_all(b, b_rows, b_cols, dst):
    # every (jc, pc) block of b (K, N), packed as _gemm packs it, one after another in dst
    K, N = b_rows.shape[0], b_cols.shape[0]
    nr = NR_F32 if dst.itemsize == 4 else NR_F64
    ends = np.empty(max(nr, MR), np.int64)
    at = 0
    for jc in range(0, N, NC):
        nc = min(NC, N - jc)
        for pc in range(0, K, KC):
            kc = min(KC, K - pc)
            _pack(b, b_rows, pc, kc, b_cols, jc, nc, nr, dst[at:], ends)
            at += ((nc + nr - 1) // nr) * nr * kc


@njit(cache=True, error_model="numpy", nogil=True)
def _gemm_prepacked(a, a_rows, a_cols, packed, K, N, out, out_rows, out_cols, accumulate):
    # _gemm with every block of b already packed (_pack_all): b is read, never copied
    M = a_rows.shape[0]
    nr = NR_F32 if out.itemsize == 4 else NR_F64
    ap, tile, tile_rows, ends = _scratch(M, out)
    at = 0
    for jc in range(0, N, NC):
        nc = min(NC, N - jc)
        for pc in range(0, K, KC):
            kc = min(KC, K - pc)
            _slab(a, a_rows, a_cols, pc, kc, jc, nc, packed[at:], out, out_rows, out_cols,
                  pc == 0 and not accumulate, ap, tile, tile_rows, ends)
            at += ((nc + nr - 1) // nr) * nr * kc


def gemm_numpy(a, a_rows, a_cols, b, b_rows, b_cols, out, out_rows, out_cols, accumulate):
    """``out (+)= a @ b`` on operands given as offsets: ``a``, ``b``, ``out`` are 1-D buffers and
    entry ``(i, j)`` of the matrix ``a`` is ``a[a_rows[i] + a_cols[j]]`` (``b``, ``out`` alike;
    every offsets array is 1-D int64). ``accumulate=True`` adds, and entries of ``out`` that
    share an address all add there (a scatter-add: col2im); ``accumulate=False`` overwrites
    (``out``'s entries must then be distinct). Returns ``out``."""
    A = a[np.add.outer(a_rows, a_cols)]                          # (M, K) gathered (im2col's)
    B = b[np.add.outer(b_rows, b_cols)]                          # (K, N)
    where = np.add.outer(out_rows, out_cols)                     # (M, N) addresses in out
    if where.size == 0:
        return out
    if not accumulate:
        out[where] = A @ B
        return out
    lo = where.min()                    # out[where] += A @ B, with repeated addresses summed
    at = (where - lo).ravel()
    sums = np.bincount(at, weights=(A @ B).ravel())                            # (in float64)
    hit = np.zeros(sums.size, dtype=bool)
    hit[at] = True                                               # only the addresses in where
    out[lo:lo + sums.size][hit] += sums[hit].astype(out.dtype)
    return out


def gemm_numba(a, a_rows, a_cols, b, b_rows, b_cols, out, out_rows, out_cols, accumulate):
    """The Numba route of :func:`gemm_numpy` (same arguments). Unchecked: call :func:`gemm`,
    which checks every offset first."""
    _gemm(a, a_rows, a_cols, b, b_rows, b_cols, out, out_rows, out_cols, bool(accumulate))
    return out


_gemm_routes = dispatch(gemm_numba, gemm_numpy)


def _check_operand(name, flat, rows, cols, dtype):
    if not (isinstance(flat, np.ndarray) and flat.ndim == 1 and flat.dtype == dtype
            and flat.strides[0] == flat.itemsize):
        raise TypeError(f"{name} must be a contiguous 1-D {dtype} array, got "
                        f"{getattr(flat, 'dtype', type(flat))} with shape {np.shape(flat)}")
    for what, off in (("rows", rows), ("cols", cols)):     # the intrinsics read them unstrided
        if not (isinstance(off, np.ndarray) and off.ndim == 1 and off.dtype == np.int64
                and off.strides[0] == 8):
            raise TypeError(f"{name}_{what} must be a contiguous 1-D int64 array, got "
                            f"{getattr(off, 'dtype', type(off))} with shape {np.shape(off)}")
    if rows.size and cols.size:               # Python ints: an int64 sum could wrap around
        lo, hi = int(rows.min()) + int(cols.min()), int(rows.max()) + int(cols.max())
        if lo < 0 or hi >= flat.size:
            raise ValueError(f"{name}'s offsets reach [{lo}, {hi}] but its buffer has {flat.size} "
                             f"entries")


def gemm(a, a_rows, a_cols, b, b_rows, b_cols, out, out_rows, out_cols, accumulate):
    """``out (+)= a @ b`` on operands given as offsets (see :func:`gemm_numpy` and the module
    docstring), on the active route. Checks the buffers' dtypes, the offsets' types and lengths,
    and that every offset stays inside its buffer, before either route runs."""
    if out.dtype not in (np.float32, np.float64):
        raise TypeError(f"gemm needs float32 or float64, got out dtype {out.dtype}")
    for name, flat, rows, cols in (("a", a, a_rows, a_cols), ("b", b, b_rows, b_cols),
                                   ("out", out, out_rows, out_cols)):
        _check_operand(name, flat, rows, cols, out.dtype)
    if not (a_cols.size == b_rows.size and out_rows.size == a_rows.size
            and out_cols.size == b_cols.size):
        raise ValueError(f"gemm needs a (M, K), b (K, N) and out (M, N), got a "
                         f"({a_rows.size}, {a_cols.size}), b ({b_rows.size}, {b_cols.size}), "
                         f"out ({out_rows.size}, {out_cols.size})")
    return _gemm_routes(a, a_rows, a_cols, b, b_rows, b_cols, out, out_rows, out_cols, accumulate)


# ------------------------------------------------------------------------------------------------
# ordinary arrays: the matmul every layer calls
# ------------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", nogil=True)
def _gemm_batched(a, a_base, a_rows, a_cols, b, b_base, b_rows, b_cols, out, out_base, out_rows,
                  out_cols, lo, hi, accumulate):
    # matrix n of a batch starts at flat[base[n]]: for n in [lo, hi), out[n] (+)= a[n] @ b[n]
    for n in range(lo, hi):
        _gemm(a[a_base[n]:], a_rows, a_cols, b[b_base[n]:], b_rows, b_cols, out[out_base[n]:],
              out_rows, out_cols, accumulate)


@functools.lru_cache(maxsize=512)
def _offsets(n, step):
    """``arange(n) * step`` (int64), cached: the same shapes come back every step. (Left
    writable: Numba types a read-only array apart and would compile every kernel twice; no
    kernel writes an offsets array.)"""
    return np.arange(n, dtype=np.int64) * step


@functools.lru_cache(maxsize=512)
def _batch_offsets(shape, steps):
    """The C-order offsets of the matrices of a stack with leading ``shape`` and element
    ``steps`` (all >= 0), cached like :func:`_offsets`: ``(prod(shape),)`` int64."""
    base = np.zeros(1, np.int64)
    for n, st in zip(shape, steps):
        base = (base[:, None] + np.arange(n, dtype=np.int64)[None, :] * st).ravel()
    return base


def as_batched_operand(m):
    """A stack of matrices ``m`` ``(..., R, C)`` (any strides, negative ones included) as
    ``(flat, base, rows, cols)``: ``m[n][i, j] == flat[base[n] + rows[i] + cols[j]]`` with ``n``
    the C-order index over the leading axes (``base`` ``(L,)``, one entry for a 2-D ``m``).
    ``flat`` is a 1-D view (no copy) from the lowest address ``m`` spans. The offset arrays
    may be shared, cached ones: read them, never write them."""
    item = m.itemsize
    if any(st % item for st in m.strides):
        raise ValueError(f"strides must be multiples of the item size, got {m.strides}")
    steps = [st // item for st in m.strides]
    if m.ndim == 2 and steps[0] >= 0 and steps[1] >= 0 and (m.flags.c_contiguous
                                                           or m.flags.f_contiguous):
        # the common case (an array or its transpose): a flat view in memory order, no copy
        return (m.ravel(order="K"), _offsets(1, 0), _offsets(m.shape[0], steps[0]),
                _offsets(m.shape[1], steps[1]))
    if min(steps) >= 0 and 0 not in m.shape:
        # no negative stride (the usual views: transposes, head splits, a KV cache's prefix):
        # m starts at its lowest address, and every offset comes from the cached tables
        span = sum((n - 1) * st for n, st in zip(m.shape, steps)) + 1
        lead = m.shape[:-2]
        return (as_strided(m, shape=(span,), strides=(item,)),
                _batch_offsets(lead, tuple(steps[:-2])) if math.prod(lead) <= 4096 else
                _batch_offsets.__wrapped__(lead, steps[:-2]),         # (too big to keep)
                _offsets(m.shape[-2], steps[-2]), _offsets(m.shape[-1], steps[-1]))
    base = np.zeros(1, np.int64)
    for n, st in zip(m.shape[:-2], steps[:-2]):
        base = (base[:, None] + np.arange(n, dtype=np.int64)[None, :] * st).ravel()
    rows = np.arange(m.shape[-2], dtype=np.int64) * steps[-2]
    cols = np.arange(m.shape[-1], dtype=np.int64) * steps[-1]
    lowest = tuple(slice(n - 1, n) if st < 0 else slice(0, 1) for n, st in zip(m.shape, steps))
    base -= base.min()
    rows -= rows.min()
    cols -= cols.min()
    span = int(base.max() + rows.max() + cols.max()) + 1
    flat = as_strided(m[lowest], shape=(span,), strides=(item,))
    return flat, base, rows, cols


def as_operand(m):
    """A non-empty 2-D array as a GEMM operand ``(flat, rows, cols)``, ``m[i, j] == flat[rows[i] +
    cols[j]]`` (:func:`as_batched_operand` for one matrix)."""
    flat, _, rows, cols = as_batched_operand(m)
    return flat, rows, cols


class PackedMatrix(NamedTuple):
    """``b`` ``(K, N)`` made ready for many products ``a @ b`` (a recurrent layer's weight, used
    once per time step): on the Numba route its blocks are packed once, in the order the GEMM
    reads them, so that each product only packs its ``a``."""
    b: np.ndarray                    # (K, N) the matrix (the NumPy route multiplies by it)
    packed: np.ndarray | None        # (ceil(N/NR)*NR*K,) b's blocks, packed; None on the NumPy route


def _packed_size(K, N, nr):
    return sum(((min(NC, N - jc) + nr - 1) // nr) * nr * K for jc in range(0, N, NC))


def prepack_numpy(b):
    """``b`` ``(K, N)`` as a :class:`PackedMatrix` for :func:`matmul`; the NumPy route keeps it
    as it is."""
    if not (isinstance(b, np.ndarray) and b.ndim == 2 and b.dtype in (np.float32, np.float64)):
        raise TypeError(f"prepack needs a 2-D float32 or float64 array, got "
                        f"{getattr(b, 'dtype', type(b).__name__)} {np.shape(b)}")
    return PackedMatrix(b, None)


def prepack_numba(b):
    """The Numba route of :func:`prepack_numpy`: every block packed once (``_pack_all``)."""
    prepack_numpy(b)
    if b.size == 0:
        return PackedMatrix(b, None)
    nr = NR_F32 if b.dtype == np.float32 else NR_F64
    packed = np.empty(_packed_size(b.shape[0], b.shape[1], nr), b.dtype)
    flat, rows, cols = as_operand(b)
    _pack_all(flat, rows, cols, packed)
    return PackedMatrix(b, packed)


prepack = dispatch(prepack_numba, prepack_numpy)


def _check_matmul(a, b, out):
    """The shapes and dtypes of ``out (+)= a @ b``; returns ``out``'s shape."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        raise TypeError(f"matmul needs numpy arrays, got {type(a).__name__} and {type(b).__name__}")
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2] or (
            b.ndim > 2 and b.shape[:-2] != a.shape[:-2]):
        raise ValueError(f"matmul needs a (..., M, K) and b (K, N) or (..., K, N) with a's leading "
                         f"axes, got a {a.shape}, b {b.shape}")
    if not (a.dtype == b.dtype and a.dtype in (np.float32, np.float64)):
        raise TypeError(f"matmul needs a and b of one float dtype, got {a.dtype}, {b.dtype}")
    shape = a.shape[:-1] + (b.shape[-1],)
    if out is not None:
        if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != a.dtype:
            raise ValueError(f"out must be a {a.dtype} array of shape {shape}, got "
                             f"{getattr(out, 'dtype', type(out).__name__)} {np.shape(out)}")
    return shape


def matmul_numpy(a, b, out=None, accumulate=False):
    """``a @ b`` -- ``a`` ``(..., M, K)``, ``b`` ``(K, N)`` or ``(..., K, N)`` -- into ``out``
    (allocated when None), or ``out += a @ b`` with ``accumulate=True``. One float dtype, any
    strides. Returns ``out``. ``b`` may be a :class:`PackedMatrix` (:func:`prepack`). The NumPy
    route: ``np.matmul`` (the BLAS)."""
    if isinstance(b, PackedMatrix):
        b = b.b
    _check_matmul(a, b, out)
    if out is None:
        return np.matmul(a, b)
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)
    return out


@njit(cache=True, error_model="numpy", nogil=True, fastmath=FAST)
def _thin(a, a_base, ars, acs, b, b_base, brs, bcs, out, o_base, ors, ocs, M, K, j0, j1, lo, hi,
          accumulate):
    # out[n][i, j] (+)= sum_p a[n][i, p] b[n][p, j] for i < M (a few rows), j in [j0, j1), with
    # every operand given by its base offsets and its two strides: no packing. b is streamed once
    # per row of a, along whichever of its axes is contiguous (a KV-cache step's x @ W^T has
    # b = W^T, whose K axis runs: dot products; x @ W runs along N: axpy).
    # (indices as unsigned: Numba then skips the negative-index wrap test, and the loops vectorise)
    for n in range(lo, hi):
        a0, b0, o0 = a_base[n], b_base[n], o_base[n]
        for i in range(M):
            ai, oi = a0 + i * ars, o0 + i * ors
            if bcs == 1:                                           # rows of b contiguous: axpy
                row = np.zeros(j1 - j0, out.dtype)
                for p in range(K):
                    v = a[_u(ai + p * acs)]
                    bp = b0 + p * brs + j0
                    for j in range(j1 - j0):
                        row[j] += v * b[_u(bp + j)]
                for j in range(j1 - j0):
                    at = _u(oi + (j0 + j) * ocs)
                    out[at] = out[at] + row[j] if accumulate else row[j]
            else:                                                  # columns of b: dot products
                for j in range(j0, j1):
                    bj = b0 + j * bcs
                    acc = out.dtype.type(0)
                    if brs == 1 and acs == 1:
                        for p in range(K):
                            acc += a[_u(ai + p)] * b[_u(bj + p)]
                    else:
                        for p in range(K):
                            acc += a[_u(ai + p * acs)] * b[_u(bj + p * brs)]
                    at = _u(oi + j * ocs)
                    out[at] = out[at] + acc if accumulate else acc


def _flat_ok(m):
    """A 2-D array that ``m.ravel(order="K")`` views without a copy, starting at ``m[0, 0]``, so
    that ``m[i, j]`` is ``flat[i * s0 + j * s1]`` with its element strides."""
    return (m.flags.c_contiguous or m.flags.f_contiguous) and m.strides[0] >= 0 and m.strides[1] >= 0


#: below this many multiply-adds a product runs in the calling thread: a split costs about
#: 40-50 us (the hand-off and the Python of the second part, which waits for the GIL), which is
#: what a 16M-MAC product saves by running on two cores (measured: 256^3 split and serial tie,
#: 128x512x512 split wins by 20%)
SPLIT_MIN_MACS = 1 << 24


def matmul_numba(a, b, out=None, accumulate=False):
    """The Numba route of :func:`matmul_numpy` (same arguments): our GEMM on the arrays' strides,
    split over scratchlm's threads (:func:`scratchlm.kernels.split_run`) -- by matrix for a
    batch, else by blocks of rows or of columns of ``out``, whichever is longer. The shapes are
    checked here, before the kernel; ``out`` must not overlap ``a`` or ``b``."""
    from . import get_num_threads, split_run

    packed = None
    if isinstance(b, PackedMatrix):
        b, packed = b.b, b.packed
        if packed is not None and a.ndim != 2:
            raise ValueError(f"a prepacked b multiplies a 2-D a, got a {a.shape}")
    shape = _check_matmul(a, b, out)
    if out is None:
        out = np.empty(shape, a.dtype)
        accumulate = False
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    if out.size == 0:
        return out
    if K == 0:                                                # an empty sum
        if not accumulate:
            out[...] = 0.0
        return out
    if (M < MR and packed is None and a.ndim == b.ndim == 2 and M * K * N < SPLIT_MIN_MACS
            and _flat_ok(a) and _flat_ok(b) and _flat_ok(out)):
        # a KV-cache step's x @ W^T: the thin kernel straight on the arrays' strides, without
        # building offset arrays (their Python cost is most of such a small product's time)
        it, zero = a.itemsize, _offsets(1, 0)
        _thin(a.ravel(order="K"), zero, a.strides[0] // it, a.strides[1] // it,
              b.ravel(order="K"), zero, b.strides[0] // it, b.strides[1] // it,
              out.ravel(order="K"), zero, out.strides[0] // it, out.strides[1] // it,
              M, K, 0, N, 0, 1, bool(accumulate))
        return out
    fa, a_base, a_rows, a_cols = as_batched_operand(a)
    fo, o_base, o_rows, o_cols = as_batched_operand(out)
    acc = bool(accumulate)
    if packed is not None:                                    # by blocks of MR rows per thread
        def rows(lo, hi):
            r0, r1 = lo * MR, min(hi * MR, M)
            _gemm_prepacked(fa[a_base[0]:], a_rows[r0:r1], a_cols, packed, K, N, fo[o_base[0]:],
                            o_rows[r0:r1], o_cols, acc)
        if M * K * N < SPLIT_MIN_MACS:
            rows(0, (M + MR - 1) // MR)
        else:
            split_run(rows, (M + MR - 1) // MR)
        return out
    fb, b_base, b_rows, b_cols = as_batched_operand(b)
    L = o_base.size
    if b_base.size != L:                                      # one b for every matrix of a
        b_base = np.zeros(L, np.int64)
    macs = L * M * K * N
    if M < MR:                     # a few rows (a KV-cache step): packing b would cost more than
        def stride(off):           # the product; stream it instead
            return int(off[1] - off[0]) if off.size > 1 else 0
        strides = (stride(a_rows), stride(a_cols), stride(b_rows), stride(b_cols), stride(o_rows),
                   stride(o_cols))

        def cols(lo, hi):
            _thin(fa, a_base + a_rows[0] + a_cols[0], strides[0], strides[1], fb,
                  b_base + b_rows[0] + b_cols[0], strides[2], strides[3], fo,
                  o_base + o_rows[0] + o_cols[0], strides[4], strides[5], M, K, lo, hi, 0, L, acc)
        if macs < SPLIT_MIN_MACS or L > 1:
            cols(0, N)
        else:
            split_run(cols, N, 64)
        return out
    if L > 1 or macs < SPLIT_MIN_MACS or get_num_threads() == 1:
        if macs < SPLIT_MIN_MACS:
            _gemm_batched(fa, a_base, a_rows, a_cols, fb, b_base, b_rows, b_cols, fo, o_base,
                          o_rows, o_cols, 0, L, acc)
        else:
            split_run(lambda lo, hi: _gemm_batched(fa, a_base, a_rows, a_cols, fb, b_base, b_rows,
                                                   b_cols, fo, o_base, o_rows, o_cols, lo, hi, acc),
                      L)
        return out
    nr = NR_F32 if out.itemsize == 4 else NR_F64
    if M >= N:                                                # blocks of MR rows per thread
        def part(lo, hi):
            r0, r1 = lo * MR, min(hi * MR, M)
            _gemm_batched(fa, a_base, a_rows[r0:r1], a_cols, fb, b_base, b_rows, b_cols, fo,
                          o_base, o_rows[r0:r1], o_cols, 0, 1, acc)
        split_run(part, (M + MR - 1) // MR)
    else:                                                     # blocks of NR columns per thread
        def part(lo, hi):
            c0, c1 = lo * nr, min(hi * nr, N)
            _gemm_batched(fa, a_base, a_rows, a_cols, fb, b_base, b_rows, b_cols[c0:c1], fo,
                          o_base, o_rows, o_cols[c0:c1], 0, 1, acc)
        split_run(part, (N + nr - 1) // nr)
    return out


matmul = dispatch(matmul_numba, matmul_numpy)
