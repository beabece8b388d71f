"""The enum options' one translation between Python names and proto values (options.py)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from smoothexplain import explain, make_spec
from smoothexplain._proto.smoothexplain.v1 import explain_pb2 as pb
from smoothexplain.client.cli import CLI_OPTIONS, build_parser
from smoothexplain.engine.spec import (
    SPEC_OPTIONS,
    IgRule,
    IgSampling,
    Method,
    NoiseKind,
    NoiseSampling,
    NtType,
    Precision,
)
from smoothexplain.protocol.errors import InvalidArgument
from smoothexplain.protocol.options import (
    ENUM_OPTIONS,
    OPTIONS,
    Option,
    enum_from_proto,
    enum_to_proto,
    from_proto,
    to_proto,
)
from smoothexplain.serving.config import parse_config

REPO = Path(__file__).resolve().parents[2]
SPEC_ENUMS = {
    "method": Method,
    "nt_type": NtType,
    "noise": NoiseKind,
    "ig_rule": IgRule,
    "ig_sampling": IgSampling,
    "noise_sampling": NoiseSampling,
    "precision": Precision,
}


@pytest.mark.parametrize("option", sorted(SPEC_ENUMS))
def test_every_spec_value_has_its_proto_value_and_back(option: str) -> None:
    names = [member.value for member in SPEC_ENUMS[option]]
    proto = {number for number in ENUM_OPTIONS[option].values() if number}
    assert {enum_to_proto(option, name) for name in names} == proto  # one each, all of them
    assert [enum_from_proto(option, enum_to_proto(option, name)) for name in names] == names


def test_unspecified_is_none_both_ways() -> None:
    for option in ENUM_OPTIONS:
        assert enum_to_proto(option, None) == 0 and enum_from_proto(option, 0) is None


def test_unknown_values_name_the_option() -> None:
    with pytest.raises(InvalidArgument, match="integrated_gradients") as caught:
        enum_to_proto("method", "smoothgrad")
    assert caught.value.field == "options.method"
    with pytest.raises(InvalidArgument, match="PRECISION_BF16") as caught:
        enum_from_proto("precision", 99)
    assert caught.value.field == "options.precision"
    with pytest.raises(InvalidArgument):
        enum_to_proto("encoding", 1)  # a number is no name
    assert enum_from_proto("encoding", enum_to_proto("encoding", "float16")) == "float16"


# -- the options table: every surface follows it ----------------------------------------------


def test_every_wire_option_has_one_table_entry() -> None:
    proto_fields = {f.name for f in pb.ExplainOptions.DESCRIPTOR.fields}
    assert proto_fields == {o.proto for o in OPTIONS if o.proto}


def test_explain_keywords_and_defaults_are_the_tables() -> None:
    parameters = inspect.signature(explain).parameters
    keyword = {
        o.name: ("baselines" if o.name == "baseline" else o.name) for o in OPTIONS if o.python
    }
    for entry in OPTIONS:
        if entry.python:
            assert parameters[keyword[entry.name]].default == entry.default, entry.name
    beyond = {"model", "inputs", "target", "bounds", "cam_reshape", "nt_samples_batch_size"}
    beyond.add("memory_budget")
    assert set(parameters) == set(keyword.values()) | beyond


def test_make_spec_defaults_are_the_tables() -> None:
    spec = make_spec()
    for entry in SPEC_OPTIONS:
        assert getattr(getattr(spec, entry.name), "value", getattr(spec, entry.name)) == (
            entry.default
        )
    with pytest.raises(TypeError, match="unknown options"):
        make_spec(clip_percentile=50)


def test_model_config_defaults_are_the_configurable_options() -> None:
    model = {"model_class": "m:M"}
    defaults = parse_config(model).defaults
    assert set(defaults.values) == {o.name for o in OPTIONS if o.config}
    for entry in OPTIONS:
        if entry.config:
            assert defaults[entry.name] == entry.default
    with pytest.raises(InvalidArgument) as caught:
        parse_config({**model, "defaults": {"sigma": 11.0}})  # the table's range, checked at load
    assert caught.value.field == "defaults.sigma"


def test_every_flagged_option_is_a_cli_flag_and_reaches_the_client() -> None:
    parser = build_parser()
    flags = [arg for o in CLI_OPTIONS if o.kind is not bool for arg in (o.flag, _sample(o))]
    switches = [o.flag for o in CLI_OPTIONS if o.kind is bool]
    args = parser.parse_args(["explain", "x.png", "--model", "m", *flags, *switches])
    values = {o.name: getattr(args, o.name) for o in CLI_OPTIONS}
    message = to_proto(values)  # what run_explain hands the client
    assert from_proto(message) == {
        **{o.name: None for o in OPTIONS if o.proto},
        **{k: (True if v is True else v) for k, v in values.items()},
    }


def _sample(entry: Option) -> str:
    if entry.choices:
        return entry.choices[-1]
    return "1" if entry.kind is int else "0.5"


def test_the_documented_options_table_is_the_tables() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "options_doc.py"), "--check"], timeout=120
    )
    assert done.returncode == 0, "docs/api.md is out of date: run tools/options_doc.py"
