"""Alignment during training: the tracker, its crash-safe history, and the paper's statements on a trajectory."""

from .history import History, load_history
from .summary import summarize
from .tracker import AlignmentTracker
from .verification import verify_history

__all__ = ["AlignmentTracker", "History", "load_history", "summarize", "verify_history"]
