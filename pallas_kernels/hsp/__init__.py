"""Hierarchical seed pooling: learnable seeds attend to a jagged sequence."""
