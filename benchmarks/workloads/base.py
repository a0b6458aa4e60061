"""The workload protocol: a named, sized computation with one ``setup`` per implementation."""

from __future__ import annotations

SCRATCHLM_NUMBA = "scratchlm-numba"
SCRATCHLM_NUMPY = "scratchlm-numpy"
SCRATCHLM = "scratchlm"      # for pure-NumPy code with no kernel route to choose
TORCH = "torch"
#: the matmuls alone that scratchlm's step issues (same shapes, ready-made operands): its BLAS floor
BLAS_ONLY = "blas-matmuls-only"
DEFAULT_IMPLS = (SCRATCHLM_NUMBA, SCRATCHLM_NUMPY, TORCH)
_BACKEND_OF = {SCRATCHLM_NUMBA: "numba", SCRATCHLM_NUMPY: "numpy", SCRATCHLM: "numba",
               "scratchlm-cache": "numba", "scratchlm-nocache": "numba",
               "scratchlm-stored": "numba", "scratchlm-recompute": "numba",
               "scratchlm-tiled": "numba", "scratchlm-tiled-numpy": "numpy", "scratchlm-dense": "numba",
               "scratchlm-lora": "numba", "scratchlm-full": "numba",
               "scratchlm-f32": "numba", "scratchlm-int8": "numba", "scratchlm-q8_0": "numba",
               "scratchlm-q4_0": "numba", "scratchlm-1proc": "numba", "scratchlm-2ranks": "numba"}


class Unavailable(Exception):
    """An implementation that cannot run here (e.g. torch not installed): reported as n/a."""


class Workload:
    """One benchmark. Subclasses set the class attributes and implement :meth:`setup`.

    Attributes:
        name: the key for ``--only`` and the memory probe.
        description: one line for the report (sizes included).
        impls: the implementations it offers, in table order.
        flops: floating-point operations per step, or ``None`` when not meaningful.
        params: the sizes, recorded in ``latest.json``.
        targets: ``{impl: ratio}``: the ratio to ``reference`` each implementation should stay at
            or under (shown, with whether it is met, in the table and the PNG).
    """

    name: str = ""
    description: str = ""
    impls: tuple = DEFAULT_IMPLS
    reference: str = TORCH          # the impl the ratio column compares with
    label: str = ""                 # the name for it ("W1"), shown in the tables
    targets: dict = {}              # impl -> the ratio to the reference it should reach (at most)
    in_default: bool = True         # False: only with --only (minutes per process)
    unit: str | None = None         # throughput unit ("tok"): items(impl) of them per step
    ranks: dict = {}                # impl -> MPI ranks (run under mpiexec -n R, threads / R each)
    max_repeats: int | None = None  # cap for slow workloads (whole model fits)
    max_warmup: int | None = None

    def items(self, impl: str) -> float:
        """How many ``unit`` one step of ``impl`` processes (1 when the workload has no unit)."""
        return 1.0

    def __init__(self, quick: bool = False):
        self.quick = bool(quick)
        self.flops: float | None = None
        self.params: dict = {}

    def setup(self, impl: str):
        """Build inputs and state for ``impl``; return a zero-argument callable running one step."""
        raise NotImplementedError

    # -- helpers for subclasses ----------------------------------------------------------------
    def check_impl(self, impl: str) -> None:
        if impl not in self.impls:
            raise ValueError(f"workload {self.name!r} has no impl {impl!r}; it has {self.impls}")

    @staticmethod
    def scratchlm_step(impl: str, fn):
        """Wrap ``fn`` so that every call runs under ``use_backend`` for ``impl``."""
        from scratchlm.kernels import use_backend

        backend = _BACKEND_OF[impl]

        def step():
            with use_backend(backend):
                fn()

        return step

    def train_step(self, impl: str, opt, forward, backward):
        """One scratchlm training step as a callable: ``opt.zero_grad()``, ``forward()``,
        ``backward()``, ``opt.step()``, under ``impl``'s kernel route."""
        def fn():
            opt.zero_grad()
            forward()
            backward()
            opt.step()
        return self.scratchlm_step(impl, fn)

    @staticmethod
    def torch_train_step(opt, loss):
        """One torch training step as a callable: ``zero_grad(set_to_none=True)``,
        ``loss().backward()``, ``opt.step()``."""
        def step():
            opt.zero_grad(set_to_none=True)
            loss().backward()
            opt.step()
        return step

    @staticmethod
    def require_torch():
        """Import and return torch, or raise :class:`Unavailable`."""
        try:
            import torch
        except Exception as exc:  # ImportError or a broken install
            raise Unavailable(f"torch not importable: {exc}") from exc
        return torch
