"""Compiled estimates: a bench record for a device that is not present.

An ahead-of-time compile for a TPU topology (jax.experimental.topologies, on a CPU machine)
gives XLA's per-device FLOPs and bytes and the per-device memory; with the chip's published
peaks (`roofline.PEAKS`) they bound the step time from below. `estimate_record` turns such a
compiled step into a "compiled_estimate" record (schema.RECORD) that `kunlun-jax compare`
renders apart from measurements. The sharded AOT producer (kunlun_jax/parallel/) calls it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

from kunlun_jax.bench.accounting import flops_section, xla_cost
from kunlun_jax.bench.roofline import roofline, table_peak
from kunlun_jax.bench.step import compiled_devices, memory_analysis
from kunlun_jax.config import Config, to_dict
from kunlun_jax.data.spec import FeatureSpec
from kunlun_jax.provenance import environment


def estimate_record(
    compiled: jax.stages.Compiled,
    config: Config,
    spec: FeatureSpec,
    *,
    config_name: str,
    topology: str,
    overrides: Sequence[str] = (),
    variant: str = "baseline",
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """A "compiled_estimate" record for `compiled`, the train step of `config` compiled for
    `topology` (e.g. "v5e:2x2"); batch size is config.train.batch_size (global)."""
    devices = compiled_devices(compiled)
    device_kind = devices[0].device_kind
    peak = table_peak(device_kind)
    if peak is None:
        raise ValueError(
            f"no published peak for {device_kind!r}: add it to kunlun_jax.bench.roofline.PEAKS"
        )
    flops, nbytes = xla_cost(compiled)
    if flops is None or nbytes is None:
        raise ValueError("XLA's cost analysis reported no flops / bytes for this program")
    n_dev, env = len(devices), environment()
    batch = config.train.batch_size
    bound = roofline(flops, nbytes, peak)
    return dict(
        kind="compiled_estimate",
        name=f"{config.name} {variant}",
        variant=variant,
        config_name=config_name,
        overrides=list(overrides),
        config=to_dict(config),
        environment=env,
        batch_size=batch,
        num_devices=n_dev,
        flops=flops_section(
            config, spec, batch_size=batch, xla_train_per_example=flops * n_dev / batch
        ),
        estimate=dict(
            topology=topology,
            device_kind=device_kind,
            xla_flops_per_device=flops,
            xla_bytes_per_device=nbytes,
            memory_per_device_bytes=memory_analysis(compiled)["peak_bytes"],
            peak=dataclasses.asdict(peak),
            compute_s=bound.compute_s,
            memory_s=bound.memory_s,
            roofline_step_s=bound.bound_s,
            limiter=bound.limiter,
            roofline_examples_per_sec=batch / bound.bound_s,
        ),
        notes=[
            f"compiled for {topology} on {env['device_kind']}, not run: the step time "
            "is a roofline lower bound from published peaks",
            *notes,
        ],
    )
