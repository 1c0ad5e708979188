"""TOML writing for the subset hedge's files use, so the bench edits configs as data.

`dumps(doc)` turns what `tomllib.loads` returns for hedge's node.toml, master.toml and
request files back into TOML: strings, integers, floats, booleans, arrays of those,
tables (nested as [a.b]) and arrays of tables ([[a]]). Comments and layout are not kept
(the bench's files are throwaway copies). Anything else (dates, NaN, arrays mixing
tables and values) raises ValueError rather than writing what would not read back.
`tomllib.loads(dumps(d)) == d` for every d it accepts (test_tomlw.py). `edit(path, changes)`
sets keys in a file that way.
"""
import math
import re
import tomllib

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
            "\f": "\\f", "\r": "\\r"}


def _key(k):
    if not isinstance(k, str):
        raise ValueError(f"TOML keys are strings, not {k!r}")
    return k if _BARE.match(k) else _string(k)


def _string(s):
    out = []
    for c in s:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _is_table_array(v):
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise ValueError(f"no TOML for {v!r} in hedge's subset")
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list):
        if any(isinstance(x, dict) for x in v):
            raise ValueError("an array mixing tables and values")
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise ValueError(f"no TOML for {type(v).__name__} {v!r} in hedge's subset")


def _table(path, table, out):
    """Key/value lines of `table` first, then its sub-tables and arrays of tables."""
    subs = []
    for k, v in table.items():
        if isinstance(v, dict) or _is_table_array(v):
            subs.append((k, v))
        else:
            out.append(f"{_key(k)} = {_value(v)}")
    for k, v in subs:
        p = path + [_key(k)]
        if isinstance(v, dict):
            out.append("")
            out.append(f"[{'.'.join(p)}]")
            _table(p, v, out)
        else:
            for item in v:
                out.append("")
                out.append(f"[[{'.'.join(p)}]]")
                _table(p, item, out)


def dumps(doc):
    """`doc` (a dict as tomllib returns it) as TOML text."""
    out = []
    _table([], doc, out)
    return "\n".join(out).lstrip("\n") + "\n"


def edit(path, changes):
    """Set `changes` ({table: {key: value}}) in the TOML file at `path`, as data: tables
    and keys are created when absent (a commented-out default counts as absent), every
    other value is kept. Returns the document written."""
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    for table, values in changes.items():
        doc.setdefault(table, {}).update(values)
    with open(path, "w") as f:
        f.write(dumps(doc))
    return doc
