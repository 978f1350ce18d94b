-- reads: one reservation, balances, audit records, report counters. Like every operation
-- they first expire the tenant's overdue reservations (the prelude); they write nothing else.

local function res_info(R)
  return {R.id, R.tenant, R.status, R.subject, R.action, R.estimate, res_scopes(R), R.created,
    s(R.expires), s(R.grace), s(R.ext), R.policy, R.charged or '', R.finalized or NULL}
end
local function report_values(fields, out)
  -- append each of the report hash's `fields` that holds a value, and its value, to `out`
  -- (HMGET in chunks of 1,000: Lua's unpack has a limit)
  for i = 1, #fields, 1000 do
    local chunk = {unpack(fields, i, math.min(i + 999, #fields))}
    local values = redis.call('HMGET', K_REPORT, unpack(chunk))
    for j, field in ipairs(chunk) do
      if values[j] then
        out[#out + 1] = field
        out[#out + 1] = values[j]
      end
    end
  end
end
local function report_span(period, ms)
  -- the first and last day (days since 1970-01-01) of the period containing ms, as
  -- report_days in core/reports.py
  local days = math.floor(ms / DAY)
  if period == 'day' then return days, days end
  if period == 'week' then
    local monday = days - (days + 3) % 7
    return monday, monday + 6
  end
  local y, m = civil(days)
  if period == 'month' then
    local ny, nm = y, m + 1
    if nm == 13 then ny, nm = y + 1, 1 end
    return days_from_civil(y, m, 1), days_from_civil(ny, nm, 1) - 1
  end
  return days_from_civil(y, 1, 1), days_from_civil(y + 1, 1, 1) - 1
end

local op = P.op
if op == 'get' then
  local R = load_res(K_RES)
  if R == nil then
    return fail('NOT_FOUND', 'no reservation ' .. P.rid .. ' (never made, or past its retention)')
  end
  return reply({reservation = res_info(R)})

elseif op == 'balances' then
  local flat = redis.call('HGETALL', K_DEFS)
  local scopes = {}
  for i = 1, #flat, 2 do
    local scope = flat[i]
    if scope == P.base or (P.children and string.sub(scope, 1, #P.scope + 1) == P.scope .. '/') then
      scopes[#scopes + 1] = scope
    end
  end
  table.sort(scopes)
  local out = {}
  for _, scope in ipairs(scopes) do
    for _, d in ipairs(defs_of(scope)) do
      local current = current_bucket(d.period)
      if d.per == '' then
        if nz(P.dimension) == nil then
          out[#out + 1] = balance(lload(lfield(scope, d.unit, d.period, current), d), d)
        end
      elseif nz(P.dimension) or P.children then
        local suffix = '|' .. d.unit .. '|' .. d.period .. '|' .. current
        local fields, cursor = {}, '0'
        repeat
          local page = redis.call('HSCAN', K_LEDGERS, cursor, 'MATCH',
            scope .. '/' .. d.per .. ':*' .. suffix, 'COUNT', 1000)
          cursor = page[1]
          for i = 1, #page[2], 2 do
            local field = page[2][i]
            local path = field_parts(field)
            if not string.find(string.sub(path, #scope + 2), '/', 1, true) and
                (nz(P.dimension) == nil or path == P.scope) then
              fields[#fields + 1] = field
            end
          end
        until cursor == '0'
        table.sort(fields)
        for _, field in ipairs(fields) do out[#out + 1] = balance(lload(field, d), d) end
      end
    end
  end
  return reply({balances = out})

elseif op == 'audit' then
  local wanted = nil
  if nz(P.types) then
    wanted = {}
    for _, t in ipairs(P.types) do wanted[t] = true end
  end
  local found, last = {}, '+'
  while #found < P.limit do
    local page = redis.call('XREVRANGE', K_AUDIT, last, '-', 'COUNT', 200)
    if #page == 0 then break end
    for _, entry in ipairs(page) do
      local f = {}
      for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
      if nz(P.since) and tonumber(f.at) < P.since then page = {} break end
      if (wanted == nil or wanted[f.type]) and #found < P.limit
          and not (nz(P['until']) and tonumber(f.at) > P['until']) then
        found[#found + 1] = entry[2]
      end
    end
    if #page < 200 then break end
    last = '(' .. page[#page][1]
  end
  return reply({records = found})

elseif op == 'list' then
  -- a page of the tenant's reservations, SCAN order: the cursor is the SCAN cursor and how
  -- many matching rows of its batch were given already; at most 20 batches per call (a
  -- short page with a cursor is an answer)
  local prefix = string.match(K_EXP, '^(.*):exp$') .. ':r:'
  local cursor, skip, rows, rounds = P.scan, P.skip, {}, 0
  while true do
    local page = redis.call('SCAN', cursor, 'MATCH', prefix .. '*', 'COUNT', 500)
    local matched = 0
    for _, key in ipairs(page[2]) do
      local R = load_res(key)
      if R and (P.status == '' or R.status == P.status) then
        matched = matched + 1
        if matched > skip then
          if #rows == P.limit then
            return cjson.encode({rows = rows, cursor = cursor .. ':' .. s(matched - 1)})
          end
          rows[#rows + 1] = res_info(R)
        end
      end
    end
    cursor, skip, rounds = page[1], 0, rounds + 1
    if cursor == '0' then return cjson.encode({rows = rows, cursor = ''}) end
    if rounds >= 20 then return cjson.encode({rows = rows, cursor = cursor .. ':0'}) end
  end
elseif op == 'plan' then
  return cjson.encode({plan = redis.call('HGET', K_META, 'plan') or NULL})

elseif op == 'status' then
  -- as status_of in read.py: closed for good, suspended while every open budget is frozen
  if redis.call('HEXISTS', K_META, 'closed') == 1 then return cjson.encode({status = 'CLOSED'}) end
  local open, frozen = 0, 0
  for _, scope in ipairs(redis.call('HKEYS', K_DEFS)) do
    for _, d in ipairs(defs_of(scope)) do
      local status = d.status or 'ACTIVE'
      if status ~= 'CLOSED' then
        open = open + 1
        if status == 'FROZEN' then frozen = frozen + 1 end
      end
    end
  end
  return cjson.encode({status = (open > 0 and frozen == open) and 'SUSPENDED' or 'ACTIVE'})

elseif op == 'report' then
  -- the counters of the kept days of the period asked for, of the rows asked for: scope
  -- rows take fields without a trailing dimension, rows `by` a key the fields ending in it
  if redis.call('ZCARD', K_RDAYS) == 0 and redis.call('EXISTS', K_REPORT) == 1 then
    report_migrate()
  end
  local at = nz(P.at) or NOW
  local first, last = report_span(P.period, at)
  first = math.max(first, oldest_kept())
  local counts = {}
  if first <= last then
    local fields, wanted = redis.call('ZRANGEBYSCORE', K_RDAYS, first, last), {}
    for _, field in ipairs(fields) do
      local last_segment = string.match(field, '^[^|]*|[^|]-([^/|]*)|')
      local key = last_segment and string.match(last_segment, '^([^:]*):')
      local dimension = key and not LEVELS[key] and key or nil
      if dimension == nz(P.by) then wanted[#wanted + 1] = field end
    end
    report_values(wanted, counts)
  end
  return reply({counts = counts, at = s(at)})

elseif op == 'usage' then
  -- the period's usage counters, whole days from day P.index until P.limit entries (as
  -- usage in memory/read.py); days past the retention hold none
  local label, first, last = nz(P.period), nil, nil
  if label == nil then
    label = bucket('month', NOW)
    first, last = report_span('month', NOW)
  else
    local y, m, d = string.match(label, '^(%d%d%d%d)%-(%d%d)%-?(%d*)$')
    if d ~= '' then
      first = days_from_civil(tonumber(y), tonumber(m), tonumber(d))
      last = first
    else
      first, last = report_span('month', days_from_civil(tonumber(y), tonumber(m), 1) * DAY)
    end
  end
  -- each entry: its name, what its name's field holds (the calls, or the packed counts of
  -- earlier versions), then its other fields in USAGE_TAGS order (false where absent)
  local oldest, found, after = oldest_kept(), {}, NULL
  local width = 2 + #USAGE_TAGS
  for day = first + P.index, last do
    if day >= oldest then
      local names = redis.call('ZRANGEBYSCORE', K_RDAYS, USAGE_BASE + day, USAGE_BASE + day)
      for i = 1, #names, 80 do  -- 80 entries a command, within what one unpack can pass
        local fields = with_usage_fields(names, i, math.min(i + 79, #names))
        local values = redis.call('HMGET', K_REPORT, unpack(fields))
        for j = 1, #values, width - 1 do
          if values[j] then  -- (an entry whose name's field is gone holds nothing)
            found[#found + 1] = fields[j]
            for k = j, j + width - 2 do found[#found + 1] = values[k] end
          end
        end
      end
    end
    if #found >= width * P.limit and day < last then
      after = day + 1 - first
      break
    end
  end
  return reply({period = label, next = after, entries = found})
end
return fail('INVALID_REQUEST', 'unknown read ' .. tostring(op))
