"""The sfpk command: exit codes, one-line errors, listings, and a full oneshot run."""

from __future__ import annotations

import json

import pytest

import sfpk
from conftest import TINY_DENSE_FLAGS, TINY_FLAGS, without_pretrain
from sfpk.cli import COMMANDS, build_parser, main

BAD_INPUTS = [
    (["--method", "magnitude"], "unknown method"),
    (["--model", "resnet21"], "unknown model"),
    (["--data", "mnist"], "unknown data set"),
    (["--sparsity", "1.2"], "sparsity"),
    (["--sparsity", "0"], "sparsity"),
    (["--checkpoint", "/no/such.safetensors"], "does not exist"),
    (["--data-dir", "/no/such/dir"], "not a directory"),
    (["--option", "bogus=1"], "bogus"),
]


@pytest.mark.parametrize(("flags", "match"), BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_before_any_work(tmp_path, capsys, flags, match):
    """Invalid settings fail fast with `sfpk: error: ...`, status 2, no traceback, no run dir."""
    out = tmp_path / "run"
    status = main(["oneshot", *TINY_FLAGS, "--method", "mag", *flags, "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("sfpk: error:") and match in err and err.count("\n") == 1
    assert not out.exists()


def test_unknown_yaml_key_exit_2(tmp_path, capsys):
    """A typo in a recipe is reported with the key's close match."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epoch: 3\n")
    assert main(["oneshot", "--config", str(recipe), "--out", str(tmp_path / "o")]) == 2
    assert "train.epochs" in capsys.readouterr().err


def test_existing_run_dir_is_not_overwritten(tmp_path, capsys):
    """Starting over an existing run needs --overwrite; the error points to `sfpk resume`."""
    out = tmp_path / "run"
    assert main(["pretrain", *TINY_DENSE_FLAGS, "--pretrain-epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["pretrain", *TINY_DENSE_FLAGS, "--pretrain-epochs", "1", "--out", str(out)]) == 2
    assert "sfpk resume" in capsys.readouterr().err
    status = main(
        ["pretrain", *TINY_DENSE_FLAGS, "--pretrain-epochs", "1", "--overwrite", "--out", str(out)]
    )
    assert status == 0


def test_oneshot_prints_table_and_writes_summary(tmp_path, capsys):
    """`sfpk oneshot ... --method mag --out DIR` pretrains, prunes, fine-tunes and reports."""
    out = tmp_path / "run"
    assert main(["oneshot", *TINY_FLAGS, "--method", "mag", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for label in ("dense test acc", "pruned test acc", "final test acc", "sparsity", "seconds"):
        assert label in table
    summary = json.loads((out / "summary.json").read_text())
    assert f"{100 * summary['final_test_acc']:.2f} %" in table


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("methods", sfpk.methods()),
        ("models", ["mlp", "cnn1d"]),
        ("datasets", ["mnist1d", "digits"]),
    ],
)
def test_listings(capsys, name, expected):
    """`sfpk methods|models|datasets` list every registered name."""
    assert main([name]) == 0
    out = capsys.readouterr().out
    assert all(item in out for item in expected)


def test_methods_lists_options(capsys):
    """`sfpk methods` shows each method's options with defaults (e.g. snip batches = 10)."""
    main(["methods"])
    assert "batches = 10" in capsys.readouterr().out


def test_demo_flag_is_documented_in_help():
    """--demo's preset is described in --help, as `make demo` relies on it."""
    help_text = build_parser()._subparsers._group_actions[0].choices["oneshot"].format_help()
    assert "--demo" in help_text and "particles" in help_text


def test_subcommand_registry_has_every_command():
    """The registry is the one place subcommands are added (the report command plugs in here)."""
    assert {"pretrain", "oneshot", "iterative", "resume", "methods", "models", "datasets"} <= set(
        COMMANDS
    )


def test_relative_run_directory_works(tmp_path, monkeypatch):
    """`--out runs/x` (relative, as in `make demo`) keeps every file inside that directory."""
    monkeypatch.chdir(tmp_path)
    assert main(["oneshot", *TINY_FLAGS, "--method", "mag", "--out", "runs/x"]) == 0
    run = tmp_path / "runs" / "x"
    assert (run / "summary.json").is_file() and (run / "model.safetensors").is_file()
    assert not (run / "runs").exists()


def test_invalid_model_option_value_is_one_line_error(tmp_path, capsys):
    """A model option of the wrong type (`hidden=-5`) is a one-line error, not a traceback."""
    flags = [*TINY_FLAGS, "--model-option", "hidden=-5", "--method", "mag"]
    assert main(["oneshot", *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfpk: error:") and "hidden" in err and err.count("\n") == 1


@pytest.mark.parametrize("where", ["file", "below_file"])
def test_run_directory_on_a_file_is_one_line_error(tmp_path, capsys, where):
    """`--out` naming a file (or a path below one) fails with `sfpk: error:`, not OSError."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if where == "file" else blocker / "run"
    assert main(["pretrain", *TINY_DENSE_FLAGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfpk: error:") and err.count("\n") == 1
    assert blocker.read_text() == "x"


def test_resume_with_changed_model_is_one_line_error(tmp_path, capsys):
    """A config.yaml edited to another model cannot load the checkpoint: clear error, exit 2."""
    out = tmp_path / "run"
    assert main(["pretrain", *TINY_DENSE_FLAGS, "--pretrain-epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    config = out / "config.yaml"
    config.write_text(config.read_text().replace("hidden:\n    - 32", "hidden:\n    - 16"))
    assert main(["resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfpk: error:") and "checkpoint" in err and err.count("\n") == 1


def test_resume_from_another_directory_finds_relative_checkpoint(tmp_path, monkeypatch, capsys):
    """A relative --checkpoint is stored absolute, so `sfpk resume` works from any directory."""
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", *TINY_DENSE_FLAGS, "--pretrain-epochs", "1", "--out", "dense"]) == 0
    flags = [
        *without_pretrain(TINY_FLAGS),
        "--method",
        "mag",
        "--checkpoint",
        "dense/model.safetensors",
    ]
    assert main(["oneshot", *flags, "--out", "run"]) == 0
    first = json.loads((tmp_path / "run" / "summary.json").read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 0
    again = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert again["dense_test_acc"] == first["dense_test_acc"]


def test_report_mixes_dense_and_pruned_runs(tmp_path, capsys):
    """`sfpk report` on a pretrain run plus pruned runs lists the dense one as its own row."""
    dense, pruned = tmp_path / "dense", tmp_path / "pruned"
    assert main(["pretrain", *TINY_DENSE_FLAGS, "--pretrain-epochs", "1", "--out", str(dense)]) == 0
    dense_weights = str(dense / "model.safetensors")
    flags = [*without_pretrain(TINY_FLAGS), "--method", "mag", "--checkpoint", dense_weights]
    assert main(["oneshot", *flags, "--out", str(pruned)]) == 0
    capsys.readouterr()
    assert main(["report", str(dense), str(pruned), "-o", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "report.md").read_text().splitlines()[2:]
    assert len(table) == 2
    assert any("| dense | 0.0000 |" in row for row in table)


def test_report_into_a_file_is_one_line_error(tmp_path, capsys):
    """`sfpk report -o FILE` names the problem on one line instead of raising OSError."""
    run = tmp_path / "run"
    assert main(["pretrain", *TINY_DENSE_FLAGS, "--pretrain-epochs", "1", "--out", str(run)]) == 0
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    capsys.readouterr()
    assert main(["report", str(run), "-o", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sfpk: error:") and err.count("\n") == 1


def test_run_refused_before_any_checkpoint_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """A run that fails before its first checkpoint can be rerun as is, without --overwrite."""
    monkeypatch.delenv("SFPK_DATA", raising=False)
    out = tmp_path / "run"
    flags = ["oneshot", *TINY_FLAGS, "--data", "cifar10", "--data-dir", str(tmp_path)]
    assert main([*flags, "--out", str(out)]) == 2
    assert "cifar-10-batches-py" in capsys.readouterr().err
    assert not out.exists()
    assert main([*flags, "--out", str(out)]) == 2  # the same error again, not "already exists"
    assert "already exists" not in capsys.readouterr().err
