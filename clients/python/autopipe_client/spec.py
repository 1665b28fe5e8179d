"""A pipeline spec, in any form a caller has it, as the spec fields of a SubmitJobRequest.

The coordinator refuses relative paths (a spec sent over the API has no directory to
resolve them against; the error names the key, e.g. ``sources[0].path``). The CLI
resolves them against the spec file's directory before it sends the spec, and so does
this client:

- a spec **file** (a ``pathlib.Path``, or a ``str`` without a newline) is read and parsed
  here (``tomllib``, or ``tomli`` before Python 3.11); its relative ``sources[i].path``,
  ``sink.path`` and ``sink.dead_letter_path`` become absolute against the file's
  directory (or `resolve_relative_to`), and it is sent as ``spec_json``, the TOML's
  keys as JSON, exactly what ``autopipe submit`` sends. (Rewriting the TOML text instead
  would need a TOML writer, which the standard library lacks.)
- TOML **text** (a ``str`` with a newline) is sent as ``spec_toml``, unchanged, so the
  server parses it and names any error's key; with `resolve_relative_to` it is parsed
  and resolved like a file.
- a typed ``PipelineSpec`` is sent as ``pipeline`` (its relative paths resolved when
  `resolve_relative_to` is given); a ``dict`` keyed as the TOML as ``spec_json``.

Paths of Kafka sources and sinks are not paths, and URLs (``s3://``, ``file://``) are
left as they are.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from autopipe_client.errors import SpecError
from autopipe_client.v1 import spec_pb2

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

PathLike = Union[str, "os.PathLike[str]"]
#: what :meth:`Client.submit` takes
Spec = Union[PathLike, spec_pb2.PipelineSpec, Mapping[str, Any]]


def absolute(path: str, base: PathLike) -> str:
    """`path` made absolute against `base`, unless it is absolute, a URL or empty."""
    if not path or "://" in path or os.path.isabs(path):
        return path
    joined = os.path.normpath(os.path.join(os.fspath(base), path))
    # a trailing '/' says "a directory" to the coordinator: keep it
    return joined + "/" if path.endswith("/") and not joined.endswith("/") else joined


def resolve_dict(spec: Dict[str, Any], base: PathLike) -> Dict[str, Any]:
    """A spec keyed as the TOML with its relative file paths made absolute (in place)."""
    for source in spec.get("sources") or []:
        if isinstance(source, dict) and source.get("format") != "kafka" and "path" in source:
            source["path"] = absolute(str(source["path"]), base)
    sink = spec.get("sink")
    if isinstance(sink, dict):
        if sink.get("format") != "kafka" and "path" in sink:
            sink["path"] = absolute(str(sink["path"]), base)
        if "dead_letter_path" in sink:
            sink["dead_letter_path"] = absolute(str(sink["dead_letter_path"]), base)
    return spec


def resolve_message(spec: spec_pb2.PipelineSpec, base: PathLike) -> spec_pb2.PipelineSpec:
    """A copy of a typed spec with its relative file paths made absolute."""
    out = spec_pb2.PipelineSpec()
    out.CopyFrom(spec)
    for source in out.sources:
        if source.format != "kafka":
            source.path = absolute(source.path, base)
    if out.sink.format != "kafka":
        out.sink.path = absolute(out.sink.path, base)
    if out.sink.HasField("dead_letter_path"):
        out.sink.dead_letter_path = absolute(out.sink.dead_letter_path, base)
    return out


def parse_toml(text: str, origin: str) -> Dict[str, Any]:
    """The TOML text as a dict; a syntax error as a :class:`SpecError` naming `origin`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{origin}: not valid TOML: {e}") from e


def request_fields(spec: Spec, resolve_relative_to: Optional[PathLike] = None
                   ) -> Tuple[Dict[str, Any], str]:
    """The ``SubmitJobRequest`` spec field (``spec_json``, ``spec_toml`` or ``pipeline``)
    for `spec`, and the spec's origin for error messages."""
    base = resolve_relative_to
    if isinstance(spec, spec_pb2.PipelineSpec):
        return {"pipeline": resolve_message(spec, base) if base else spec}, "<PipelineSpec>"
    if isinstance(spec, Mapping):
        d = json.loads(json.dumps(spec))  # a deep copy, and a check that it is JSON
        return {"spec_json": json.dumps(resolve_dict(d, base) if base else d)}, "<dict>"
    if isinstance(spec, str) and "\n" in spec:
        if base is None:
            return {"spec_toml": spec}, "<toml>"
        return {"spec_json": json.dumps(resolve_dict(parse_toml(spec, "<toml>"), base))}, "<toml>"
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec file: {e}") from e
    origin = str(path)
    # the CLI's base: the file's directory, canonicalized (not a symlink's target's)
    base = base if base is not None else os.path.realpath(path.parent)
    return {"spec_json": json.dumps(resolve_dict(parse_toml(text, origin), base))}, origin
