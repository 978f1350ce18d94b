-- commit, release and extend of one reservation (KEYS[11]); idempotency lives on it.

-- A closed tenant refuses each change past its replay (as _named and _require_active in
-- settle.py); closing finished every reservation, so only one not active needs to look.
local R = load_res(K_RES)
if R == nil then
  if redis.call('HEXISTS', K_META, 'closed') == 1 then return closed_refusal() end
  return fail('NOT_FOUND', 'no reservation ' .. P.rid .. ' (never made, or past its retention)')
end
local kind = P.op
local stored_key = R[kind .. '_key']
if kind == 'extend' and nz(P.key) then stored_key = R['extend_key:' .. P.key] and P.key end
if nz(P.key) and stored_key == P.key then
  local fp_field = kind == 'extend' and ('extend_fp:' .. P.key) or (kind .. '_fp')
  if R[fp_field] ~= P.fp then
    return fail('IDEMPOTENCY_MISMATCH', 'idempotency key ' .. P.key .. ' was used for a different ' ..
      (kind == 'extend' and 'extension' or kind) .. ' request')
  end
  return from_snapshot(
    R[kind == 'extend' and ('extend_result:' .. P.key) or (kind .. '_result')])
end
if R.status ~= 'ACTIVE' and redis.call('HEXISTS', K_META, 'closed') == 1 then
  return closed_refusal()
end
if R.status == 'EXPIRED' then
  return fail('RESERVATION_EXPIRED', 'reservation ' .. R.id .. ' expired; its estimate went back ' ..
    'to the budgets (charge the spend with record())')
end
if R.status ~= 'ACTIVE' then
  return fail('RESERVATION_FINALIZED', 'reservation ' .. R.id .. ' is already ' .. R.status)
end
if NOW > R.expires + R.grace then expire(R, K_RES) end
if NOW > (kind == 'extend' and R.expires or R.expires + R.grace) then
  return fail('RESERVATION_EXPIRED', 'reservation ' .. R.id .. ' expired at ' .. s(R.expires) .. ' ms')
end

local function save_compact(body)
  -- commit and release answer with an array whose last item is the notifications
  if nz(P.key) then
    redis.call('HSET', K_RES, kind .. '_key', P.key, kind .. '_fp', P.fp, kind .. '_result',
      snapshot(body))
  end
  body[#body] = notes_json()
  return body
end
local function save_reply(body)
  local text = cjson.encode(body)
  if nz(P.key) then
    if kind == 'extend' then
      redis.call('HSET', K_RES, 'extend_key:' .. P.key, '1', 'extend_fp:' .. P.key, P.fp,
        'extend_result:' .. P.key, text)
    else
      redis.call('HSET', K_RES, kind .. '_key', P.key, kind .. '_fp', P.fp, kind .. '_result', text)
    end
  end
  body.notes = NOTES
  return cjson.encode(body)
end

if kind == 'extend' then
  if R.ext >= R.maxext then
    return fail('MAX_EXTENSIONS_EXCEEDED', 'reservation ' .. R.id .. ' was extended ' .. s(R.ext) ..
      ' times, the most allowed')
  end
  R.expires = R.expires + P.by_ms
  R.ext = R.ext + 1
  redis.call('HSET', K_RES, 'expires', s(R.expires), 'ext', R.ext)
  redis.call('ZADD', K_EXP, R.expires + R.grace, R.id)
  audit('reservation.extended', {reservation_id = R.id, idempotency_key = nz(P.key) or '',
    detail = {by_ms = s(P.by_ms), expires_at_ms = s(R.expires)}})
  return save_reply({reservation_id = R.id, expires_at_ms = s(R.expires), extensions = R.ext})
end

local tally = res_report_scopes(R)
if kind == 'release' then
  local balances = return_estimate(R)
  finish(R, K_RES, 'RELEASED')
  audit('reservation.released', {scopes = res_scopes(R), reservation_id = R.id,
    idempotency_key = nz(P.key) or '', estimate = R.estimate, detail = {reason = P.reason}})
  count_all(tally, 'releases')
  return save_compact({R.estimate, balances, false})
end

-- commit
local estimate, units = unpack_units(R.estimate)

-- the plain commit (as _plain in memory/settle.py): an enforce-mode reservation in one unit,
-- charged within its estimate; the general one below would change each ledger the same
-- way (the estimate released, the actual spent: nothing to refuse, no debt, no overage)
-- and write and answer the same
local known_raws  -- the ledgers as the plain path read them, for the general path
local function plain()
  local unit, amount = P.actual[1][1], P.actual[1][2]
  local held = estimate[unit]
  if held == nil or amount < 0 or amount > held then return nil end
  local targets_ = res_targets(R)
  local n, fields = #targets_, R.kept and R.kept.fields
  if n == 0 then return nil end
  if not fields then
    fields = {}
    for i = 1, n do fields[i] = targets_[i].field end
    if R.kept then R.kept.fields = fields end
  end
  local raws = redis.call('HMGET', K_LEDGERS, unpack(fields))
  known_raws = raws
  local function loud(d, a, used, over, al, ex, on)
    -- whether alert() has something to say on a ledger after the charge
    return a > 0 and ((al < alert_count(d) and used * 1000000 >=
      math.floor(alert_at(d, al + 1) * 1000000 + 0.5) * a) or (used >= a and ex == 0) or
      (over == 1 and on == 0))
  end
  -- each ledger as ledger() reads it (one missing, in an earlier form or under another
  -- limit goes to the general path), charged and packed at once: no table per ledger; the
  -- few that alert() speaks on are unpacked again below
  local balances, writes, alerts, periodic = {}, {}, false, false
  for i = 1, n do
    local raw, d = raws[i], targets_[i].d
    periodic = periodic or d.period ~= ''
    if not raw or string.byte(raw, 1) ~= 1 then return nil end
    local _, a, ls, r, sp, debt, over, _, al, ex, on = struct.unpack(LEDGER_FORMAT, raw)
    if ls ~= d.limit then return nil end
    r, sp = r - held, sp + amount
    if loud(d, a, sp + debt, over, al, ex, on) then
      alerts = true
    elseif a > 0 then
      on = over  -- as alert() leaves it
    end
    writes[2 * i - 1] = fields[i]
    writes[2 * i] = struct.pack(LEDGER_FORMAT, 1, a, ls, r, sp, debt, over, NOW, al, ex, on)
    local m = #balances  -- as add_row
    balances[m + 1], balances[m + 2], balances[m + 3], balances[m + 4] = fields[i], a, r, sp
    balances[m + 5], balances[m + 6], balances[m + 7], balances[m + 8] = debt, d.od, over,
      d.status
  end
  local function as_ledger(i)  -- the ledger as it will be written
    local _, a, ls, r, sp, debt, over, t, al, ex, on = struct.unpack(LEDGER_FORMAT,
      writes[2 * i])
    return {field = fields[i], a = a, ls = ls, r = r, sp = sp, debt = debt, over = over, t = t,
      al = al, ex = ex, on = on}
  end
  local charged_text = unit .. '=' .. s(amount)
  finish(R, K_RES, 'COMMITTED', charged_text)
  local scopes = res_scopes(R)
  audit_fields('reservation.committed', with_optional({'reservation_id', R.id},
    'scopes', #scopes > 0 and cjson.encode(scopes), 'idempotency_key', nz(P.key),
    'estimate', R.estimate, 'actual', charged_text, 'charged', charged_text))
  count_all(tally, 'commits')
  count_all(tally, 'committed:' .. unit, amount)
  count_usage(tonumber(R.created), subject_scope(R), action_name(R.action), 1, 0, P.usage,
    {[unit] = amount})
  if alerts then  -- alert() on each ledger that has something to say
    for i = 1, n do
      local L, d = as_ledger(i), targets_[i].d
      if loud(d, L.a, L.sp + L.debt, L.over, L.al, L.ex, L.on) then
        alert(L, d, R.id)
        writes[2 * i] = packed_ledger(L)
      end
    end
  end
  local wants = periodic and hooks()  -- (a forecast is only for a ledger with a period)
  if wants and wants[FORECAST] then
    local rows = {}
    for i = 1, n do rows[i] = {L = as_ledger(i)} end
    forecasts(rows)
  end
  redis.call('HSET', K_LEDGERS, unpack(writes))
  return save_compact({charged_text, unit .. '=' .. s(held - amount), balances, false})
end
if R.shadow ~= '1' and #units == 1 and #P.actual == 1 then
  local done = plain()
  if done then return done end
end
local actual = {}
for _, pair in ipairs(P.actual) do actual[pair[1]] = pair[2] end
local bad = amount_refusal(actual, 'actual')
if bad then return bad end
for _, pair in ipairs(P.actual) do
  if estimate[pair[1]] == nil then
    return fail('UNIT_MISMATCH', 'commit: ' .. pair[1] .. ' not in the reservation\'s estimate ' ..
      table.concat(sorted_keys(estimate), ', '))
  end
  actual[pair[1]] = pair[2]
end
for unit, held in pairs(estimate) do
  if actual[unit] == nil then actual[unit] = held end  -- a unit left out is charged as estimated
end
local shadow = R.shadow == '1'
local rows, targets_ = {}, res_targets(R)
local ledgers
if known_raws then  -- read by the plain path
  ledgers = {}
  for i = 1, #targets_ do ledgers[i] = ledger(targets_[i].field, targets_[i].d, known_raws[i]) end
else
  ledgers = lload_all(targets_)
end
for i, e in ipairs(res_ledgers(R)) do
  local d = targets_[i].d
  local policy = R.policy ~= '' and R.policy or d.policy
  rows[i] = {L = ledgers[i], d = d, policy = policy, unit = e.unit}
end
local debts = {}  -- before the charge, for debts_added
for i, row in ipairs(rows) do debts[i] = row.L.debt end
local changes, charged, refused
if shadow then
  changes, charged = settle_shadow(rows, estimate, actual, true)
else
  changes, charged, refused = settle(rows, estimate, actual, true)
end
if refused then
  return fail(refused.reason, refused.reason == 'BUDGET_EXCEEDED' and
    'the actual exceeds the estimate by more than remains (overage policy REJECT)' or
    'the overage would pass the overdraft limit', refused)
end
apply(rows, changes)
local released = {}
for unit, held in pairs(estimate) do released[unit] = math.max(0, held - charged[unit]) end
local balances = {}
for i, row in ipairs(rows) do add_row(balances, row.L, targets_[i].d) end
local charged_text = pack_units(charged)
finish(R, K_RES, 'COMMITTED', charged_text)
local scopes = res_scopes(R)
audit_fields('reservation.committed', with_optional({'reservation_id', R.id},
  'scopes', #scopes > 0 and cjson.encode(scopes), 'idempotency_key', nz(P.key),
  'estimate', R.estimate,
  'actual', pack_units(actual), 'charged', charged_text))
count_all(tally, 'commits')
for unit, amount in pairs(charged) do count_all(tally, 'committed:' .. unit, amount) end
count_usage(tonumber(R.created), subject_scope(R), action_name(R.action), 1, 0, P.usage,
  charged)  -- on the day the reservation was made: the day whose ledgers it charged
for _, row in ipairs(rows) do alert(row.L, row.d, R.id) end
debts_added(rows, debts, R.id)
local over = {}
for unit, amount in pairs(actual) do
  if amount > estimate[unit] then over[unit] = amount - estimate[unit] end
end
if next(over) then  -- on record too, with the estimate and the actual (as settle.py)
  NOTES[#NOTES + 1] = {'reservation.commit_overage', NULL, NULL, NULL, NULL, NULL, NULL, R.id,
    NULL, {amounts = pack_units(over)}}
  audit_fields('reservation.commit_overage', with_optional({'reservation_id', R.id},
    'scopes', #scopes > 0 and cjson.encode(scopes), 'estimate', R.estimate,
    'actual', pack_units(actual)))
end
forecasts(rows)
lsave_all(ledgers)
return save_compact({charged_text, pack_units(released), balances, false})
