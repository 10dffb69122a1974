"""What routes receive: the services from the lifespan state, the caller's workspace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from batchd.api.bodies import BodyBudget
from batchd.backends.router import Router
from batchd.backends.runner import BackendRunner
from batchd.config import Settings
from batchd.errors import PermissionDenied
from batchd.metrics import Metrics
from batchd.usecases.batches import BatchService
from batchd.usecases.estimate import EstimateService
from batchd.usecases.keys import Authenticator, Caller
from batchd.usecases.messages import MessageService
from batchd.usecases.overview import Overview
from batchd.usecases.tokens import TokenService
from batchd.usecases.usage import UsageService
from batchd.usecases.webhooks import WebhookService


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    clock: Callable[[], float]
    batches: BatchService
    messages: MessageService
    auth: Authenticator
    router: Router
    runners: dict[str, BackendRunner]
    tokens: TokenService
    metrics: Metrics
    overview: Overview
    bodies: BodyBudget
    webhooks: WebhookService
    usage: UsageService
    estimates: EstimateService


def get_services(request: Request) -> Services:
    services = request.state.services
    assert isinstance(services, Services)
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def get_caller(request: Request, services: ServicesDep) -> Caller:
    headers = request.headers
    return await services.auth.caller(
        presented_key(request), host=headers.get("host"), origin=headers.get("origin")
    )


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_operator(caller: CallerDep) -> Caller:
    if not caller.operator:
        raise PermissionDenied(
            "this route shows every workspace's figures: it needs an operator key "
            "(`batchd keys create NAME --operator`)"
        )
    return caller


OperatorDep = Annotated[Caller, Depends(get_operator)]


async def get_workspace(caller: CallerDep) -> str:
    return caller.workspace


WorkspaceDep = Annotated[str, Depends(get_workspace)]


def origin(request: Request, settings: Settings) -> str:
    """The public origin for URLs we hand out (``results_url``, which the SDK follows with
    the caller's key): the configured one, else the address this connection reached.

    Never the ``Host`` or ``X-Forwarded-*`` headers: a client or a proxy could point them
    anywhere. Behind a proxy, configure ``public_url``.
    """
    if settings.public_url:
        return settings.public_url.rstrip("/")
    server = request.scope.get("server")
    if not server or server[1] is None:
        return str(request.base_url).rstrip("/")  # a unix socket: no address to name
    host, port = server
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
