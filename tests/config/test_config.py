"""Config: precedence defaults < demo < YAML < typed flags, and every validation error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from sfpk.cli import build_parser
from sfpk.cli.flags import overrides_from_args
from sfpk.config.core import (
    PRETRAIN_DEFAULTS,
    Config,
    build_config,
    config_to_dict,
    load_config,
    save_config,
)
from sfpk.errors import ConfigError


def _yaml(tmp_path, data, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_precedence_defaults_yaml_cli(tmp_path, tiny):
    """YAML overrides defaults, typed flags override YAML, untouched knobs keep defaults."""
    path = _yaml(tmp_path, {"train": {"lr": 0.1, "epochs": 7}, "prune": {"method": "mag"}})
    config = build_config("oneshot", yaml_path=path, overrides={"train.lr": 0.2})
    assert config.train.lr == 0.2
    assert config.train.epochs == 7
    assert config.train.momentum == Config().train.momentum


def test_cli_defaults_never_override_yaml(tmp_path):
    """Only flags the user typed reach the overrides (argparse default=SUPPRESS)."""
    args = build_parser().parse_args(["oneshot", "--lr", "0.3"])
    assert overrides_from_args(args) == {"train.lr": 0.3}
    path = _yaml(tmp_path, {"train": {"epochs": 9}, "prune": {"method": "mag"}})
    config = build_config("oneshot", yaml_path=path, overrides=overrides_from_args(args))
    assert (config.train.epochs, config.train.lr) == (9, 0.3)


def test_yaml_scientific_notation_string_becomes_float(tmp_path):
    """PyYAML reads 1e-2 as a string (YAML 1.1); float knobs must still accept it."""
    path = _yaml(tmp_path, "train:\n  lr: 1e-2\nprune:\n  method: mag\n")
    assert build_config("oneshot", yaml_path=path).train.lr == pytest.approx(0.01)


def test_unknown_yaml_key_names_key_and_close_match(tmp_path):
    """A typo must not be silently ignored: the error names it and suggests the right key."""
    path = _yaml(tmp_path, {"train": {"learning_rat": 0.1, "lr_mni": 0.1}})
    with pytest.raises(ConfigError, match=r"train\.lr_mni.*train\.lr_min"):
        build_config("oneshot", yaml_path=_yaml(tmp_path, {"train": {"lr_mni": 0.1}}, "b.yaml"))
    with pytest.raises(ConfigError, match="learning_rat"):
        build_config("oneshot", yaml_path=path)


def test_unknown_section_is_rejected(tmp_path):
    """Unknown top-level sections are errors too, with a suggestion."""
    with pytest.raises(ConfigError, match=r"'prun'.*prune"):
        build_config("oneshot", yaml_path=_yaml(tmp_path, {"prun": {"sparsity": 0.5}}))


def test_method_options_merge_yaml_and_flags(tmp_path, tiny):
    """prune.options from YAML and --option flags merge key-wise."""
    path = _yaml(tmp_path, {"prune": {"method": "snip", "options": {"batches": 3}}})
    config = build_config(
        "oneshot", yaml_path=path, overrides={"prune.options": {"train_mode": False}}
    )
    assert config.prune.options == {"batches": 3, "train_mode": False}


def test_demo_preset_is_below_yaml_and_flags(tmp_path):
    """--demo only shortens budgets; YAML and typed flags still win."""
    path = _yaml(tmp_path, {"train": {"epochs": 4}, "prune": {"method": "mag"}})
    config = build_config("oneshot", yaml_path=path, demo=True, overrides={"pretrain.epochs": 2})
    assert (config.data.dataset, config.model.name) == ("mnist1d", "cnn1d")
    assert (config.train.epochs, config.pretrain.epochs) == (4, 2)
    assert config.prune.options == {}  # particle options only for sfpk / spode


def test_rounds_default_depends_on_pipeline():
    """Oneshot prunes in 1 round by default, iterative in 10 (reference §5.7)."""
    assert build_config("oneshot", overrides={"prune.method": "mag"}).prune.rounds == 1
    assert build_config("iterative", overrides={"prune.method": "mag"}).prune.rounds == 10


def test_iterative_round_lists_default_to_the_reference_schedule_resampled(tmp_path, tiny):
    """Unset per-round lists follow the reference's 10-round schedule, resampled to K-1
    (first and last kept), so any --rounds works without spelling out lists; given lists
    are kept, and the resolved lists are what config.yaml records."""
    ten = build_config("iterative", overrides=tiny).train
    assert ten.round_epochs == [3, 4, 5, 10, 15, 15, 20, 20, 30]
    assert ten.round_lr_end == [5e-4, 2e-4] + [1e-4] * 7
    three = build_config("iterative", overrides={**tiny, "prune.rounds": 3})
    assert (three.train.round_epochs, three.train.round_lr_end) == ([3, 30], [5e-4, 1e-4])
    assert build_config("iterative", overrides={**tiny, "prune.rounds": 2}).train.round_epochs == [
        3
    ]
    twelve = build_config("iterative", overrides={**tiny, "prune.rounds": 12}).train
    assert len(twelve.round_epochs) == 11 and twelve.round_epochs[::10] == [3, 30]
    given = build_config(
        "iterative", overrides={**tiny, "prune.rounds": 3, "train.round_epochs": [7]}
    ).train
    assert given.round_epochs == [7] and given.round_lr_end == [5e-4, 1e-4]
    assert build_config("oneshot", overrides=tiny).train.round_epochs is None
    path = save_config(three, tmp_path / "config.yaml")
    assert load_config(path).train.round_epochs == [3, 30]


def test_saved_config_round_trips(tmp_path, tiny):
    """config.yaml written by a run reloads to the same resolved config (sfpk resume)."""
    overrides = {**tiny, "prune.rounds": 2, "train.round_epochs": [1], "train.round_lr_end": [1e-3]}
    config = build_config("iterative", overrides=overrides)
    path = save_config(config, tmp_path / "config.yaml")
    assert config_to_dict(load_config(path)) == config_to_dict(config)


INVALID = [
    ({"prune.sparsity": 0.0}, "sparsity"),
    ({"prune.sparsity": 1.0}, "sparsity"),
    ({"prune.sparsity": 1.5}, "sparsity"),
    ({"prune.method": "magnitude"}, "unknown method"),
    ({"prune.options": {"bogus": 1}}, "bogus"),
    ({"prune.scope": "layer"}, "scope"),
    ({"prune.structure": "block"}, "structure"),
    ({"data.dataset": "mnist"}, "data set"),
    ({"model.name": "resnet21"}, "model"),
    ({"train.optimizer": "rmsprop"}, "optimizer"),
    ({"pretrain.optimizer": "adam", "pretrain.nesterov": True}, "nesterov"),
    ({"train.momentum": -0.5}, "momentum"),
    ({"train.label_smoothing": 1.0}, "label_smoothing"),
    ({"train.grad_accum_steps": 0}, "grad_accum_steps"),
    ({"train.grad_clip": 0.0}, "grad_clip"),
    ({"train.lr": 0.0}, "train.lr"),
    ({"train.batch_size": 0}, "train.batch_size"),
    ({"pretrain.epochs": 0}, "pretrain.epochs"),
    ({"train.epochs": -1}, "train.epochs"),
    ({"train.warmup_epochs": -1}, "warmup_epochs"),
    ({"train.fixed_lr_epochs": -1}, "fixed_lr_epochs"),
    ({"train.epochs": 4, "train.warmup_epochs": 3, "train.fixed_lr_epochs": 2}, "exceed"),
    ({"train.report_last_k": 0}, "report_last_k"),
    ({"train.lr_min": -1.0}, "lr_min"),
    ({"prune.rounds": 0}, "rounds"),
    ({"data.val_fraction": 0.0}, "val_fraction"),
    ({"data.num_workers": -1}, "num_workers"),
    ({"prune.bn_batches": -1}, "bn_batches"),
    ({"run.checkpoint_every_steps": -1}, "checkpoint_every_steps"),
    ({"data.eval_batch_size": 0}, "eval_batch_size"),
    ({"prune.batch_size": 0}, "prune.batch_size"),
    ({"prune.num_samples": 0}, "num_samples"),
    ({"model.checkpoint": "/no/such/weights.safetensors"}, "does not exist"),
    ({"data.data_dir": "/no/such/dir"}, "not a directory"),
    ({"run.device": "cuda:99" if False else "quantum"}, "device"),
    ({"train.epochs": "ten"}, "train.epochs"),
    ({"train.nesterov": "yes"}, "nesterov"),
    ({"train.round_lr_end": ["x"]}, "round_lr_end"),
    ({"prune.options": 3}, "mapping"),
]


@pytest.mark.parametrize(("overrides", "match"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_settings_raise_config_error(tiny, overrides, match):
    """Every check of the config package fires with a message naming the bad setting."""
    with pytest.raises(ConfigError, match=match):
        build_config("oneshot", overrides={**tiny, **overrides})


def test_iterative_round_lists_must_have_k_minus_1_or_1_entries(tiny):
    """Per-round lists with a wrong length are rejected (they would silently misalign)."""
    with pytest.raises(ConfigError, match=r"round_epochs has 2 entries.*3"):
        build_config(
            "iterative", overrides={**tiny, "prune.rounds": 4, "train.round_epochs": [1, 2]}
        )
    with pytest.raises(ConfigError, match="round_lr="):
        build_config(
            "iterative",
            overrides={
                **tiny,
                "prune.rounds": 2,
                "train.round_lr": [0.0],
                "train.round_lr_end": [0.1],
                "train.round_epochs": [1],
            },
        )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- a\n- b\n", "mapping of sections"),
        ("train: [1\n", "not valid YAML"),
        ("train: 3\n", "section"),
    ],
)
def test_malformed_yaml_files(tmp_path, text, match):
    """A YAML file that is not a mapping of sections gives a clear ConfigError."""
    with pytest.raises(ConfigError, match=match):
        build_config("oneshot", yaml_path=_yaml(tmp_path, text))


def test_missing_yaml_file_and_unknown_pipeline(tmp_path):
    """A missing recipe and an unknown pipeline name are ConfigErrors."""
    with pytest.raises(ConfigError, match="does not exist"):
        build_config("oneshot", yaml_path=tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="pipeline"):
        build_config("prune-everything")


def test_recipes_in_configs_folder_load():
    """The shipped recipes only hold valid keys (paths are not checked: data is not here)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "configs"
    recipes = sorted(folder.glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        pipeline = "iterative" if "iterative" in recipe.name else "oneshot"
        build_config(pipeline, yaml_path=recipe, check_paths=False)


def test_iterative_ignores_warmup_when_checking_the_epoch_budget():
    """Iterative has no warm-up, so a short final fine-tune is valid there (not in oneshot)."""
    overrides = {"train.epochs": 2, "train.warmup_epochs": 5}
    config = build_config("iterative", overrides=overrides, check_paths=False)
    assert config.train.epochs == 2
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build_config("oneshot", overrides=overrides, check_paths=False)


@pytest.mark.parametrize(
    "recipe", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")), ids=str
)
def test_every_shipped_recipe_is_a_valid_config(recipe):
    """The YAML recipes in configs/ must keep loading as the config evolves."""
    pipeline = "iterative" if "iterative" in recipe.name else "oneshot"
    config = build_config(pipeline, yaml_path=recipe, check_paths=False)
    assert 0 < config.prune.sparsity < 1


def test_demo_recipe_matches_the_demo_preset():
    """configs/demo.yaml and --demo describe the same run."""
    recipe = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    from_file = build_config("oneshot", yaml_path=recipe, check_paths=False)
    preset = build_config("oneshot", demo=True, overrides={"prune.sparsity": 0.95})
    assert config_to_dict(from_file) == config_to_dict(preset)


def test_sfpk_data_is_frozen_into_the_config(tmp_path, monkeypatch):
    """A run started with $SFPK_DATA resumes from the same folder whatever the environment."""
    monkeypatch.setenv("SFPK_DATA", str(tmp_path))
    config = build_config("oneshot", overrides={"data.dataset": "cifar10"}, check_paths=False)
    assert config.data.data_dir == str(tmp_path)
    embedded = build_config("oneshot", overrides={"data.dataset": "digits"}, check_paths=False)
    assert embedded.data.data_dir is None


def test_training_sections_are_one_optimizer_config():
    """pretrain and train share the Trainer's fields, declared once, and stay flat in YAML."""
    from sfpk.training.optimizers import OptimizerConfig

    config = Config()
    assert isinstance(config.pretrain, OptimizerConfig)
    assert isinstance(config.train, OptimizerConfig)
    shared = [f.name for f in dataclasses.fields(OptimizerConfig)]
    saved = config_to_dict(config)
    assert list(saved["pretrain"]) == shared
    assert list(saved["train"])[: len(shared)] == shared


def test_pretrain_section_holds_the_pretraining_recipe():
    """Only the five values in which pretraining differs from fine-tuning change (§5.7)."""
    pretrain, train = Config().pretrain, Config().train
    assert {k: getattr(pretrain, k) for k in PRETRAIN_DEFAULTS} == PRETRAIN_DEFAULTS
    assert pretrain.momentum == train.momentum and pretrain.optimizer == train.optimizer


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"pretrain.lr_min": -1.0}, r"pretrain\.lr_min"),
        ({"pretrain.optimizer": "rmsprop"}, r"pretrain\.optimizer"),
        ({"prune.scope": 3}, r"prune\.scope"),
        ({"prune.structure": "Filter"}, r"channel, coupled, filter, head, head\+neuron, neuron"),
    ],
)
def test_errors_name_the_dotted_key_and_choices(tiny, overrides, match):
    """A bad value of a shared or Literal field names its section, and the choices."""
    with pytest.raises(ConfigError, match=match):
        build_config("oneshot", overrides={**tiny, **overrides})


def _sfpk_imports(module) -> set[str]:
    """The sfpk modules ``module`` imports anywhere in its source (also inside functions)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sfpk."):
            found.add(node.module.removeprefix("sfpk."))
    return found


def test_config_checks_does_not_import_config():
    """config.core imports config.checks, never the other way round (no import circle)."""
    import sfpk.config.checks

    found = _sfpk_imports(sfpk.config.checks)
    assert "core" not in found and "config.core" not in found


# -- data options and language-model data ---------------------------------------------------


def test_data_option_flags_merge_with_yaml_like_model_options(tmp_path, tiny):
    """--data-option KEY=VALUE (parsed as YAML) merges key-wise into data.options."""
    path = _yaml(tmp_path, {"data": {"dataset": "tinytext", "options": {"block_size": 32}}})
    args = build_parser().parse_args(
        ["oneshot", "--data-option", "splits=[0.8,0.1,0.1]", "--data-option", "num_chars=5000"]
    )
    overrides = overrides_from_args(args)
    config = build_config("oneshot", yaml_path=path, overrides=overrides)
    assert config.data.options == {"block_size": 32, "splits": [0.8, 0.1, 0.1], "num_chars": 5000}


def test_unknown_data_option_names_the_accepted_options(tiny):
    """A typo in data.options fails at config time with the data set's options."""
    with pytest.raises(ConfigError, match="blocksize.*block_size"):
        build_config("oneshot", overrides={**tiny, "data.dataset": "tinytext",
                                           "data.options": {"blocksize": 8}})  # fmt: skip
    with pytest.raises(ConfigError, match="digits.*no options"):
        build_config("oneshot", overrides={**tiny, "data.options": {"block_size": 8}})


def test_text_path_and_tokenizer_path_are_frozen_absolute(tmp_path, tiny, monkeypatch):
    """A resume from another folder must read the same text and tokenizer."""
    monkeypatch.chdir(tmp_path)
    Path("corpus.txt").write_text("hello " * 100)
    Path("tok.json").write_text("{}")
    options = {"tokenizer": "tok.json"}
    overrides = {**tiny, "data.dataset": "text:corpus.txt", "data.options": options}
    config = build_config("oneshot", overrides=overrides)
    assert config.data.dataset == f"text:{tmp_path / 'corpus.txt'}"
    assert config.data.options["tokenizer"] == str(tmp_path / "tok.json")
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").data == config.data


def test_missing_text_path_is_a_config_error_before_any_work(tmp_path, tiny):
    """Like a missing checkpoint: refused while building the config."""
    with pytest.raises(ConfigError, match="does not exist"):
        build_config("oneshot", overrides={**tiny, "data.dataset": f"text:{tmp_path / 'no.txt'}"})


def test_hf_model_lends_its_folder_as_the_default_tokenizer(tmp_path, tiny, monkeypatch):
    """hf:<folder> without a tokenizer option tokenizes with that folder; bytes otherwise."""
    import sfpk.config.core as config_module

    monkeypatch.setattr(config_module, "check_model", lambda name: None)  # hf: lands elsewhere
    folder = tmp_path / "gpt"
    folder.mkdir()
    base = {**tiny, "data.dataset": "tinytext"}
    config = build_config("oneshot", overrides={**base, "model.name": f"hf:{folder}"})
    assert config.data.options == {"tokenizer": str(folder)}
    given = {**base, "model.name": f"hf:{folder}", "data.options": {"tokenizer": "bytes"}}
    assert build_config("oneshot", overrides=given).data.options == {"tokenizer": "bytes"}
    assert build_config("oneshot", overrides=base).data.options == {}


def test_tuple_data_options_are_saved_as_yaml_lists(tmp_path, tiny):
    """config.yaml must load back: an API caller's tuple becomes a list."""
    overrides = {**tiny, "data.dataset": "tinytext", "data.options": {"splits": (0.8, 0.1, 0.1)}}
    config = build_config("oneshot", overrides=overrides)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").data.options == {"splits": [0.8, 0.1, 0.1]}
