"""Training one model size with Ray Train: the code behind the ``train`` stage and the sweep.

- :mod:`.job`: :class:`TrainJob`, everything one run needs (params, identity, folders,
  tracking), built by the driver and handed to every worker;
- :mod:`.driver`: :func:`run_training`, the Ray ``TorchTrainer``, resume and continuation;
- :mod:`.worker`: :func:`train_loop`, what each worker (or one sweep trial) runs;
- :mod:`.outputs`: rank 0's log, sample grids, FD proxy, generator and metrics.
"""

from pipeline.training.driver import run_training
from pipeline.training.job import TrainJob, make_job

__all__ = ["TrainJob", "make_job", "run_training"]
