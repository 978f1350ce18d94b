-- sweep one tenant: expire up to P.limit overdue reservations, then, when a pass is due,
-- prune one page of what is past retention (idle dimension ledgers, runs counted in
-- windows that have closed), resuming where the last sweep left off. A pass starts at most
-- every 1/720 of the idle ttl (as _prune in memory/sweep.py: an hour at the default 30
-- days) and goes on a page per sweep until it is through; between passes a sweep of an idle
-- tenant writes nothing. Returns how many reservations expired.

local function base_scope(path)
  -- a ledger path without its trailing dimension segment (`.../run:r1` -> `...`)
  local head, key = string.match(path, '^(.*)/([^/:]+):[^/]*$')
  if head and not LEVELS[key] then return head end
  return path
end

local expired = reap(P.limit)

local meta = redis.call('HMGET', K_META, 'prune_ledgers', 'prune_runs', 'prune_at')
local through = (meta[1] or '0') == '0' and (meta[2] or '0') == '0'
if through and NOW < tonumber(meta[3] or '0') then return reply({expired = expired}) end

local function page(key, cursor_field, cursor, keep)
  local found = redis.call('HSCAN', key, cursor or '0', 'COUNT', CFG.prune_batch)
  for i = 1, #found[2], 2 do
    if not keep(found[2][i], found[2][i + 1]) then redis.call('HDEL', key, found[2][i]) end
  end
  redis.call('HSET', K_META, cursor_field, found[1])
  return found[1] == '0'
end

local ledgers_through = page(K_LEDGERS, 'prune_ledgers', meta[1], function(field, packed)
  local path = field_parts(field)
  if base_scope(path) == path then return true end  -- a standard scope's ledger stays
  local _, _, reserved, _, _, _, touched = lparse(packed)
  return reserved ~= 0 or touched + CFG.dimension_idle_ttl_ms >= NOW
end)
local runs_through = page(K_QRUNS, 'prune_runs', meta[2], function(field, window)
  local period = split(field, '|')[3]
  return period == nil or period == '' or current_bucket(period) == window
end)
if ledgers_through and runs_through then  -- the pass is through: the next one in a while
  redis.call('HSET', K_META, 'prune_at', s(NOW + math.floor(CFG.dimension_idle_ttl_ms / 720)))
end

return reply({expired = expired})
