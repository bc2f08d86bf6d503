"""${VAR} interpolation rules."""

import pytest

from lbcdn.configkit.env import EnvError, interpolate

ENV = {"TOKEN": "s3cret", "EMPTY": "", "PORT": "8080"}


@pytest.mark.parametrize("text, expected", [
    ("plain", "plain"),
    ("${TOKEN}", "s3cret"),
    ("Bearer ${TOKEN}!", "Bearer s3cret!"),
    ("${TOKEN}${PORT}", "s3cret8080"),
    ("${MISSING:-fallback}", "fallback"),
    ("${EMPTY:-fallback}", "fallback"),
    ("${TOKEN:-fallback}", "s3cret"),
    ("${MISSING:-}", ""),
    ("${EMPTY}", ""),
    ("$$", "$"),
    ("$${TOKEN}", "${TOKEN}"),
    ("cost $$5 and $$$${X}", "cost $5 and $${X}"),
    ("^/a$", "^/a$"),
    ("$", "$"),
    ("a$b", "a$b"),
])
def test_interpolate(text: str, expected: str) -> None:
    assert interpolate(text, ENV) == expected


def test_default_is_not_interpolated_again() -> None:
    assert interpolate("${MISSING:-${TOKEN}", ENV) == "${TOKEN"


def test_value_is_not_interpolated_again() -> None:
    assert interpolate("${A}", {"A": "${TOKEN}"}) == "${TOKEN}"


@pytest.mark.parametrize("text, fragment", [
    ("${MISSING}", "environment variable MISSING is not set"),
    ("${TOKEN", "unterminated"),
    ("${}", "invalid variable reference"),
    ("${1X}", "invalid variable reference"),
    ("${A-B}", "invalid variable reference"),
])
def test_errors(text: str, fragment: str) -> None:
    with pytest.raises(EnvError, match=fragment):
        interpolate(text, ENV)
