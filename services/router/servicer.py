"""The router's InferenceService: the engine's servicer over the forwarding core, with GetEngine
asked of the engine the request names."""

from __future__ import annotations

from services.common.interceptors import current_principal
from services.inference.servicer import InferenceServicer
from services.router.routing import RoutedCompletions


class RouterServicer(InferenceServicer):
    def __init__(self, routes: RoutedCompletions):
        super().__init__(routes)
        self._routes = routes

    async def GetEngine(self, request, context):
        return await self._routes.engine(current_principal(), request.base_model)
