"""Global interaction: Wukong layers (FM block + linear compression) and their mixture."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kunlun_jax.model.common import MLP, LayerNorm, param_with_axes


class WukongLayer(nn.Module):
    """Z [B, n_in, d] -> [B, n_out, d] = [FMB(Z) ; LCB(Z)] (n_F + n_L = n_out).

    FMB(Z) = MLP(LN(flatten(Z (Zᵀ Y)))) -> n_F tokens, a low-rank factorization machine with
    Y [n_in, k_fm]; LCB(Z) = W_L Z -> n_L tokens, a linear recombination along tokens.
    """

    n_out: int
    fm_rank: int = 4
    fm_tokens: int = 0  # n_F; 0 = half of n_out (rounded up)
    mlp_ratio: int = 2
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        b, n_in, d = z.shape
        n_f = self.fm_tokens or (self.n_out + 1) // 2
        n_l = self.n_out - n_f
        y = self.param(
            "fm_proj",
            param_with_axes(nn.initializers.lecun_normal(), ("tokens", None)),
            (n_in, self.fm_rank),
        )
        fm = jnp.einsum("bnd,bdk->bnk", z, jnp.einsum("bnd,nk->bdk", z, y.astype(self.dtype)))
        fm = LayerNorm(self.dtype, name="fm_norm")(fm.reshape(b, n_in * self.fm_rank))
        fmb = MLP((self.mlp_ratio * d,), n_f * d, dtype=self.dtype, name="fm_mlp")(fm).reshape(
            b, n_f, d
        )
        if n_l == 0:
            return fmb
        w_l = self.param(
            "lcb", param_with_axes(nn.initializers.lecun_normal(), ("tokens", None)), (n_in, n_l)
        )
        lcb = jnp.einsum("bnd,nm->bmd", z, w_l.astype(self.dtype))
        return jnp.concatenate([fmb, lcb], axis=1)


def expert_partition(n_in: int, m: int, kind: str) -> list[slice]:
    """The input tokens of each of m experts over n_in tokens, as slices of the token axis:
    "contiguous" blocks (expert 0 takes the first ceil(n_in / m)), or "interleaved" (expert e
    takes e, e + m, ...). Either way the shares have the same sizes, the larger ones first."""
    if kind == "contiguous":
        return [slice(int(p[0]), int(p[-1]) + 1) for p in np.array_split(np.arange(n_in), m)]
    if kind == "interleaved":
        return [slice(e, n_in, m) for e in range(m)]
    raise ValueError(f"expert partition must be 'contiguous' or 'interleaved', got {kind!r}")


class MixtureOfWukong(nn.Module):
    """Z [B, n_in, d] -> [B, n_out, d]: M Wukong experts, each on a fixed partition of the
    input tokens (`expert_partition`), producing its share of the output tokens (contiguous
    blocks); outputs are concatenated."""

    n_out: int
    num_experts: int = 1
    partition: str = "contiguous"
    fm_rank: int = 4
    fm_tokens: int = 0
    mlp_ratio: int = 2
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        m = min(self.num_experts, z.shape[1], self.n_out)
        in_parts = expert_partition(z.shape[1], m, self.partition)
        out_sizes = [len(p) for p in np.array_split(np.arange(self.n_out), m)]
        outs = []
        for e, (part, n_out) in enumerate(zip(in_parts, out_sizes, strict=True)):
            expert = WukongLayer(
                n_out,
                fm_rank=self.fm_rank,
                fm_tokens=(self.fm_tokens * n_out) // self.n_out,
                mlp_ratio=self.mlp_ratio,
                dtype=self.dtype,
                name=f"expert_{e}",
            )
            outs.append(expert(z[:, part]))
        return jnp.concatenate(outs, axis=1)
