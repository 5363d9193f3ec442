"""Hostile inputs for every public RPC: Hypothesis strategies built from each request message's
descriptor, drawing strings from a hand-kept list of known-bad inputs (SQL escapes and sandbox
probes, path names, oversized fields, unicode edge cases, deep JSON) mixed with generated text
and the names of objects that exist, so that calls get past the first check as often as not.

tests/ is on sys.path, so tests import this as `from hostile_inputs import ...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

# What a file-reading or -writing query would touch: the tests put a canary there and check
# that it is never read or written.
CANARY_DIR = "/tmp/finetune-hostile-canary"

SQL = [
    "'; DROP TABLE users; --", "SELECT 1; SELECT 2", "SELECT * FROM read_csv('/etc/passwd')",
    f"SELECT * FROM read_text('{CANARY_DIR}/secret.txt')",
    f"SELECT * FROM '{CANARY_DIR}/secret.txt'",
    f"COPY (SELECT 1) TO '{CANARY_DIR}/written.csv'", f"ATTACH '{CANARY_DIR}/evil.db' AS evil",
    "INSTALL httpfs", "LOAD httpfs", "SET memory_limit='1TB'", "SELECT getenv('HOME')",
    "PRAGMA database_list", "SELECT * FROM duckdb_settings()", "CALL pragma_version()",
    "SELECT * FROM glob('/*')", "EXPORT DATABASE '/tmp/x'", "SELECT prompt, completion FROM x",
    "SELECT prompt, completion FROM sales.public.tickets",
    "SELECT prompt, completion FROM sales.public.tickets WHERE 1=1 UNION ALL "
    "SELECT 'a', 'b'",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r) SELECT n, n FROM r",
    "SELECT repeat('x', 100000000) AS prompt, 'c' AS completion",
    # Deeper than Python's stack as DuckDB's JSON parse tree (was INTERNAL, 2026-12-04).
    "SELECT " + "{'a': " * 900 + "1" + "}" * 900 + " AS prompt, 'c' AS completion",
    "SELECT COMPLETE('sales.public.bot', prompt) FROM sales.public.tickets, range(1000000)",
    f"SELECT COMPLETE('sales.public.bot', content) FROM read_text('{CANARY_DIR}/secret.txt')",
    "SELECT FINETUNE('SHOW')", "SELECT FINETUNE('DESCRIBE', prompt) FROM sales.public.tickets",
    "SELECT FINETUNE('CREATE', 'sales.public.x', 'smollm2-135m-instruct', 'SELECT prompt, "
    f"completion FROM read_csv(''{CANARY_DIR}/secret.txt'')')",
    "SELECT FINETUNE('CREATE', 'x', 'y', 'z', NULL, {'max_epochs': -1, 'lora_rank': 1e9})",
]
PATHS = ["../../etc/passwd", "/etc/passwd", "..", ".", "a/../../b", "C:\\Windows\\system32",
         "file:///etc/passwd", "s3://someone-else/x", "~root/.ssh/id_rsa", "%2e%2e%2f",
         f"{CANARY_DIR}/secret.txt", "adapter_model.bin", "../adapter_config.json"]
NAMES = ["sales", "sales.public", "sales.public.tickets", "sales.public.bot",
         "smollm2-135m-instruct", "a.b.c.d.e", "...", "a..b", "A" * 300, "名前.スキーマ.表",
         "with\nnewline", "nul\x00byte", "😀.😀.😀", "\u202eevil", "zero\u200bwidth",
         "ACCOUNTADMIN", "PUBLIC", "admin", "ft_00000000-0000-0000-0000-000000000000",
         "ft_' OR '1'='1", "ev_../../x", "1 OR 1=1", "*", "%", "_"]
JSON = ["[" * 5000 + "]" * 5000, '{"a":' * 2000 + "1" + "}" * 2000,
        '{"type": "object", "properties": {"a": {"$ref": "#"}}}', '{"type": 12}', "{",
        '{"type": "string", "pattern": "(a+)+$"}', "null", '"just a string"']
OVERSIZED = ["x" * 100_000, "word " * 40_000, "\U0001f600" * 20_000]
UNICODE = ["", " ", "\t\r\n", "\ufeff", "\u0301" * 50, "\U0010ffff", "\ud7ff", "\u00a0",
           "Ω≈ç√∫", "\x7f\x1b[31m", "NaN", "-1", "9" * 40]
KNOWN_BAD = SQL + PATHS + NAMES + JSON + OVERSIZED + UNICODE
# Values that pass the first checks, so that a call with hostile values elsewhere goes deeper.
PLAUSIBLE = ["smollm2-135m-instruct", "sales.public.tickets", "sales.public.bot", "sales",
             "sales.public", "SELECT prompt, completion FROM sales.public.tickets",
             "SELECT prompt, completion AS label FROM sales.public.tickets", "Say hello.",
             "user", "assistant", "USAGE", "MODEL", "DATABASE"]  # never the known-good probe user

_I32, _I64 = (-2**31, 2**31 - 1), (-2**63, 2**63 - 1)
_U32, _U64 = (0, 2**32 - 1), (0, 2**64 - 1)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: _I32, FieldDescriptor.TYPE_SINT32: _I32,
    FieldDescriptor.TYPE_SFIXED32: _I32, FieldDescriptor.TYPE_UINT32: _U32,
    FieldDescriptor.TYPE_FIXED32: _U32, FieldDescriptor.TYPE_INT64: _I64,
    FieldDescriptor.TYPE_SINT64: _I64, FieldDescriptor.TYPE_SFIXED64: _I64,
    FieldDescriptor.TYPE_UINT64: _U64, FieldDescriptor.TYPE_FIXED64: _U64,
}


def strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(PLAUSIBLE), st.sampled_from(KNOWN_BAD),
                     st.text(max_size=40))


def _ints(field: FieldDescriptor) -> st.SearchStrategy[int]:
    low, high = _INT_RANGES[field.type]
    edges = [v for v in (low, high, -1, 0, 1, 2, 7, 100, 10_000, 10_000_000) if low <= v <= high]
    return st.one_of(st.integers(1, 64), st.sampled_from(edges), st.integers(low, high))


def _scalar(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return strings()
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.sampled_from(
            [b"\x80\x04 a pickle", b"PK\x03\x04", b"\x00" * 1024, b"x" * 200_000]))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.one_of(st.sampled_from([0.5, 0.0, 1.0, -1.0, 2.0, 1e308]),
                         st.floats(allow_nan=True, allow_infinity=True, width=32
                                   if t == FieldDescriptor.TYPE_FLOAT else 64))
    if t == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]),
                         st.integers(-3, 1000))
    if t == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    return _ints(field)


_UNSET = object()


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict]:
    """A dict of field values for `descriptor` (some fields unset), nested up to 3 levels."""
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and depth >= 3:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_f, value_f = field.message_type.fields_by_name["key"], \
                field.message_type.fields_by_name["value"]
            parts[field.name] = st.dictionaries(_scalar(key_f, depth), _scalar(value_f, depth),
                                                max_size=4)
        elif field.is_repeated:
            parts[field.name] = st.lists(_scalar(field, depth), max_size=4 if depth else 8)
        else:
            parts[field.name] = _scalar(field, depth)
    # Each field set or not, independently (a subset drawn as a set would mostly be small).
    # Unset comes second: Hypothesis starts from each strategy's first branch, so its first,
    # simplest inputs are plausible whole messages, which get past the first checks.
    return st.fixed_dictionaries({n: st.one_of(parts[n], st.just(_UNSET)) for n in sorted(parts)}
                                 ).map(lambda d: {k: v for k, v in d.items() if v is not _UNSET})


def build(message_class, values: dict):
    """The message of `values` (nested dicts for message fields), skipping what protobuf itself
    refuses to hold (a value out of a field's range is the client library's error, never the
    server's)."""
    message = message_class()
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        nested = GetMessageClass(field.message_type) if field.message_type is not None else None
        try:
            if nested is not None and field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                for k, v in value.items():
                    if value_field.message_type is not None:
                        target[k].CopyFrom(build(GetMessageClass(value_field.message_type), v))
                    else:
                        target[k] = v
            elif field.is_repeated:
                for item in value:
                    if nested is not None:
                        target.append(build(nested, item))
                    else:
                        target.append(item)
            elif nested is not None:
                target.CopyFrom(build(nested, value))
            else:
                setattr(message, name, value)
        except (ValueError, TypeError, OverflowError):
            continue
    return message


@dataclass(frozen=True)
class Rpc:
    service: str           # full name, e.g. finetune.control.v1.DataService
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def client_streaming(self) -> bool:
        return self.method.client_streaming

    @property
    def server_streaming(self) -> bool:
        return self.method.server_streaming


def public_rpcs(*file_descriptors) -> list[Rpc]:
    """Every method of every service in the given proto files."""
    return [Rpc(service.full_name, method)
            for fd in file_descriptors for service in fd.services_by_name.values()
            for method in service.methods]
