"""Advice before and after training: data checks (`tsuika check`), measured in plain words
with the fix."""

from tsuika.advice.checks import Finding, data_checks, label_columns, with_label_names

__all__ = ["Finding", "data_checks", "label_columns", "with_label_names"]
