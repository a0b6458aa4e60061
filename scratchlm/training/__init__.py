"""Training: the one loop, the ``fit_*`` configurations of it, the pipelines from data to a
trained model, evaluation and sampling, and plots.

* :mod:`~scratchlm.training.loop` -- :func:`train` and :class:`TrainConfig`: the optimizer, the
  schedule (ending at a step count or a deadline), clipping, evaluation, checkpoints,
  bit-identical resume, progress;
* :mod:`~scratchlm.training.fit` -- :func:`fit_lm`, :func:`fit_translation`,
  :func:`fit_classifier`, :func:`fit_vae`: the loop configured per kind of model;
* :mod:`~scratchlm.training.pipelines` -- :func:`train_model` (what ``scratchlm train`` runs,
  driven by :mod:`scratchlm.registry`) and :func:`load_model`;
* :mod:`~scratchlm.training.evaluate` -- what ``eval``, ``sample``, ``attention`` and
  ``gradnorms`` compute;
* :mod:`~scratchlm.training.plots` -- the PNGs.
"""

from .fit import evaluate_lm, fit_classifier, fit_lm, fit_translation, fit_vae
from .loop import TrainConfig, train
from .pipelines import Run, load_model, train_model

__all__ = ["TrainConfig", "train", "fit_lm", "fit_translation", "fit_classifier", "fit_vae",
           "evaluate_lm", "train_model", "load_model", "Run"]
