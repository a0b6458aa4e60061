"""Beyond one process, on MPI (``mpi4py``; ``pip install -e ".[distributed]"``):

* :mod:`~scratchlm.distributed.mpi` -- the communicator, with byte counting;
* :mod:`~scratchlm.distributed.data_parallel` -- :class:`DataParallel` (DDP's design: the same
  global batch split over the ranks, gradients summed in buckets with non-blocking allreduces
  started during the backward) and :class:`ZeroRedundancyOptimizer` (ZeRO stage 1).

The training loop (:func:`scratchlm.training.train`) runs them with ``TrainConfig(distributed=
True, zero=0|1)``; ``mpiexec -n N python -m scratchlm train MODEL --distributed`` from the
command line. The package imports without mpi4py; these modules import it only when used.
"""

from .._per_example import per_example_gradients
from .data_parallel import DataParallel, ZeroRedundancyOptimizer, partition, shard_rows
from .mpi import Comm, MPIUnavailable, require_mpi, world

__all__ = ["DataParallel", "ZeroRedundancyOptimizer", "partition", "shard_rows", "Comm",
           "MPIUnavailable", "require_mpi", "world", "per_example_gradients"]
