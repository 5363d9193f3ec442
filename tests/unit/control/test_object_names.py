"""Object names: 1 to 3 identifier parts, canonical lower case, defaults public.public."""

import pytest

from services.common.errors import InvalidArgument
from services.control.domain.names import QualifiedName, identifier, qualified_name


@pytest.mark.parametrize("raw,expected", [
    ("My_Model", "public.public.my_model"),
    ("Sales.my_model", "public.sales.my_model"),
    ("DB.s.M", "db.s.m"),
    (" _X$1 ", "public.public._x$1"),
])
def test_valid_names(raw, expected):
    assert str(qualified_name(raw)) == expected


def test_parts():
    assert qualified_name("A.b.C") == QualifiedName("a", "b", "c")


@pytest.mark.parametrize("raw", ["", "  ", "a.b.c.d", "1abc", "my-model", "a..b", "a b",
                                 "x;drop", "a.\"b\".c", "../etc", "a" * 256])
def test_invalid_names(raw):
    with pytest.raises(InvalidArgument):
        qualified_name(raw)


def test_identifier_message_names_the_problem():
    with pytest.raises(InvalidArgument, match="database name 'my-db' is not a valid identifier"):
        identifier("my-db", "database name")
