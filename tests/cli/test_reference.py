"""`sfpk reference`: the reference README's command lines map onto sfpk's native config."""

from __future__ import annotations

import json
import math

import pytest

from sfpk.cli.reference import FLAGS, native_command, translate
from sfpk.config.core import build_config
from sfpk.errors import ConfigError

# The reference README's three commands (comments after backslashes removed, as in its scripts).
PRETRAIN = (
    "--exp pretrain --seed 0 --cuda_idx 0 --num_workers 8 --data cifar100 --model resnet20 "
    "--use_init"
).split()
ONESHOT = (
    "--exp oneshot --seed 0 --cuda_idx 0 --num_workers 8 --data cifar100 --model resnet20 "
    "--bsz 64 --prn_epochs 1 --ft_epochs 100 --fixed_lr_epochs 0 --lr 1e-2 --warmup_epochs 5 "
    "--cold_start_lr 1e-4 --sparsity 0.05 --prn_scope global --pruner SFPK --N 100 --r 1.4 "
    "--sfpk_n_mask 10 --sfpk_repl_mode exp --sfpk_repl_lam 0.2 --sfpk_repl_weighted "
    "--sfpk_vote_ratio 1 --sfpk_vote_mode soft"
).split()
ITERATIVE = (
    "--exp iterative --seed 0 --cuda_idx 0 --num_workers 8 --data imagenet --model resnet50v2 "
    "--bsz 256 --prn_epochs 10 --ft_epochs 50 --fixed_lr_epochs 0 --lr 1e-2 --grad_n_accum 8 "
    "--warmup_epochs 5 --cold_start_lr 1e-4 --sparsity 0.05 --prn_scope global --pruner SFPK "
    "--N 150 --r 5.5 --sfpk_n_mask 10 --sfpk_repl_mode exp --sfpk_repl_lam 0.2 "
    "--sfpk_repl_weighted --sfpk_vote_ratio 1 --sfpk_vote_mode soft"
).split()


def test_oneshot_readme_command_maps_every_flag():
    """README one-shot recipe: density 0.05 becomes sparsity 0.95; SFPK knobs become options."""
    t = translate(ONESHOT)
    o = t.overrides
    assert t.pipeline == "oneshot"
    assert o["prune.sparsity"] == pytest.approx(0.95)
    assert o["prune.method"] == "sfpk" and o["prune.scope"] == "global"
    assert o["prune.rounds"] == 1 and o["train.epochs"] == 100 and o["train.batch_size"] == 64
    assert o["train.lr"] == 1e-2 and o["train.warmup_epochs"] == 5
    assert o["train.cold_start_lr"] == 1e-4 and o["train.fixed_lr_epochs"] == 0
    assert o["data.dataset"] == "cifar100" and o["model.name"] == "resnet20"
    assert o["run.seed"] == 0 and o["data.num_workers"] == 8
    assert o["prune.include_bias"] is True
    assert o["prune.protect_output"] is False  # its filter masks cut the class rows
    assert o["prune.options"] == {
        "num_steps": 100,
        "radius_ratio": 1.4,
        "num_particles": 10,
        "repulsion": "exp",
        "repulsion_weight": 0.2,
        "vote_ratio": 1.0,
        "vote": "soft",
        "early_stop": True,
    }


def test_iterative_readme_command_maps_accumulation_and_ignores_warmup():
    """The README's iterative recipe: --grad_n_accum (README spelling) works, warm-up is dropped."""
    t = translate(ITERATIVE)
    o = t.overrides
    assert t.pipeline == "iterative"
    assert o["train.grad_accum_steps"] == 8 and o["prune.rounds"] == 10
    assert o["model.name"] == "resnet50" and o["data.dataset"] == "imagenet"
    assert o["train.warmup_epochs"] == 0 and "train.cold_start_lr" not in o
    assert o["prune.options"]["num_steps"] == 150 and o["prune.options"]["radius_ratio"] == 5.5
    assert any("iterative ignores" in n for n in t.notes)


def test_pretrain_readme_command_maps():
    """The README's pretrain command: --use_init is what pretraining does anyway."""
    t = translate(PRETRAIN)
    assert t.pipeline == "pretrain" and t.overrides["model.name"] == "resnet20"


def test_structured_flag_converts_density_to_channel_sparsity():
    """--structural: local scope and per-layer channel density sqrt(rho), as in the reference."""
    o = translate(["--sparsity", "0.25", "--structural", "--pruner", "Mag"]).overrides
    assert o["prune.structure"] == "channel" and o["prune.scope"] == "local"
    assert o["prune.sparsity"] == pytest.approx(1 - math.sqrt(0.25))
    o = translate(["--sparsity", "0.25", "--structural", "--mask_dim", "0"]).overrides
    assert o["prune.structure"] == "filter"


def test_reference_synflow_is_one_scoring_per_round():
    """The reference's SynFlow schedule is pipeline rounds of one train-mode scoring each."""
    o = translate(["--pruner", "SynFlow", "--prn_epochs", "100", "--sparsity", "0.1"]).overrides
    assert o["prune.rounds"] == 100
    assert o["prune.options"] == {"rounds": 1, "train_mode": True}


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--use_wandb"], ["--use_wandb", "tensorboard"]),
        (["--bogus_flag", "1"], ["--bogus_flag"]),
        (["--pruner", "MagRand"], ["MagRand", "SFPK"]),
        (["--sparsity", "1.5"], ["1.5", "KEPT"]),
        (["--exp", "finetune"], ["finetune", "iterative"]),
        (["--opt", "rms"], ["rms", "adamw"]),
        (["--mask_option", "sign"], ["--mask_option", "one"]),
    ],
)
def test_unsupported_or_bad_flags_are_named(argv, words):
    """A flag sfpk cannot honour is an error naming it, never silently ignored."""
    with pytest.raises(ConfigError) as info:
        translate(argv)
    for word in words:
        assert word in str(info.value)


def test_noop_flags_are_accepted_with_a_note():
    """Flags without effect in the reference are accepted, and the user is told."""
    t = translate(["--lr_drop_rate", "0.1", "--free_bn", "--debug"])
    assert len(t.notes) == 3


def test_free_lastfc_excludes_the_classifier_weight_and_bias():
    """--free_lastfc frees the last linear layer (weight and bias, since biases are pruned)."""
    o = translate(["--model", "resnet20", "--free_lastfc", "--free_conv1"]).overrides
    assert o["prune.exclude"] == ["conv1.weight", "fc.weight", "fc.bias"]


def test_every_table_entry_is_typed():
    """Each reference flag has a parser kind, so the table covers the reference's argparse."""
    assert {"sparsity", "N", "r", "sfpk_n_mask", "n_grad_accum", "grad_n_accum"} <= set(FLAGS)


@pytest.mark.parametrize("argv", [ONESHOT, ITERATIVE])
def test_translation_builds_a_valid_native_config(argv):
    """The translated overrides pass sfpk's own config validation unchanged."""
    t = translate(argv)
    config = build_config(t.pipeline, overrides=t.overrides, check_paths=False)
    assert config.prune.sparsity == pytest.approx(0.95)
    assert config.prune.options["num_particles"] == 10


def test_native_command_round_trips_through_the_cli_parser():
    """The printed native command parses back to the same overrides."""
    from sfpk.cli import build_parser
    from sfpk.cli.flags import overrides_from_args

    t = translate(ONESHOT)
    argv = native_command(t)
    assert argv[:2] == ["sfpk", "oneshot"]
    args = build_parser().parse_args(argv[1:])
    assert overrides_from_args(args) == t.overrides


def test_reference_command_runs_end_to_end_on_embedded_data(tmp_path, capsys):
    """`sfpk reference` with the README one-shot flags (small budgets, digits) runs to the end."""
    from sfpk.cli import main

    small = {
        "--data": "digits",
        "--model": "mlp",
        "--N": "3",
        "--sfpk_n_mask": "2",
        "--ft_epochs": "2",
        "--warmup_epochs": "1",
        "--num_workers": "0",
    }
    argv = list(ONESHOT)
    for flag, value in small.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    argv += ["--pre_epochs", "2", "--out_dir", str(tmp_path / "run")]
    status = main(["reference", *argv])
    out = capsys.readouterr().out
    assert status == 0
    assert "equivalent native command:" in out and "--sparsity 0.95" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "sfpk" and summary["achieved_sparsity"] == pytest.approx(
        0.95, abs=1e-4
    )


def test_reference_dry_run_prints_and_does_not_run(tmp_path, capsys):
    """--dry-run shows the native command without creating the run directory."""
    from sfpk.cli import main

    status = main(["reference", "--dry-run", *ONESHOT, "--out_dir", str(tmp_path / "run")])
    assert status == 0 and not (tmp_path / "run").exists()
    assert "sfpk oneshot" in capsys.readouterr().out


def test_reference_missing_cifar_says_where_to_put_it(tmp_path, capsys, monkeypatch):
    """CIFAR-100 absent: exit 2 and a message naming the expected folder and files."""
    from sfpk.cli import main

    monkeypatch.delenv("SFPK_DATA", raising=False)
    argv = [
        "reference",
        "--exp",
        "oneshot",
        "--data",
        "cifar100",
        "--data_dir",
        str(tmp_path),
        "--out_dir",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cifar-100-python" in err and "never downloads" in err


def test_iterative_readme_command_uses_the_optimizer_and_loss_the_reference_ran():
    """ImageNet iterative: plain SGD, momentum 0, WD 5e-5 (§5.3) and label smoothing 0.1 (§5.2)."""
    o = translate(ITERATIVE).overrides
    assert o["train.momentum"] == 0.0 and o["train.weight_decay"] == 5e-5
    assert o["train.label_smoothing"] == 0.1


def test_iterative_ignores_momentum_and_weight_decay_as_the_reference():
    """The reference's iterative optimizer ignores --momentum/--weight_decay; so does the map."""
    t = translate([*ITERATIVE, "--momentum", "0.9", "--weight_decay", "1e-3"])
    assert t.overrides["train.momentum"] == 0.0 and t.overrides["train.weight_decay"] == 5e-5
    assert any("--momentum" in n and "ignores" in n for n in t.notes)


def test_label_smoothing_applies_to_imagenet_only():
    """The reference smooths labels only on ImageNet: a CIFAR command trains with plain CE."""
    t = translate([*ONESHOT, "--label_smoothing", "0.2"])
    assert "train.label_smoothing" not in t.overrides
    assert any("--label_smoothing" in n for n in t.notes)


def test_model_dir_uses_the_run_data_set_and_model(tmp_path):
    """--model_dir without --data/--model looks for the run's own defaults (cifar100/resnet20)."""
    weights = tmp_path / "pretrained" / "cifar100" / "resnet20.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    t = translate(["--model_dir", str(tmp_path)])
    assert t.overrides["model.checkpoint"] == str(weights)


def test_dry_run_still_validates_values(capsys):
    """A dry run never shows a native command that the real run would refuse."""
    from sfpk.cli import main

    assert main(["reference", "--dry-run", "--N", "-3"]) == 2
    assert "num_steps" in capsys.readouterr().err


def test_reference_translation_does_not_import_the_cli():
    """The translation is independent of the command: reference.py never imports sfpk.cli's
    parser or its commands (only the flag tables beside it)."""
    import ast
    from pathlib import Path

    import sfpk.cli.reference

    tree = ast.parse(Path(sfpk.cli.reference.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported |= {node.module or ""} | {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert not {"cli", "sfpk.cli", "commands", "sfpk.cli.commands"} & imported
    assert "reference_flags" in imported  # the parser saw the module's own imports
