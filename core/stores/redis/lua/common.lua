-- Shared prelude of the allotment function library. Each operation's own file is the body
-- of one function after it (see `library` in functions.py); the library is loaded once per
-- server (FUNCTION LOAD), so these closures are built once, not on every call. Each call is
-- one FCALL: one atomic step per operation, with every check before the first write (Redis
-- does not roll a function back).
--
-- keys (all of one tenant, one hash tag, so one cluster slot):
--   1 defs     HASH scope -> its budget definitions, packed (canonical order; see DEF_FORMAT)
--   2 ledgers  HASH "path|unit|period|bucket" -> ledger: LEDGER_FORMAT, integers (see lparse)
--   3 quotas   HASH scope -> JSON list of quota rules
--   4 access   HASH scope -> JSON access rule
--   5 qcount   HASH quota key -> "bucket|count" (calls, runs) or count (concurrent)
--   6 qruns    HASH quota key.."|"..run -> bucket the run was first seen in
--   7 meta     HASH mode, plan, plan_keys, seq
--   8 exp      ZSET reservation id -> expires_at + grace
--   9 audit    STREAM of audit records (capped)
--  10 report   HASH "day|scope|counter" -> count (see core/reports.py for the scopes), and
--               the usage counters "u|day|scope|model" -> calls, "day|#tag|scope|model" ->
--               the other counts (see count_usage)
--  11 rdays    ZSET report field -> its day (days since 1970-01-01; a usage field's day
--               plus USAGE_BASE): reads fetch the fields of the days asked for, and days
--               past the retention leave both keys
--  12 res      HASH one reservation: status, expires, ext, core (see save_res), and once
--               finished finalized, charged, the replies kept for idempotent replays
--               (or a placeholder key)
--  13 idem     STRING fingerprint.."\n"..reply (or a placeholder key)
-- args: 1 the operation as JSON, 2 a clock override in ms ("" = Redis TIME), 3 settings JSON;
-- reserve and settle take flat arguments instead of the JSON document (see flat_reserve and
-- flat_settle). Integers travel as JSON numbers or decimal strings into the library (exact
-- below 2^53) and as strings in JSON out of it (cjson prints only 14 significant digits), or
-- as integers in a compact reply.
--
-- The state of one call (P, CFG, NOW, NOTES, the K_* keys) lives in the upvalues below and is
-- set by `begin` at the start of every call; Redis runs one call at a time.
--
-- The library is one Lua chunk, and a chunk holds at most 200 locals: this prelude's, those
-- of definitions.lua and hooks.lua, and one function per operation (195 in all). A helper
-- that one operation uses lives in that operation's file (see read.lua, sweep.lua,
-- admin.lua); one a hot path shares stays here, where it is built once per load.

local P, CFG, CFG_TEXT, NOW, NOTES
local K_DEFS, K_LEDGERS, K_QUOTAS, K_ACCESS, K_QCOUNT, K_QRUNS
local K_META, K_EXP, K_AUDIT, K_REPORT, K_RDAYS, K_RES, K_IDEM
local NULL  -- cjson.null: the libraries are reachable only inside a call
local MAX_AMOUNT = 9007199254740991  -- 2^53 - 1: every integer up to it is exact here

local function now_ms(override)
  if override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function s(n) return string.format('%d', n) end  -- exact below 2^63
local function split(text, sep)
  local out, start = {}, 1
  while true do
    local i = string.find(text, sep, start, true)
    if not i then
      out[#out + 1] = string.sub(text, start)
      return out
    end
    out[#out + 1] = string.sub(text, start, i - 1)
    start = i + 1
  end
end
local function nz(v) if v == nil or v == NULL then return nil end return v end
local function sorted_keys(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- calendar buckets in UTC (days <-> civil date, after H. Hinnant) -------------------------
local MIN, HOUR, DAY = 60000, 3600000, 86400000
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
-- Labels are pure, so a few are kept across calls (a large Lua heap slows every call), by
-- period and minute (a number: a key made of both would format the number every call).
local LABELS, LABEL_COUNT = {}, 0
local function bucket(period, ms)
  if period == '' then return '' end
  local minute, memo = math.floor(ms / MIN), LABELS[period]
  if memo == nil then
    memo = {}
    LABELS[period] = memo
  end
  if memo[minute] then return memo[minute] end
  local days = math.floor(ms / DAY)
  local y, m, d = civil(days)
  local rest = ms - days * DAY
  local label
  if period == 'minute' then
    label = string.format('%04d-%02d-%02dT%02d:%02d', y, m, d, math.floor(rest / HOUR),
      math.floor((rest % HOUR) / MIN))
  elseif period == 'hour' then
    label = string.format('%04d-%02d-%02dT%02d', y, m, d, math.floor(rest / HOUR))
  elseif period == 'day' then
    label = string.format('%04d-%02d-%02d', y, m, d)
  elseif period == 'week' then
    local thursday = days - (days + 3) % 7 + 3
    local wy = civil(thursday)
    label = string.format('%04d-W%02d', wy, math.floor((thursday - days_from_civil(wy, 1, 1)) / 7) + 1)
  elseif period == 'month' then
    label = string.format('%04d-%02d', y, m)
  else
    label = string.format('%04d', y)
  end
  if LABEL_COUNT > 64 then
    memo, LABEL_COUNT = {}, 0
    LABELS = {[period] = memo}
  end
  memo[minute] = label
  LABEL_COUNT = LABEL_COUNT + 1
  return label
end
local CURRENT  -- this call's bucket labels at NOW, by period
local function current_bucket(period)
  local label = CURRENT[period]
  if label == nil then
    label = bucket(period, NOW)
    CURRENT[period] = label
  end
  return label
end
local function bucket_end(period, ms)
  if period == 'minute' then return (math.floor(ms / MIN) + 1) * MIN end
  if period == 'hour' then return (math.floor(ms / HOUR) + 1) * HOUR end
  local days = math.floor(ms / DAY)
  if period == 'day' then return (days + 1) * DAY end
  if period == 'week' then return (days - (days + 3) % 7 + 7) * DAY end
  local y, m = civil(days)
  if period == 'month' then
    if m == 12 then return days_from_civil(y + 1, 1, 1) * DAY end
    return days_from_civil(y, m + 1, 1) * DAY
  end
  return days_from_civil(y + 1, 1, 1) * DAY
end

-- definitions ------------------------------------------------------------------------------
local UNIT_ORDER = {USD_MICROCENTS = 0, TOKENS = 1, CREDITS = 2, RISK_POINTS = 3}
local PERIOD_ORDER = {[''] = 0, minute = 1, hour = 2, day = 3, week = 4, month = 5, year = 6}
local function def_before(a, b)
  local ta, tb = a.per ~= '' and 1 or 0, b.per ~= '' and 1 or 0
  if ta ~= tb then return ta < tb end
  if a.unit ~= b.unit then return UNIT_ORDER[a.unit] < UNIT_ORDER[b.unit] end
  if a.period ~= b.period then return PERIOD_ORDER[a.period] < PERIOD_ORDER[b.period] end
  return a.per < b.per
end
-- A scope's definitions are one hash field: a version byte 2 and their count (uint16), then
-- per definition DEF_FORMAT: unit, period, policy, status (codes), limit, overdraft limit,
-- then three length-prefixed strings: the dimension (per), the alert thresholds (doubles)
-- and the degrade rules (JSON, "" when none). Fixed-size fields decode in one step; alerts
-- and degrade rules are read only when used. (Earlier versions wrote a JSON list.)
-- Version 3 adds a flags byte after the status (1: the template's dimension is required);
-- it is written only for a scope with such a template, so others read as before.
local DEF_FORMAT = '<BBBBi8i8Hc0Hc0Hc0'
local DEF_FORMAT3 = '<BBBBBi8i8Hc0Hc0Hc0'
local DEF_REQUIRED = 1
local function codes(names)
  local by_name = {}
  for i = 0, #names do by_name[names[i]] = i end
  return names, by_name
end
local UNIT_NAMES = {[0] = 'USD_MICROCENTS', 'TOKENS', 'CREDITS', 'RISK_POINTS'}
local PERIOD_NAMES = {[0] = '', 'minute', 'hour', 'day', 'week', 'month', 'year'}
local POLICY_NAMES, POLICY_CODES = codes({[0] = 'REJECT', 'ALLOW_IF_AVAILABLE',
  'ALLOW_WITH_OVERDRAFT'})
local STATUS_NAMES, STATUS_CODES = codes({[0] = 'ACTIVE', 'FROZEN', 'CLOSED'})
local function packed_alerts(list)
  -- one value at a time: unpack() of a long list passes Lua's stack limit
  local out = {}
  for i, a in ipairs(list) do out[i] = struct.pack('<d', a) end
  return table.concat(out)
end
local function alert_count(d)
  if d.alerts then return #d.alerts end
  return #(d.alerts_raw or '') / 8
end
local function alert_at(d, i)
  if d.alerts then return d.alerts[i] end
  return (struct.unpack('<d', d.alerts_raw, 8 * i - 7))
end
local NO_RULES = {}  -- shared, never changed: most budgets have no degrade rules
local function degrade_rules(d)
  if d.degrade == nil then
    if (d.degrade_raw or '') == '' then return NO_RULES end
    d.degrade = cjson.decode(d.degrade_raw)
  end
  return d.degrade
end
local function unpacked_defs(scope, raw, version)
  local list, pos = {}, 4
  for i = 1, (struct.unpack('<H', raw, 2)) do
    local u, p, policy, status, limit, od, per, alerts, degrade
    local flags = 0
    if version == 3 then
      u, p, policy, status, flags, limit, od, per, alerts, degrade, pos = struct.unpack(
        DEF_FORMAT3, raw, pos)
    else
      u, p, policy, status, limit, od, per, alerts, degrade, pos = struct.unpack(DEF_FORMAT,
        raw, pos)
    end
    list[i] = {scope = scope, unit = UNIT_NAMES[u], period = PERIOD_NAMES[p], per = per,
      limit = limit, od = od, policy = POLICY_NAMES[policy], status = STATUS_NAMES[status],
      alerts_raw = alerts, degrade_raw = degrade, required = flags % 2 == DEF_REQUIRED}
  end
  return list
end
-- Decoded definitions are kept across calls for the operations that never change them
-- (reserve and settle, SHARE_DEFS): a scope's list is reused while its stored value is the
-- same string (decoding takes a table per definition, a large part of a call). Every other
-- operation decodes its own lists, which it may change in place before saving them, and
-- never takes a kept one from the operations before it in a batch (defs_of).
local DEF_MEMO, DEF_MEMO_COUNT, SHARE_DEFS = {}, 0, false  -- scope -> {raw, list}
local function decoded_defs(scope, raw)
  if not raw then return {} end
  local memo = SHARE_DEFS and DEF_MEMO[scope]
  if memo and memo[1] == raw then return memo[2] end
  local version = string.byte(raw, 1)
  if version == 2 or version == 3 then
    local list = unpacked_defs(scope, raw, version)
    if SHARE_DEFS then
      if DEF_MEMO_COUNT >= 256 then DEF_MEMO, DEF_MEMO_COUNT = {}, 0 end
      if DEF_MEMO[scope] == nil then DEF_MEMO_COUNT = DEF_MEMO_COUNT + 1 end
      DEF_MEMO[scope] = {raw, list}
    end
    return list
  end
  local list = cjson.decode(raw)
  for _, d in ipairs(list) do
    d.scope = scope
    d.limit = tonumber(d.limit)
    d.od = tonumber(d.od)
  end
  return list
end
local DEF_CACHE  -- this call's decoded definitions by scope
local function cached_defs(scope)
  local list = DEF_CACHE[scope]
  if list ~= nil and not SHARE_DEFS then
    local memo = DEF_MEMO[scope]
    if memo and memo[2] == list then return nil end  -- kept: this one decodes its own
  end
  return list
end
local function defs_of(scope)
  local list = cached_defs(scope)
  if list == nil then
    list = decoded_defs(scope, redis.call('HGET', K_DEFS, scope))
    DEF_CACHE[scope] = list
  end
  return list
end
local function prefetch_defs(scopes)
  -- the definitions of several scopes with one command (defs_of then finds them)
  -- (numeric loops here and in the other per-call helpers: ipairs calls a function per item)
  local wanted, seen = {}, {}
  for i = 1, #scopes do
    local scope = scopes[i]
    if cached_defs(scope) == nil and not seen[scope] then
      seen[scope] = true
      wanted[#wanted + 1] = scope
    end
  end
  if #wanted == 0 then return end
  local raws = redis.call('HMGET', K_DEFS, unpack(wanted))
  for i = 1, #wanted do DEF_CACHE[wanted[i]] = decoded_defs(wanted[i], raws[i]) end
end
local MAX_U16 = 65535  -- the count and the lengths in a packed definition are 16 bits
local function def_parts(d)
  -- the packed alert thresholds and the degrade rules' JSON of a definition
  local alerts = d.alerts and packed_alerts(d.alerts) or d.alerts_raw
  local rules = degrade_rules(d)
  return alerts, next(rules) ~= nil and cjson.encode(rules) or ''
end
local function unpackable(d)
  -- why a definition would not read back as written (nil when it would): a length past 16
  -- bits would wrap, and the scope could no longer be read, changed or swept
  if UNIT_ORDER[d.unit] == nil or PERIOD_ORDER[d.period] == nil or
      POLICY_CODES[d.policy] == nil or STATUS_CODES[d.status or 'ACTIVE'] == nil then
    return 'budget: unknown unit, period, overage policy or status'
  end
  for _, n in ipairs({d.limit, d.od}) do
    if type(n) ~= 'number' or n < 0 or n > MAX_AMOUNT or n ~= math.floor(n) then
      return 'budget: limit and overdraft limit are integers between 0 and ' .. s(MAX_AMOUNT)
    end
  end
  for _, a in ipairs(d.alerts or {}) do
    if type(a) ~= 'number' then return 'alerts: thresholds are numbers' end
  end
  local alerts, degrade = def_parts(d)
  if #d.per > MAX_U16 then return 'per: longer than ' .. MAX_U16 .. ' bytes' end
  if #alerts > MAX_U16 then
    return 'alerts: at most ' .. math.floor(MAX_U16 / 8) .. ' thresholds'
  end
  if #degrade > MAX_U16 then
    return 'degrade: the rules take more than ' .. MAX_U16 .. ' bytes as JSON'
  end
  return nil
end
local function packed_def(d, version)
  local why = unpackable(d)  -- checked before the first write (see budget_refusal)
  if why then error('allotment: definition of ' .. d.scope .. ' not packed: ' .. why) end
  local alerts, degrade = def_parts(d)
  if version == 3 then
    return struct.pack(DEF_FORMAT3, UNIT_ORDER[d.unit], PERIOD_ORDER[d.period],
      POLICY_CODES[d.policy], STATUS_CODES[d.status], d.required and DEF_REQUIRED or 0,
      d.limit, d.od, #d.per, d.per, #alerts, alerts, #degrade, degrade)
  end
  return struct.pack(DEF_FORMAT, UNIT_ORDER[d.unit], PERIOD_ORDER[d.period],
    POLICY_CODES[d.policy], STATUS_CODES[d.status], d.limit, d.od, #d.per, d.per, #alerts,
    alerts, #degrade, degrade)
end
local function save_defs(scope, list)
  DEF_CACHE[scope] = nil
  if #list == 0 then redis.call('HDEL', K_DEFS, scope) return end
  if #list > MAX_U16 then error('allotment: more than ' .. MAX_U16 .. ' budgets at ' .. scope) end
  local version = 2
  for _, d in ipairs(list) do if d.required then version = 3 end end
  local out = {struct.pack('<BH', version, #list)}
  for i, d in ipairs(list) do out[i + 1] = packed_def(d, version) end
  redis.call('HSET', K_DEFS, scope, table.concat(out))
end
local function find_def(scope, unit, period, per)
  local defs = defs_of(scope)
  for i = 1, #defs do
    local d = defs[i]
    if d.unit == unit and d.period == period and d.per == per then return d end
  end
  return nil
end
local function neutral_def(scope, unit, period, per)
  return {scope = scope, unit = unit, period = period, per = per, limit = 0, od = 0,
    policy = 'ALLOW_IF_AVAILABLE', status = 'ACTIVE', alerts = {}, degrade = {}}
end

-- ledgers ----------------------------------------------------------------------------------
-- A ledger is one hash field of fixed-size integers (struct): a version byte 1, then
-- allocated, the limit it follows, reserved, spent, debt (8 bytes each), the over-limit flag
-- (1), last touch in ms (8), alerts crossed (2), the exhausted and over-limit-noted flags (1
-- each). Amounts are bounded to 2^53 - 1, so every value is exact as a Lua number.
local LEDGER_FORMAT = '<Bi8i8i8i8i8i1i8i2i1i1'
local function lfield(path, unit, period, b) return path .. '|' .. unit .. '|' .. period .. '|' .. b end
local function lparse(raw)
  -- a, ls, r, sp, debt, over, t, al, ex, on; the comma-separated text of earlier versions too
  if string.byte(raw, 1) == 1 then
    local _, a, ls, r, sp, debt, over, t, al, ex, on = struct.unpack(LEDGER_FORMAT, raw)
    return a, ls, r, sp, debt, over, t, al, ex, on
  end
  local a, ls, r, sp, debt, over, t, al, ex, on = string.match(raw,
    '^(-?%d+),(-?%d+),(-?%d+),(-?%d+),(-?%d+),(%d),(%d+),(%d+),(%d),(%d)$')
  return tonumber(a), tonumber(ls), tonumber(r), tonumber(sp), tonumber(debt), tonumber(over),
    tonumber(t), tonumber(al), tonumber(ex), tonumber(on)
end
local function ledger(field, d, raw)
  -- the ledger stored as raw at field (a fresh one, not yet stored, when raw is false)
  if not raw then
    return {field = field, a = d.limit, ls = d.limit, r = 0, sp = 0, debt = 0, over = 0,
      t = NOW, al = 0, ex = 0, on = 0}
  end
  local _, a, ls, r, sp, debt, over, t, al, ex, on
  if string.byte(raw, 1) == 1 then
    _, a, ls, r, sp, debt, over, t, al, ex, on = struct.unpack(LEDGER_FORMAT, raw)
  else
    a, ls, r, sp, debt, over, t, al, ex, on = lparse(raw)
  end
  local L = {field = field, a = a, ls = ls, r = r, sp = sp, debt = debt, over = over, t = t,
    al = al, ex = ex, on = on}
  if L.ls ~= d.limit and string.sub(field, -#current_bucket(d.period) - 1) ==
      '|' .. current_bucket(d.period) then
    L.a = math.max(0, L.a + d.limit - L.ls)  -- a changed definition moves this bucket
    L.ls = d.limit
  end
  return L
end
local function lload(field, d) return ledger(field, d, redis.call('HGET', K_LEDGERS, field)) end
local function lload_all(targets)
  -- the ledgers of {field, d} targets with one command, in their order
  local fields, n = {}, #targets
  for i = 1, n do fields[i] = targets[i].field end
  if n == 0 then return {} end
  local raws, out = redis.call('HMGET', K_LEDGERS, unpack(fields)), {}
  for i = 1, n do out[i] = ledger(fields[i], targets[i].d, raws[i]) end
  return out
end
local function packed_ledger(L)
  return struct.pack(LEDGER_FORMAT, 1, L.a, L.ls, L.r, L.sp, L.debt, L.over, L.t, L.al, L.ex,
    L.on)
end
local function lsave(L) redis.call('HSET', K_LEDGERS, L.field, packed_ledger(L)) end
local function lsave_all(ledgers)
  -- several ledgers with one command
  local pairs_ = {}
  for i = 1, #ledgers do
    local L = ledgers[i]
    pairs_[2 * i - 1] = L.field
    pairs_[2 * i] = struct.pack(LEDGER_FORMAT, 1, L.a, L.ls, L.r, L.sp, L.debt, L.over, L.t,
      L.al, L.ex, L.on)
  end
  if #pairs_ > 0 then redis.call('HSET', K_LEDGERS, unpack(pairs_)) end
end
local function remaining(L) return L.a - L.r - L.sp - L.debt end
local function field_parts(field)
  return string.match(field, '^(.*)|([%u_]+)|(%l*)|([^|]*)$')
end
-- records: audit and the notifications on record ---------------------------------------
local function audit_fields(kind, fields)
  -- fields: name, text, ... with nothing empty in it
  redis.call('XADD', K_AUDIT, 'MAXLEN', '~', CFG.audit_retention, '*', 'seq',
    redis.call('HINCRBY', K_META, 'seq', 1), 'at', s(NOW), 'type', kind, unpack(fields))
end
local function with_optional(fields, ...)
  -- fields, then name, value pairs whose value is added when it is neither nil, false nor ''
  local extra = {...}
  for i = 1, select('#', ...), 2 do
    local v = extra[i + 1]
    if v and v ~= '' then
      fields[#fields + 1] = extra[i]
      fields[#fields + 1] = v
    end
  end
  return fields
end
local function audit(kind, f)
  local fields = {}
  for k, v in pairs(f) do  -- an empty value is left out: readers take it as absent
    if type(v) == 'table' then
      if next(v) ~= nil then
        fields[#fields + 1] = k
        fields[#fields + 1] = cjson.encode(v)
      end
    elseif v ~= '' then
      fields[#fields + 1] = k
      fields[#fields + 1] = tostring(v)
    end
  end
  audit_fields(kind, fields)
end
local function alerted(kind, L, threshold, rid, debt)
  -- as alerted in memory/state.py: a ledger's notification, sent and on record in one step
  -- (the record's detail: unit, bucket, threshold, remaining, allocated, debt added)
  local path, unit, _, b = field_parts(L.field)
  local rem, a = s(remaining(L)), s(L.a)
  rid = nz(rid)
  -- a threshold as text: cjson would print 14 significant digits, not the double
  local t = threshold and string.format('%.17g', threshold)
  local row = {kind, path, unit, b, t or NULL, rem, a, rid or NULL}
  local detail = {unit = unit, remaining = rem, allocated = a, threshold = t or nil}
  if b ~= '' then detail.bucket = b end
  if debt then
    row[9], row[10] = NULL, {amounts = unit .. '=' .. s(debt)}
    detail.debt_incurred = s(debt)
  end
  NOTES[#NOTES + 1] = row
  audit(kind, {scopes = {path}, reservation_id = rid or '', detail = detail})
end
local function recompute_over(L, od)
  -- as recompute_over in memory/state.py, after a change by hand (set_budget, its terms,
  -- fund, transfer): a flag that clears is notified, and notifies again when next raised
  local was = L.over
  L.over = L.debt > od and 1 or 0
  if L.over == 0 then L.on = 0 end
  if was == 1 and L.over == 0 then alerted('budget.over_limit_exited', L) end
end
local function debts_added(rows, before, rid)
  -- as debts_added in memory/state.py: each ledger a commit or record put (more) in debt
  for i, row in ipairs(rows) do
    local L = row.L
    if L.debt > before[i] then
      alerted('budget.debt_incurred', L, nil, rid, L.debt - before[i])
    end
  end
end
local function balance(L, d)
  local path, unit, period, b = field_parts(L.field)
  return {path, unit, period, b, s(L.a), s(L.r), s(L.sp), s(L.debt), s(d.od), L.over,
    d.status}
end
local function add_row(rows, L, d)
  -- the same as a row of a compact reply, appended flat to rows (8 items a ledger, no table
  -- of its own): the ledger field ("path|unit|period|bucket"), then allocated, reserved,
  -- spent, debt, overdraft limit, over-limit flag as integers (exact to 2^53), and status
  local n = #rows
  rows[n + 1], rows[n + 2], rows[n + 3], rows[n + 4] = L.field, L.a, L.r, L.sp
  rows[n + 5], rows[n + 6], rows[n + 7], rows[n + 8] = L.debt, d.od, L.over, d.status
end

local function day_of(ms) return bucket('day', ms) end
local LEVELS = {tenant = true, workspace = true, app = true, workflow = true, agent = true,
  toolset = true}
local UNITS_IN_ORDER = {UNIT_NAMES[0], UNIT_NAMES[1], UNIT_NAMES[2], UNIT_NAMES[3]}
local function ordered_units(by_unit)
  local units = {}
  for _, unit in ipairs(UNITS_IN_ORDER) do
    if by_unit[unit] ~= nil then units[#units + 1] = unit end
  end
  return units
end
-- report counters (as tally in memory/state.py and core/reports.py): one field per day,
-- scope and counter, each indexed by its day in K_RDAYS when it first appears
local DAY_PREFIX, TODAY  -- this call's "day|" and day number, worked out on its first counter
local function day_number(label)
  -- days since 1970-01-01 of a "YYYY-MM-DD..." label, or nil
  local y, m, d = string.match(label, '^(%d%d%d%d)%-(%d%d)%-(%d%d)|')
  if not y then return nil end
  return days_from_civil(tonumber(y), tonumber(m), tonumber(d))
end
local function oldest_kept() return math.floor(NOW / DAY) - CFG.report_retention_days + 1 end
local function report_migrate()
  -- a report hash written before the day index: index each field by its day, and drop
  -- those past the retention (once per tenant: the index is never empty again while
  -- counters are kept)
  local flat, oldest, keep, drop = redis.call('HGETALL', K_REPORT), oldest_kept(), {}, {}
  for i = 1, #flat, 2 do
    -- (a usage counter's "day|#tag|..." is kept with its entry, which the index holds)
    local day = string.byte(flat[i], 12) ~= 35 and day_number(flat[i])
    if day and day >= oldest then
      keep[#keep + 1], keep[#keep + 2] = day, flat[i]
    elseif day then
      drop[#drop + 1] = flat[i]
    end
  end
  for i = 1, #keep, 1000 do
    redis.call('ZADD', K_RDAYS, unpack(keep, i, math.min(i + 999, #keep)))
  end
  for i = 1, #drop, 1000 do
    redis.call('HDEL', K_REPORT, unpack(drop, i, math.min(i + 999, #drop)))
  end
end
local function report_prune(limit)
  -- up to `limit` counters of days past the retention leave storage
  local old = redis.call('ZRANGEBYSCORE', K_RDAYS, '-inf', '(' .. oldest_kept(), 'LIMIT', 0,
    math.min(limit, 1000))  -- at most what one unpack can pass
  if #old > 0 then
    redis.call('HDEL', K_REPORT, unpack(old))
    redis.call('ZREM', K_RDAYS, unpack(old))
  end
end
local function count(scope, counter, by)
  if DAY_PREFIX == nil then
    DAY_PREFIX, TODAY = day_of(NOW) .. '|', math.floor(NOW / DAY)
  end
  by = by or 1
  local field = DAY_PREFIX .. scope .. '|' .. counter
  if redis.call('HINCRBY', K_REPORT, field, by) == by then
    -- a new field (or one still at 0, indexed again at no cost): into today's index, and
    -- the first counters of a day push the old days out
    if redis.call('ZCARD', K_RDAYS) == 0 then report_migrate() end
    redis.call('ZADD', K_RDAYS, TODAY, field)
    report_prune(CFG.prune_batch)
  end
end
local function report_scopes(path, dims)
  -- where a call's activity is counted (as report_scopes in core/reports.py): its subject
  -- scope, then that scope with each of its dimensions ({key, value} pairs)
  local out = {path}
  for i = 1, #dims do out[i + 1] = path .. '/' .. dims[i][1] .. ':' .. dims[i][2] end
  return out
end
local function refused_at(denial)
  -- the scope a denial is counted at: the one whose limit refused (else the subject's)
  local scope = nz(denial.scope)
  if scope == nil or scope == '' then return P.scope_path end
  return scope
end
-- usage counters (as count_usage in memory/state.py and core/usage.py): per day, subject
-- scope and model, integers each in a field of its own, written with HINCRBY (no counts
-- parsed or formatted here): the calls in "u|YYYY-MM-DD|scope|model" (the entry's name, which
-- K_RDAYS indexes at USAGE_BASE + day, apart from the report's days: a report never reads
-- them), and the rest in "YYYY-MM-DD|#tag|scope|model" (usage_field): the denials (d), the
-- five token counts (i, c, w, o, r) and the spend per unit (its name; a unit is listed once a
-- call or denial of it was counted). A tag never holds ':' and every scope does, so these
-- never meet a report counter's "day|scope|counter"; a zero count is not written (the reader
-- takes a missing field as 0). Kept as long as the report counters.
-- Earlier versions kept an entry's counts packed in its name's field, "calls,denials,<5 token
-- counts>,UNIT=spend,..."; the first count after them unpacks that value into the fields
-- (usage_unpacked), and readers still read an entry left in that form (core/usage.py).
local USAGE_BASE = 10000000
local USAGE_TOKENS = {'i', 'c', 'w', 'o', 'r'}
local USAGE_TAGS = {'d', 'i', 'c', 'w', 'o', 'r', UNIT_NAMES[0], UNIT_NAMES[1], UNIT_NAMES[2],
  UNIT_NAMES[3]}  -- every field of an entry besides its name, in the order reads answer them
local function usage_field(name, tag)
  -- "u|YYYY-MM-DD|rest" -> "YYYY-MM-DD|#tag|rest"
  return string.sub(name, 3, 12) .. '|#' .. tag .. string.sub(name, 13)
end
local function usage_fields(name)
  local out = {}
  for i, tag in ipairs(USAGE_TAGS) do out[i] = usage_field(name, tag) end
  return out
end
local function with_usage_fields(names, from, to)
  -- entries from..to of `names`, each name followed by its entry's other fields
  local fields = {}
  for j = from, to do
    fields[#fields + 1] = names[j]
    for _, field in ipairs(usage_fields(names[j])) do fields[#fields + 1] = field end
  end
  return fields
end
local function usage_unpacked(name, old)
  -- an entry kept in the packed form of earlier versions: its counts into the fields (a
  -- value that is not a count reads as 0: this runs after the operation's first write, so it
  -- must never fail); the calls are left in its name's field
  local n, units, i = {0, 0, 0, 0, 0, 0, 0}, {}, 0
  for item in string.gmatch(old, '[^,]+') do
    local unit, amount = string.match(item, '^([%u_]+)=(%d+)$')
    if unit then
      if UNIT_ORDER[unit] then units[unit] = tonumber(amount) end
    elseif i < 7 then
      i = i + 1
      n[i] = tonumber(item) or 0
    end
  end
  redis.call('HDEL', K_REPORT, unpack(usage_fields(name)))
  local writes = {name, s(n[1])}
  for k = 2, 7 do
    if n[k] ~= 0 then
      writes[#writes + 1], writes[#writes + 2] = usage_field(name, USAGE_TAGS[k - 1]), s(n[k])
    end
  end
  for unit, amount in pairs(units) do
    writes[#writes + 1], writes[#writes + 2] = usage_field(name, unit), s(amount)
  end
  redis.call('HSET', K_REPORT, unpack(writes))
  return n[1]
end
local function usage_prune()
  -- up to prune_batch entries of days past the retention leave storage, with their fields
  local gone = redis.call('ZRANGEBYSCORE', K_RDAYS, USAGE_BASE,
    '(' .. (USAGE_BASE + oldest_kept()), 'LIMIT', 0, math.min(CFG.prune_batch, 1000))
  if #gone == 0 then return end
  for i = 1, #gone, 500 do  -- 11 fields an entry, within what one unpack can pass
    redis.call('HDEL', K_REPORT, unpack(with_usage_fields(gone, i, math.min(i + 499, #gone))))
  end
  redis.call('ZREM', K_RDAYS, unpack(gone))
end
local function count_usage(at, scope, model, calls, denials, tokens, spend)
  local day = math.floor(at / DAY)
  if day < oldest_kept() then return end
  local name = 'u|' .. day_of(at) .. '|' .. scope .. '|' .. model
  local fresh = false
  local n = redis.pcall('HINCRBY', K_REPORT, name, calls)
  if type(n) == 'table' then  -- not an integer: the packed form of earlier versions
    n = usage_unpacked(name, redis.call('HGET', K_REPORT, name)) + calls
    redis.call('HSET', K_REPORT, name, s(n))
  elseif calls > 0 and n == calls then
    fresh = true  -- the entry's first call (or its first after denials only)
  end
  if denials > 0 and redis.call('HINCRBY', K_REPORT, usage_field(name, 'd'), denials) ==
      denials then
    fresh = true
  end
  if tokens then
    for k = 1, 5 do
      if tokens[k] ~= 0 then
        redis.call('HINCRBY', K_REPORT, usage_field(name, USAGE_TOKENS[k]), tokens[k])
      end
    end
  end
  for unit, amount in pairs(spend) do
    redis.call('HINCRBY', K_REPORT, usage_field(name, unit), amount)
  end
  if fresh then
    -- into the day's index (again, at no cost, after an entry's denials), and the first
    -- entries of a day push the old days out
    if redis.call('ZCARD', K_RDAYS) == 0 then report_migrate() end
    redis.call('ZADD', K_RDAYS, USAGE_BASE + day, name)
    usage_prune()
  end
end
local function count_all(scopes, counter, by)
  for i = 1, #scopes do count(scopes[i], counter, by) end
end
local function alert(L, d, rid)
  -- as _alert in state.py: after a commit or a record, never a hold; thresholds and
  -- exhaustion follow spent plus debt
  if L.a <= 0 then return end
  local used = L.sp + L.debt
  local crossed, thresholds = L.al, alert_count(d)
  while crossed < thresholds and used * 1000000 >=
      math.floor(alert_at(d, crossed + 1) * 1000000 + 0.5) * L.a do
    crossed = crossed + 1
  end
  local exhausted = used >= L.a and L.ex == 0
  local over = L.over == 1 and L.on == 0
  L.on = L.over
  if crossed == L.al and not exhausted and not over then return end
  for i = L.al + 1, crossed do alerted('budget.threshold_crossed', L, alert_at(d, i), rid) end
  L.al = crossed
  if exhausted then
    L.ex = 1
    alerted('budget.exhausted', L, nil, rid)
    count(field_parts(L.field), 'exhaustions')  -- the ledger that ran out, a run ledger too
  end
  if over then alerted('budget.over_limit_entered', L, nil, rid) end
end

-- ledger arithmetic (as core/ledger.py) ----------------------------------------------------
local function refusal(L, d, amount, shadow)
  -- shadow mode: short of amount is the budget's refusal before debt or the over-limit flag
  -- (as ledger.reserve_refusal)
  if d.status == 'FROZEN' then return 'BUDGET_FROZEN' end
  if d.status == 'CLOSED' then return 'BUDGET_CLOSED' end
  if shadow and remaining(L) < amount then return 'BUDGET_EXCEEDED' end
  if L.over == 1 then return 'OVERDRAFT_LIMIT_EXCEEDED' end
  if L.debt > 0 and d.od == 0 then return 'DEBT_OUTSTANDING' end
  if remaining(L) < amount then return 'BUDGET_EXCEEDED' end
  return nil
end
local function denial_of(reason, path, unit, period, L, requested)
  local retry = NULL
  -- never for a request larger than the whole budget: no period makes it fit
  if period ~= '' and reason == 'BUDGET_EXCEEDED' and requested <= L.a then
    retry = s(bucket_end(period, NOW) - NOW)
  end
  return {outcome = 'DENY', reason = reason, scope = path, unit = unit,
    remaining = s(remaining(L)), limit = s(L.a), requested = s(requested), retry_after_ms = retry}
end
local function takes_debt(row) return row.policy == 'ALLOW_WITH_OVERDRAFT' and row.d.od > 0 end
-- rows: {L, d, policy, unit}; returns plans (row -> change) and charged by unit, or a denial
local function settle(rows, estimate, actual, release_reserved)
  local extra = {}
  for _, unit in ipairs(ordered_units(estimate)) do
    local held = estimate[unit]
    local delta = actual[unit] - held
    local cover = delta
    for _, row in ipairs(rows) do
      if row.unit == unit then
        if delta > 0 and row.policy == 'REJECT' and remaining(row.L) < delta then
          local _, _, period = field_parts(row.L.field)
          return nil, nil, denial_of('BUDGET_EXCEEDED', field_parts(row.L.field), unit, period,
            row.L, delta)
        end
        if delta > 0 and not takes_debt(row) then
          cover = math.min(cover, math.max(remaining(row.L), 0))
        end
      end
    end
    extra[unit] = cover
  end
  local changes = {}
  for i, row in ipairs(rows) do
    local unit, L = row.unit, row.L
    local held, delta = estimate[unit], actual[unit] - estimate[unit]
    local shortfall = 0
    if takes_debt(row) then shortfall = math.max(0, extra[unit] - math.max(remaining(L), 0)) end
    if shortfall > 0 and L.debt + shortfall > row.d.od then
      local _, _, period = field_parts(L.field)
      return nil, nil, denial_of('OVERDRAFT_LIMIT_EXCEEDED', field_parts(L.field), unit, period,
        L, delta)
    end
    local flag = extra[unit] < delta and remaining(L) < delta and not takes_debt(row)
    changes[i] = {release_reserved and held or 0, held + extra[unit] - shortfall, shortfall, flag}
  end
  local charged = {}
  for unit, held in pairs(estimate) do charged[unit] = held + extra[unit] end
  return changes, charged, nil
end
-- shadow mode (as ledger.settle_shadow): nothing refused, all of actual charged; spent up to
-- what the allocation has left after spent and debt (holds aside), the rest debt; over the
-- limit once debt passes what enforce mode would let it owe
local function settle_shadow(rows, estimate, actual, release_reserved)
  local changes = {}
  for i, row in ipairs(rows) do
    local unit, L = row.unit, row.L
    local charge = actual[unit]
    local debt = math.max(0, charge - math.max(0, L.a - L.sp - L.debt))
    local owed = row.policy == 'ALLOW_WITH_OVERDRAFT' and row.d.od or 0
    changes[i] = {release_reserved and estimate[unit] or 0, charge - debt, debt,
      L.debt + debt > owed}
  end
  local charged = {}
  for unit in pairs(estimate) do charged[unit] = actual[unit] end
  return changes, charged
end
local function apply(rows, changes)
  -- the caller saves each ledger once, after its alerts are worked out
  for i, row in ipairs(rows) do
    local L, c = row.L, changes[i]
    L.r = L.r - c[1]
    L.sp = L.sp + c[2]
    L.debt = L.debt + c[3]
    if c[4] then L.over = 1 end
    L.t = NOW
  end
end
-- globs, read as policy.py reads them (fnmatch.fnmatchcase) ------------------------------
-- `*` any run, `?` one character, `[seq]` / `[!seq]` a class with ranges (`a-z`; an empty
-- range matches nothing), a `[` without its `]` itself; everything else itself. Characters
-- are code points, not bytes (action names are UTF-8), so no Lua pattern is built from one.
local STAR, ONE = {}, {}
local function code_points(text)
  local out = {}
  for ch in string.gmatch(text, '[%z\1-\127\194-\244][\128-\191]*') do
    local c = string.byte(ch, 1)
    if c >= 240 then c = c - 240 elseif c >= 224 then c = c - 224 elseif c >= 192 then c = c - 192 end
    for i = 2, #ch do c = c * 64 + string.byte(ch, i) - 128 end
    out[#out + 1] = c
  end
  return out
end
-- Globs match as Python's fnmatchcase does on the memory store. New globs use * and ? only
-- ([ and ] are refused before any store sees them); classes are still read as fnmatch reads
-- them, so rules an earlier version stored keep matching alike on both stores.
local GLOBS, GLOB_COUNT = {}, 0  -- compiled globs kept across calls (a few, pure)
local function compiled(pattern)
  local g = GLOBS[pattern]
  if g then return g end
  local p, i = code_points(pattern), 1
  local n = #p
  g = {}
  while i <= n do
    local c = p[i]
    local j = i + 1
    if c == 91 then  -- '[': its class ends at the next ']' past a leading '!' and ']'
      if p[j] == 33 then j = j + 1 end
      if p[j] == 93 then j = j + 1 end
      while j <= n and p[j] ~= 93 do j = j + 1 end
    end
    if c == 42 then g[#g + 1] = STAR
    elseif c == 63 then g[#g + 1] = ONE
    elseif c == 91 and j <= n then
      local set, k = {negate = p[i + 1] == 33}, i + 1
      if set.negate then k = k + 1 end
      while k < j do
        if p[k + 1] == 45 and k + 2 < j then  -- a range: 'a-z'
          set[#set + 1], set[#set + 2], k = p[k], p[k + 2], k + 3
        else
          set[#set + 1], set[#set + 2], k = p[k], p[k], k + 1
        end
      end
      g[#g + 1] = set
      j = j + 1
    else
      g[#g + 1] = c
      j = i + 1
    end
    i = j
  end
  if GLOB_COUNT > 256 then GLOBS, GLOB_COUNT = {}, 0 end
  GLOBS[pattern], GLOB_COUNT = g, GLOB_COUNT + 1
  return g
end
local function one_matches(t, c)
  if t == ONE then return true end
  if type(t) == 'number' then return t == c end
  local found = false
  for k = 1, #t, 2 do
    if t[k] <= c and c <= t[k + 1] then found = true break end
  end
  return found ~= t.negate
end
local function glob_matches(g, s, from)
  -- whether code points s[from..] match compiled glob g as a whole (a star backtracks)
  local si, gi, star, mark, n, m = from, 1, nil, from, #s, #g
  while si <= n do
    local t = g[gi]
    if t == STAR then
      star, mark, gi = gi, si, gi + 1
    elseif gi <= m and one_matches(t, s[si]) then
      si, gi = si + 1, gi + 1
    elseif star then
      mark = mark + 1
      si, gi = mark, star + 1
    else
      return false
    end
  end
  while g[gi] == STAR do gi = gi + 1 end
  return gi > m
end
local function glob_any(value, patterns, bare)
  -- whether any pattern matches value or, with `bare`, its part after the last ':'
  local s = code_points(value)
  local after = 1
  if bare then
    for i = #s, 1, -1 do if s[i] == 58 then after = i + 1 break end end
  end
  for _, pattern in ipairs(patterns) do
    local g = compiled(pattern)
    if glob_matches(g, s, 1) or (after > 1 and glob_matches(g, s, after)) then return true end
  end
  return false
end

-- targets: the ledgers a subject charges -----------------------------------------------------
-- returns list of {field, d} or nil when no budget applies at all; errors on unit mismatch
local function targets(scopes, dims, units)
  local found, applicable, held = {}, 0, {}
  prefetch_defs(scopes)
  for i = 1, #scopes do
    local scope = scopes[i]
    local defs = defs_of(scope)
    for j = 1, #defs do
      local d = defs[j]
      local path
      if d.per == '' then path = scope elseif dims[d.per] then
        path = scope .. '/' .. d.per .. ':' .. dims[d.per]
      end
      if path then
        applicable = applicable + 1
        held[d.unit] = true
        if units[d.unit] then
          local b = d.period == '' and '' or current_bucket(d.period)
          found[#found + 1] = {field = path .. '|' .. d.unit .. '|' .. d.period .. '|' .. b,
            d = d, path = path}
        end
      end
    end
  end
  if #found > 0 then return found end
  if applicable > 0 then
    return nil, {error = 'UNIT_MISMATCH', message = 'no budget of ' .. scopes[#scopes] ..
      ' is in ' .. table.concat(sorted_keys(units), ', ') .. '; its budgets hold ' ..
      table.concat(sorted_keys(held), ', ')}
  end
  return nil
end

-- required dimensions ----------------------------------------------------------------------
local function access_rules(scopes, exists)
  -- the scopes' access rules, decoded, by position (false where a scope has none); a hash
  -- with no fields does not exist, so a tenant without rules skips the lookup (`exists`:
  -- whether it does, when the caller knows already)
  if exists == nil then exists = redis.call('EXISTS', K_ACCESS) == 1 end
  if not exists then return {} end
  local rules = redis.call('HMGET', K_ACCESS, unpack(scopes))
  for i = 1, #scopes do
    if rules[i] then rules[i] = cjson.decode(rules[i]) end
  end
  return rules
end
local function missing_dims(scopes, dims, rules)
  -- DIMENSION_REQUIRED when the subject lacks a dimension one of its scopes requires (a
  -- required template, or the scope's access rule): at the outermost such scope, naming
  -- every missing key, sorted; nil when nothing lacks (as missing_dimensions in state.py)
  prefetch_defs(scopes)
  local where, missing = nil, {}
  local function need(scope, key)
    if dims[key] == nil then
      where = where or scope
      missing[key] = true
    end
  end
  for i, scope in ipairs(scopes) do
    for _, d in ipairs(defs_of(scope)) do
      if d.required and d.per ~= '' then need(scope, d.per) end
    end
    if rules[i] then
      for _, key in ipairs(rules[i].required_dimensions or {}) do need(scope, key) end
    end
  end
  if where == nil then return nil end
  return {outcome = 'DENY', reason = 'DIMENSION_REQUIRED', scope = where,
    missing_dimensions = sorted_keys(missing)}
end

-- reservations -----------------------------------------------------------------------------
local function unpack_units(text)
  local out, order = {}, {}
  if text == nil or text == '' then return out, order end
  for unit, amount in string.gmatch(text, '([%u_]+)=(-?%d+)') do
    out[unit] = tonumber(amount)
    order[#order + 1] = unit
  end
  return out, order
end
local function pack_units(by_unit)
  local text = ''
  for i = 1, 4 do
    local unit = UNITS_IN_ORDER[i]
    local amount = by_unit[unit]
    if amount ~= nil then
      text = (text == '' and '' or text .. ',') .. unit .. '=' .. s(amount)
    end
  end
  return text
end
-- A reservation keeps each ledger it holds as two items: the ledger field and a number that
-- says where its path and its definition's scope end in it and the unit and period codes
-- (see ledger_ref). The definition's dimension is the segment after the scope, up to its
-- ':' (names and dimension keys never hold ':' or '/': validation.py). Unit and period
-- codes take 3 bits each: at most 8 of either.
local function ledger_ref(field, path, d)
  return field, ((#path * 65536 + #d.scope) * 8 + UNIT_ORDER[d.unit]) * 8 + PERIOD_ORDER[d.period]
end
local REFS, REF_COUNT = {}, 0  -- field -> {code, entry}: read-only entries kept across calls
local function from_ref(field, code)
  local kept = REFS[field]
  if kept and kept[1] == code then return kept[2] end
  local key = code
  local period = code % 8
  code = (code - period) / 8
  local unit = code % 8
  code = (code - unit) / 8
  local scope_end = code % 65536
  local path_end = (code - scope_end) / 65536
  local path = string.sub(field, 1, path_end)
  local dper = ''
  if path_end > scope_end then
    dper = string.sub(path, scope_end + 2, string.find(path, ':', scope_end + 2, true) - 1)
  end
  local entry = {field = field, path = path, unit = UNIT_NAMES[unit],
    period = PERIOD_NAMES[period],
    dscope = path_end > scope_end and string.sub(path, 1, scope_end) or path, dper = dper}
  if REF_COUNT >= 512 then REFS, REF_COUNT = {}, 0 end
  if REFS[field] == nil then REF_COUNT = REF_COUNT + 1 end
  REFS[field] = {key, entry}
  return entry
end
local function res_ledgers(R)
  -- {field, path, unit, period, dscope, dper} per ledger the reservation holds: from the
  -- references in its core, or from what earlier versions kept (six strings per ledger in
  -- the core, or "field\tscope\tper" lines). A list of kept entries (from_ref) is kept as
  -- well, on its last entry, while its entries are the same ones: R.kept, which also keeps
  -- what res_scopes, res_targets and a commit derive from the list alone (lists that every
  -- caller only reads; allocating them took more than anything else per ledger)
  if R.parsed_ledgers then return R.parsed_ledgers end
  local out, flat = {}, R.ledger_list
  if R.refs then
    local n = #flat
    local kept = n > 0 and from_ref(flat[n - 1], flat[n]).kept
    if kept and #kept.entries * 2 == n then
      for i = 1, n - 2, 2 do
        if kept.entries[(i + 1) / 2] ~= from_ref(flat[i], flat[i + 1]) then kept = nil break end
      end
    else
      kept = nil
    end
    if kept then
      R.kept, out = kept, kept.entries
    elseif n > 0 then
      for i = 1, n, 2 do out[#out + 1] = from_ref(flat[i], flat[i + 1]) end
      R.kept = {entries = out}
      out[#out].kept = R.kept
    end
  elseif flat == nil then
    for line in string.gmatch(R.ledgers or '', '[^\n]+') do
      local parts = split(line, '\t')
      local path, unit, period = field_parts(parts[1])
      out[#out + 1] = {field = parts[1], path = path, unit = unit, period = period,
        dscope = parts[2], dper = parts[3]}
    end
  else
    for i = 1, #flat, 6 do
      out[#out + 1] = {field = flat[i], path = flat[i + 1], unit = flat[i + 2],
        period = flat[i + 3], dscope = flat[i + 4], dper = flat[i + 5]}
    end
  end
  R.parsed_ledgers = out
  return out
end
local function res_def(entry)
  return find_def(entry.dscope, entry.unit, entry.period, entry.dper) or
    neutral_def(entry.dscope, entry.unit, entry.period, entry.dper)
end
local function res_scopes(R)
  -- the paths of its ledgers, each once, in order: a few, so a search from the last one
  -- (a path's ledgers are next to each other) takes no table of those seen
  local entries, kept = res_ledgers(R), R.kept
  if kept and kept.paths then return kept.paths end
  local out = {}
  for i = 1, #entries do
    local path, j = entries[i].path, #out
    while j > 0 and out[j] ~= path do j = j - 1 end
    if j == 0 then out[#out + 1] = path end
  end
  if kept then kept.paths = out end
  return out
end
local function load_res(key)
  -- the reservation at key, or nil: never made, or finished longer ago than the retention
  -- (the key's PEXPIRE says the same on Redis' own clock; this holds on any clock)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local R = {}
  for i = 1, #flat, 2 do R[flat[i]] = flat[i + 1] end
  if R.finalized and tonumber(R.finalized) + CFG.finished_retention_ms < NOW then return nil end
  if R.core then
    local c = cmsgpack.unpack(R.core)
    R.id, R.tenant, R.subject, R.action, R.estimate, R.ledger_list = c[1], c[2], c[3], c[4],
      c[5], c[6]
    R.created, R.grace, R.maxext, R.policy, R.concurrency = c[7], c[8], c[9], c[10], c[11]
    R.shadow, R.scope_path, R.refs, R.tally, R.core = c[12], c[13], c[14], c[15], nil
  end
  R.expires = tonumber(R.expires)
  R.grace = tonumber(R.grace)
  R.ext = tonumber(R.ext)
  R.maxext = tonumber(R.maxext)
  return R
end
local function save_res(R)
  -- a new reservation: what changes in fields of their own, the rest packed in one (core);
  -- its ledgers as one flat list of references (ledger_ref; the last item, 1, says so)
  redis.call('HSET', K_RES, 'status', R.status, 'expires', s(R.expires), 'ext', R.ext, 'core',
    cmsgpack.pack({R.id, R.tenant, R.subject, R.action, R.estimate, R.ledger_list, R.created,
      R.grace, R.maxext, R.policy, R.concurrency, R.shadow, R.scope_path, 1, R.tally}))
end
local function res_targets(R)
  -- the reservation's ledger entries (res_ledgers), each given its definition (d), all
  -- fetched at once; a kept entry (from_ref) keeps its d while its scope's definitions are
  -- the same list
  local entries, kept = res_ledgers(R), R.kept
  local scopes = kept and kept.scopes
  if not scopes then
    scopes = {}
    for i = 1, #entries do scopes[i] = entries[i].dscope end
    if kept then kept.scopes = scopes end
  end
  prefetch_defs(scopes)
  for i = 1, #entries do
    local e = entries[i]
    local list = defs_of(e.dscope)
    if e.defs ~= list then e.d, e.defs = res_def(e), list end
  end
  return entries
end
local function return_estimate(R)
  -- the balance rows after it (add_row)
  local est = unpack_units(R.estimate)
  local balances, targets_ = {}, res_targets(R)
  local ledgers = lload_all(targets_)
  for i, e in ipairs(res_ledgers(R)) do
    local L = ledgers[i]
    L.r = L.r - est[e.unit]
    L.t = NOW
    add_row(balances, L, targets_[i].d)
  end
  lsave_all(ledgers)
  return balances
end
local function finish(R, key, status, charged)
  redis.call('HSET', key, 'status', status, 'finalized', s(NOW), 'charged', charged or '')
  redis.call('PEXPIRE', key, CFG.finished_retention_ms)
  redis.call('ZREM', K_EXP, R.id)
  if (R.concurrency or '') == '' then return end
  for qkey in string.gmatch(R.concurrency, '[^\n]+') do
    local n = tonumber(redis.call('HGET', K_QCOUNT, qkey) or '0')
    redis.call('HSET', K_QCOUNT, qkey, math.max(0, n - 1))
  end
end
local function action_name(json)
  -- the name in an action's JSON: read off the text when it holds no escape (a quote inside
  -- a JSON string is always escaped, so `"name":` is the key), else decoded
  local name = string.match(json, '"name":%s*"([^"\\]*)"')
  if name then return name end
  return cjson.decode(json).name
end
local function subject_scope(R) return R.scope_path or cjson.decode(R.subject).scope_path end
local function res_report_scopes(R)
  -- where the reservation's activity is counted (kept when it was made; a reservation made
  -- before that was kept counts at its subject scope alone)
  if R.tally and R.tally ~= '' then return split(R.tally, '\n') end
  return {subject_scope(R)}
end
local function expire(R, key)
  return_estimate(R)
  finish(R, key, 'EXPIRED')
  audit('reservation.expired', {scopes = res_scopes(R), reservation_id = R.id,
    estimate = R.estimate})
  count_all(res_report_scopes(R), 'expiries')
  NOTES[#NOTES + 1] = {'reservation.expired', NULL, NULL, NULL, NULL, NULL, NULL, R.id, NULL,
    {amounts = R.estimate}}
end
local function overdue(limit)
  -- the first `limit` entries due in the expiry index, each {rid, key, R}; R is nil when
  -- the hash is gone, and `due` says whether the reservation is one to expire
  local due = redis.call('ZRANGEBYSCORE', K_EXP, '-inf', '(' .. s(NOW), 'LIMIT', 0, limit)
  local found = {}
  if #due == 0 then return found end
  local prefix = string.match(K_EXP, '^(.*):exp$') .. ':r:'
  for i, rid in ipairs(due) do
    local key = prefix .. rid
    local R = load_res(key)
    if R then R.id = rid end
    found[i] = {rid = rid, key = key, R = R,
      due = R ~= nil and R.status == 'ACTIVE' and R.expires + R.grace < NOW}
  end
  return found
end
local function reap(limit)
  -- expire up to `limit` reservations past expires_at + grace; entries whose hash is gone
  -- or already final are dropped from the index on every path
  local expired = 0
  for _, e in ipairs(overdue(limit)) do
    if e.due then
      expire(e.R, e.key)
      expired = expired + 1
    elseif e.R == nil or e.R.status ~= 'ACTIVE' then
      redis.call('ZREM', K_EXP, e.rid)
    end
  end
  return expired
end
local function overdue_holds(limit)
  -- what reap(limit) would give back, writing nothing: held amounts by ledger field and
  -- concurrency slots by quota key (a dry run answers as if they had been given back)
  local held, slots = {}, {}
  for _, e in ipairs(overdue(limit)) do
    if e.due then
      local est = unpack_units(e.R.estimate)
      for _, l in ipairs(res_ledgers(e.R)) do held[l.field] = (held[l.field] or 0) + est[l.unit] end
      for qkey in string.gmatch(e.R.concurrency or '', '[^\n]+') do
        slots[qkey] = (slots[qkey] or 0) + 1
      end
    end
  end
  return held, slots
end

-- Compact replies (reserve, commit, release) are arrays, not JSON; their last item is the
-- notifications as JSON, or false when there are none. A snapshot kept for a replay is the
-- array without notifications, packed with cmsgpack (exact integers).
local function notes_json()
  if #NOTES == 0 then return false end
  return cjson.encode(NOTES)
end
local function snapshot(body) return cmsgpack.pack(body) end
local function from_snapshot(text)
  if string.sub(text, 1, 1) == '{' then return text end  -- a JSON reply of earlier versions
  return cmsgpack.unpack(text)
end

-- idempotency ------------------------------------------------------------------------------
local function replay(kind)
  if nz(P.key) == nil then return nil end
  local stored = redis.call('GET', K_IDEM)
  if not stored then return nil end
  local nl = string.find(stored, '\n', 1, true)
  if string.sub(stored, 1, nl - 1) ~= P.fp then
    return cjson.encode({error = 'IDEMPOTENCY_MISMATCH', message = 'idempotency key ' .. P.key ..
      ' was used for a different ' .. kind .. ' request'})
  end
  return from_snapshot(string.sub(stored, nl + 1))
end
local function remember(reply)
  if nz(P.key) ~= nil then
    redis.call('SET', K_IDEM, P.fp .. '\n' .. reply, 'PX', CFG.idempotency_ttl_ms)
  end
  return reply
end
local function fail(code, message, decision)
  -- a refusal still carries what the step notified (a reservation it expired first)
  return cjson.encode({error = code, message = message, decision = decision or NULL,
    notes = #NOTES > 0 and NOTES or nil})
end
local function reply(body)
  body.notes = NOTES
  return cjson.encode(body)
end
local function closed_refusal()
  -- a change of a closed tenant, past its replay (as refuse_closed in memory/state.py)
  return fail('TENANT_CLOSED', 'tenant ' .. string.match(K_META, '^al:{(.*)}:meta$') ..
    ' is closed: it can be read, not changed')
end


-- flat arguments of the hot operations: no JSON document to decode -------------------------
local function opt(v) if v == '' then return nil end return v end
local function unit_pairs(packed)
  -- "UNIT=amount,..." -> {{unit, amount}, ...}
  local out = {}
  for unit, amount in string.gmatch(packed, '([%u_]+)=(-?%d+)') do
    out[#out + 1] = {unit, tonumber(amount)}
  end
  return out
end
local function amount_refusal(by_unit, what)
  -- an error reply for an amount no ledger may hold or be charged (nil when all fit), as
  -- operations.checked_amounts: checked before the first write
  for _, unit in ipairs(ordered_units(by_unit)) do
    local amount = by_unit[unit]
    if amount < 0 or amount > MAX_AMOUNT then
      return fail('INVALID_REQUEST', what .. ': ' .. unit .. ' ' .. s(amount) ..
        ' is not between 0 and ' .. s(MAX_AMOUNT))
    end
  end
  return nil
end
local function flat_reserve(args)
  -- 4 rid, 5 tenant, 6 idempotency key, 7 fingerprint, 8 subject JSON, 9 its scope path,
  -- 10 action kind, 11 action name, 12 action JSON, 13 estimate, 14 ttl, 15 grace,
  -- 16 max extensions, 17 overage policy, 18 flags ("d" dry run, "s" shadow), 19 dimensions
  -- JSON, 20 elastic JSON, 21 default plan JSON (each "" when absent), 22... the scopes
  local flags = args[18]
  return {op = 'reserve', rid = args[4], tenant = args[5], key = opt(args[6]), fp = args[7],
    subject = args[8], scope_path = args[9], action = {kind = args[10], name = args[11]},
    action_json = args[12], estimate = unit_pairs(args[13]), ttl = tonumber(args[14]),
    grace = tonumber(args[15]), maxext = tonumber(args[16]), policy = opt(args[17]),
    dry_run = flags ~= '' and string.find(flags, 'd', 1, true) ~= nil,
    shadow = flags ~= '' and string.find(flags, 's', 1, true) ~= nil,
    dims = args[19] ~= '' and cjson.decode(args[19]) or {},
    elastic = args[20] ~= '' and cjson.decode(args[20]) or nil,
    plan = args[21] ~= '' and cjson.decode(args[21]) or nil, scopes = {unpack(args, 22)}}
end
local function flat_settle(args)
  -- 1 commit | release | extend, 4 rid, 5 tenant, 6 idempotency key, 7 fingerprint,
  -- 8 the actual amounts ("UNIT=amount,..."), the reason, or the extension in ms; a commit's
  -- 9 the token counts "input,cached,cache writes,output,reasoning" ("" when unknown)
  local P = {op = args[1], rid = args[4], tenant = args[5], key = opt(args[6]), fp = args[7]}
  if P.op == 'commit' then
    P.actual = unit_pairs(args[8])
    if args[9] and args[9] ~= '' then  -- the provider's token counts, for the usage export
      P.usage = {}
      for n in string.gmatch(args[9], '%d+') do P.usage[#P.usage + 1] = tonumber(n) end
    end
  elseif P.op == 'release' then P.reason = args[8]
  else P.by_ms = tonumber(args[8]) end
  return P
end

-- the start of every call ------------------------------------------------------------------
local function begin(keys, args, flat)
  K_DEFS, K_LEDGERS, K_QUOTAS, K_ACCESS = keys[1], keys[2], keys[3], keys[4]
  K_QCOUNT, K_QRUNS, K_META, K_EXP = keys[5], keys[6], keys[7], keys[8]
  K_AUDIT, K_REPORT, K_RDAYS = keys[9], keys[10], keys[11]
  K_RES, K_IDEM = keys[12], keys[13]
  NULL = cjson.null
  if flat then P = flat(args) else P = cjson.decode(args[1]) end
  SHARE_DEFS = flat ~= nil  -- reserve and settle (see DEF_MEMO)
  if args[3] ~= CFG_TEXT then CFG, CFG_TEXT = cjson.decode(args[3]), args[3] end
  NOW = now_ms(args[2])
  NOTES, DEF_CACHE, CURRENT, DAY_PREFIX, TODAY = {}, {}, {}, nil, nil
  -- (a dry run writes nothing: reserve works out what this reap would give back instead)
  if CFG.reap_batch > 0 and P.op ~= 'sweep' and not P.dry_run then reap(CFG.reap_batch) end
end
