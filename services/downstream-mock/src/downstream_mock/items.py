"""`/items`: a small validated CRUD resource, the same on every worker.

Items live in the shared SQLite store, so a test can create an item through the gateway
and read it back on any worker. The handlers are sync `def` on purpose: FastAPI runs
them in its thread pool, where waiting on SQLite does not stall the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from downstream_mock.deps import SharedDep
from downstream_mock.errors import MockProblem, problem_responses
from downstream_mock.settings import Settings

# SQLite integers are 64-bit signed; a larger number must be a 422, not an OverflowError.
SQLITE_MAX_INT = 2**63 - 1
ItemId = Annotated[int, Path(ge=1, le=SQLITE_MAX_INT)]


class ItemIn(BaseModel):
    """What a client sends to create or replace an item."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=1000)
    price: float = Field(ge=0, le=1_000_000_000, allow_inf_nan=False)
    quantity: int = Field(default=0, ge=0, le=1_000_000_000)
    tags: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(
        default_factory=list, max_length=20
    )


class Item(ItemIn):
    id: int


class ItemPage(BaseModel):
    items: list[Item]
    total: int = Field(description="how many items exist in all")


def stored(item_id: int, fields: ItemIn) -> Item:
    return Item(id=item_id, **fields.model_dump())


def not_found(item_id: int) -> MockProblem:
    return MockProblem(404, f"no item with id {item_id}", slug="item-not-found")


NOT_FOUND = problem_responses({404: "No such item"})


def items_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/items", tags=["items"])
    max_items = settings.max_items

    @router.get(
        "",
        operation_id="list_items",
        summary="List items.",
        description="Items in id order, `limit` (1-1000) at a time from `offset`, and the total.",
    )
    def list_items(
        shared: SharedDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=SQLITE_MAX_INT)] = 0,
    ) -> ItemPage:
        rows, total = shared.store.list_items(limit=limit, offset=offset)
        items = [stored(item_id, ItemIn.model_validate_json(data)) for item_id, data in rows]
        return ItemPage(items=items, total=total)

    @router.post(
        "",
        operation_id="create_item",
        summary="Create an item.",
        description=(
            "Validates and stores an item; 201 with the item and a relative Location "
            f"(`items/{{id}}`, right behind a path prefix too). 422 on bad input, 507 when "
            f"{max_items} items exist."
        ),
        status_code=201,
        responses=problem_responses({507: "The store is full"}),
    )
    def create_item(item: ItemIn, shared: SharedDep, response: Response) -> Item:
        item_id = shared.store.create_item(item.model_dump_json(), max_items=max_items)
        if item_id is None:
            raise MockProblem(507, f"the mock holds at most {max_items} items", slug="store-full")
        # Relative, so that behind a gateway that strips a prefix (/mock) it still
        # resolves against the URL the client used.
        response.headers["location"] = f"items/{item_id}"
        return stored(item_id, item)

    @router.get(
        "/{item_id}",
        operation_id="get_item",
        summary="Get one item.",
        description="The item with this id; 404 problem+json if there is none.",
        responses=NOT_FOUND,
    )
    def get_item(item_id: ItemId, shared: SharedDep) -> Item:
        data = shared.store.get_item(item_id)
        if data is None:
            raise not_found(item_id)
        return stored(item_id, ItemIn.model_validate_json(data))

    @router.put(
        "/{item_id}",
        operation_id="replace_item",
        summary="Replace an item.",
        description="Replaces the whole item; 404 if there is none, 422 on bad input.",
        responses=NOT_FOUND,
    )
    def replace_item(item_id: ItemId, item: ItemIn, shared: SharedDep) -> Item:
        if not shared.store.replace_item(item_id, item.model_dump_json()):
            raise not_found(item_id)
        return stored(item_id, item)

    @router.delete(
        "/{item_id}",
        operation_id="delete_item",
        summary="Delete an item.",
        description="204 when deleted; 404 problem+json if there is none.",
        status_code=204,
        responses=NOT_FOUND,
    )
    def delete_item(item_id: ItemId, shared: SharedDep) -> None:
        if not shared.store.delete_item(item_id):
            raise not_found(item_id)

    return router
