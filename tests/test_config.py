import json

import pytest

from kunlun_jax.config import (
    ConfigError,
    available_configs,
    from_dict,
    load_config,
    parse_override,
    replace,
    to_dict,
)


def test_named_configs_load_and_validate():
    names = available_configs()
    assert {"tiny", "small", "base", "paper"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name
        assert cfg.model.d_model % cfg.model.num_heads == 0


def test_overrides_are_typed():
    cfg = load_config(
        "tiny",
        [
            "model.num_layers=4",
            "train.learning_rate=1e-2",
            "model.rote=false",
            "model.gdpa_activation=relu",
            "model.head_hidden=[16, 8]",
            "model.streams.click.max_len=8",
        ],
    )
    assert cfg.model.num_layers == 4
    assert cfg.train.learning_rate == pytest.approx(1e-2)
    assert cfg.model.rote is False
    assert cfg.model.gdpa_activation == "relu"
    assert cfg.model.head_hidden == (16, 8)
    assert cfg.model.streams["click"].max_len == 8
    # Named-config stream settings survive an override of another stream.
    assert cfg.model.streams["impression"].d_model == 16


def test_int_given_for_float_is_accepted_but_not_the_reverse():
    assert load_config("tiny", ["train.learning_rate=1"]).train.learning_rate == 1.0
    with pytest.raises(ConfigError, match=r"model\.num_layers must be an integer"):
        load_config("tiny", ["model.num_layers=2.5"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.num_layer=4", r"unknown config key 'model\.num_layer'.*did you mean 'num_layers'"),
        ("modle.d_model=4", r"unknown config key 'modle'.*valid keys here: data, mesh, model"),
        ("model.pooling=max", r"model\.pooling = 'max' is not valid; choose one of"),
        ("model.num_heads=3", r"divisible by model\.num_heads"),
        ("model.gdpa_activation=tanhh", r"gdpa_activation = 'tanhh' is not valid"),
        ("train.batch_size=0", r"train\.batch_size must be > 0"),
        ("model.rote=yes", r"model\.rote must be true or false"),
        ("model.streams.click.num_layers=9", r"must be <= model\.num_layers"),
        ("model.streams.click.depth=1", r"unknown config key 'model\.streams\.click\.depth'"),
        ("model.window=-1", r"model\.window must be >= 0"),
        ("data.synthetic.bias=nan", r"data\.synthetic\.bias must be a finite number"),
        ("train.learning_rate=inf", r"train\.learning_rate must be a finite number"),
        ("data.synthetic.num_contexts=0", r"data\.synthetic\.num_contexts must be > 0"),
        ("data.seed=-1", r"data\.seed must be in \[0, 2\*\*31\), got -1"),
        ("train.seed=2147483648", r"train\.seed must be in \[0, 2\*\*31\)"),
        ("model.mlp_ratio=0", r"model\.mlp_ratio must be > 0, got 0"),
        ("model.wukong_fm_rank=0", r"model\.wukong_fm_rank must be > 0"),
        ("model.wukong_fm_tokens=-3", r"model\.wukong_fm_tokens must be >= 0 \(0 = half"),
        ("train.batch_size=1000000", r"train\.batch_size \(1000000\) exceeds the synthetic"),
        ("nonsense", r"must look like section\.key=value"),
        (
            "train.profile_steps=[5]",
            r"train\.profile_steps must be \[\] \(no trace\) or \[start, stop\]",
        ),
        ("train.profile_steps=[3, 3]", r"0 <= start < stop <= train\.steps \(600\), got \[3, 3\]"),
        ("train.profile_steps=[10, 601]", r"train\.profile_steps must be .*got \[10, 601\]"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", [override])


def test_unknown_config_name_lists_the_named_ones():
    with pytest.raises(ConfigError, match=r"config 'tinny' not found; named configs: .*tiny"):
        load_config("tinny")


def test_config_file_path_and_bad_toml(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text("[model]\nd_model = 48\nnum_heads = 3\n")
    cfg = load_config(str(good))
    assert (cfg.name, cfg.model.d_model) == ("mine", 48)
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
    (tmp_path / "latin1.toml").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml is not valid TOML"):
        load_config(str(tmp_path / "latin1.toml"))
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"list\.json must hold a table of sections"):
        load_config(str(tmp_path / "list.json"))


def test_round_trip_and_replace():
    cfg = load_config("small")
    assert from_dict(to_dict(cfg)) == cfg
    changed = replace(cfg, **{"model.num_layers": 6})
    assert changed.model.num_layers == 6
    assert changed.train == cfg.train
    with pytest.raises(ConfigError):
        replace(cfg, **{"model.num_layers": 0})


def test_parse_override_keeps_bare_words_as_strings():
    assert parse_override("model.gdpa_activation=gelu_tanh") == (
        ["model", "gdpa_activation"],
        "gelu_tanh",
    )
    assert parse_override("a.b = 3") == (["a", "b"], 3)


def test_config_accepts_exactly_the_kernels_activations():
    from kunlun_jax.config import ACTIVATIONS
    from pallas_kernels.common.activations import ACTIVATIONS as KERNEL_ACTIVATIONS

    assert sorted(ACTIVATIONS) == sorted(KERNEL_ACTIVATIONS)
    assert load_config("tiny", ["model.gdpa_activation=hardswish"]).model.gdpa_activation


def test_weight_gen_norm_is_refused_where_there_is_no_weight_gen():
    with pytest.raises(ConfigError, match=r"model\.weight_gen_norm applies to .* \(got 'din'\)"):
        load_config("din", ["model.weight_gen_norm=true"])
    for name in ("tiny", "interformer"):
        assert load_config(name, ["model.weight_gen_norm=true"]).model.weight_gen_norm


def test_a_run_config_from_before_weight_gen_norm_reads_back_with_the_norm(tmp_path):
    """Runs saved before the field existed trained with WeightGen's norm: a resume or eval of
    them must rebuild that model, not the new default's."""
    for name, expected in (("tiny", True), ("interformer", True), ("din", False)):
        saved = to_dict(load_config(name))
        del saved["model"]["weight_gen_norm"]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(saved))
        assert load_config(str(path)).model.weight_gen_norm is expected, name
    # A named config or a run saved with the field keeps its value.
    assert load_config("tiny").model.weight_gen_norm is False
    current = tmp_path / "current.json"
    current.write_text(json.dumps(to_dict(load_config("tiny"))))
    assert load_config(str(current)).model.weight_gen_norm is False


def test_seed_rote_needs_a_seed_attention():
    with pytest.raises(ConfigError, match=r"model\.seed_rote rotates the keys of a seed attention"):
        load_config("tiny", ["model.seed_rote=true", "model.pooling=mean"])
    assert load_config("tiny", ["model.seed_rote=true", "model.pooling=pma"]).model.seed_rote
    with pytest.raises(ConfigError, match=r"model\.seed_rote applies to model\.arch = 'kunlun'"):
        load_config("din", ["model.seed_rote=true"])


def test_tasks_default_to_the_sources_first_label_and_are_checked():
    from kunlun_jax.config import SOURCE_TASKS, TASK_PARENTS, task_names
    from kunlun_jax.data import synthetic
    from kunlun_jax.data.movielens import DEFAULT_TASKS, TASK_HALF_STARS

    assert task_names(load_config("tiny").data) == ("click",)
    ml = load_config("movielens", ['data.tasks=["love", "like"]', "train.task_weights=[2, 1]"])
    assert task_names(ml.data) == ("love", "like")
    assert ml.train.task_weights == (2.0, 1.0)
    assert task_names(load_config("movielens").data) == DEFAULT_TASKS
    assert SOURCE_TASKS["synthetic"] == synthetic.TASKS
    for child, parent in TASK_PARENTS.items():  # ESMM: a child and its parent share a source
        assert any({child, parent} <= set(tasks) for tasks in SOURCE_TASKS.values())
        assert parent not in TASK_PARENTS  # parents are unconditioned (entire_space_logits)
    for source, tasks in SOURCE_TASKS.items():  # the config's names are the loaders' labels
        if source.startswith("movielens-"):
            assert tasks == tuple(TASK_HALF_STARS)
            assert tasks[:1] == DEFAULT_TASKS
    bad = {
        r"data\.tasks \['love'\] are not labels of synthetic; choose from \['click', 'co": [
            'data.tasks=["love"]'
        ],
        r"data\.tasks lists a task twice": ['data.tasks=["click", "click"]'],
        r"train\.task_weights has 2 weights for the 1 tasks \['click'\]": [
            "train.task_weights=[1, 2]"
        ],
        r"train\.task_weights must be finite and > 0": ["train.task_weights=[0]"],
        r"model\.task_heads = 'per_task' needs several data\.tasks": ["model.task_heads=per_task"],
        r"model\.task_experts must be >= 1": ["model.task_experts=0"],
        r"model\.task_own_experts must be >= 0": ["model.task_own_experts=-1"],
        r"model\.ple_levels must be >= 1": ["model.ple_levels=0"],
    }
    for message, overrides in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config("tiny", overrides)
    mmoe = ['data.tasks=["like", "love"]', "model.task_heads=mmoe"]
    assert load_config("movielens", mmoe).model.task_experts == 4
    with pytest.raises(ConfigError, match=r"'mmoe' needs model\.head_hidden to have a width"):
        load_config("movielens", [*mmoe, "model.head_hidden=[]"])
    ple = ['data.tasks=["like", "love"]', "model.task_heads=ple", "model.ple_levels=2"]
    assert load_config("movielens", ple).model.task_own_experts == 1
    with pytest.raises(ConfigError, match=r"ple_levels = 3 needs that many widths.*\[64, 32\]"):
        load_config("movielens", [*ple, "model.ple_levels=3"])
