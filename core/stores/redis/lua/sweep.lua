-- sweep one tenant: expire up to P.limit overdue reservations, then prune one page of what
-- is past retention (idle dimension ledgers, runs counted in windows that have closed),
-- resuming where the last sweep left off. Returns how many reservations expired.

local expired = reap(P.limit)

local function page(key, cursor_field, keep)
  local cursor = redis.call('HGET', K_META, cursor_field) or '0'
  local found = redis.call('HSCAN', key, cursor, 'COUNT', CFG.prune_batch)
  for i = 1, #found[2], 2 do
    if not keep(found[2][i], found[2][i + 1]) then redis.call('HDEL', key, found[2][i]) end
  end
  redis.call('HSET', K_META, cursor_field, found[1])
end

page(K_LEDGERS, 'prune_ledgers', function(field, packed)
  local path = field_parts(field)
  if base_scope(path) == path then return true end  -- a standard scope's ledger stays
  local _, _, reserved, _, _, _, touched = lparse(packed)
  return reserved ~= 0 or touched + CFG.dimension_idle_ttl_ms >= NOW
end)
page(K_QRUNS, 'prune_runs', function(field, window)
  local period = split(field, '|')[3]
  return period == nil or period == '' or current_bucket(period) == window
end)

return reply({expired = expired})
