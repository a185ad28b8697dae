from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DestType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEST_TYPE_UNSPECIFIED: _ClassVar[DestType]
    SINGLE: _ClassVar[DestType]
    GROUP: _ClassVar[DestType]

class MsgType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MSG_TYPE_UNSPECIFIED: _ClassVar[MsgType]
    TEXT: _ClassVar[MsgType]
    FILE: _ClassVar[MsgType]

class AckType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_TYPE_UNSPECIFIED: _ClassVar[AckType]
    SENT: _ClassVar[AckType]
    DELIVERED: _ClassVar[AckType]
    READ: _ClassVar[AckType]
    ACCEPTED: _ClassVar[AckType]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    BAD_FRAME: _ClassVar[ErrorCode]
    UNKNOWN_TYPE: _ClassVar[ErrorCode]
    NOT_AUTHENTICATED: _ClassVar[ErrorCode]
    BAD_TOKEN: _ClassVar[ErrorCode]
    GREET_TIMEOUT: _ClassVar[ErrorCode]
    SPOOFED_SENDER: _ClassVar[ErrorCode]
    NOT_FRIEND: _ClassVar[ErrorCode]
    BAD_MESSAGE: _ClassVar[ErrorCode]
    WINDOW_FULL: _ClassVar[ErrorCode]
    RATE_LIMITED: _ClassVar[ErrorCode]
    IDLE_TIMEOUT: _ClassVar[ErrorCode]
    RETRY_LIMIT: _ClassVar[ErrorCode]
    SHUTTING_DOWN: _ClassVar[ErrorCode]
    INTERNAL: _ClassVar[ErrorCode]
    ALREADY_GREETED: _ClassVar[ErrorCode]
    NO_SUCH_FILE: _ClassVar[ErrorCode]
    NOT_RECEIVED: _ClassVar[ErrorCode]
    TOO_MANY_DEVICES: _ClassVar[ErrorCode]
    REPLACED: _ClassVar[ErrorCode]
    ID_REUSED: _ClassVar[ErrorCode]
DEST_TYPE_UNSPECIFIED: DestType
SINGLE: DestType
GROUP: DestType
MSG_TYPE_UNSPECIFIED: MsgType
TEXT: MsgType
FILE: MsgType
ACK_TYPE_UNSPECIFIED: AckType
SENT: AckType
DELIVERED: AckType
READ: AckType
ACCEPTED: AckType
ERROR_CODE_UNSPECIFIED: ErrorCode
BAD_FRAME: ErrorCode
UNKNOWN_TYPE: ErrorCode
NOT_AUTHENTICATED: ErrorCode
BAD_TOKEN: ErrorCode
GREET_TIMEOUT: ErrorCode
SPOOFED_SENDER: ErrorCode
NOT_FRIEND: ErrorCode
BAD_MESSAGE: ErrorCode
WINDOW_FULL: ErrorCode
RATE_LIMITED: ErrorCode
IDLE_TIMEOUT: ErrorCode
RETRY_LIMIT: ErrorCode
SHUTTING_DOWN: ErrorCode
INTERNAL: ErrorCode
ALREADY_GREETED: ErrorCode
NO_SUCH_FILE: ErrorCode
NOT_RECEIVED: ErrorCode
TOO_MANY_DEVICES: ErrorCode
REPLACED: ErrorCode
ID_REUSED: ErrorCode

class Greet(_message.Message):
    __slots__ = ("token", "device_id", "node_id")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    token: str
    device_id: str
    node_id: str
    def __init__(self, token: _Optional[str] = ..., device_id: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("user_id", "node_id", "heartbeat_ms", "max_frame_bytes", "window", "id_slot")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ID_SLOT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    node_id: str
    heartbeat_ms: int
    max_frame_bytes: int
    window: int
    id_slot: int
    def __init__(self, user_id: _Optional[str] = ..., node_id: _Optional[str] = ..., heartbeat_ms: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., window: _Optional[int] = ..., id_slot: _Optional[int] = ...) -> None: ...

class ChatMsg(_message.Message):
    __slots__ = ("id", "from_id", "dest_id", "dest_type", "msg_type", "body", "create_time", "file", "read_tag", "stream", "stream_seq", "stream_floor", "from_store", "conv_id", "seq", "server_time", "key_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    DEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEST_TYPE_FIELD_NUMBER: _ClassVar[int]
    MSG_TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    READ_TAG_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    STREAM_SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_FLOOR_FIELD_NUMBER: _ClassVar[int]
    FROM_STORE_FIELD_NUMBER: _ClassVar[int]
    CONV_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    from_id: str
    dest_id: str
    dest_type: DestType
    msg_type: MsgType
    body: bytes
    create_time: int
    file: FileRef
    read_tag: bytes
    stream: int
    stream_seq: int
    stream_floor: int
    from_store: bool
    conv_id: str
    seq: int
    server_time: int
    key_id: int
    def __init__(self, id: _Optional[int] = ..., from_id: _Optional[str] = ..., dest_id: _Optional[str] = ..., dest_type: _Optional[_Union[DestType, str]] = ..., msg_type: _Optional[_Union[MsgType, str]] = ..., body: _Optional[bytes] = ..., create_time: _Optional[int] = ..., file: _Optional[_Union[FileRef, _Mapping]] = ..., read_tag: _Optional[bytes] = ..., stream: _Optional[int] = ..., stream_seq: _Optional[int] = ..., stream_floor: _Optional[int] = ..., from_store: _Optional[bool] = ..., conv_id: _Optional[str] = ..., seq: _Optional[int] = ..., server_time: _Optional[int] = ..., key_id: _Optional[int] = ...) -> None: ...

class FileRef(_message.Message):
    __slots__ = ("id", "size", "checksum")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    id: str
    size: int
    checksum: str
    def __init__(self, id: _Optional[str] = ..., size: _Optional[int] = ..., checksum: _Optional[str] = ...) -> None: ...

class FileBody(_message.Message):
    __slots__ = ("file_id", "checksum", "size", "name", "key", "sha256")
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    checksum: str
    size: int
    name: str
    key: bytes
    sha256: bytes
    def __init__(self, file_id: _Optional[str] = ..., checksum: _Optional[str] = ..., size: _Optional[int] = ..., name: _Optional[str] = ..., key: _Optional[bytes] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class AckMsg(_message.Message):
    __slots__ = ("id", "from_id", "dest_id", "ack_type", "ack_msg_id", "read_tag", "seq")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    DEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACK_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    READ_TAG_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    id: int
    from_id: str
    dest_id: str
    ack_type: AckType
    ack_msg_id: int
    read_tag: bytes
    seq: int
    def __init__(self, id: _Optional[int] = ..., from_id: _Optional[str] = ..., dest_id: _Optional[str] = ..., ack_type: _Optional[_Union[AckType, str]] = ..., ack_msg_id: _Optional[int] = ..., read_tag: _Optional[bytes] = ..., seq: _Optional[int] = ...) -> None: ...

class LinkAck(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "detail", "ref_seq", "ref_msg_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REF_SEQ_FIELD_NUMBER: _ClassVar[int]
    REF_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    detail: str
    ref_seq: int
    ref_msg_id: int
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., detail: _Optional[str] = ..., ref_seq: _Optional[int] = ..., ref_msg_id: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class Pong(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: int
    def __init__(self, nonce: _Optional[int] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class Bounce(_message.Message):
    __slots__ = ("chat", "ack")
    CHAT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    chat: ChatMsg
    ack: AckMsg
    def __init__(self, chat: _Optional[_Union[ChatMsg, _Mapping]] = ..., ack: _Optional[_Union[AckMsg, _Mapping]] = ...) -> None: ...

class OfflineRecord(_message.Message):
    __slots__ = ("chat", "ack", "rearm")
    CHAT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    REARM_FIELD_NUMBER: _ClassVar[int]
    chat: ChatMsg
    ack: AckMsg
    rearm: bool
    def __init__(self, chat: _Optional[_Union[ChatMsg, _Mapping]] = ..., ack: _Optional[_Union[AckMsg, _Mapping]] = ..., rearm: _Optional[bool] = ...) -> None: ...

class OfflineBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[OfflineRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[OfflineRecord, _Mapping]]] = ...) -> None: ...

class Cursor(_message.Message):
    __slots__ = ("conv_id", "user_id", "type", "seq")
    CONV_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    conv_id: str
    user_id: str
    type: AckType
    seq: int
    def __init__(self, conv_id: _Optional[str] = ..., user_id: _Optional[str] = ..., type: _Optional[_Union[AckType, str]] = ..., seq: _Optional[int] = ...) -> None: ...

class Fanout(_message.Message):
    __slots__ = ("users", "chat", "cursor", "refused")
    USERS_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedScalarFieldContainer[str]
    chat: ChatMsg
    cursor: Cursor
    refused: ErrorCode
    def __init__(self, users: _Optional[_Iterable[str]] = ..., chat: _Optional[_Union[ChatMsg, _Mapping]] = ..., cursor: _Optional[_Union[Cursor, _Mapping]] = ..., refused: _Optional[_Union[ErrorCode, str]] = ...) -> None: ...

class TimelineRecord(_message.Message):
    __slots__ = ("chat", "cursor", "device_id", "origin")
    CHAT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    chat: ChatMsg
    cursor: Cursor
    device_id: str
    origin: str
    def __init__(self, chat: _Optional[_Union[ChatMsg, _Mapping]] = ..., cursor: _Optional[_Union[Cursor, _Mapping]] = ..., device_id: _Optional[str] = ..., origin: _Optional[str] = ...) -> None: ...

class TimelineBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[TimelineRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[TimelineRecord, _Mapping]]] = ...) -> None: ...

class Committed(_message.Message):
    __slots__ = ("chat", "cursor", "origin", "refused", "duplicate")
    CHAT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    chat: ChatMsg
    cursor: Cursor
    origin: str
    refused: ErrorCode
    duplicate: bool
    def __init__(self, chat: _Optional[_Union[ChatMsg, _Mapping]] = ..., cursor: _Optional[_Union[Cursor, _Mapping]] = ..., origin: _Optional[str] = ..., refused: _Optional[_Union[ErrorCode, str]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class CommittedBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Committed]
    def __init__(self, records: _Optional[_Iterable[_Union[Committed, _Mapping]]] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("seq", "greet", "welcome", "chat", "ack", "link_ack", "error", "ping", "pong", "drain", "bounce", "fanout")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    GREET_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    LINK_ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    BOUNCE_FIELD_NUMBER: _ClassVar[int]
    FANOUT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    greet: Greet
    welcome: Welcome
    chat: ChatMsg
    ack: AckMsg
    link_ack: LinkAck
    error: Error
    ping: Ping
    pong: Pong
    drain: Drain
    bounce: Bounce
    fanout: Fanout
    def __init__(self, seq: _Optional[int] = ..., greet: _Optional[_Union[Greet, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., chat: _Optional[_Union[ChatMsg, _Mapping]] = ..., ack: _Optional[_Union[AckMsg, _Mapping]] = ..., link_ack: _Optional[_Union[LinkAck, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., bounce: _Optional[_Union[Bounce, _Mapping]] = ..., fanout: _Optional[_Union[Fanout, _Mapping]] = ...) -> None: ...
