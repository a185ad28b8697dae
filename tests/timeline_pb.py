"""The wire schema as Python message classes looked up by name, for tests that walk it.

The web app, the servers and the Python library all speak proto/im.proto; its compiled module
(proto.im_pb2) is the one schema. Tests that iterate over every message type (the web app's
codec round trips) or name a type in a string use these helpers rather than import each class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor, message_factory

from proto import im_pb2

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "proto" / "im.proto"


def file_descriptor() -> descriptor.FileDescriptor:
    """proto/im.proto as compiled into proto.im_pb2."""
    return im_pb2.DESCRIPTOR


def cls(name: str) -> Any:
    """The message class ``name`` (``SystemBody`` or a nested ``Outer.Inner``)."""
    fd = file_descriptor()
    d = fd.pool.FindMessageTypeByName(f"{fd.package}.{name}")
    return message_factory.GetMessageClass(d)


def enum(name: str, value: str) -> int:
    """The number of ``value`` in enum ``name``."""
    fd = file_descriptor()
    number: int = fd.pool.FindEnumTypeByName(f"{fd.package}.{name}").values_by_name[value].number
    return number


def message_names() -> list[str]:
    """Every message type of the schema, nested ones as ``Outer.Inner``."""
    out: list[str] = []

    def walk(d: descriptor.Descriptor, prefix: str) -> None:
        out.append(prefix + d.name)
        for n in d.nested_types:
            walk(n, f"{prefix}{d.name}.")

    for d in file_descriptor().message_types_by_name.values():
        walk(d, "")
    return out
