"""AccessService: who am I, users, roles, API keys, GRANT / REVOKE / SHOW GRANTS. The account
directory decides who may do what (services/control/core/access_control.py)."""

from __future__ import annotations

import asyncio

from finetune.control.v1 import access_pb2, access_pb2_grpc
from services.control.api import messages
from services.control.api.principals import user
from services.control.core.access_control import AccountDirectory, GrantsQuery


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, directory: AccountDirectory):
        self._directory = directory

    async def _call(self, method, *args):
        return await asyncio.to_thread(method, user(), *args)

    async def WhoAmI(self, request, context):
        me = await self._call(self._directory.whoami)
        p = me.principal
        return access_pb2.Principal(account_id=p.account_id, user_id=p.user_id,
                                    user_name=p.user_name, roles=me.roles,
                                    default_role=me.default_role or "", key_id=p.key_id)

    async def CreateUser(self, request, context):
        return messages.user_message(await self._call(
            self._directory.create_user, request.name, request.default_role))

    async def ListUsers(self, request, context):
        users = await self._call(self._directory.list_users)
        return access_pb2.ListUsersResponse(users=[messages.user_message(u) for u in users])

    async def SetDefaultRole(self, request, context):
        return messages.user_message(await self._call(
            self._directory.set_default_role, request.user, request.role))

    async def CreateRole(self, request, context):
        return messages.role_message(await self._call(
            self._directory.create_role, request.name, request.comment))

    async def DropRole(self, request, context):
        await self._call(self._directory.drop_role, request.name)
        return access_pb2.DropRoleResponse()

    async def ListRoles(self, request, context):
        roles = await self._call(self._directory.list_roles)
        return access_pb2.ListRolesResponse(roles=[messages.role_message(r) for r in roles])

    async def GrantRole(self, request, context):
        granted = await self._call(self._directory.grant_role, request.role,
                                   messages.grantee_type(request.grantee_type), request.grantee)
        return access_pb2.GrantRoleResponse(granted=granted)

    async def RevokeRole(self, request, context):
        revoked = await self._call(self._directory.revoke_role, request.role,
                                   messages.grantee_type(request.grantee_type), request.grantee)
        return access_pb2.RevokeRoleResponse(revoked=revoked)

    async def GrantPrivilege(self, request, context):
        granted = await self._call(
            self._directory.grant_privilege, messages.privilege(request.privilege),
            messages.securable(request.object_type, request.object_name), request.role,
            request.grantee_account)
        return access_pb2.GrantPrivilegeResponse(granted=granted)

    async def RevokePrivilege(self, request, context):
        revoked = await self._call(
            self._directory.revoke_privilege, messages.privilege(request.privilege),
            messages.securable(request.object_type, request.object_name), request.role,
            request.grantee_account)
        return access_pb2.RevokePrivilegeResponse(revoked=revoked)

    async def ShowGrants(self, request, context):
        target = request.WhichOneof("target")
        query = GrantsQuery(
            to_role=request.to_role if target == "to_role" else "",
            to_user=request.to_user if target == "to_user" else "",
            on=messages.securable(request.on.type, request.on.name) if target == "on" else None,
            of_role=request.of_role if target == "of_role" else "")
        grants = await self._call(self._directory.show_grants, query)
        return access_pb2.ShowGrantsResponse(grants=[messages.grant_message(g) for g in grants])

    async def CreateApiKey(self, request, context):
        info, key = await self._call(self._directory.create_key, request.user)
        return access_pb2.CreatedApiKey(info=messages.api_key_message(info), key=key)

    async def ListApiKeys(self, request, context):
        keys = await self._call(self._directory.list_keys, request.user, request.all_users)
        return access_pb2.ListApiKeysResponse(keys=[messages.api_key_message(k) for k in keys])

    async def RevokeApiKey(self, request, context):
        return messages.api_key_message(await self._call(self._directory.revoke_key,
                                                         request.key_id))
