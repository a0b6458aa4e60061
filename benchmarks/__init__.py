"""Benchmark harness: scratchlm (Numba and NumPy kernel routes) against PyTorch on the CPU.

Run it from the repository root::

    python -m benchmarks                      # every workload, all cores
    python -m benchmarks --list               # what there is
    python -m benchmarks --only mlp_block --threads 1 --repeats 20
    python -m benchmarks --quick --no-memory  # small sizes, a few seconds
    python benchmarks/run.py ...              # the same runner

Results go to ``benchmarks/results/latest.md`` (the table) and ``latest.json`` (raw timings and
machine info). Benchmarks are measurements, not tests: nothing here asserts a speed.

How a run measures
------------------
* ``--threads N`` (default ``os.cpu_count()``) is written to ``OMP_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``NUMBA_NUM_THREADS`` before NumPy, Numba or
  torch is imported, then ``numba.set_num_threads(N)`` and ``torch.set_num_threads(N)`` are called:
  every implementation gets the same threads. ``OPENBLAS_THREAD_TIMEOUT`` defaults to 20 (idle
  OpenBLAS workers stop spinning after ~0.4 ms instead of ~0.1 s, which otherwise steals the cores
  from whichever implementation runs next) and ``GOMP_SPINCOUNT`` to 10000 (the same for torch's
  OpenMP workers); see ``benchmarks/_threads.py``.
* Each implementation of a workload is warmed up (Numba compiles, caches fill), then the
  implementations are *interleaved* in one process -- one timed call of each per repeat, the
  order rotated every repeat -- so drift in clock speed or machine load hits all of them alike.
  The table shows the median (and min); ``latest.json`` keeps every timing.
* The ``sgemm`` workload is always measured first; its best GFLOP/s is the machine's practical
  peak, and every other workload's GFLOP/s is also shown as a fraction of it.
* Peak memory is measured per (workload, impl) in a fresh subprocess (``benchmarks.memprobe``):
  the extra resident memory one step needs beyond what is live between steps.

Adding a workload
-----------------
1. Write a module in ``benchmarks/workloads/`` (one per workload family) with a subclass of
   :class:`benchmarks.workloads.base.Workload`: set ``name`` and ``description``, size it in
   ``__init__(self, quick=False)`` (record sizes in ``self.params``, set ``self.flops`` per step or
   leave ``None``), and implement ``setup(impl)`` returning a zero-argument callable that runs one
   step. For ``"scratchlm-numba"`` / ``"scratchlm-numpy"`` wrap the step with
   ``self.scratchlm_step(impl, fn)`` (it enters ``use_backend`` on every call); for ``"torch"``
   call ``self.require_torch()`` first (raises :class:`~benchmarks.workloads.base.Unavailable`,
   reported as n/a, when torch is missing). All data float32, built from a fixed seed.
2. Append the class to ``WORKLOADS`` in ``benchmarks/workloads/__init__.py``.

Nothing else changes: the runner, the memory probe and ``--only`` find it by ``name``.
"""
