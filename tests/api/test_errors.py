"""Clear errors: every bad name, value, pattern or file gets an sfpk error saying what is wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sfpk
from helpers import conv_bn_net, mlp, model_and_batches, nested_net
from sfpk.errors import (
    NonFiniteError,
    bounds,
    check_bounds,
    check_choice,
    check_fields,
    check_fraction,
    check_number,
    check_positive,
    coerce,
    resolve_fields,
)


def test_error_hierarchy():
    """Callers can catch SfpkError for everything, or ValueError/KeyError as Python expects."""
    assert issubclass(sfpk.ConfigError, ValueError) and issubclass(sfpk.ConfigError, sfpk.SfpkError)
    assert issubclass(sfpk.UnknownNameError, sfpk.ConfigError)
    assert issubclass(sfpk.UnknownNameError, KeyError)
    assert issubclass(sfpk.MaskMismatchError, sfpk.SfpkError)
    assert issubclass(sfpk.CheckpointError, sfpk.SfpkError)


def test_unknown_method_lists_choices_and_suggests_close_match():
    """A typo in the method name must show every choice and the likely intended one."""
    model, data = model_and_batches("mlp")
    with pytest.raises(sfpk.UnknownNameError) as info:
        sfpk.prune(model, data, method="snp", sparsity=0.5)
    message = str(info.value)
    assert "unknown method 'snp'" in message
    assert all(name in message for name in sfpk.methods())
    assert "Did you mean snip" in message
    assert info.value.choices == sfpk.methods()


def test_unknown_method_without_close_match_has_no_hint():
    """The hint appears only when something is actually close."""
    with pytest.raises(sfpk.UnknownNameError) as info:
        sfpk.create_pruner("zzzzzz")
    assert "Did you mean" not in str(info.value)


def test_unknown_option_lists_allowed_options():
    """An option the method lacks names itself and the method's real options."""
    model, data = model_and_batches("mlp")
    with pytest.raises(sfpk.ConfigError, match="no option.*rounds.*batches, train_mode"):
        sfpk.prune(model, data, method="snip", sparsity=0.5, rounds=3)
    with pytest.raises(sfpk.ConfigError, match=r"\(none\)"):
        sfpk.prune(model, data, method="mag", sparsity=0.5, batches=3)


@pytest.mark.parametrize(
    ("option", "value"), [("rounds", 0), ("rounds", -1)], ids=["zero", "negative"]
)
def test_bad_option_value_raises_config_error(option, value):
    """Option values are validated when the method is built, naming the value."""
    with pytest.raises(sfpk.ConfigError, match=f"{option}={value}"):
        sfpk.create_pruner("synflow", **{option: value})


def test_bad_batches_and_temperature_raise():
    """batches and temperature must be positive."""
    with pytest.raises(sfpk.ConfigError, match="batches=0"):
        sfpk.create_pruner("snip", batches=0)
    with pytest.raises(sfpk.ConfigError, match="temperature=0"):
        sfpk.create_pruner("grasp", temperature=0.0)


@pytest.mark.parametrize("sparsity", [0, 1, -0.1, 1.5, "abc", None, float("nan")])
def test_bad_sparsity_raises_config_error_mentioning_range(sparsity):
    """Sparsity outside (0, 1) (or not a number) is rejected with the allowed range."""
    model, data = model_and_batches("mlp")
    with pytest.raises(sfpk.ConfigError, match=r"\(0, 1\)"):
        sfpk.prune(model, data, method="mag", sparsity=sparsity)


def test_unknown_scope_and_structure_list_choices():
    """Scope and structure typos list the valid values."""
    model, data = model_and_batches("mlp")
    with pytest.raises(sfpk.UnknownNameError, match="global, local"):
        sfpk.prune(model, data, method="mag", sparsity=0.5, scope="globl")
    choices = r"channel, coupled, filter, head, head\+neuron, neuron, unstructured"
    with pytest.raises(sfpk.UnknownNameError, match=choices):
        sfpk.prune(model, data, method="mag", sparsity=0.5, structure="filters")


def test_pattern_matching_nothing_raises():
    """A misspelt include/exclude pattern must not silently prune the default set."""
    model, data = model_and_batches("nested")
    with pytest.raises(sfpk.ConfigError, match="'feature.*'"):
        sfpk.prune(model, data, method="mag", sparsity=0.5, include=["feature.*"])
    with pytest.raises(sfpk.ConfigError, match="'fc.weight'"):
        sfpk.prune(model, data, method="mag", sparsity=0.5, exclude=["fc.weight"])


def test_empty_prunable_set_raises():
    """Excluding everything (or a model without conv/linear) is a config error."""
    with pytest.raises(sfpk.ConfigError, match="no prunable parameters"):
        sfpk.prune(mlp(), None, method="mag", sparsity=0.5, exclude=["*"])
    with pytest.raises(sfpk.ConfigError, match="no prunable parameters"):
        sfpk.Masks.ones(nn.Sequential(nn.BatchNorm1d(3)))


def test_synflow_without_data_raises():
    """SynFlow needs one batch for the input shape; no data is a clear error."""
    with pytest.raises(sfpk.ConfigError, match="input shape"):
        sfpk.prune(mlp(), None, method="synflow", sparsity=0.5, rounds=1)


def test_data_driven_method_without_batches_raises():
    """SNIP on an empty loader cannot score; it must say the data yielded nothing."""
    with pytest.raises(sfpk.SfpkError, match="no batch"):
        sfpk.prune(mlp(), [], method="snip", sparsity=0.5, batches=2)


def test_data_not_yielding_pairs_raises():
    """Batches must be (inputs, targets); a bare tensor gets a helpful message."""
    with pytest.raises(sfpk.SfpkError, match=r"\(inputs, targets\) pairs"):
        sfpk.prune(mlp(), [torch.randn(4, 12)], method="snip", sparsity=0.5, batches=1)


def test_mismatched_starting_masks_raise():
    """Passing masks= built for another model names the problem parameter."""
    masks = sfpk.Masks.ones(mlp())
    with pytest.raises(sfpk.MaskMismatchError, match="0.weight"):
        sfpk.prune(nested_net(), None, method="mag", sparsity=0.5, masks=masks)


def test_loading_masks_against_wrong_model_names_parameter(tmp_path):
    """Loading saved masks for a different architecture names the mismatched parameter."""
    path = sfpk.prune(mlp(), None, method="mag", sparsity=0.5).save(tmp_path / "m.safetensors")
    wider = nn.Sequential(
        nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 9), nn.ReLU(), nn.Linear(9, 3)
    )
    with pytest.raises(sfpk.MaskMismatchError, match=r"2\.weight"):
        sfpk.load_masks(path, wider)
    with pytest.raises(sfpk.MaskMismatchError, match=r"does not have: \['2\.weight'\]"):
        sfpk.load_masks(path, conv_bn_net())


def test_loading_missing_mask_file_raises_checkpoint_error(tmp_path):
    """A wrong path says the file does not exist."""
    with pytest.raises(sfpk.CheckpointError, match="does not exist"):
        sfpk.load_masks(tmp_path / "nope.safetensors")


def test_loading_corrupted_mask_file_raises_checkpoint_error(tmp_path):
    """A truncated file is reported as unreadable, not as a low-level exception."""
    path = sfpk.prune(mlp(), None, method="mag", sparsity=0.5).save(tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(sfpk.CheckpointError, match="cannot read"):
        sfpk.load_masks(path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(sfpk.CheckpointError, match="cannot read"):
        sfpk.load_masks(path)


def test_loading_foreign_safetensors_file_raises_checkpoint_error(tmp_path):
    """A valid safetensors file that is not an sfpk mask file is rejected."""
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"0.weight": torch.ones(2, 2)}, str(path), metadata={"other": "1"})
    with pytest.raises(sfpk.CheckpointError, match="cannot read"):
        sfpk.load_masks(path)


def test_validators_name_the_bad_value():
    """The shared validators put the option name and the value in the message."""
    assert check_fraction("sparsity", 0.25) == 0.25
    with pytest.raises(sfpk.ConfigError, match="lr=-1"):
        check_positive("lr", -1)
    assert check_positive("lr", 0, allow_zero=True) == 0
    with pytest.raises(sfpk.ConfigError, match="lr=0 must be > 0"):
        check_positive("lr", 0)
    with pytest.raises(sfpk.UnknownNameError, match="unknown color 'red'; choose one of: blue"):
        check_choice("color", "red", ["blue"])


def test_synflow_names_why_a_token_model_cannot_be_scored():
    """An embedding cannot look up SynFlow's all-ones float input: a ConfigError, not torch's."""
    from torch import nn

    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    data = [(torch.randint(0, 10, (3, 2)), torch.zeros(3, dtype=torch.long))]
    with pytest.raises(sfpk.ConfigError, match="synflow feeds an all-ones"):
        sfpk.prune(model, data, method="synflow", sparsity=0.5, rounds=2)


# -- the validation layer -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "integer", "want"),
    [(3, True, 3), (3.0, True, 3), (1e3, True, 1000), (2.5, False, 2.5), (2, False, 2)],
)
def test_check_number_resolves_integral_values(value, integer, want):
    """An int field takes an integral float as that int (YAML's 1e3); the type comes out right."""
    got = check_number("x", value, integer=integer)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    ("value", "integer", "match"),
    [(2.5, True, "x=2.5 must be an integer \\(a whole number\\)"),
     ("3", True, "x='3' must be an integer, not str"),
     (True, True, "x=True must be an integer, not bool"),
     ("0.5", False, "x='0.5' must be a number, not str"),
     (float("nan"), False, "x=nan must be a finite number"),
     (float("-inf"), True, "x=-inf must be a finite number"),
     (None, False, "x=None must be a number, not NoneType")],
)  # fmt: skip
def test_check_number_refuses_wrong_types_and_non_finite(value, integer, match):
    """Strings, booleans, fractions for ints, NaN and inf are refused, naming the value."""
    with pytest.raises(sfpk.ConfigError, match=match):
        check_number("x", value, integer=integer)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), "1", None])
def test_check_positive_refuses_non_numbers_and_non_finite(value):
    """inf used to pass `> 0`; a string used to raise a raw TypeError."""
    with pytest.raises(sfpk.ConfigError, match="x="):
        check_positive("x", value)


def test_bounds_are_checked_per_item_and_named():
    """Range metadata applies to a value or to each item of a list."""
    meta = bounds(ge=0, lt=10)
    assert check_bounds("x", 3, meta) == 3 and check_bounds("x", [0, 9], meta) == [0, 9]
    with pytest.raises(sfpk.ConfigError, match="x=10 must be < 10"):
        check_bounds("x", 10, meta)
    with pytest.raises(sfpk.ConfigError, match=r"x=\[1, -1\] must be >= 0"):
        check_bounds("x", [1, -1], meta)
    assert check_bounds("x", None, meta) is None


def test_coerce_follows_the_annotation():
    """Optional, list, tuple, Literal, bool and str annotations each get their own check."""
    from typing import Literal

    assert coerce("x", None, int | None) is None
    assert coerce("x", [1.0, 2], list[int]) == [1, 2]
    assert coerce("x", [1, 2], tuple[float, ...]) == (1.0, 2.0)
    assert coerce("x", "a", Literal["a", "b"]) == "a"
    with pytest.raises(sfpk.UnknownNameError, match="unknown x 'c'; choose one of: a, b"):
        coerce("x", "c", Literal["a", "b"])
    with pytest.raises(sfpk.ConfigError, match="x=1 must be true or false"):
        coerce("x", 1, bool)
    with pytest.raises(sfpk.ConfigError, match="x=3 must be a string"):
        coerce("x", 3, str)
    with pytest.raises(sfpk.ConfigError, match="x=3 must be a list"):
        coerce("x", 3, list[int])
    with pytest.raises(sfpk.ConfigError, match=r"x\[1\]=0.5 must be an integer"):
        coerce("x", [1, 0.5], list[int])


def test_check_fields_resolves_a_frozen_dataclass_in_place():
    """A frozen Options instance built directly is checked and its values resolved."""
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Options:
        steps: int = field(default=3, metadata=bounds(ge=1))
        rate: float = 0.5

    options = Options(steps=4.0, rate=1)
    check_fields(options)
    assert type(options.steps) is int and type(options.rate) is float
    with pytest.raises(sfpk.ConfigError, match="p.steps=0 must be >= 1"):
        check_fields(Options(steps=0), prefix="p.")
    assert resolve_fields(Options, {"steps": 2.0}) == {"steps": 2}


def test_non_finite_error_is_an_sfpk_value_error():
    """Callers can catch NaN problems as SfpkError or as ValueError."""
    assert issubclass(NonFiniteError, sfpk.SfpkError) and issubclass(NonFiniteError, ValueError)
