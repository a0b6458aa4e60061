"""MPI, through ``mpi4py``: the one engine the distributed code runs on.

``mpi4py`` sends NumPy buffers without copies and runs the same on a laptop (``mpiexec -n 2``)
and on a cluster (a hostfile). It is an optional extra: ``pip install -e ".[distributed]"``
brings it and an MPI (the ``mpich`` wheel). The package imports without it; :func:`world`
says what to install when it is missing.

:class:`Comm` wraps a communicator and counts what this process hands to MPI (the payload
bytes of every collective it starts), so a run can report its communication per step.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MPIUnavailable", "require_mpi", "world", "Comm"]

INSTALL = ('pip install -e ".[distributed]"  (mpi4py and the mpich wheel; a system MPI with '
           'pip install mpi4py works too)')


class MPIUnavailable(ImportError):
    """mpi4py (or an MPI library under it) is not installed."""


def require_mpi():
    """``mpi4py.MPI``, or :class:`MPIUnavailable` saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIUnavailable(f"distributed training needs mpi4py and an MPI library "
                             f"({exc}); install them with {INSTALL}") from None
    return MPI


class Comm:
    """A communicator (default ``MPI.COMM_WORLD``) with byte counting.

    ``rank``, ``size``; ``sent`` is the payload in bytes this process has handed to MPI's
    collectives (reset it per step to measure a step). The methods are the few collectives
    the distributed code uses, on NumPy buffers."""

    def __init__(self, comm=None):
        MPI = require_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.sent = 0
        self.log = None             # a list: record (operation, dtype, shape) of every call

    def _note(self, op, buf):
        self.sent += buf.nbytes
        if self.log is not None:
            self.log.append((op, buf.dtype.str, buf.shape))

    def Iallreduce(self, buf):
        """Start an in-place sum of ``buf`` over the ranks; returns the request."""
        self._note("allreduce", buf)
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def Allreduce(self, buf):
        """Sum ``buf`` over the ranks, in place."""
        self._note("allreduce", buf)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def Reduce(self, buf, root=0):
        """Sum ``buf`` over the ranks into ``root``'s ``buf`` (in place there)."""
        self._note("reduce", buf)
        if self.rank == root:
            self.comm.Reduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM, root=root)
        else:
            self.comm.Reduce(buf, None, op=self.MPI.SUM, root=root)
        return buf

    def Bcast(self, buf, root=0):
        if self.rank == root:
            self._note("bcast", buf)
        self.comm.Bcast(buf, root=root)
        return buf

    def Reduce_scatter(self, send, recv, counts):
        """Sum ``send`` over the ranks; rank r receives the r-th segment (``counts[r]`` items)."""
        self._note("reduce_scatter", send)
        self.comm.Reduce_scatter(send, recv, recvcounts=list(counts), op=self.MPI.SUM)
        return recv

    def Allgatherv(self, send, recv, counts):
        """Every rank's ``send`` (``counts[r]`` items from rank r), concatenated in rank order
        into ``recv`` on every rank."""
        self._note("allgather", send)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        self.comm.Allgatherv(send, [recv, list(map(int, counts)), displs,
                                    self.MPI._typedict[recv.dtype.char]])
        return recv

    def bcast_object(self, obj, root=0):
        """A small JSON-like Python object from ``root`` to every rank (a decision, a
        dict of numbers)."""
        return self.comm.bcast(obj, root=root)

    def gather_object(self, obj, root=0):
        return self.comm.gather(obj, root=root)

    def Abort(self, code=1):
        self.comm.Abort(code)

    def local_size(self) -> int:
        """How many ranks share this machine (MPI's shared-memory split)."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_size()
        finally:
            node.Free()


_WORLD = None


def world() -> Comm:
    """The :class:`Comm` over every process of the job (created once)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = Comm()
    return _WORLD
