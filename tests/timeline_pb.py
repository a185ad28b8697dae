"""The wire schema the web app is built against, as Python message classes for its tests.

Until the timeline schema lands in proto/im.proto, the app follows the copy pinned in
scripts/pinned-schema/im.proto (scripts/gen-js-proto); its classes are built in a private
descriptor pool, so they do not clash with proto.im_pb2 in the same process. Once proto/ has
the new schema (and the pin is deleted), proto.im_pb2 itself is used.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from typing import Any

from conftest import require_service
from google.protobuf import descriptor, descriptor_pool, message_factory

from proto import im_pb2

ROOT = Path(__file__).resolve().parent.parent
PIN = ROOT / "scripts" / "pinned-schema" / "im.proto"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "gen_js_proto", ROOT / "scripts" / "gen_js_proto.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_js_proto", mod)
    spec.loader.exec_module(mod)
    return mod


@cache
def file_descriptor() -> descriptor.FileDescriptor:
    if not PIN.exists():
        return im_pb2.DESCRIPTOR
    if importlib.util.find_spec("grpc_tools") is None:  # compiles the pin: the dev extra
        require_service("grpcio-tools", "needed to compile scripts/pinned-schema/im.proto")
    fdp = _generator().descriptor_of_proto(PIN)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return pool.FindFileByName(fdp.name)


def cls(name: str) -> Any:
    """The message class ``name`` (``SystemBody`` or a nested ``Outer.Inner``)."""
    fd = file_descriptor()
    d = fd.pool.FindMessageTypeByName(f"{fd.package}.{name}")
    return message_factory.GetMessageClass(d)


def enum(name: str, value: str) -> int:
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
