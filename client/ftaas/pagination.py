"""The pages every ``list`` method returns: the wire ``Page`` (``.data``, ``.has_more``, first
and last id) that, iterated, goes on to the next pages with ``after=<last id>``, as
openai-python's ``SyncCursorPage``/``AsyncCursorPage`` do. One page type for every list, so a
caller reads one page or walks them all the same way on every resource."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Generic, NoReturn, TypeVar

from pydantic import PrivateAttr

from ftaas.types import Page

T = TypeVar("T")


class SyncPage(Page[T], Generic[T]):
    """A page from ``Client``: ``for item in page`` sees its items, then those of every next
    page, fetched only as the loop gets there."""

    _after: Callable[[str], SyncPage[T]] | None = PrivateAttr(default=None)

    def next_page(self) -> SyncPage[T] | None:
        """The page after this one, or ``None`` on the last."""
        if not self.has_more or self.last_id is None or self._after is None:
            return None
        return self._after(self.last_id)

    def __iter__(self) -> Iterator[T]:  # type: ignore[override]  # items, not pydantic's fields
        page: SyncPage[T] | None = self
        while page is not None:
            yield from page.data
            page = page.next_page()


class AsyncPage(Page[T], Generic[T]):
    """A page from ``AsyncClient``: ``async for item in page`` sees its items, then those of
    every next page."""

    _after: Callable[[str], Awaitable[AsyncPage[T]]] | None = PrivateAttr(default=None)

    async def next_page(self) -> AsyncPage[T] | None:
        """The page after this one, or ``None`` on the last."""
        if not self.has_more or self.last_id is None or self._after is None:
            return None
        return await self._after(self.last_id)

    async def __aiter__(self) -> AsyncIterator[T]:
        page: AsyncPage[T] | None = self
        while page is not None:
            for item in page.data:
                yield item
            page = await page.next_page()

    def __iter__(self) -> NoReturn:
        """A plain ``for`` would walk pydantic's fields, or only this page: refuse it."""
        raise TypeError("an AsyncPage is iterated with `async for` (or read its .data)")
