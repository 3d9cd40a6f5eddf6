"""training: the teacher, distill and baseline stages on Ray Train.

``driver`` (TorchTrainer runs -> artifacts), ``worker`` (the per-worker train function),
``in_process`` (``workers: auto`` on one machine: Ray Train's local mode, retries), ``local_checkpoints``
(the newest two kept on disk),
``soft_targets`` (teacher logits once, with Ray Data), ``teachers`` (several teachers per call).
May import ``raydistill.core`` and ``raydistill.runtime``; nothing imports it but tuning and the CLI.
"""
