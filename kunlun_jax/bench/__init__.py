"""Benchmarks, MFU and scaling laws.

Modules, one job each:

* `roofline`: published per-chip peaks (bf16 FLOP/s, HBM bandwidth) and the roofline bound;
* `ceilings`: wall-clock timing helpers and the matmul / copy ceilings measured in the same run;
* `accounting`: FLOPs per example of any config (analytic, or XLA's count), MFU arithmetic;
* `step`: the one function that returns the compiled train step a benchmark times;
* `train_bench`: `kunlun-jax bench` (one config, kernel backends, the MFU ablation);
* `schema`: the result JSON format, documented and validated in one place;
* `compare`: several result files -> one Markdown table (measured and estimated rows apart);
* `sweep` / `fit` / `plots`: the scaling-law study (`kunlun-jax scaling sweep|fit`);
* `cli`: the `bench`, `compare` and `scaling` subcommands of `kunlun-jax`.
"""
