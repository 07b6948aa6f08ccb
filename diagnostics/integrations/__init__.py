"""Alignment tracking inside the training loops people run, and the loggers they read.

- :mod:`~diagnostics.integrations.lightning`: ``AlignmentCallback`` for PyTorch Lightning (extra ``[lightning]``);
- :mod:`~diagnostics.integrations.transformers`: ``AlignmentCallback`` for the Hugging Face ``Trainer``
  (extra ``[transformers]``);
- :mod:`~diagnostics.integrations.sinks`: TensorBoard, MLflow, Weights & Biases and JSON-lines writers of
  tracker records (extras ``[tensorboard]``, ``[mlflow]``, ``[wandb]``).

Importing this package imports none of these libraries; each module imports its own and says which extra
to install when it is missing.
"""
