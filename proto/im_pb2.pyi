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
    SYSTEM: _ClassVar[MsgType]

class AckType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_TYPE_UNSPECIFIED: _ClassVar[AckType]
    SENT: _ClassVar[AckType]
    DELIVERED: _ClassVar[AckType]
    READ: _ClassVar[AckType]

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
    TOO_MANY_DEVICES: _ClassVar[ErrorCode]
    REPLACED: _ClassVar[ErrorCode]
    TOO_LARGE: _ClassVar[ErrorCode]
    ID_REUSED: _ClassVar[ErrorCode]
    NOT_MEMBER: _ClassVar[ErrorCode]
    MUTED: _ClassVar[ErrorCode]
    REFUSED: _ClassVar[ErrorCode]
    STALE_KEY: _ClassVar[ErrorCode]
    KICKED: _ClassVar[ErrorCode]
    OUT_OF_ORDER: _ClassVar[ErrorCode]

class PresenceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESENCE_UNSPECIFIED: _ClassVar[PresenceState]
    ONLINE: _ClassVar[PresenceState]
    OFFLINE: _ClassVar[PresenceState]
DEST_TYPE_UNSPECIFIED: DestType
SINGLE: DestType
GROUP: DestType
MSG_TYPE_UNSPECIFIED: MsgType
TEXT: MsgType
FILE: MsgType
SYSTEM: MsgType
ACK_TYPE_UNSPECIFIED: AckType
SENT: AckType
DELIVERED: AckType
READ: AckType
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
TOO_MANY_DEVICES: ErrorCode
REPLACED: ErrorCode
TOO_LARGE: ErrorCode
ID_REUSED: ErrorCode
NOT_MEMBER: ErrorCode
MUTED: ErrorCode
REFUSED: ErrorCode
STALE_KEY: ErrorCode
KICKED: ErrorCode
OUT_OF_ORDER: ErrorCode
PRESENCE_UNSPECIFIED: PresenceState
ONLINE: PresenceState
OFFLINE: PresenceState

class Greet(_message.Message):
    __slots__ = ("token", "device_id", "node_id", "since")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    token: str
    device_id: str
    node_id: str
    since: int
    def __init__(self, token: _Optional[str] = ..., device_id: _Optional[str] = ..., node_id: _Optional[str] = ..., since: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("user_id", "node_id", "heartbeat_ms", "max_frame_bytes", "window", "id_slot", "max_body_bytes")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    ID_SLOT_FIELD_NUMBER: _ClassVar[int]
    MAX_BODY_BYTES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    node_id: str
    heartbeat_ms: int
    max_frame_bytes: int
    window: int
    id_slot: int
    max_body_bytes: int
    def __init__(self, user_id: _Optional[str] = ..., node_id: _Optional[str] = ..., heartbeat_ms: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., window: _Optional[int] = ..., id_slot: _Optional[int] = ..., max_body_bytes: _Optional[int] = ...) -> None: ...

class ChatMsg(_message.Message):
    __slots__ = ("id", "from_id", "dest_id", "dest_type", "msg_type", "body", "create_time", "file", "conv_id", "seq", "server_time", "key_id", "after_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    DEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEST_TYPE_FIELD_NUMBER: _ClassVar[int]
    MSG_TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    CONV_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    from_id: str
    dest_id: str
    dest_type: DestType
    msg_type: MsgType
    body: bytes
    create_time: int
    file: FileRef
    conv_id: str
    seq: int
    server_time: int
    key_id: int
    after_id: int
    def __init__(self, id: _Optional[int] = ..., from_id: _Optional[str] = ..., dest_id: _Optional[str] = ..., dest_type: _Optional[_Union[DestType, str]] = ..., msg_type: _Optional[_Union[MsgType, str]] = ..., body: _Optional[bytes] = ..., create_time: _Optional[int] = ..., file: _Optional[_Union[FileRef, _Mapping]] = ..., conv_id: _Optional[str] = ..., seq: _Optional[int] = ..., server_time: _Optional[int] = ..., key_id: _Optional[int] = ..., after_id: _Optional[int] = ...) -> None: ...

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

class SystemBody(_message.Message):
    __slots__ = ("event", "actor", "target", "text", "key_id", "until")
    class Event(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        EVENT_UNSPECIFIED: _ClassVar[SystemBody.Event]
        CREATED: _ClassVar[SystemBody.Event]
        JOINED: _ClassVar[SystemBody.Event]
        LEFT: _ClassVar[SystemBody.Event]
        REMOVED: _ClassVar[SystemBody.Event]
        ROLE: _ClassVar[SystemBody.Event]
        MUTED: _ClassVar[SystemBody.Event]
        DISSOLVED: _ClassVar[SystemBody.Event]
        KEY_ROTATED: _ClassVar[SystemBody.Event]
        NOTICE: _ClassVar[SystemBody.Event]
        WITHHELD: _ClassVar[SystemBody.Event]
        RENAMED: _ClassVar[SystemBody.Event]
    EVENT_UNSPECIFIED: SystemBody.Event
    CREATED: SystemBody.Event
    JOINED: SystemBody.Event
    LEFT: SystemBody.Event
    REMOVED: SystemBody.Event
    ROLE: SystemBody.Event
    MUTED: SystemBody.Event
    DISSOLVED: SystemBody.Event
    KEY_ROTATED: SystemBody.Event
    NOTICE: SystemBody.Event
    WITHHELD: SystemBody.Event
    RENAMED: SystemBody.Event
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    event: SystemBody.Event
    actor: str
    target: str
    text: str
    key_id: int
    until: int
    def __init__(self, event: _Optional[_Union[SystemBody.Event, str]] = ..., actor: _Optional[str] = ..., target: _Optional[str] = ..., text: _Optional[str] = ..., key_id: _Optional[int] = ..., until: _Optional[int] = ...) -> None: ...

class AckMsg(_message.Message):
    __slots__ = ("id", "from_id", "dest_id", "ack_type", "ack_msg_id", "conv_id", "seq")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    DEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACK_MSG_ID_FIELD_NUMBER: _ClassVar[int]
    CONV_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    id: int
    from_id: str
    dest_id: str
    ack_type: AckType
    ack_msg_id: int
    conv_id: str
    seq: int
    def __init__(self, id: _Optional[int] = ..., from_id: _Optional[str] = ..., dest_id: _Optional[str] = ..., ack_type: _Optional[_Union[AckType, str]] = ..., ack_msg_id: _Optional[int] = ..., conv_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

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

class GroupReceipt(_message.Message):
    __slots__ = ("conv_id", "seq", "members", "delivered", "read")
    CONV_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    conv_id: str
    seq: int
    members: int
    delivered: int
    read: int
    def __init__(self, conv_id: _Optional[str] = ..., seq: _Optional[int] = ..., members: _Optional[int] = ..., delivered: _Optional[int] = ..., read: _Optional[int] = ...) -> None: ...

class Sync(_message.Message):
    __slots__ = ("conv_id", "from_seq", "to_seq", "limit")
    CONV_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    conv_id: str
    from_seq: int
    to_seq: int
    limit: int
    def __init__(self, conv_id: _Optional[str] = ..., from_seq: _Optional[int] = ..., to_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class SyncDone(_message.Message):
    __slots__ = ("conv_id", "from_seq", "to_seq", "last_seq")
    CONV_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    conv_id: str
    from_seq: int
    to_seq: int
    last_seq: int
    def __init__(self, conv_id: _Optional[str] = ..., from_seq: _Optional[int] = ..., to_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class ConvState(_message.Message):
    __slots__ = ("conv_id", "type", "peer_id", "last_seq", "min_seq", "max_seq", "read_seq", "device_seq", "peer_read_seq", "peer_delivered_seq", "unread", "head_only")
    CONV_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    MIN_SEQ_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SEQ_FIELD_NUMBER: _ClassVar[int]
    PEER_READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    PEER_DELIVERED_SEQ_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    HEAD_ONLY_FIELD_NUMBER: _ClassVar[int]
    conv_id: str
    type: DestType
    peer_id: str
    last_seq: int
    min_seq: int
    max_seq: int
    read_seq: int
    device_seq: int
    peer_read_seq: int
    peer_delivered_seq: int
    unread: int
    head_only: bool
    def __init__(self, conv_id: _Optional[str] = ..., type: _Optional[_Union[DestType, str]] = ..., peer_id: _Optional[str] = ..., last_seq: _Optional[int] = ..., min_seq: _Optional[int] = ..., max_seq: _Optional[int] = ..., read_seq: _Optional[int] = ..., device_seq: _Optional[int] = ..., peer_read_seq: _Optional[int] = ..., peer_delivered_seq: _Optional[int] = ..., unread: _Optional[int] = ..., head_only: _Optional[bool] = ...) -> None: ...

class CaughtUp(_message.Message):
    __slots__ = ("since",)
    SINCE_FIELD_NUMBER: _ClassVar[int]
    since: int
    def __init__(self, since: _Optional[int] = ...) -> None: ...

class Typing(_message.Message):
    __slots__ = ("conv_id", "user_id", "typing")
    CONV_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPING_FIELD_NUMBER: _ClassVar[int]
    conv_id: str
    user_id: str
    typing: bool
    def __init__(self, conv_id: _Optional[str] = ..., user_id: _Optional[str] = ..., typing: _Optional[bool] = ...) -> None: ...

class Presence(_message.Message):
    __slots__ = ("user_id", "state", "last_seen")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    state: PresenceState
    last_seen: int
    def __init__(self, user_id: _Optional[str] = ..., state: _Optional[_Union[PresenceState, str]] = ..., last_seen: _Optional[int] = ...) -> None: ...

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

class Fanout(_message.Message):
    __slots__ = ("users", "chat", "cursor", "typing", "presence", "group_receipt", "refused")
    USERS_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    TYPING_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    GROUP_RECEIPT_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedScalarFieldContainer[str]
    chat: ChatMsg
    cursor: Cursor
    typing: Typing
    presence: Presence
    group_receipt: GroupReceipt
    refused: ErrorCode
    def __init__(self, users: _Optional[_Iterable[str]] = ..., chat: _Optional[_Union[ChatMsg, _Mapping]] = ..., cursor: _Optional[_Union[Cursor, _Mapping]] = ..., typing: _Optional[_Union[Typing, _Mapping]] = ..., presence: _Optional[_Union[Presence, _Mapping]] = ..., group_receipt: _Optional[_Union[GroupReceipt, _Mapping]] = ..., refused: _Optional[_Union[ErrorCode, str]] = ...) -> None: ...

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
    __slots__ = ("chat", "cursor", "origin", "refused", "duplicate", "moved")
    CHAT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    MOVED_FIELD_NUMBER: _ClassVar[int]
    chat: ChatMsg
    cursor: Cursor
    origin: str
    refused: ErrorCode
    duplicate: bool
    moved: bool
    def __init__(self, chat: _Optional[_Union[ChatMsg, _Mapping]] = ..., cursor: _Optional[_Union[Cursor, _Mapping]] = ..., origin: _Optional[str] = ..., refused: _Optional[_Union[ErrorCode, str]] = ..., duplicate: _Optional[bool] = ..., moved: _Optional[bool] = ...) -> None: ...

class CommittedBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[Committed]
    def __init__(self, records: _Optional[_Iterable[_Union[Committed, _Mapping]]] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("seq", "greet", "welcome", "chat", "ack", "link_ack", "error", "ping", "pong", "cursor", "sync", "sync_done", "conv_state", "caught_up", "typing", "presence", "fanout", "group_receipt", "record")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    GREET_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    LINK_ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    SYNC_DONE_FIELD_NUMBER: _ClassVar[int]
    CONV_STATE_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    TYPING_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    FANOUT_FIELD_NUMBER: _ClassVar[int]
    GROUP_RECEIPT_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    seq: int
    greet: Greet
    welcome: Welcome
    chat: ChatMsg
    ack: AckMsg
    link_ack: LinkAck
    error: Error
    ping: Ping
    pong: Pong
    cursor: Cursor
    sync: Sync
    sync_done: SyncDone
    conv_state: ConvState
    caught_up: CaughtUp
    typing: Typing
    presence: Presence
    fanout: Fanout
    group_receipt: GroupReceipt
    record: TimelineRecord
    def __init__(self, seq: _Optional[int] = ..., greet: _Optional[_Union[Greet, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., chat: _Optional[_Union[ChatMsg, _Mapping]] = ..., ack: _Optional[_Union[AckMsg, _Mapping]] = ..., link_ack: _Optional[_Union[LinkAck, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., pong: _Optional[_Union[Pong, _Mapping]] = ..., cursor: _Optional[_Union[Cursor, _Mapping]] = ..., sync: _Optional[_Union[Sync, _Mapping]] = ..., sync_done: _Optional[_Union[SyncDone, _Mapping]] = ..., conv_state: _Optional[_Union[ConvState, _Mapping]] = ..., caught_up: _Optional[_Union[CaughtUp, _Mapping]] = ..., typing: _Optional[_Union[Typing, _Mapping]] = ..., presence: _Optional[_Union[Presence, _Mapping]] = ..., fanout: _Optional[_Union[Fanout, _Mapping]] = ..., group_receipt: _Optional[_Union[GroupReceipt, _Mapping]] = ..., record: _Optional[_Union[TimelineRecord, _Mapping]] = ...) -> None: ...
