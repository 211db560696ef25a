"""The service's table of served endpoints, `(customer, name) → (record, model)`, indexed by uid.

Why a dict subclass: reads stay C-speed on the ingest path (one lookup per request), and the
NATS side asks "which endpoint is uid X" once per owned endpoint every second (`_kick_owned`):
a scan of the table there cost 87 ms of event loop per second at 2,000 owned endpoints.
Only the mutations the service uses are kept in step with the index; the others raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from logferry.service.endpoints import EndpointModel
    from logferry.service.records import EndpointRecord

EndpointKey = tuple[str, str]
Entry = tuple["EndpointRecord", "EndpointModel"]


class EndpointTable(dict[EndpointKey, Entry]):
    """A dict whose `key_of(uid)` is a lookup, not a scan."""

    def __init__(self) -> None:
        super().__init__()
        self._by_uid: dict[str, EndpointKey] = {}

    def key_of(self, uid: str) -> EndpointKey | None:
        return self._by_uid.get(uid)

    def __setitem__(self, key: EndpointKey, entry: Entry) -> None:
        old = super().get(key)
        if old is not None and self._by_uid.get(old[0].uid_prefix) == key:
            del self._by_uid[old[0].uid_prefix]
        super().__setitem__(key, entry)
        self._by_uid[entry[0].uid_prefix] = key

    def __delitem__(self, key: EndpointKey) -> None:
        entry = super().pop(key)
        self._forget(key, entry)

    def pop(self, key: EndpointKey, *default: Any) -> Any:
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        entry = super().pop(key)
        self._forget(key, entry)
        return entry

    def clear(self) -> None:
        super().clear()
        self._by_uid.clear()

    def _forget(self, key: EndpointKey, entry: Entry) -> None:
        if self._by_uid.get(entry[0].uid_prefix) == key:
            del self._by_uid[entry[0].uid_prefix]

    def _unsupported(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("EndpointTable: use item assignment, pop or del (the uid index)")

    update = setdefault = popitem = __ior__ = _unsupported
