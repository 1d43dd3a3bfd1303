"""Generate the chart's values.schema.json and README values table from values.yaml.

    python deploy/helm/scripts/gen_schema.py            # (re)write both
    python deploy/helm/scripts/gen_schema.py --check    # exit 1 if either would change

values.yaml is the source of truth, written helm-docs style: every value has a
`# -- description` comment right above it (continuation lines are plain `#` lines). The
schema takes the description from there and the type from the default value:

    # -- (int) description        a type hint, for defaults that cannot show one (null)
    # -- (object) description     a free-form map: its keys are not checked or descended
    # @schema {"enum": ["a", "b"]}  JSON schema keywords merged into this value's schema

Maps the chart defines are closed (`additionalProperties: false`), so a misspelt value
(`gateway.replicas`) fails `helm install` instead of being silently ignored. A value
without a `# --` comment is an error: the chart documents every value. The output is a
pure function of values.yaml (key order kept, stable JSON), so the drift check is exact.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "platform"
SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"

HINT_TYPES = {
    "int": "integer",
    "integer": "integer",
    "number": "number",
    "float": "number",
    "string": "string",
    "bool": "boolean",
    "boolean": "boolean",
    "list": "array",
    "object": "object",
}

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):(?:\s|$)")
_DOC = re.compile(r"^ *# -- ?(?:\((?P<hint>[a-z]+)\) *)?(?P<text>.*)$")
_SCHEMA = re.compile(r"^ *# @schema (?P<json>\{.*\})\s*$")
_CONTINUATION = re.compile(r"^ *#(?: (?P<text>.*))?$")

Path_ = tuple[str, ...]


class SchemaError(Exception):
    """values.yaml cannot be turned into a schema; the message names the value."""


@dataclass
class Doc:
    text: list[str] = field(default_factory=list)
    hint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return " ".join(part.strip() for part in self.text if part.strip())


def _lookup(data: Any, path: Path_) -> Any:
    for key in path:
        data = data[key]
    return data


def _is_free_form(value: Any, doc: Doc | None) -> bool:
    return isinstance(value, dict) and (not value or (doc is not None and doc.hint == "object"))


def parse_docs(text: str, data: dict[str, Any]) -> dict[Path_, Doc]:
    """The `# --` documentation of every key, by its path; contents of lists and of
    free-form maps are skipped."""
    docs: dict[Path_, Doc] = {}
    stack: list[tuple[int, str]] = []
    pending: Doc | None = None
    skip_below: int | None = None  # skip lines indented deeper than this

    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_below is not None:
            if not stripped or indent > skip_below or stripped.startswith("- "):
                continue
            skip_below = None
        if not stripped:
            pending = None
            continue
        if stripped.startswith("#"):
            pending = _read_comment(line, pending, number)
            continue
        match = _KEY.match(line)
        if match is None:
            raise SchemaError(f"values.yaml:{number}: cannot read this line: {line!r}")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(key for _, key in stack), match["key"])
        stack.append((indent, match["key"]))
        if pending is not None:
            if pending.hint is not None and pending.hint not in HINT_TYPES:
                raise SchemaError(f"values.yaml:{number}: unknown type hint ({pending.hint})")
            docs[path] = pending
        pending = None
        value = _lookup(data, path)
        if isinstance(value, list) or _is_free_form(value, docs.get(path)):
            skip_below = indent
    return docs


def _read_comment(line: str, pending: Doc | None, number: int) -> Doc | None:
    """A comment line: starts, continues or adds @schema to a `# --` block, or is prose
    that documents nothing (then `pending` is returned unchanged)."""
    if (match := _DOC.match(line)) is not None:
        return Doc(text=[match["text"]], hint=match["hint"])
    if pending is None:
        return None
    if (match := _SCHEMA.match(line)) is not None:
        try:
            pending.extra.update(json.loads(match["json"]))
        except json.JSONDecodeError as exc:
            raise SchemaError(f"values.yaml:{number}: bad @schema JSON: {exc}") from None
    elif (match := _CONTINUATION.match(line)) is not None:
        pending.text.append(match["text"] or "")
    return pending


# In this order: bool is an int to Python.
_INFERRED: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


def _type_of(value: Any, doc: Doc | None, where: str) -> str | list[str]:
    hint = doc.hint if doc is not None else None
    hinted = HINT_TYPES[hint] if hint is not None else None
    if value is None:
        if hinted is None:
            raise SchemaError(f"{where}: a null default needs a type hint, as `# -- (int) ...`")
        return [hinted, "null"]
    inferred = next(name for kind, name in _INFERRED if isinstance(value, kind))
    if hinted is not None and hinted != inferred and (hinted, inferred) != ("number", "integer"):
        raise SchemaError(f"{where}: the hint ({hint}) contradicts the default {value!r}")
    return hinted or inferred


def build(value: Any, path: Path_, docs: dict[Path_, Doc]) -> dict[str, Any]:
    where = ".".join(path)
    doc = docs.get(path)
    schema: dict[str, Any] = {}
    is_section = isinstance(value, dict) and value and not _is_free_form(value, doc)
    if doc is None and not is_section:
        raise SchemaError(f"{where}: undocumented value; add a `# --` comment above it")
    if doc is not None and doc.description:
        schema["description"] = doc.description
    schema["type"] = _type_of(value, doc, where)
    if is_section:
        schema["additionalProperties"] = False
        schema["properties"] = {
            key: build(child, (*path, key), docs) for key, child in value.items()
        }
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        schema["items"] = {"type": "string"}
    if doc is not None:
        schema.update(doc.extra)
    return schema


def _load(values_file: Path) -> tuple[dict[str, Any], dict[Path_, Doc]]:
    text = values_file.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise SchemaError("values.yaml must be a map")
    return data, parse_docs(text, data)


def generate(values_file: Path) -> str:
    """values.schema.json, as text."""
    data, docs = _load(values_file)
    schema = {
        "$schema": SCHEMA_DRAFT,
        "title": "Values of the platform chart",
        "description": "Generated from values.yaml by deploy/helm/scripts/gen_schema.py; "
        "edit values.yaml and run `make chart-schema`.",
        "type": "object",
        "additionalProperties": False,
        "properties": {key: build(value, (key,), docs) for key, value in data.items()},
    }
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def _default(value: Any) -> str:
    shown = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if len(shown) <= 60:
        return f"`{shown}`"
    if isinstance(value, list):
        return f"{len(value)} entries, see values.yaml"
    return "see values.yaml"


def values_table(values_file: Path) -> str:
    """The README's table of every documented value, in values.yaml order."""
    data, docs = _load(values_file)
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for path, doc in docs.items():
        value = _lookup(data, path)
        kind = doc.extra.get("type") or _type_of(value, doc, ".".join(path))
        kinds = " or ".join(kind) if isinstance(kind, list) else kind
        description = doc.description.replace("|", "\\|")
        rows.append(f"| `{'.'.join(path)}` | {kinds} | {_default(value)} | {description} |")
    return "\n".join(rows) + "\n"


TABLE_BEGIN = "<!-- values:begin (generated by deploy/helm/scripts/gen_schema.py) -->\n"
TABLE_END = "<!-- values:end -->"


def with_table(readme: str, table: str) -> str:
    """`readme` with the text between the markers replaced by `table`."""
    if TABLE_BEGIN not in readme or TABLE_END not in readme:
        raise SchemaError(f"README.md lacks the markers {TABLE_BEGIN.strip()} ... {TABLE_END}")
    head, rest = readme.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_BEGIN}{table}{TABLE_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="fail if an output is stale")
    parser.add_argument("--chart", type=Path, default=CHART, help="chart directory")
    args = parser.parse_args(argv)
    values_file = args.chart / "values.yaml"
    schema_file = args.chart / "values.schema.json"
    readme_file = args.chart / "README.md"
    try:
        if not readme_file.is_file():
            raise SchemaError(f"{readme_file} is missing")
        readme = readme_file.read_text(encoding="utf-8")
        outputs = {
            schema_file: generate(values_file),
            readme_file: with_table(readme, values_table(values_file)),
        }
    except SchemaError as exc:
        print(f"gen_schema: {exc}", file=sys.stderr)
        return 2
    stale = 0
    for path, wanted in outputs.items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == wanted:
            print(f"{path} is up to date")
        elif args.check:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                wanted.splitlines(keepends=True),
                fromfile=f"{path} (committed)",
                tofile=f"{path} (from values.yaml)",
            )
            sys.stderr.writelines(diff)
            print(f"{path} is stale: run `make chart-schema`", file=sys.stderr)
            stale += 1
        else:
            path.write_text(wanted, encoding="utf-8")
            print(f"wrote {path}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
