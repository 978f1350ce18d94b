#!lua name=allotment_floor
-- The store's Redis commands with none of its features (bench/redis_floor.py). Each
-- function takes the store's own keys and arguments (common.lua lists them) and runs the
-- commands the store's reserve or commit runs for them, on the same keys and stored formats:
-- no access rules, quotas, caps, alerts, dimensions, periods, idempotency or replies beyond
-- the compact array; reserve checks only that the estimate fits, commit nothing. Budgets
-- must be USD, with no period or dimension. One difference in what is stored: report and
-- usage counters are keyed by the day's number, not its date (the store keeps date labels
-- cached). Commit writes the usage counters (calls and spend, HINCRBY each) as the store
-- does since they became integer fields; the floor measured before that left them out.

local DEF = '<BBBBi8i8Hc0Hc0Hc0'  -- common.lua DEF_FORMAT
local LEDGER = '<Bi8i8i8i8i8i1i8i2i1i1'  -- common.lua LEDGER_FORMAT
local DAY = 86400000

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function setting(args, name) return string.match(args[3], '"' .. name .. '":%s*(%d+)') end

local function ledgers_of(keys, scopes)
  -- the USD ledger field of each scope's definitions, and their overdraft limits
  local raws, fields, od = redis.call('HMGET', keys[1], unpack(scopes)), {}, {}
  for i = 1, #scopes do
    local raw, pos = raws[i], 4
    for _ = 1, (struct.unpack('<H', raw, 2)) do
      local unit, _, _, _, _, overdraft, per
      unit, _, _, _, _, overdraft, per, _, _, pos = struct.unpack(DEF, raw, pos)
      if per == '' and unit == 0 then
        fields[#fields + 1] = scopes[i] .. '|USD_MICROCENTS||'
        od[#fields] = overdraft
      end
    end
  end
  return fields, od
end

local function update_ledgers(keys, fields, od, now, change)
  -- apply change(r, sp) -> r, sp to each ledger; write them back; the balance rows
  local raws, writes, rows = redis.call('HMGET', keys[2], unpack(fields)), {}, {}
  for k = 1, #fields do
    local _, a, ls, r, sp, debt, over, _, al, ex, on = struct.unpack(LEDGER, raws[k])
    r, sp = change(a - r - sp - debt, r, sp)
    if r == nil then return nil end
    writes[2 * k - 1] = fields[k]
    writes[2 * k] = struct.pack(LEDGER, 1, a, ls, r, sp, debt, over, now, al, ex, on)
    local n = #rows
    rows[n + 1], rows[n + 2], rows[n + 3], rows[n + 4] = fields[k], a, r, sp
    rows[n + 5], rows[n + 6], rows[n + 7], rows[n + 8] = debt, od[k], over, 'ACTIVE'
  end
  redis.call('HSET', keys[2], unpack(writes))
  return rows
end

local function hold_estimate(keys, args, now)
  -- the ledgers alone: the estimate held on each scope's USD ledger
  local scopes = {unpack(args, 22)}
  local fields, od = ledgers_of(keys, scopes)
  local estimate = tonumber(string.match(args[13], '=(%d+)'))
  local rows = update_ledgers(keys, fields, od, now, function(room, r, sp)
    if room < estimate then return nil end
    return r + estimate, sp
  end)
  return rows, scopes, fields, estimate
end

local function audit(keys, args, now, kind, ...)
  redis.call('XADD', keys[9], 'MAXLEN', '~', setting(args, 'audit_retention'), '*', 'seq',
    redis.call('HINCRBY', keys[7], 'seq', 1), 'at', now, 'type', kind, ...)
end

local function due(keys, args, now)
  -- every call of the store first looks for reservations past their expiry
  local batch = setting(args, 'reap_batch')
  redis.call('ZRANGEBYSCORE', keys[8], '-inf', '(' .. now, 'LIMIT', 0, batch)
end
local function rules(keys)
  -- a reserve reads the tenant's mode and whether it has access or quota rules
  redis.call('HMGET', keys[7], 'mode', 'plan')
  redis.call('EXISTS', keys[4])
  redis.call('EXISTS', keys[3])
end

redis.register_function('floor_ledgers', function(keys, args)
  local now = now_ms()
  local rows = hold_estimate(keys, args, now)
  if rows == nil then return 'DENY' end
  return {'ALLOW', args[4], now, args[13], rows, false}
end)

local function write_reservation(keys, args, now, scopes, fields)
  -- the reservation's hash and its expiry entry, as the store's reserve writes them; a held
  -- ledger's reference as common.lua's ledger_ref makes it (USD, no period: codes 0)
  local refs = {}
  for k = 1, #fields do
    refs[2 * k - 1], refs[2 * k] = fields[k], (#scopes[k] * 65536 + #scopes[k]) * 64
  end
  local ttl, grace = tonumber(args[14]), tonumber(args[15])
  redis.call('HSET', keys[12], 'status', 'ACTIVE', 'expires', now + ttl, 'ext', 0, 'core',
    cmsgpack.pack({args[4], args[5], args[8], args[12], args[13], refs,
      string.format('%d', now), grace, tonumber(args[16]), '', '', '0', args[9], 1}))
  redis.call('ZADD', keys[8], now + ttl + grace, args[4])
end

redis.register_function('floor_reservation', function(keys, args)
  -- the ledgers and the reservation: what a later commit needs, and nothing else
  local now = now_ms()
  local rows, scopes, fields = hold_estimate(keys, args, now)
  if rows == nil then return 'DENY' end
  write_reservation(keys, args, now, scopes, fields)
  return {'ALLOW', args[4], now, args[13], rows, false}
end)

redis.register_function('floor_reserve', function(keys, args)
  local now = now_ms()
  due(keys, args, now)
  rules(keys)
  local rows, scopes, fields, estimate = hold_estimate(keys, args, now)
  if rows == nil then return 'DENY' end
  write_reservation(keys, args, now, scopes, fields)
  audit(keys, args, now, 'reservation.reserved', 'subject', args[8], 'action',
    args[10] .. ' ' .. args[11], 'reservation_id', args[4], 'scopes', cjson.encode(scopes),
    'estimate', args[13])
  local day = math.floor(now / DAY) .. '|' .. args[9]
  redis.call('HINCRBY', keys[10], day .. '|reservations', 1)
  redis.call('HINCRBY', keys[10], day .. '|reserved:USD_MICROCENTS', estimate)
  return {'ALLOW', args[4], now, args[13], rows, false}
end)

redis.register_function('floor_commit', function(keys, args)
  -- commits a reservation the store's reserve made (its core lists the ledgers it holds)
  local now = now_ms()
  due(keys, args, now)
  local flat, R = redis.call('HGETALL', keys[12]), {}
  for i = 1, #flat, 2 do R[flat[i]] = flat[i + 1] end
  local core = cmsgpack.unpack(R.core)
  local refs, scopes, fields = core[6], {}, {}
  for i = 1, #refs, 2 do  -- a reference's path end, times 65536 * 64 (ledger_ref)
    fields[#fields + 1] = refs[i]
    scopes[#scopes + 1] = string.sub(refs[i], 1, math.floor(refs[i + 1] / 4194304))
  end
  local _, od = ledgers_of(keys, scopes)
  local estimate = tonumber(string.match(core[5], '=(%d+)'))
  local actual = tonumber(string.match(args[8], '=(%d+)'))
  local rows = update_ledgers(keys, fields, od, now, function(_, r, sp)
    return r - estimate, sp + actual
  end)
  local charged = 'USD_MICROCENTS=' .. actual
  redis.call('HSET', keys[12], 'status', 'COMMITTED', 'finalized', now, 'charged', charged)
  redis.call('PEXPIRE', keys[12], setting(args, 'finished_retention_ms'))
  redis.call('ZREM', keys[8], core[1])
  audit(keys, args, now, 'reservation.committed', 'reservation_id', core[1], 'scopes',
    cjson.encode(scopes), 'estimate', core[5], 'actual', args[8], 'charged', charged)
  local day = math.floor(now / DAY) .. '|' .. core[13]
  redis.call('HINCRBY', keys[10], day .. '|commits', 1)
  redis.call('HINCRBY', keys[10], day .. '|committed:USD_MICROCENTS', actual)
  -- the usage counters: the calls and the spend, each a field of its own (no token counts:
  -- the bench's commits carry none)
  local days, rest = math.floor(now / DAY), '|' .. core[13] .. '|' ..
    string.match(core[4], '"name":"(.-)"')
  redis.call('HINCRBY', keys[10], 'u|' .. days .. rest, 1)
  redis.call('HINCRBY', keys[10], days .. '|#USD_MICROCENTS' .. rest, actual)
  return {charged, 'USD_MICROCENTS=' .. (estimate - actual), rows, false}
end)
