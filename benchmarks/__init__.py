"""Benchmark harness: scratchlm (Numba and NumPy kernel routes) against PyTorch on the CPU.

Run it from the repository root::

    python -m benchmarks                      # every default workload, the machine's cores
    python -m benchmarks --list               # what there is
    python -m benchmarks --only gpt_train_step --rounds 5
    python -m benchmarks --quick --no-memory  # small sizes, for development
    python -m benchmarks.plot                 # redraw benchmarks/results/latest.png

Results go to ``benchmarks/results/latest.md`` (the table), ``latest.json`` (every timing and the
machine) and ``latest.png`` (each implementation's time relative to the reference, targets
marked). Benchmarks are measurements, not tests: nothing here asserts a speed.

How a run measures what a user gets
-----------------------------------
* **One fresh process per implementation and round** (``benchmarks/worker.py``): no
  implementation shares a process, a thread pool or a warm cache with another. A worker imports
  only what its implementation needs (a scratchlm process never loads torch), runs
  ``--warmup`` untimed steps (3; Numba compiles or loads its cache), then ``--steps`` timed ones
  (7) with the garbage collector off, and reports each step's time.
* **Rounds alternate the order** (``--rounds``, 3): round r starts the implementations rotated
  by r, so drift of the machine hits them alike. The ratio to the reference is formed *within*
  each round and the table shows the median of those ratios (and their range); times are the
  median over rounds of each process's median.
* **The environment as the machine comes.** The harness sets no performance variable (no spin
  timeouts, wait policies or BLAS core types). Thread counts (``--threads``, default: the
  usable cores) are set the way a user sets them in a script: ``threadpoolctl`` for the BLAS,
  ``torch.set_num_threads``, ``scratchlm.kernels.set_num_threads`` -- and only where they differ
  from the default (``benchmarks/_threads.py``). The results list every performance variable the
  environment already had.
* **The machine is recorded**: CPU model and ISA extensions, the BLAS as threadpoolctl sees it
  (library, version, the kernel architecture it picked, threads), torch's CPU capability,
  versions and the git revision.
* The ``sgemm`` workload's best GFLOP/s is the machine's practical peak; every workload with a
  flop count is also shown as a fraction of it.
* Peak memory is measured per (workload, impl) in yet another process
  (``benchmarks.memprobe``): the extra resident memory one step needs beyond what is live
  between steps. Only that process sets ``MALLOC_MMAP_THRESHOLD_`` (so that freed blocks leave
  the heap and the next step's allocations show); no timing runs there.

Adding a workload
-----------------
1. Write a module in ``benchmarks/workloads/`` (one per workload family) with a subclass of
   :class:`benchmarks.workloads.base.Workload`: set ``name`` and ``description``, size it in
   ``__init__(self, quick=False)`` (record sizes in ``self.params``, set ``self.flops`` per step or
   leave ``None``), and implement ``setup(impl)`` returning a zero-argument callable that runs one
   step. For ``"scratchlm-numba"`` / ``"scratchlm-numpy"`` wrap the step with
   ``self.scratchlm_step(impl, fn)`` (it enters ``use_backend`` on every call); for ``"torch"``
   call ``self.require_torch()`` first (raises :class:`~benchmarks.workloads.base.Unavailable`,
   reported as n/a, when torch is missing). All data float32, built from a fixed seed. Set
   ``targets = {impl: ratio}`` where an issue states one; implementation names starting with
   ``torch`` get torch's threads set.
2. Append the class to ``WORKLOADS`` in ``benchmarks/workloads/__init__.py``.

Nothing else changes: the runner, the memory probe and ``--only`` find it by ``name``.
"""
