-- Webhooks, the part every call shares (as core/stores/memory/outbox.py): the events a
-- subscription wants go to the tenant's outbox in the call that produced them. The meta
-- field `hooks` holds event type -> subscription ids (global and the tenant's own, written
-- by outbox.lua's `wire`); without it a call reads one field and writes nothing.
--
-- keys beside the tenant's (same hash tag, derived from KEYS[7] as reap derives
-- reservations'):
--   hk:subs     HASH webhook id -> the tenant's own subscription, JSON
--   hk:events   HASH event id -> {at, row}: the notification row as a reply carries it
--   hk:pending  ZSET "event id|webhook id" -> when due (ms); a claim moves it by the lease
--   hk:log      HASH "event id|webhook id" -> the delivery's state, JSON
--   hk:done     ZSET "event id|webhook id" -> when it finished (delivered or given up)
--   hk:refs     HASH event id -> how many of its deliveries are kept
--   hk:forecast HASH "path|unit|period" -> the bucket a burn-rate forecast went out for

local HOOKS  -- this call's event type -> subscription ids (false: none), read once
local function hooks_begin() HOOKS = nil end
local function hooks()
  if HOOKS == nil then
    local raw = redis.call('HGET', K_META, 'hooks')
    HOOKS = raw and cjson.decode(raw) or false
  end
  return HOOKS
end
local function hook_key(name) return string.sub(K_META, 1, -5) .. 'hk:' .. name end
local function hook_tenant() return string.match(K_META, '^al:{(.*)}:meta$') end

local function outbox_append()
  -- after the operation, in its call: one event per wanted notification, one delivery
  -- per subscription that wants it
  if NOTES == nil or #NOTES == 0 then return end
  local wants = hooks()
  if not wants then return end
  local tenant = hook_tenant()
  for _, row in ipairs(NOTES) do
    local subs = wants[row[1]]
    if subs and #subs > 0 then
      local seq = redis.call('HINCRBY', K_META, 'hook_seq', 1)
      local eid = tenant .. '/evt_' .. string.format('%012x%08x', NOW, seq)
      redis.call('HSET', hook_key('events'), eid, cjson.encode({at = s(NOW), row = row}))
      redis.call('HSET', hook_key('refs'), eid, #subs)
      for _, sub in ipairs(subs) do
        local member = eid .. '|' .. sub
        redis.call('ZADD', hook_key('pending'), NOW, member)
        redis.call('HSET', hook_key('log'), member, cjson.encode({status = 'pending',
          attempts = 0, next = s(NOW), updated = s(NOW), type = row[1]}))
      end
    end
  end
end

local function bucket_start(period, ms)
  if period == 'minute' then return math.floor(ms / MIN) * MIN end
  if period == 'hour' then return math.floor(ms / HOUR) * HOUR end
  local days = math.floor(ms / DAY)
  if period == 'day' then return days * DAY end
  if period == 'week' then return (days - (days + 3) % 7) * DAY end
  local y, m = civil(days)
  if period == 'month' then return days_from_civil(y, m, 1) * DAY end
  return days_from_civil(y, 1, 1) * DAY
end

local FORECAST = 'budget.burn_rate_forecast'
local function forecasts(rows)
  -- after a commit or a record, as Outbox.forecast: once per ledger and period, when spend
  -- at this period's rate so far runs out before the period ends (in doubles, as
  -- hooks.forecast_at: a forecast, not money)
  local wants = hooks()
  if not wants or not wants[FORECAST] then return end
  for _, row in ipairs(rows) do
    local L = row.L
    local path, unit, period, b = field_parts(L.field)
    local key = path .. '|' .. unit .. '|' .. period
    if period ~= '' and redis.call('HGET', hook_key('forecast'), key) ~= b then
      local used, a = L.sp + L.debt, L.a
      local start = bucket_start(period, NOW)
      local elapsed = NOW - start
      if a > 0 and used > 0 and used < a and elapsed > 0 then
        local at = start + math.floor(a * elapsed / used)
        if at < bucket_end(period, NOW) then
          redis.call('HSET', hook_key('forecast'), key, b)
          local y, m, d = civil(math.floor(at / DAY))
          NOTES[#NOTES + 1] = {FORECAST, path, unit, b, NULL, s(remaining(L)), s(L.a), NULL,
            NULL, {exhausts_on = string.format('%04d-%02d-%02d', y, m, d),
            exhausts_at_ms = s(at)}}
        end
      end
    end
  end
end
