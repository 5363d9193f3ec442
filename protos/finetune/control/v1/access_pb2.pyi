import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ObjectType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECT_TYPE_UNSPECIFIED: _ClassVar[ObjectType]
    ACCOUNT: _ClassVar[ObjectType]
    DATABASE: _ClassVar[ObjectType]
    SCHEMA: _ClassVar[ObjectType]
    MODEL: _ClassVar[ObjectType]
    ROLE: _ClassVar[ObjectType]

class Privilege(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIVILEGE_UNSPECIFIED: _ClassVar[Privilege]
    USAGE: _ClassVar[Privilege]
    OWNERSHIP: _ClassVar[Privilege]
    CREATE_MODEL: _ClassVar[Privilege]
    CREATE_TABLE: _ClassVar[Privilege]
    CREATE_DATABASE: _ClassVar[Privilege]

class GranteeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANTEE_TYPE_UNSPECIFIED: _ClassVar[GranteeType]
    TO_USER: _ClassVar[GranteeType]
    TO_ROLE: _ClassVar[GranteeType]
    TO_ACCOUNT: _ClassVar[GranteeType]
OBJECT_TYPE_UNSPECIFIED: ObjectType
ACCOUNT: ObjectType
DATABASE: ObjectType
SCHEMA: ObjectType
MODEL: ObjectType
ROLE: ObjectType
PRIVILEGE_UNSPECIFIED: Privilege
USAGE: Privilege
OWNERSHIP: Privilege
CREATE_MODEL: Privilege
CREATE_TABLE: Privilege
CREATE_DATABASE: Privilege
GRANTEE_TYPE_UNSPECIFIED: GranteeType
TO_USER: GranteeType
TO_ROLE: GranteeType
TO_ACCOUNT: GranteeType

class Principal(_message.Message):
    __slots__ = ("account_id", "user_id", "user_name", "roles", "default_role", "key_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ROLE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    user_id: str
    user_name: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    default_role: str
    key_id: str
    def __init__(self, account_id: _Optional[str] = ..., user_id: _Optional[str] = ..., user_name: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., default_role: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class User(_message.Message):
    __slots__ = ("id", "name", "default_role", "created_on")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_ON_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    default_role: str
    created_on: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., default_role: _Optional[str] = ..., created_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateUserRequest(_message.Message):
    __slots__ = ("name", "default_role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_role: str
    def __init__(self, name: _Optional[str] = ..., default_role: _Optional[str] = ...) -> None: ...

class ListUsersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListUsersResponse(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ...) -> None: ...

class SetDefaultRoleRequest(_message.Message):
    __slots__ = ("user", "role")
    USER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    user: str
    role: str
    def __init__(self, user: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class Role(_message.Message):
    __slots__ = ("id", "name", "comment", "created_on")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_ON_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    comment: str
    created_on: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., comment: _Optional[str] = ..., created_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateRoleRequest(_message.Message):
    __slots__ = ("name", "comment")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    comment: str
    def __init__(self, name: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class DropRoleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropRoleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRolesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRolesResponse(_message.Message):
    __slots__ = ("roles",)
    ROLES_FIELD_NUMBER: _ClassVar[int]
    roles: _containers.RepeatedCompositeFieldContainer[Role]
    def __init__(self, roles: _Optional[_Iterable[_Union[Role, _Mapping]]] = ...) -> None: ...

class GrantRoleRequest(_message.Message):
    __slots__ = ("role", "grantee_type", "grantee")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_TYPE_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_FIELD_NUMBER: _ClassVar[int]
    role: str
    grantee_type: GranteeType
    grantee: str
    def __init__(self, role: _Optional[str] = ..., grantee_type: _Optional[_Union[GranteeType, str]] = ..., grantee: _Optional[str] = ...) -> None: ...

class GrantRoleResponse(_message.Message):
    __slots__ = ("granted",)
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    def __init__(self, granted: _Optional[bool] = ...) -> None: ...

class RevokeRoleRequest(_message.Message):
    __slots__ = ("role", "grantee_type", "grantee")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_TYPE_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_FIELD_NUMBER: _ClassVar[int]
    role: str
    grantee_type: GranteeType
    grantee: str
    def __init__(self, role: _Optional[str] = ..., grantee_type: _Optional[_Union[GranteeType, str]] = ..., grantee: _Optional[str] = ...) -> None: ...

class RevokeRoleResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: bool
    def __init__(self, revoked: _Optional[bool] = ...) -> None: ...

class GrantPrivilegeRequest(_message.Message):
    __slots__ = ("privilege", "object_type", "object_name", "role", "grantee_account")
    PRIVILEGE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    privilege: Privilege
    object_type: ObjectType
    object_name: str
    role: str
    grantee_account: str
    def __init__(self, privilege: _Optional[_Union[Privilege, str]] = ..., object_type: _Optional[_Union[ObjectType, str]] = ..., object_name: _Optional[str] = ..., role: _Optional[str] = ..., grantee_account: _Optional[str] = ...) -> None: ...

class GrantPrivilegeResponse(_message.Message):
    __slots__ = ("granted",)
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    def __init__(self, granted: _Optional[bool] = ...) -> None: ...

class RevokePrivilegeRequest(_message.Message):
    __slots__ = ("privilege", "object_type", "object_name", "role", "grantee_account")
    PRIVILEGE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    privilege: Privilege
    object_type: ObjectType
    object_name: str
    role: str
    grantee_account: str
    def __init__(self, privilege: _Optional[_Union[Privilege, str]] = ..., object_type: _Optional[_Union[ObjectType, str]] = ..., object_name: _Optional[str] = ..., role: _Optional[str] = ..., grantee_account: _Optional[str] = ...) -> None: ...

class RevokePrivilegeResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: bool
    def __init__(self, revoked: _Optional[bool] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("type", "name")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    type: ObjectType
    name: str
    def __init__(self, type: _Optional[_Union[ObjectType, str]] = ..., name: _Optional[str] = ...) -> None: ...

class ShowGrantsRequest(_message.Message):
    __slots__ = ("to_role", "to_user", "on", "of_role")
    TO_ROLE_FIELD_NUMBER: _ClassVar[int]
    TO_USER_FIELD_NUMBER: _ClassVar[int]
    ON_FIELD_NUMBER: _ClassVar[int]
    OF_ROLE_FIELD_NUMBER: _ClassVar[int]
    to_role: str
    to_user: str
    on: ObjectRef
    of_role: str
    def __init__(self, to_role: _Optional[str] = ..., to_user: _Optional[str] = ..., on: _Optional[_Union[ObjectRef, _Mapping]] = ..., of_role: _Optional[str] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("created_on", "privilege", "granted_on", "name", "granted_to", "grantee_name", "granted_by", "grantee_account")
    CREATED_ON_FIELD_NUMBER: _ClassVar[int]
    PRIVILEGE_FIELD_NUMBER: _ClassVar[int]
    GRANTED_ON_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRANTED_TO_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_NAME_FIELD_NUMBER: _ClassVar[int]
    GRANTED_BY_FIELD_NUMBER: _ClassVar[int]
    GRANTEE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    created_on: _timestamp_pb2.Timestamp
    privilege: str
    granted_on: ObjectType
    name: str
    granted_to: GranteeType
    grantee_name: str
    granted_by: str
    grantee_account: str
    def __init__(self, created_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., privilege: _Optional[str] = ..., granted_on: _Optional[_Union[ObjectType, str]] = ..., name: _Optional[str] = ..., granted_to: _Optional[_Union[GranteeType, str]] = ..., grantee_name: _Optional[str] = ..., granted_by: _Optional[str] = ..., grantee_account: _Optional[str] = ...) -> None: ...

class ShowGrantsResponse(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    def __init__(self, grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("id", "user", "created_on", "revoked_on")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CREATED_ON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_ON_FIELD_NUMBER: _ClassVar[int]
    id: str
    user: str
    created_on: _timestamp_pb2.Timestamp
    revoked_on: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., user: _Optional[str] = ..., created_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_on: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("user",)
    USER_FIELD_NUMBER: _ClassVar[int]
    user: str
    def __init__(self, user: _Optional[str] = ...) -> None: ...

class CreatedApiKey(_message.Message):
    __slots__ = ("info", "key")
    INFO_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    info: ApiKey
    key: str
    def __init__(self, info: _Optional[_Union[ApiKey, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("user", "all_users")
    USER_FIELD_NUMBER: _ClassVar[int]
    ALL_USERS_FIELD_NUMBER: _ClassVar[int]
    user: str
    all_users: bool
    def __init__(self, user: _Optional[str] = ..., all_users: _Optional[bool] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...
