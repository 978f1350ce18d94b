-- sweep one tenant: expire up to P.limit overdue reservations; returns how many.

return cjson.encode({expired = reap(P.limit)})
