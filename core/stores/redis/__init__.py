"""The Redis store: every tenant one cluster slot and one atomic domain, one function call of
one library per operation.

- `keys`: where a tenant's data lives;
- `functions`: the Lua library (`lua/`), its loading, and where a call goes;
- `payloads`, `replies`: values as the scripts read and answer them;
- `codec`: per kind of operation, the function, keys and arguments, and reply → result;
- `flow`: the Redis steps of each operation, written once;
- `batching`: calls that queue up behind one in flight to a node, sent as one call;
- `store`: `RedisStore`, which drives flows with a sync and an asyncio client.
"""

from __future__ import annotations

from ...reports import ReportRow
from .keys import TENANTS_KEY, reservation_key, tenant_keys
from .store import RedisStore

__all__ = ["TENANTS_KEY", "RedisStore", "ReportRow", "reservation_key", "tenant_keys"]
