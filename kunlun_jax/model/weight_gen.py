"""Personalized weight generation: non-sequence tokens -> summary tokens X_sum."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from kunlun_jax.model.common import MLP, LayerNorm, param_with_axes


class WeightGen(nn.Module):
    """X [B, n_ns, d] -> X_sum [B, n_sum, d].

    A linear map along the token axis (n_ns -> n_sum), then a gated per-token MLP:
    Z = X mixed over tokens (LN(X) with `norm`); X_sum = Z ⊙ σ(MLP(Z)). X_sum is the GDPA
    FFN's K/V source and joins the global interaction.
    """

    n_sum: int
    mlp_ratio: int = 2
    dtype: jnp.dtype = jnp.float32
    norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_ns, d = x.shape[1], x.shape[2]
        mix = self.param(
            "token_mix",
            param_with_axes(nn.initializers.lecun_normal(), ("tokens", "sum_tokens")),
            (n_ns, self.n_sum),
        )
        if self.norm:
            x = LayerNorm(self.dtype)(x)
        z = jnp.einsum("bnd,nm->bmd", x, mix.astype(self.dtype))
        gate = MLP((self.mlp_ratio * d,), d, dtype=self.dtype, name="gate_mlp")(z)
        return z * jax.nn.sigmoid(gate)
