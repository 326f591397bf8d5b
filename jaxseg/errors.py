"""Errors that reach users: each names the file (or step) and what is wrong with it."""


class DataError(ValueError):
  """A dataset file or folder is missing, unreadable or inconsistent."""


class TrainingError(RuntimeError):
  """Training cannot go on (for example a non-finite loss)."""
