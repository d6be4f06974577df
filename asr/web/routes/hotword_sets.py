"""Named hotword sets: POST/GET /api/hotword_sets, GET/PUT/DELETE /api/hotword_sets/{name}.

A set holds plain words (never paths or URLs: a word that looks like one is a word) and a
correction dictionary (wrong -> right), is stored in the service's database and is versioned;
requests name sets in `hotword_sets` (docs/hotwords.md). Behind the token like every route.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field

from asr.service.core import Service
from asr.web.deps import get_service, require_admin

router = APIRouter(prefix="/api/hotword_sets", tags=["hotword sets"])


class SetContent(BaseModel):
    """A set's words and corrections."""

    model_config = ConfigDict(extra="forbid")

    words: list[str] | str = Field(
        default_factory=list,
        description="Plain words: a list, or one text with a word per line (or separated by spaces or commas)",
        examples=[["通义千问", "达摩院"]],
    )
    corrections: dict[str, str] | list[tuple[str, str]] = Field(
        default_factory=dict,
        description="Correction dictionary applied after recognition: wrong form -> right form",
        examples=[{"通易千文": "通义千问"}],
    )


class NewSet(SetContent):
    name: str = Field(description="Letters (Chinese too), digits, '-', '_', '.'; at most 64", examples=["客服"])


@router.post("", status_code=201, summary="Create a hotword set (version 1)", dependencies=[Depends(require_admin)])
async def create_set(service: Annotated[Service, Depends(get_service)], body: NewSet) -> dict[str, Any]:
    made = await asyncio.to_thread(service.hotword_sets.create, body.name, body.words, body.corrections)
    return made.to_dict()


@router.get("", summary="List the hotword sets (names, versions, sizes)")
async def list_sets(service: Annotated[Service, Depends(get_service)]) -> dict[str, Any]:
    return {"sets": [s.summary() for s in service.hotword_sets.list()]}


@router.get("/{name}", summary="One hotword set with its words and corrections")
async def get_set(service: Annotated[Service, Depends(get_service)], name: str) -> dict[str, Any]:
    return service.hotword_sets.get(name).to_dict()


@router.put(
    "/{name}",
    summary="Replace a set's words and corrections (its version goes up if they change)",
    dependencies=[Depends(require_admin)],
)
async def replace_set(
    service: Annotated[Service, Depends(get_service)], name: str, body: SetContent
) -> dict[str, Any]:
    changed = await asyncio.to_thread(service.hotword_sets.replace, name, body.words, body.corrections)
    return changed.to_dict()


@router.delete(
    "/{name}",
    status_code=204,
    summary="Delete a hotword set (jobs that used it keep their words)",
    dependencies=[Depends(require_admin)],
)
async def delete_set(service: Annotated[Service, Depends(get_service)], name: str) -> Response:
    await asyncio.to_thread(service.hotword_sets.delete, name)
    return Response(status_code=204)
