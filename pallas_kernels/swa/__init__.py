"""Sliding-window (and full) softmax attention over jagged sequences."""
