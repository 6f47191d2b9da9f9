"""The result-file formats of `kunlun-jax bench` and `kunlun-jax scaling sweep`, in one place.

A benchmark file is `{"schema": "kunlun-jax/bench", "schema_version": 1, "records": [...]}`;
a sweep file is `{"schema": "kunlun-jax/scaling-sweep", "schema_version": 1, "points": [...]}`.
The field tables below (`RECORD`, `POINT`) are the documentation: every field has a type and
a one-line meaning; `python -m kunlun_jax.bench.schema` prints them as Markdown.

Record kinds (`kind`):

* "measured": timed on the device named in `environment`; has `timing`, `mfu`, `ceilings`
  and `memory`, and no `estimate`;
* "compiled_estimate": an ahead-of-time compile for a device that was not present (e.g. a TPU
  topology compiled on a CPU); has `estimate` (XLA's FLOPs and bytes, per-device memory, a
  roofline bound from published peaks) and none of `timing`, `mfu`, `ceilings`, `memory`:
  an estimate can never be read as a measured time.

`validate_bench(doc)` / `validate_sweep(doc)` raise `SchemaError` naming the first bad field
by its path (e.g. `records[1].timing.median_s`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
BENCH_SCHEMA = "kunlun-jax/bench"
SWEEP_SCHEMA = "kunlun-jax/scaling-sweep"
KINDS = ("measured", "compiled_estimate")


class SchemaError(ValueError):
    """A result file does not follow its schema; the message names the field's path."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One field: allowed JSON types ("number", "int", "str", "bool", "object", "list"),
    meaning, nullable (may be null), required, sub-fields of an object, the item type of a
    list, allowed values."""

    types: tuple[str, ...]
    doc: str
    nullable: bool = False
    required: bool = True
    fields: Mapping[str, Field] | None = None
    items: Field | None = None
    choices: tuple[Any, ...] | None = None


def _num(doc: str, **kw: Any) -> Field:
    return Field(("number",), doc, **kw)


def _int(doc: str, **kw: Any) -> Field:
    return Field(("int",), doc, **kw)


def _str(doc: str, **kw: Any) -> Field:
    return Field(("str",), doc, **kw)


def _obj(doc: str, fields: Mapping[str, Field] | None = None, **kw: Any) -> Field:
    return Field(("object",), doc, fields=fields, **kw)


def _list(doc: str, items: Field, **kw: Any) -> Field:
    return Field(("list",), doc, items=items, **kw)


ENVIRONMENT = {
    "device_kind": _str("jax's device_kind of the device that ran (or compiled) the program"),
    "platform": _str("cpu | gpu | tpu"),
    "device_count": _int("devices visible to jax"),
    "jax": _str("jax version"),
    "jaxlib": _str("jaxlib version"),
    "python": _str("python version"),
    "commit": _str("git commit of the kunlun-jax code that ran", nullable=True, required=False),
    "dirty": Field(
        ("bool",),
        "the code had uncommitted changes to tracked files",
        nullable=True,
        required=False,
    ),
    "date": _str("UTC date-time, ISO 8601"),
    "command": _str("the command line that produced the file"),
}

TABLE_PEAK = {
    "name": _str("chip name"),
    "bf16_tflops": _num("published dense bf16 peak per device, TFLOP/s"),
    "hbm_gbps": _num("published HBM bandwidth per device, GB/s"),
    "source": _str("where the peak numbers come from"),
}

FLOPS = {
    "convention": _str("how model FLOPs are counted (accounting.FLOPS_CONVENTION)"),
    "source": Field(("str",), "analytic (kunlun_jax.flops) or xla", choices=("analytic", "xla")),
    "forward_per_example": _num("model forward FLOPs per example"),
    "train_per_example": _num("model train FLOPs per example (3 x forward): the MFU numerator"),
    "train_per_example_real_tokens": _num(
        "train FLOPs per example on the batches' mean real (unpadded) sequence lengths",
        nullable=True,
    ),
    "dense_train_per_example": _num(
        "analytic train FLOPs with dense attention scores (what XLA runs on the reference path)",
        nullable=True,
    ),
    "xla_train_per_example": _num(
        "XLA cost_analysis FLOPs of the whole step with plain-jnp kernels, lowered (each op "
        "once, before partitioning) / global batch",
        nullable=True,
    ),
    "xla_over_analytic_dense": _num(
        "xla_train_per_example / dense_train_per_example (near 1 when both agree)", nullable=True
    ),
}

TIMING = {
    "steps": _int("timed steps"),
    "warmup": _int("untimed steps after the compile"),
    "distinct_batches": _int("different batches cycled through (preloaded on the device)"),
    "compile_s": _num("lower + compile time of the train step"),
    "median_s": _num("median step time over the timed steps"),
    "p10_s": _num("10th percentile step time"),
    "p90_s": _num("90th percentile step time"),
    "examples_per_sec": _num("global batch / median step time"),
    "final_loss": _num("training loss of the last timed step (finite: the step trains)"),
}

CEILINGS = {
    "matmul_dtype": _str("bfloat16 on GPU/TPU, float32 on CPU"),
    "matmul_n": _int("n of the n x n x n matmul"),
    "matmul_tflops": _num("measured matmul TFLOP/s per device: the same-run practical peak"),
    "copy_bytes": _int("bytes read + written by one elementwise copy"),
    "copy_gbps": _num("measured copy bandwidth per device, GB/s"),
}

MEMORY = {
    "peak_bytes": _int("peak device memory of the step", nullable=True),
    "peak_source": _str(
        "memory_stats (the busiest device's peak so far in the process) or memory_analysis "
        "(compiled, per device: "
        "arguments + outputs + temporaries - aliased)"
    ),
    "argument_bytes": _int("compiled step's argument bytes per device", nullable=True),
    "output_bytes": _int("compiled step's output bytes per device", nullable=True),
    "temp_bytes": _int("compiled step's temporary bytes per device", nullable=True),
    "alias_bytes": _int("bytes aliased between arguments and outputs (donation)", nullable=True),
}

MFU = {
    "vs_table_peak": _num("model FLOPs / step time / (devices x published peak)", nullable=True),
    "vs_measured_matmul": _num("model FLOPs / step time / (devices x measured matmul TFLOP/s)"),
    "vs_table_peak_real_tokens": _num(
        "as vs_table_peak, counting real (unpadded) tokens", nullable=True
    ),
    "vs_measured_matmul_real_tokens": _num(
        "as vs_measured_matmul, counting real (unpadded) tokens (the spec's convention)",
        nullable=True,
        required=False,
    ),
}

ESTIMATE = {
    "topology": _str("compile target, e.g. v5e:2x2"),
    "device_kind": _str("device_kind of the target devices"),
    "xla_flops_per_device": _num("XLA cost_analysis FLOPs of the per-device program"),
    "xla_bytes_per_device": _num("XLA cost_analysis bytes accessed per device"),
    "memory_per_device_bytes": _int(
        "compiled arguments + outputs + temporaries - aliased, per device", nullable=True
    ),
    "peak": _obj("published peaks of the target device", TABLE_PEAK),
    "compute_s": _num("xla_flops_per_device / published peak FLOP/s"),
    "memory_s": _num("xla_bytes_per_device / published HBM bandwidth"),
    "roofline_step_s": _num("max(compute_s, memory_s): a lower bound, never a measurement"),
    "limiter": Field(("str",), "compute or memory", choices=("compute", "memory")),
    "roofline_examples_per_sec": _num("global batch / roofline_step_s: an upper bound"),
}

RECORD: dict[str, Field] = {
    "kind": Field(("str",), "measured or compiled_estimate", choices=KINDS),
    "name": _str("row label"),
    "variant": _str("what differs from the base config (baseline, kernels=pallas, -hsp, ...)"),
    "config_name": _str("named config or path"),
    "overrides": _list("--set overrides applied to config_name", _str("key=value")),
    "config": _obj("the resolved config (kunlun_jax.config.to_dict)"),
    "environment": _obj("provenance (kunlun_jax.provenance.environment)", ENVIRONMENT),
    "batch_size": _int("global batch size"),
    "num_devices": _int("devices the step ran (or was compiled) on"),
    "flops": _obj("model FLOPs and XLA's count", FLOPS),
    "timing": _obj("measured step times", TIMING, required=False),
    "ceilings": _obj("matmul and copy ceilings measured in the same run", CEILINGS, required=False),
    "table_peak": _obj("published peaks of this device", TABLE_PEAK, nullable=True, required=False),
    "memory": _obj("peak memory", MEMORY, required=False),
    "mfu": _obj("model FLOPs utilization", MFU, required=False),
    "estimate": _obj("compiled estimate (no hardware)", ESTIMATE, required=False),
    "notes": _list("caveats a reader must see", _str("one caveat")),
}
MEASURED_ONLY = ("timing", "ceilings", "memory", "mfu")

POINT: dict[str, Field] = {
    "name": _str("point label (its overrides)"),
    "family": _str("model family, e.g. kunlun or interformer"),
    "data": _str("data label: real data and teacher-mode results are never pooled"),
    "config_name": _str("named config or path"),
    "overrides": _list("all --set overrides of the point", _str("key=value")),
    "config": _obj("the resolved config"),
    "num_layers": _int("model.num_layers"),
    "d_model": _int("model.d_model"),
    "params": _int("parameter count", nullable=True),
    "forward_flops_per_example": _num("model forward FLOPs per example"),
    "train_flops_per_example": _num("3 x forward"),
    "flops_source": Field(("str",), "analytic or xla", choices=("analytic", "xla")),
    "examples": _int("training examples seen: steps x batch size"),
    "train_compute": _num("C = train_flops_per_example x examples"),
    "ne": _num("eval normalized entropy"),
    "auc": _num("eval AUC", nullable=True),
    "log_loss": _num("eval log loss", nullable=True),
    "floor_ne": _num("known entropy floor (Bayes-optimal NE of the eval split)", nullable=True),
    "run_dir": _str("the point's run directory (config, checkpoints, metrics.json)"),
    "environment": _obj("provenance", ENVIRONMENT),
}


_PY_TYPES = {"str": str, "bool": bool, "object": Mapping, "list": list}


def _type_ok(value: Any, name: str) -> bool:
    if name == "number":  # finite: a NaN or Inf measurement is no measurement
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, _PY_TYPES[name])


def _check(value: Any, field: Field, path: str) -> None:
    if value is None:
        if not field.nullable:
            raise SchemaError(f"{path} must not be null ({field.doc})")
        return
    if not any(_type_ok(value, t) for t in field.types):
        raise SchemaError(
            f"{path} must be {' or '.join(field.types)} ({field.doc}), got {value!r:.80}"
        )
    if field.choices is not None and value not in field.choices:
        raise SchemaError(f"{path} = {value!r} is not one of {list(field.choices)}")
    if field.fields is not None:
        _check_object(value, field.fields, path)
    if field.items is not None:
        for i, item in enumerate(value):
            _check(item, field.items, f"{path}[{i}]")


def _check_object(value: Mapping[str, Any], fields: Mapping[str, Field], path: str) -> None:
    for key, field in fields.items():
        if key not in value:
            if field.required:
                raise SchemaError(f"{path}.{key} is missing ({field.doc})")
            continue
        _check(value[key], field, f"{path}.{key}")


def validate_record(record: Mapping[str, Any], path: str = "record") -> None:
    """One bench record: field types, then the kind rules (module docstring)."""
    _check(record, _obj("bench record", RECORD), path)
    if record["kind"] == "measured":
        missing = [k for k in MEASURED_ONLY if k not in record]
        if missing or "estimate" in record:
            raise SchemaError(
                f"{path}: a measured record needs {list(MEASURED_ONLY)} and no estimate; "
                f"missing {missing}" + (", has estimate" if "estimate" in record else "")
            )
    else:
        mixed = [k for k in MEASURED_ONLY if k in record]
        if mixed or "estimate" not in record:
            raise SchemaError(
                f"{path}: a compiled_estimate record needs estimate and none of "
                f"{list(MEASURED_ONLY)} (estimates are never mixed with measurements); "
                f"found {mixed}" + ("" if "estimate" in record else ", no estimate")
            )


def _check_header(doc: Mapping[str, Any], schema: str, key: str) -> None:
    if not isinstance(doc, Mapping):
        raise SchemaError(f"a {schema} file must be a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != schema:
        raise SchemaError(f"schema must be {schema!r}, got {doc.get('schema')!r}")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(
            f"schema_version {doc.get('schema_version')!r} is not supported "
            f"(this version reads {SCHEMA_VERSION})"
        )
    if not isinstance(doc.get(key), list) or not doc[key]:
        raise SchemaError(f"{key} must be a non-empty list")


def validate_bench(doc: Mapping[str, Any]) -> None:
    """A whole bench file (header + every record)."""
    _check_header(doc, BENCH_SCHEMA, "records")
    for i, record in enumerate(doc["records"]):
        validate_record(record, f"records[{i}]")


def validate_sweep(doc: Mapping[str, Any]) -> None:
    """A whole sweep file (header + every point)."""
    _check_header(doc, SWEEP_SCHEMA, "points")
    for i, point in enumerate(doc["points"]):
        _check(point, _obj("sweep point", POINT), f"points[{i}]")


def bench_document(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A validated bench file holding `records`."""
    doc = {"schema": BENCH_SCHEMA, "schema_version": SCHEMA_VERSION, "records": records}
    validate_bench(doc)
    return doc


def sweep_document(points: list[dict[str, Any]]) -> dict[str, Any]:
    """A validated sweep file holding `points`."""
    doc = {"schema": SWEEP_SCHEMA, "schema_version": SCHEMA_VERSION, "points": points}
    validate_sweep(doc)
    return doc


def load(path: Path | str, schema: str) -> dict[str, Any]:
    """Reads and validates a bench or sweep file; errors name the file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path} is not valid JSON: {e}") from e
    validator = validate_bench if schema == BENCH_SCHEMA else validate_sweep
    try:
        validator(doc)
    except SchemaError as e:
        raise SchemaError(f"{path}: {e}") from e
    return doc


def markdown(fields: Mapping[str, Field], prefix: str = "") -> list[str]:
    """Field reference rows `| path | type | meaning |` (nested objects flattened)."""
    rows = []
    for key, f in fields.items():
        kind = "/".join(f.types) + (" or null" if f.nullable else "")
        kind += "" if f.required else ", optional"
        rows.append(f"| `{prefix}{key}` | {kind} | {f.doc} |")
        if f.fields:
            rows += markdown(f.fields, f"{prefix}{key}.")
    return rows


if __name__ == "__main__":
    for title, table in (("bench record", RECORD), ("sweep point", POINT)):
        print(f"### {title}\n\n| field | type | meaning |\n|---|---|---|")
        print("\n".join(markdown(table)), end="\n\n")
    sys.exit(0)
