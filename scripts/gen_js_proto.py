"""Writes the web app's protobuf module (rest_web/webapp/js/proto/im.js) from the schema.

The browser speaks the same Envelope as the Python library. Rather than keep a second copy of
the schema by hand, this compiles proto/im.proto (the one schema; ``--proto`` names another
file) and emits field tables that the small hand-written runtime (js/proto/pb.js) encodes and
decodes by. ``scripts/check`` runs it with ``--check`` so the committed module can never drift
from the schema. Compiling needs grpcio-tools (the dev extra); without it, or with
``--module``, the descriptor compiled into ``proto.im_pb2`` (scripts/gen-proto's output of the
same file) is read instead.

Rules:
- the output depends on the descriptor only (declaration order, no dates), so it is the same
  on every machine;
- what the runtime cannot express faithfully is refused here, loudly, rather than encoded
  wrongly later: floats, fixed-width and zigzag integers, maps, groups, proto2, explicit
  presence (``optional``) and cross-file references.

Usage: ``scripts/gen-js-proto [--proto FILE | --module] [--check] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "rest_web" / "webapp" / "js" / "proto" / "im.js"
DEFAULT_PROTO = ROOT / "proto" / "im.proto"

F = descriptor_pb2.FieldDescriptorProto
KINDS = {
    F.TYPE_STRING: "string",
    F.TYPE_BYTES: "bytes",
    F.TYPE_BOOL: "bool",
    F.TYPE_UINT64: "uint64",
    F.TYPE_INT64: "int64",
    F.TYPE_UINT32: "uint32",
    F.TYPE_INT32: "int32",
    F.TYPE_ENUM: "enum",
    F.TYPE_MESSAGE: "message",
}


class SchemaError(Exception):
    """The schema uses something the browser runtime does not support."""


def descriptor_of_module(module: str = "proto.im_pb2") -> descriptor_pb2.FileDescriptorProto:
    """The schema as compiled into the Python package (what the servers speak)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    mod = importlib.import_module(module)
    fdp = descriptor_pb2.FileDescriptorProto()
    mod.DESCRIPTOR.CopyToProto(fdp)
    return fdp


def descriptor_of_proto(path: Path) -> descriptor_pb2.FileDescriptorProto:
    """``path`` compiled by the pinned protoc (grpcio-tools, the dev extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{path.parent}",
                f"--descriptor_set_out={out}",
                path.name,
            ],
            check=True,
        )
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    if len(fds.file) != 1:
        raise SchemaError(f"{path}: expected one file, got {len(fds.file)} (imports?)")
    return fds.file[0]


def _local(type_name: str, package: str) -> str:
    """``.im.SystemBody.Event`` -> ``SystemBody.Event``; other packages are refused."""
    prefix = f".{package}." if package else "."
    if not type_name.startswith(prefix):
        raise SchemaError(f"reference {type_name} is outside package {package!r}")
    return type_name[len(prefix) :]


def _collect(
    fdp: descriptor_pb2.FileDescriptorProto,
) -> tuple[dict[str, list[tuple[str, int]]], dict[str, list[list[object]]]]:
    """Enums (name -> [(value name, number)]) and messages (name -> field rows), each in
    declaration order, nested ones named ``Outer.Inner``."""
    if fdp.syntax != "proto3":
        raise SchemaError(f"syntax {fdp.syntax or 'proto2'!r}: only proto3 is supported")
    enums: dict[str, list[tuple[str, int]]] = {}
    messages: dict[str, list[list[object]]] = {}

    def add_enum(name: str, e: descriptor_pb2.EnumDescriptorProto) -> None:
        enums[name] = [(v.name, v.number) for v in e.value]

    def add_message(name: str, m: descriptor_pb2.DescriptorProto) -> None:
        if m.options.map_entry:
            raise SchemaError(f"{name}: map fields are not supported")
        rows: list[list[object]] = []
        for field in m.field:
            where = f"{name}.{field.name}"
            if field.proto3_optional:
                raise SchemaError(f"{where}: explicit presence (optional) is not supported")
            kind = KINDS.get(field.type)
            if kind is None:
                type_name = F.Type.Name(field.type)
                raise SchemaError(f"{where}: field type {type_name} is not supported")
            repeated = field.label == F.LABEL_REPEATED
            flags = "repeated" if repeated else ""
            if field.HasField("oneof_index"):
                flags = m.oneof_decl[field.oneof_index].name
                if any(f.name == flags for f in m.field):
                    raise SchemaError(f"{name}: oneof {flags} has the name of a field")
            ref = _local(field.type_name, fdp.package) if field.type_name else ""
            rows.append([field.number, field.name, kind, flags, ref])
        messages[name] = rows
        for nested_enum in m.enum_type:
            add_enum(f"{name}.{nested_enum.name}", nested_enum)
        for nested in m.nested_type:
            add_message(f"{name}.{nested.name}", nested)

    for e in fdp.enum_type:
        add_enum(e.name, e)
    for m in fdp.message_type:
        add_message(m.name, m)
    return enums, messages


def _js_name(name: str) -> str:
    return name.replace(".", "_")


def render(fdp: descriptor_pb2.FileDescriptorProto) -> str:
    """The JavaScript module for ``fdp``."""
    enums, messages = _collect(fdp)
    if "Envelope" not in messages:
        raise SchemaError("the schema has no Envelope")
    out: list[str] = [
        f"// Generated by scripts/gen-js-proto from {fdp.name} (package {fdp.package}).",
        "// Do not edit: change the schema and run scripts/gen-js-proto; scripts/check",
        "// fails while this file differs from what the generator writes.",
        "",
        'import { compileSchema, createMessage, decodeMessage, encodeMessage } from "./pb.js";',
        "",
    ]
    for name, values in enums.items():
        line = f"export const {_js_name(name)} = Object.freeze({{ "
        line += ", ".join(f"{v}: {n}" for v, n in values) + " });"
        if len(line) <= 100:
            out.append(line)
            continue
        out.append(f"export const {_js_name(name)} = Object.freeze({{")
        out += [f"  {v}: {n}," for v, n in values]
        out.append("});")
    out += ["", "const TABLES = {"]
    for name, rows in messages.items():
        out.append(f"  {json.dumps(name)}: {{")
        out.append("    fields: [")
        for row in rows:
            out.append(f"      {json.dumps(row)},")
        out.append("    ],")
        out.append("  },")
    out += [
        "};",
        "",
        "export const schema = compileSchema(TABLES);",
        "",
        "// One codec per message type: X.encode(obj) -> Uint8Array, X.decode(bytes) -> obj,",
        "// X.create(init) -> obj with every scalar at its default.",
        "function codec(type) {",
        "  return Object.freeze({",
        "    type,",
        "    encode: (obj) => encodeMessage(schema, type, obj),",
        "    decode: (bytes) => decodeMessage(schema, type, bytes),",
        "    create: (init) => createMessage(schema, type, init),",
        "  });",
        "}",
        "",
    ]
    for name in messages:
        out.append(f"export const {_js_name(name)} = codec({json.dumps(name)});")
    out += [
        "",
        "// The names of Envelope's body, for dispatch tables.",
        "export const ENVELOPE_BODIES = Object.freeze(schema.Envelope.oneofs.body ?? []);",
        "",
        "export const encodeEnvelope = Envelope.encode;",
        "export const decodeEnvelope = Envelope.decode;",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--proto", type=Path, help=f"compile this .proto (default {DEFAULT_PROTO})")
    source.add_argument(
        "--module", action="store_true", help="read proto.im_pb2's descriptor, compile nothing"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if --out differs from the generator's output"
    )
    args = parser.parse_args(argv)
    try:
        proto: Path | None = args.proto
        if proto is None and not args.module and importlib.util.find_spec("grpc_tools"):
            proto = DEFAULT_PROTO
        fdp = descriptor_of_proto(proto) if proto is not None else descriptor_of_module()
        text = render(fdp)
    except SchemaError as exc:
        print(f"gen-js-proto: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out
    if args.check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print(
                f"{out} is stale: run scripts/gen-js-proto and commit the result", file=sys.stderr
            )
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
