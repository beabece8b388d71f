"""The enum options' one translation between Python names and proto values (options.py)."""

from __future__ import annotations

import pytest

from smoothexplain.errors import InvalidArgument
from smoothexplain.options import ENUM_OPTIONS, enum_from_proto, enum_to_proto
from smoothexplain.spec import (
    IgRule,
    IgSampling,
    Method,
    NoiseKind,
    NoiseSampling,
    NtType,
    Precision,
)

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
