"""Every bad input of docs/reliability.md gets its one clear error, before any work is lost.

Each row of the table is one test. A command-line row runs ``sfpk`` in-process (the import
costs ~2 s per subprocess; a few rows also run as real subprocesses below) and checks exit
status 2, exactly one line on stderr starting with ``sfpk: error:``, no traceback, the
documented message, and that no run folder is left behind (or, for a failure after the
start, that the folder is marked failed). An API row checks the exception type and message.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import sfpk
from cli_runs import run_env
from conftest import TINY_DENSE_FLAGS, tiny_flags, without_pretrain
from helpers import model_and_batches
from sfpk.cli import main
from sfpk.errors import (
    ConfigError,
    DataMismatchError,
    NonFiniteError,
    SfpkError,
    UnknownNameError,
)
from sfpk.pruners.particles import ParticleOptions, SfpkPruner

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
SFPK = ["--method", "sfpk", "--option", "num_steps=2", "--option", "num_particles=2"]


@dataclass(frozen=True)
class CliRow:
    """One bad command line: ``args`` follow the subcommand and the tiny flags; ``{tmp}`` is
    the test's folder and ``{out}`` the run folder; ``setup(tmp)`` prepares files."""

    id: str
    command: str
    args: list[str]
    match: str
    setup: Callable[[Path], None] | None = None
    base: bool = True  # add the tiny flags and --out
    extra: list[str] = field(default_factory=list)


def _existing_run(tmp: Path) -> None:
    out = tmp / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("pipeline: pretrain\n")
    (out / "checkpoints" / "ckpt-000000").mkdir()


def _file_at_out(tmp: Path) -> None:
    (tmp / "run").write_text("x")


def _nan_weights(tmp: Path) -> None:
    model = sfpk.models.create("mlp", num_classes=10, input_shape=(64,), hidden=[32])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.weight" if "0.weight" in state else next(iter(state))].view(-1)[0] = float("nan")
    save_file(state, str(tmp / "dense.safetensors"))


def _dense_weights(tmp: Path) -> None:
    model = sfpk.models.create("mlp", num_classes=10, input_shape=(64,), hidden=[32])
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "dense.safetensors")
    )


def _yaml(text: str) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        (tmp / "recipe.yaml").write_text(text)

    return write


def _run_folder(kind: str) -> Callable[[Path], None]:
    """A run folder damaged in one way (for `sfpk resume`)."""

    def make(tmp: Path) -> None:
        out = tmp / "run"
        dense = ["pretrain", *TINY_DENSE_FLAGS, "--pretrain-epochs", "1"]
        assert main([*dense, "--out", str(out)]) == 0
        if kind == "empty-latest":
            (out / "checkpoints" / "LATEST").write_text("")
        elif kind == "dangling-latest":
            (out / "checkpoints" / "LATEST").write_text("ckpt-000042\n")
        elif kind == "failed-early":
            for path in (out / "checkpoints").iterdir():
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            (out / "status.json").write_text(
                json.dumps({"status": "failed", "error": "boom", "last_checkpoint": None})
            )
        else:
            raise ValueError(kind)

    return make


CLI_ROWS = [
    # -- method options: type, integer, finite, range, internal plumbing -----------------
    CliRow("option-text-for-int", "oneshot", [*SFPK, "--option", "num_steps=abc"],
           r"sfpk option num_steps='abc' must be an integer, not str"),
    CliRow("option-fraction-for-int", "oneshot", [*SFPK, "--option", "num_steps=2.5"],
           r"sfpk option num_steps=2.5 must be an integer \(a whole number\)"),
    CliRow("option-fractional-particles", "oneshot", [*SFPK, "--option", "num_particles=1.5"],
           r"sfpk option num_particles=1.5 must be an integer"),
    CliRow("option-infinite", "oneshot", [*SFPK, "--option", "radius_ratio=.inf"],
           r"sfpk option radius_ratio=inf must be a finite number"),
    CliRow("option-nan-text", "oneshot", [*SFPK, "--option", "repulsion_weight=nan"],
           r"sfpk option repulsion_weight='nan' must be a number, not str"),
    CliRow("option-yaml-nan", "oneshot", [*SFPK, "--option", "momentum=.nan"],
           r"sfpk option momentum=nan must be a finite number"),
    CliRow("option-bool-for-int", "oneshot", [*SFPK, "--option", "num_steps=true"],
           r"sfpk option num_steps=True must be an integer, not bool"),
    CliRow("option-out-of-range", "oneshot", [*SFPK, "--option", "radius_ratio=0.5"],
           r"radius_ratio=0.5 must be > 1"),
    CliRow("option-unknown", "oneshot", ["--option", "num_step=3"],
           r"method 'mag' has no option\(s\) num_step; its options are: \(none\)"),
    CliRow("option-internal-distributed", "oneshot", [*SFPK, "--option", "distributed=true"],
           r"method 'sfpk' has no option\(s\) distributed"),
    CliRow("option-internal-trace", "oneshot", [*SFPK, "--option", "trace_callback=1"],
           r"has no option\(s\) trace_callback"),
    CliRow("option-internal-resume", "oneshot", [*SFPK, "--option", "resume_state=1"],
           r"has no option\(s\) resume_state"),
    CliRow("option-not-key-value", "oneshot", ["--option", "num_steps"],
           r"'num_steps' must look like KEY=VALUE"),
    CliRow("option-yaml-text-for-int", "oneshot",
           ["--method", "sfpk", "--config", "{tmp}/recipe.yaml"],
           r"sfpk option num_steps='abc' must be an integer",
           setup=_yaml("prune:\n  options:\n    num_steps: abc\n")),
    # -- model options ---------------------------------------------------------------------
    CliRow("model-negative-width", "oneshot", ["--model-option", "hidden=[-5]"],
           r"model 'mlp' cannot be built with options .*-5"),
    CliRow("model-unknown-option", "oneshot", ["--model-option", "depth=3"],
           r"model 'mlp' got unknown option\(s\) depth"),
    CliRow("model-width-text", "oneshot", ["--model-option", "hidden=wide"],
           r"model option hidden='wide' must be a list"),
    CliRow("model-width-fraction", "oneshot", ["--model-option", "hidden=[2.5]"],
           r"model option hidden\[0\]=2.5 must be an integer"),
    # -- config fields ---------------------------------------------------------------------
    CliRow("seed-too-large", "oneshot", ["--seed", "99999999999999999999"],
           r"run.seed=99999999999999999999 must be <= 9223372036854775807"),
    CliRow("seed-negative", "oneshot", ["--seed", "-1"], r"run.seed=-1 must be >= 0"),
    CliRow("seed-text", "oneshot", ["--seed", "abc"], r"argument --seed: invalid int value"),
    CliRow("sparsity-above-one", "oneshot", ["--sparsity", "1.5"],
           r"prune.sparsity=1.5 must be in \(0, 1\)"),
    CliRow("sparsity-nan", "oneshot", ["--sparsity", "nan"],
           r"prune.sparsity=nan must be a finite number"),
    CliRow("sparsity-zero", "oneshot", ["--sparsity", "0"], r"prune.sparsity=0.0 must be in"),
    CliRow("lr-infinite", "oneshot", ["--lr", "inf"], r"train.lr=inf must be a finite number"),
    CliRow("lr-negative", "oneshot", ["--lr", "-0.1"], r"train.lr=-0.1 must be > 0"),
    CliRow("epochs-fraction", "oneshot", ["--epochs", "2.5"],
           r"argument --epochs: invalid int value: '2.5'"),
    CliRow("yaml-epochs-fraction", "oneshot", ["--config", "{tmp}/recipe.yaml"],
           r"train.fixed_lr_epochs=2.5 must be an integer",
           setup=_yaml("train:\n  fixed_lr_epochs: 2.5\n")),
    CliRow("yaml-lr-text", "oneshot", ["--config", "{tmp}/recipe.yaml"],
           r"train.lr='fast' must be a number", setup=_yaml("train:\n  lr: fast\n")),
    CliRow("yaml-unknown-key", "oneshot", ["--config", "{tmp}/recipe.yaml"],
           r"unknown config key 'train.learning_rate'",
           setup=_yaml("train:\n  learning_rate: 0.1\n")),
    CliRow("yaml-missing", "oneshot", ["--config", "{tmp}/nope.yaml"], r"does not exist"),
    CliRow("batch-size-zero", "oneshot", ["--prune-batch-size", "0"],
           r"prune.batch_size=0 must be >= 1"),
    CliRow("checkpoint-every-negative", "oneshot", ["--checkpoint-every-steps", "-1"],
           r"run.checkpoint_every_steps=-1 must be >= 0"),
    CliRow("val-fraction-one", "oneshot", ["--val-fraction", "1.0"],
           r"data.val_fraction=1.0 must be in \(0, 1\)"),
    CliRow("warmup-longer-than-epochs", "oneshot", ["--warmup-epochs", "5", "--epochs", "2"],
           r"must not exceed train.epochs = 2 .*--warmup-epochs 2 or fewer"),
    CliRow("round-epochs-count", "iterative",
           ["--method", "rand", "--rounds", "3", "--round-epochs", "1,2,3"],
           r"train.round_epochs has 3 entries; with prune.rounds=3 give 2"),
    # -- names -----------------------------------------------------------------------------
    CliRow("unknown-method", "oneshot", ["--method", "sfkp"],
           r"unknown method 'sfkp'.*Did you mean sfpk"),
    CliRow("unknown-model", "oneshot", ["--model", "resnet21"], r"unknown model 'resnet21'"),
    CliRow("unknown-dataset", "oneshot", ["--data", "cifar1000"], r"unknown data set"),
    CliRow("unknown-scope", "oneshot", ["--scope", "globl"], r"unknown prune.scope 'globl'"),
    CliRow("bad-structure", "oneshot", ["--structure", "4:2"], r"structure"),
    CliRow("unknown-guard", "oneshot", ["--collapse-guard", "rows"],
           r"unknown prune.collapse_guard 'rows'"),
    CliRow("nm-sparsity-mismatch", "oneshot", ["--structure", "2:4"],
           r"structure='2:4' removes 0.5 of the masked weights; sparsity=0.9 differs"),
    CliRow("round-to-zero", "oneshot", ["--structure", "filter", "--round-to", "0"],
           r"prune.round_to=0 must be >= 1"),
    CliRow("round-to-fraction", "oneshot", ["--structure", "filter", "--round-to", "2.5"],
           r"argument --round-to: invalid int value: '2.5'"),
    CliRow("yaml-round-to-text", "oneshot", ["--config", "{tmp}/recipe.yaml"],
           r"prune.round_to='16' must be an integer, not str",
           setup=_yaml("prune:\n  structure: filter\n  round_to: '16'\n")),
    CliRow("round-to-unstructured", "oneshot", ["--round-to", "16"],
           r"prune.round_to=16 .* needs structure filter, channel, coupled, not "
           r"structure='unstructured'"),
    CliRow("round-to-out-of-reach", "oneshot", ["--structure", "filter", "--round-to", "32"],
           r"sparsity=0.9 is out of reach with round_to=32: no block has more than 32 "
           r"filters.*\(round_to=2 reaches it\)"),
    # -- patterns that match nothing -------------------------------------------------------
    CliRow("exclude-everything", "oneshot", ["--exclude", "*"],
           r"no prunable parameters"),
    CliRow("exclude-matches-nothing", "oneshot", ["--exclude", "nosuch*"],
           r"nosuch\*.*matches no"),
    # -- flags with no effect --------------------------------------------------------------
    CliRow("round-epochs-in-oneshot", "oneshot", ["--round-epochs", "3"],
           r"--round-epochs has no effect in `sfpk oneshot` \(read by: iterative\)"),
    CliRow("method-in-pretrain", "pretrain", ["--method", "mag"],
           r"--method has no effect in `sfpk pretrain`"),
    CliRow("epochs-in-pretrain", "pretrain", ["--epochs", "3"],
           r"--epochs has no effect in `sfpk pretrain`.*did you mean --pretrain-epochs"),
    CliRow("warmup-in-iterative", "iterative", ["--warmup-epochs", "2"],
           r"--warmup-epochs has no effect in `sfpk iterative` \(read by: oneshot\)"),
    CliRow("pretrain-flag-with-checkpoint", "oneshot",
           ["--checkpoint", "{tmp}/dense.safetensors", "--pretrain-epochs", "3"],
           r"--pretrain-epochs has no effect with --checkpoint", setup=_dense_weights),
    # -- files and folders -----------------------------------------------------------------
    CliRow("checkpoint-missing", "oneshot", ["--checkpoint", "{tmp}/nope.safetensors"],
           r"model.checkpoint=.*nope.safetensors' does not exist"),
    CliRow("checkpoint-with-nan", "oneshot", ["--checkpoint", "{tmp}/dense.safetensors"],
           r"model.checkpoint .*dense.safetensors: '1.weight' holds 1 non-finite value",
           setup=_nan_weights),
    CliRow("data-dir-missing", "oneshot", ["--data", "cifar10", "--data-dir", "{tmp}/nope"],
           r"data.data_dir=.*is not a directory"),
    CliRow("out-is-a-file", "oneshot", [], r"is a file, not a folder", setup=_file_at_out),
    CliRow("out-holds-a-run", "oneshot", [],
           r"already exists; continue it with `sfpk resume .*` or pass --overwrite",
           setup=_existing_run),
    CliRow("resume-not-a-run", "resume", ["{tmp}"], r"is not a run directory", base=False),
    CliRow("resume-empty-latest", "resume", ["{tmp}/run"],
           r"LATEST' is empty; checkpoints in that folder: ckpt-000000, ckpt-000001", base=False,
           setup=_run_folder("empty-latest")),
    CliRow("resume-dangling-latest", "resume", ["{tmp}/run"],
           r"ckpt-000042.*does not exist; checkpoints in that folder", base=False,
           setup=_run_folder("dangling-latest")),
    CliRow("resume-failed-before-checkpoint", "resume", ["{tmp}/run"],
           r"failed before its first checkpoint, so there is nothing to resume: boom",
           base=False, setup=_run_folder("failed-early")),
]  # fmt: skip


def _argv(row: CliRow, tmp: Path) -> list[str]:
    out = tmp / "run"
    args = [a.replace("{tmp}", str(tmp)).replace("{out}", str(out)) for a in row.args]
    if not row.base:
        return [row.command, *args]
    base = _base_flags(row.command)
    if "--checkpoint" in args:  # a run from weights refuses the pretraining flags
        base = without_pretrain(base)
    return [row.command, *base, *args, "--out", str(out)]


def _base_flags(command: str) -> list[str]:
    """The tiny flags the command accepts; rows that set --method override mag's."""
    return tiny_flags(command) + (["--method", "mag"] if command == "oneshot" else [])


def _assert_one_line_error(status: int, err: str, match: str) -> None:
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sfpk: error: "), err
    assert re.search(match, lines[0]), lines[0]


def _assert_no_new_run(tmp: Path, row: CliRow) -> None:
    if row.setup is None and row.base:  # (a setup made the folder or file itself)
        assert not (tmp / "run").exists()  # refused before the run folder was created


@pytest.mark.parametrize("row", CLI_ROWS, ids=[r.id for r in CLI_ROWS])
def test_bad_command_line_gets_one_clear_line_and_no_folder(tmp_path, capsys, row):
    """The documented message, exit 2, one line, no traceback, nothing left to block a rerun."""
    if row.setup is not None:
        row.setup(tmp_path)
        capsys.readouterr()
    status = main(_argv(row, tmp_path))
    _assert_one_line_error(status, capsys.readouterr().err, row.match)
    _assert_no_new_run(tmp_path, row)


# -- API rows ------------------------------------------------------------------------------


def _mlp() -> tuple[nn.Module, list]:
    return model_and_batches("mlp")


def _nan_weight_model():
    model, data = _mlp()
    with torch.no_grad():
        next(model.parameters()).view(-1)[3] = float("nan")
    return model, data


def _nan_inputs(value: float):
    model, data = _mlp()
    (x, y), *rest = data
    x = x.clone()
    x.view(-1)[0] = value
    return model, [(x, y), *rest]


def _meta_model():
    _, data = _mlp()
    with torch.device("meta"):
        model = nn.Sequential(nn.Flatten(), nn.Linear(data[0][0][0].numel(), 10))
    return model, data


def _int_model():
    _, data = _mlp()
    model = nn.Sequential(nn.Flatten(), nn.Linear(data[0][0][0].numel(), 10))
    model[1].weight = nn.Parameter(torch.ones(10, data[0][0][0].numel(), dtype=torch.int32),
                                   requires_grad=False)  # fmt: skip
    return model, data


def _unfitting(features: int = 8, targets: torch.Tensor | None = None):
    """The issue's 8 -> 16 -> 3 MLP with one batch of 16 (``features`` inputs each)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    y = torch.randint(0, 3, (16,)) if targets is None else targets
    return model, [(torch.randn(16, features), y)]


def _lm_unshifted():
    """A tiny causal LM and ``(tokens, tokens)`` batches, for the default loss."""
    torch.manual_seed(0)
    model = sfpk.models.create("gpt_tiny", num_classes=64, input_shape=(16,))
    tokens = torch.randint(0, 64, (4, 16))
    return model, [(tokens, tokens)]


@dataclass(frozen=True)
class ApiRow:
    """One bad API call: ``call()`` raises ``error`` with a message matching ``match``."""

    id: str
    call: Callable[[], object]
    error: type[Exception]
    match: str


def _prune(make=_mlp, **kwargs):
    def call():
        model, data = make()
        return sfpk.prune(model, data, **{"method": "mag", "sparsity": 0.5, **kwargs})

    return call


_SFPK = {"method": "sfpk", "num_steps": 2, "num_particles": 2}


def _mlp_head() -> str:
    """The module name of the last Linear of :func:`_mlp`'s model (its classifier)."""
    model, _ = _mlp()
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


API_ROWS = [
    ApiRow("api-sparsity-string", _prune(sparsity="0.5"), ConfigError,
           r"sparsity='0.5' must be a finite number in \(0, 1\)"),
    ApiRow("api-sparsity-bool", _prune(sparsity=True), ConfigError, r"sparsity=True"),
    ApiRow("api-option-fraction", _prune(**{**_SFPK, "num_steps": 2.5}), ConfigError,
           r"sfpk option num_steps=2.5 must be an integer"),
    ApiRow("api-option-string", _prune(**{**_SFPK, "momentum": "0.1"}), ConfigError,
           r"sfpk option momentum='0.1' must be a number, not str"),
    ApiRow("api-option-internal", _prune(**{**_SFPK, "resume_state": {}}), ConfigError,
           r"has no option\(s\) resume_state"),
    ApiRow("api-options-built-directly", lambda: SfpkPruner(ParticleOptions(num_steps=2.5)),
           ConfigError, r"num_steps=2.5 must be an integer"),
    ApiRow("api-seed-negative", _prune(seed=-1), ConfigError, r"seed=-1 must be in \[0, 2\*\*63"),
    ApiRow("api-seed-fraction", _prune(seed=1.5), ConfigError, r"seed=1.5 must be an integer"),
    ApiRow("api-scope-number", _prune(scope=1), UnknownNameError, r"unknown scope 1"),
    ApiRow("api-exclude-nothing", _prune(exclude=["nosuch.*"]), ConfigError, r"nosuch"),
    ApiRow("api-nan-weight", _prune(_nan_weight_model), NonFiniteError,
           r"model weights: '.*weight' holds 1 non-finite value"),
    ApiRow("api-nan-input-sfpk", _prune(lambda: _nan_inputs(float("nan")), **_SFPK),
           NonFiniteError, r"step 0: the energy \(loss\) of particle\(s\) \[0\] is nan"),
    ApiRow("api-inf-input-spode",
           _prune(lambda: _nan_inputs(float("inf")), method="spode", num_steps=2),
           NonFiniteError, r"step 0: the energy \(loss\) of particle\(s\) \[0\]"),
    ApiRow("api-nan-input-snip", _prune(lambda: _nan_inputs(float("nan")), method="snip"),
           SfpkError, r"pruning scores contain NaN"),
    ApiRow("api-meta-model", _prune(_meta_model), ConfigError, r"is on the 'meta' device"),
    ApiRow("api-integer-weights", _prune(_int_model), ConfigError,
           r"has dtype torch.int32; pruning needs floating-point weights"),
    ApiRow("api-filter-no-data", lambda: sfpk.prune(_mlp()[0], None, method="mag",
           sparsity=0.5, structure="filter"), ConfigError,
           r"structure='filter' with protect_output=True .* the data has none; pass a batch"),
    ApiRow("api-filter-only-output-layer",
           _prune(structure="filter", include=[f"{_mlp_head()}.weight"]), ConfigError,
           r"every prunable parameter .* belongs to the layer\(s\) producing the model's"),
    ApiRow("api-protect-output-text", _prune(protect_output="no"), ConfigError,
           r"protect_output='no' must be True or False"),
    ApiRow("api-round-to-bool", _prune(structure="filter", round_to=True), ConfigError,
           r"round_to=True must be an integer, not bool"),
    ApiRow("api-round-to-fraction", _prune(structure="filter", round_to=2.5), ConfigError,
           r"round_to=2.5 must be an integer \(a whole number\)"),
    ApiRow("api-round-to-negative", _prune(structure="filter", round_to=-3), ConfigError,
           r"round_to=-3 must be >= 1 \(None or 1: no rounding\)"),
    ApiRow("api-round-to-unstructured", _prune(round_to=4), ConfigError,
           r"round_to=4 .* needs structure filter, channel, coupled, not "
           r"structure='unstructured'"),
    ApiRow("api-round-to-out-of-reach", _prune(structure="filter", round_to=64), ConfigError,
           r"sparsity=0.5 is out of reach with round_to=64: no block has more than 64 "
           r"filters.*\(round_to=4 reaches it\)"),
    ApiRow("api-data-does-not-fit", _prune(lambda: _unfitting(features=5), method="snip"),
           DataMismatchError,
           r"^the model's forward failed on the first batch of the pruning data \(inputs "
           r"float32 \[16, 5\], targets int64 \[16\]\): RuntimeError: mat1 and mat2 shapes "
           r"cannot be multiplied \(16x5 and 8x16\); pass `data` whose inputs the model takes$"),
    ApiRow("api-targets-out-of-range",
           _prune(lambda: _unfitting(targets=torch.full((16,), 7)), method="snip"),
           DataMismatchError,
           r"hold values in \[7, 7\], 16 of 16 outside \[0, 3\): the model's output has C=3 "
           r"classes; pass `data` whose targets are in \[0, 3\)"),
    ApiRow("api-lm-default-loss", _prune(_lm_unshifted, **_SFPK), DataMismatchError,
           r"output float32 \[4, 16, 64\]\) looks like a language model's .* pass "
           r"loss_fn=sfpk.losses.next_token_loss; the targets equal the inputs"),
]  # fmt: skip


@pytest.mark.parametrize("row", API_ROWS, ids=[r.id for r in API_ROWS])
def test_bad_api_call_raises_the_documented_error(row):
    """The API names the bad value on one line, with an sfpk error type."""
    with pytest.raises(row.error, match=row.match) as info:
        row.call()
    assert isinstance(info.value, SfpkError)
    assert "\n" not in str(info.value)


def test_every_row_is_in_docs_and_every_doc_row_is_tested():
    """docs/reliability.md and these tests list the same rows (at least 40)."""
    text = DOC.read_text()
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.M))
    tested = {r.id for r in CLI_ROWS} | {r.id for r in API_ROWS}
    assert documented == tested
    assert len(tested) >= 40


# -- a few rows as real subprocesses (what a user's shell sees) ----------------------------

SUBPROCESS_ROWS = ["option-fraction-for-int", "round-epochs-in-oneshot", "seed-text"]


@pytest.mark.parametrize("row_id", SUBPROCESS_ROWS)
def test_bad_command_line_in_a_real_process(tmp_path, row_id):
    """`python -m sfpk ...`: exit 2, one stderr line, no traceback, no folder."""
    row = next(r for r in CLI_ROWS if r.id == row_id)
    done = subprocess.run(
        [sys.executable, "-m", "sfpk", *_argv(row, tmp_path)],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=300,  # against a hang only
    )
    _assert_one_line_error(done.returncode, done.stderr, row.match)
    assert not (tmp_path / "run").exists()
