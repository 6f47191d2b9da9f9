"""Pieces shared by the kernels: activations with derivatives, masks from lengths/windows."""
