"""AccessService: who am I (users, roles and grants come with the privileges issue)."""

from __future__ import annotations

from finetune.control.v1 import access_pb2, access_pb2_grpc
from services.control.api.principals import user


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    async def WhoAmI(self, request, context):
        principal = user()
        return access_pb2.Principal(account_id=principal.account_id, user_id=principal.user_id,
                                    user_name=principal.user_name)
