"""The web app's generated protobuf codec against Python's protobuf: every message type of the
schema, encoded in the page and decoded in Python and the other way round, with edge values
(empty messages, the largest and smallest integers, unicode, every byte value, each oneof
member). Also: the committed JS is what the generator writes, and hostile bytes are refused."""

from __future__ import annotations

import base64
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from browser import b64, big, run_js, untag
from google.protobuf import descriptor
from google.protobuf.message import Message
from timeline_pb import ROOT, SCHEMA, cls, message_names

FD = descriptor.FieldDescriptor
IMPORT = 'const pb = await import("/app/js/proto/im.js");'

UNICODE = "héllo ✓ 𝄞 中文 \x00 end"


def _scalar_max(f: FD, variant: int) -> Any:
    t = f.type
    if t == FD.TYPE_UINT64:
        return [2**64 - 1, 2**53 + 1, 1][variant]
    if t == FD.TYPE_INT64:
        return [-(2**63), -1, 2**63 - 1][variant]
    if t == FD.TYPE_UINT32:
        return [2**32 - 1, 1, 2**31][variant]
    if t == FD.TYPE_INT32:
        return [-(2**31), -1, 2**31 - 1][variant]
    if t == FD.TYPE_BOOL:
        return True
    if t == FD.TYPE_STRING:
        return UNICODE if variant == 0 else "a"
    if t == FD.TYPE_BYTES:
        return bytes(range(256)) if variant == 0 else b"\x00"
    if t == FD.TYPE_ENUM:
        assert f.enum_type is not None
        numbers = [v.number for v in f.enum_type.values]
        return max(numbers) if variant == 0 else min(n for n in numbers if n > 0)
    raise AssertionError(f"unexpected type {t}")


def filled(d: Any, variant: int, depth: int = 0, oneof_pick: int = 0) -> Message:
    """A message of ``d`` with every field set to an edge value; in each oneof, member
    ``oneof_pick`` (mod its size)."""
    msg: Message = cls(d.full_name.split(".", 1)[1])()
    for f in d.fields:
        if f.containing_oneof is not None:
            members = f.containing_oneof.fields
            if members[oneof_pick % len(members)].name != f.name:
                continue
        if f.is_repeated:
            if f.type == FD.TYPE_MESSAGE:
                if depth < 3:
                    for _ in range(2):
                        getattr(msg, f.name).add().CopyFrom(
                            filled(f.message_type, variant, depth + 1)
                        )
            elif f.type == FD.TYPE_STRING:
                getattr(msg, f.name).extend(["", "a", UNICODE])
            else:
                getattr(msg, f.name).extend([_scalar_max(f, variant), _scalar_max(f, 1)])
        elif f.type == FD.TYPE_MESSAGE:
            if depth < 3:
                getattr(msg, f.name).CopyFrom(filled(f.message_type, variant, depth + 1))
        else:
            setattr(msg, f.name, _scalar_max(f, variant))
    return msg


def to_js(msg: Message) -> dict[str, Any]:
    """What the JS decoder gives for ``msg``: every scalar (defaults too), set messages only,
    each oneof's case under the oneof's name; BigInt and bytes tagged."""
    d = msg.DESCRIPTOR
    out: dict[str, Any] = {}
    for oneof in d.oneofs:
        case = msg.WhichOneof(oneof.name)
        if case is not None:
            out[oneof.name] = case
    for f in d.fields:
        value = getattr(msg, f.name)
        if f.containing_oneof is not None and msg.WhichOneof(f.containing_oneof.name) != f.name:
            continue
        if f.is_repeated:
            out[f.name] = [_value(f, v) for v in value]
        elif f.type == FD.TYPE_MESSAGE:
            if msg.HasField(f.name):
                out[f.name] = to_js(value)
        else:
            out[f.name] = _value(f, value)
    return out


def _value(f: Any, v: Any) -> Any:
    if f.type == FD.TYPE_MESSAGE:
        return to_js(v)
    if f.type in (FD.TYPE_UINT64, FD.TYPE_INT64):
        return big(v)
    if f.type == FD.TYPE_BYTES:
        return b64(v)
    return v


def cases() -> list[tuple[str, str, Message]]:
    out: list[tuple[str, str, Message]] = []
    for name in message_names():
        empty = cls(name)()
        out.append((name, "empty", empty))
        d = empty.DESCRIPTOR
        widest = max([len(o.fields) for o in d.oneofs], default=1)
        for variant in (0, 1, 2):
            for pick in range(widest):
                label = f"edge{variant}" + (f"-oneof{pick}" if d.oneofs else "")
                out.append((name, label, filled(d, variant, oneof_pick=pick)))
    return out


def script_env() -> dict[str, str]:
    """scripts/gen-js-proto runs ``python3``: make it the one running these tests, whether or
    not its venv is activated."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path}


def test_committed_js_matches_the_generator() -> None:
    """scripts/gen-js-proto --check passes, and fails once the committed file is edited."""
    out = ROOT / "rest_web" / "webapp" / "js" / "proto" / "im.js"
    cmd = [str(ROOT / "scripts" / "gen-js-proto"), "--check"]
    env = script_env()
    done = subprocess.run(cmd, capture_output=True, env=env)
    assert done.returncode == 0, done.stderr.decode()
    text = out.read_text(encoding="utf-8")
    tampered = ROOT / "test-artifacts" / "im-tampered.js"
    tampered.parent.mkdir(exist_ok=True)
    tampered.write_text(text.replace("TEXT: 1", "TEXT: 7"), encoding="utf-8")
    res = subprocess.run([*cmd, "--out", str(tampered)], capture_output=True, text=True, env=env)
    assert res.returncode == 1 and "stale" in res.stderr
    assert "ConvState" in text and "from im.proto" in text


def test_generator_reads_proto_im_proto() -> None:
    """The default schema (proto.im_pb2) is proto/im.proto: compiling the file itself gives the
    committed module, so the web app can't follow a schema the servers don't speak."""
    if importlib.util.find_spec("grpc_tools") is None:
        # a tool of the dev extra, not a service: CI's scripts/check runs the same comparison
        pytest.skip("grpcio-tools (dev extra) compiles proto/im.proto; scripts/check covers it")
    cmd = [str(ROOT / "scripts" / "gen-js-proto"), "--check", "--proto", str(SCHEMA)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=script_env())
    assert res.returncode == 0, res.stderr


def test_every_message_type_round_trips_both_ways(page: Any) -> None:
    """For each case: JS encodes to exactly Python's bytes, Python parses JS's bytes back to the
    same message, and JS decodes Python's bytes to the expected object."""
    all_cases = cases()
    assert len({name for name, _, _ in all_cases}) == len(message_names())
    payload = [
        {"type": name, "obj": to_js(msg), "py": base64.b64encode(msg.SerializeToString()).decode()}
        for name, _, msg in all_cases
    ]
    got = run_js(
        page,
        IMPORT
        + """
        return arg.map(({type, obj, py}) => {
          const codec = pb[type.replace(".", "_")];
          const encoded = codec.encode(untag(obj));
          const decoded = codec.decode(untag({ $b64: py }));
          return tag({ encoded, decoded });
        });
        """,
        payload,
    )
    assert len(got) == len(all_cases)
    for (name, label, msg), result in zip(all_cases, got, strict=True):
        assert result["encoded"] == msg.SerializeToString(), f"{name} {label}: JS bytes differ"
        back = cls(name).FromString(result["encoded"])
        assert back == msg, f"{name} {label}: Python parsed something else"
        assert result["decoded"] == untag(to_js(msg)), f"{name} {label}: JS decoded wrong"


def test_envelope_with_each_body_and_link_seq(page: Any) -> None:
    """Envelope is what crosses the wire: each body at link seq 0 and at the uint64 maximum."""
    env_cls = cls("Envelope")
    oneof = env_cls.DESCRIPTOR.oneofs_by_name["body"]
    msgs = []
    for f in oneof.fields:
        for seq in (0, 2**64 - 1):
            env = env_cls(seq=seq)
            getattr(env, f.name).CopyFrom(filled(f.message_type, 0))
            msgs.append(env)
    got = run_js(
        page,
        IMPORT
        + """
        return arg.map((py) => {
          const env = pb.decodeEnvelope(untag({ $b64: py }));
          return tag({ body: env.body, again: pb.encodeEnvelope(env) });
        });
        """,
        [base64.b64encode(m.SerializeToString()).decode() for m in msgs],
    )
    for msg, result in zip(msgs, got, strict=True):
        assert result["body"] == msg.WhichOneof("body")
        assert env_cls.FromString(result["again"]) == msg


def test_decoder_skips_unknown_fields_and_refuses_broken_bytes(page: Any) -> None:
    """Unknown fields (every wire type) are dropped; truncated data, over-long varints, lengths
    past the end, groups and invalid UTF-8 are DecodeErrors, never a wrong object."""
    chat = cls("ChatMsg")(id=5, from_id="a")
    good = chat.SerializeToString()
    unknown = b"\xf8\x07\x01" + b"\xfa\x07\x02hi" + b"\xfd\x07abcd" + b"\xf9\x07" + b"12345678"
    broken = {
        "truncated varint": good + b"\x08\xff",
        "varint of 11 bytes": b"\x08" + b"\xff" * 10 + b"\x01",
        "length past the end": b"\x12\x05ab",
        "start group": b"\x0b",
        "invalid utf-8": b"\x12\x02\xc3\x28",
        "field number 0": b"\x00\x01",
    }
    got = run_js(
        page,
        IMPORT
        + """
        const out = {};
        const ok = pb.ChatMsg.decode(untag(arg.withUnknown));
        out.ok = tag({ id: ok.id, from_id: ok.from_id, keys: Object.keys(ok).length });
        for (const [name, data] of Object.entries(arg.broken)) {
          try { pb.ChatMsg.decode(untag(data)); out[name] = "decoded"; }
          catch (e) { out[name] = e.name; }
        }
        return out;
        """,
        {"withUnknown": b64(good + unknown), "broken": {k: b64(v) for k, v in broken.items()}},
    )
    assert got["ok"]["id"] == 5 and got["ok"]["from_id"] == "a"
    assert got["ok"]["keys"] == len(to_js(cls("ChatMsg")()))
    for name in broken:
        assert got[name] == "DecodeError", name


def test_encoder_refuses_what_it_cannot_express(page: Any) -> None:
    """Out-of-range integers, wrong types, unknown field names and two oneof members throw."""
    got = run_js(
        page,
        IMPORT
        + """
        const tries = {
          "uint64 2^64": () => pb.ChatMsg.encode({ id: 1n << 64n }),
          "negative uint64": () => pb.ChatMsg.encode({ id: -1n }),
          "uint32 2^32": () => pb.Welcome.encode({ window: 2 ** 32 }),
          "unsafe number": () => pb.ChatMsg.encode({ id: 2 ** 60 }),
          "string for bytes": () => pb.ChatMsg.encode({ body: "x" }),
          "typo": () => pb.ChatMsg.encode({ fromId: "a" }),
          "two oneof members": () => pb.Envelope.encode({ ping: {}, pong: {} }),
        };
        const out = {};
        for (const [k, f] of Object.entries(tries)) {
          try { f(); out[k] = "encoded"; } catch (e) { out[k] = e.name; }
        }
        out.negInt32 = tag(pb.Welcome.encode({}));
        return out;
        """,
    )
    for name in ("uint64 2^64", "negative uint64", "uint32 2^32", "unsafe number"):
        assert got[name] in ("RangeError", "TypeError"), name
    for name in ("string for bytes", "typo", "two oneof members"):
        assert got[name] == "TypeError", name


@pytest.mark.parametrize("value", [-1, -(2**31)])
def test_negative_enum_and_int32_match_python(page: Any, value: int) -> None:
    """A negative int32 or enum value is ten bytes on the wire, as in Python."""
    err = cls("Error")()
    err.code = value  # an open enum keeps unknown numbers
    got = run_js(
        page,
        IMPORT
        + """
        const b = pb.Error.encode({ code: arg });
        return tag({ b, d: pb.Error.decode(b).code });
        """,
        value,
    )
    assert got["b"] == err.SerializeToString()
    assert got["d"] == value
