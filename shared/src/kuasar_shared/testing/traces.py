"""Reading the real containerd traces in ``shared/tests/conformance`` and rendering messages like they do.

The traces (see the README next to them) hold every request containerd 2.3.4 sent to a sandboxer,
as exact bytes and as JSON rendered by Go's protojson with two twists: Anys are expanded with
``@type`` when the payload is a known protobuf message, and shown as
``{"@type", "value_b64", "@json"}`` when it carries JSON (typeurl-registered Go structs, OCI
specs). :func:`render` produces exactly that from one of our generated messages, so a replay can
compare field by field what our decoder sees with what containerd sent.
"""
from __future__ import annotations

import base64
import glob
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from google.protobuf import descriptor_pool, symbol_database
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

# Imported for their side effect: every message type containerd may put into an Any is then known
# to the default descriptor pool.
from kuasar_shared.api.cgroups.v1 import metrics_pb2 as _cgroups_metrics  # noqa: F401
from kuasar_shared.api.containerd.runc.options import oci_pb2 as _runc_options  # noqa: F401
from kuasar_shared.api.containerd.services.streaming.v1 import streaming_pb2 as _streaming  # noqa: F401
from kuasar_shared.api.containerd.types.transfer import streaming_pb2 as _transfer  # noqa: F401
from kuasar_shared.api.cri.runtime.v1 import api_pb2 as _cri  # noqa: F401

__all__ = ["ENV_CONFORMANCE_DIR", "ENGINE", "Flow", "default_conformance_dir", "find_flows",
           "load_flow", "render", "message_class"]

#: Environment variable naming the conformance directory (holding ``containerd-2.3.4/``).
ENV_CONFORMANCE_DIR = "KUASAR_CONFORMANCE_DIR"
#: The engine whose traces are replayed.
ENGINE = "containerd-2.3.4"

_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_FLOAT_TYPES = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}
# Well-known types protojson writes as a plain JSON value, inside an Any under "value".
_WELL_KNOWN_VALUES = {"google.protobuf.Timestamp", "google.protobuf.Duration"}


@dataclass(frozen=True)
class Flow:
    """One captured flow: its folder name and its records sorted by ``seq``."""

    name: str
    path: str
    records: tuple[dict[str, Any], ...]

    def calls(self, api: str) -> Iterator[dict[str, Any]]:
        return (r for r in self.records if r.get("api") == api)


def default_conformance_dir(repo_root: str) -> str:
    """``$KUASAR_CONFORMANCE_DIR``, else the copy kept in the repository, ``<repo_root>/shared/tests/conformance``."""
    return os.environ.get(ENV_CONFORMANCE_DIR) or os.path.join(repo_root, "shared", "tests", "conformance")


def load_flow(path: str) -> Flow:
    """Read one flow folder's ``calls.jsonl``; records are returned in ``seq`` order."""
    with open(os.path.join(path, "calls.jsonl"), encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    records.sort(key=lambda r: int(r["seq"]))
    return Flow(name=os.path.basename(path), path=path, records=tuple(records))


def find_flows(conformance_dir: str) -> list[Flow]:
    """Every flow of :data:`ENGINE` under ``conformance_dir`` (folders with a ``calls.jsonl``)."""
    pattern = os.path.join(conformance_dir, ENGINE, "*", "calls.jsonl")
    return [load_flow(os.path.dirname(p)) for p in sorted(glob.glob(pattern))]


def message_class(full_name: str) -> Any:
    """The generated class of a protobuf message by full name (``containerd.types.Mount``)."""
    return symbol_database.Default().GetSymbol(full_name)


def _find_descriptor(type_url: str) -> Optional[Descriptor]:
    name = type_url.rsplit("/", 1)[-1]
    try:
        return descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None


def _render_any(msg: Message) -> dict[str, Any]:
    type_url: str = msg.type_url  # type: ignore[attr-defined]
    value: bytes = msg.value  # type: ignore[attr-defined]
    descriptor = _find_descriptor(type_url)
    if descriptor is not None:
        try:
            inner = message_class(descriptor.full_name).FromString(value)
        except DecodeError:
            descriptor = None
        else:
            if descriptor.full_name in _WELL_KNOWN_VALUES:
                return {"@type": type_url, "value": _render_message(inner)}
            out: dict[str, Any] = {"@type": type_url}
            out.update(render(inner))
            return out
    out = {"@type": type_url, "value_b64": base64.b64encode(value).decode()}
    try:
        out["@json"] = json.loads(value)
    except ValueError:
        pass
    return out


def _render_message(msg: Message) -> Any:
    full_name = msg.DESCRIPTOR.full_name
    if full_name == "google.protobuf.Any":
        return _render_any(msg)
    if full_name in _WELL_KNOWN_VALUES:
        return msg.ToJsonString()  # type: ignore[attr-defined]
    return render(msg)


def _render_single(fd: FieldDescriptor, value: Any) -> Any:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _render_message(value)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        enum_value = fd.enum_type.values_by_number.get(value) if fd.enum_type is not None else None
        return enum_value.name if enum_value is not None else value
    if fd.type in _INT64_TYPES:
        return str(value)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    if fd.type in _FLOAT_TYPES and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _map_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def render(msg: Message) -> dict[str, Any]:
    """Render a message the way the trace JSON does: proto field names, default values omitted,
    enums by name, 64-bit integers as strings, bytes as base64, Timestamps as RFC 3339, Anys
    expanded (known message: ``@type`` + fields; otherwise ``@type`` + ``value_b64`` (+ ``@json``
    when the payload is JSON)). ``@message`` is not included."""
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {_map_key(k): _render_single(value_fd, v) for k, v in value.items()}
        elif fd.label == FieldDescriptor.LABEL_REPEATED:  # type: ignore[attr-defined,unused-ignore]
            out[fd.name] = [_render_single(fd, v) for v in value]
        else:
            out[fd.name] = _render_single(fd, value)
    return out
