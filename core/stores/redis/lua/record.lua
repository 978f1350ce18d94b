-- record: charge a cost known only afterwards, without a reservation.

local again = replay('record')
if again then return again end
local meta = redis.call('HMGET', K_META, 'mode', 'closed')
if meta[2] then return closed_refusal() end
local mode = meta[1] or (P.shadow and 'shadow' or 'enforce')
local shadow = mode == 'shadow'
local dims = {}
for _, pair in ipairs(P.dims) do dims[pair[1]] = pair[2] end
local actual, zero = {}, {}
for _, pair in ipairs(P.actual) do
  actual[pair[1]] = pair[2]
  zero[pair[1]] = 0
end
local bad = amount_refusal(actual, 'actual')
if bad then return bad end
local lacking = not shadow and missing_dims(P.scopes, dims, access_rules(P.scopes))
if lacking then  -- as a frozen budget: the record is refused
  return fail('DIMENSION_REQUIRED', 'a required dimension is missing', lacking)
end
local found, err = targets(P.scopes, dims, actual)
if err then return cjson.encode(err) end
if found == nil then
  return fail('BUDGET_NOT_FOUND', 'no budget applies',
    {outcome = 'DENY', reason = 'BUDGET_NOT_FOUND', scope = P.scopes[#P.scopes]})
end
local rows = {}
for i, t in ipairs(found) do
  local L = lload(t.field, t.d)
  if t.d.status ~= 'ACTIVE' and not shadow then  -- records pass debt, never a frozen budget
    local reason = t.d.status == 'FROZEN' and 'BUDGET_FROZEN' or 'BUDGET_CLOSED'
    return fail(reason, 'the budget is ' .. t.d.status,
      denial_of(reason, t.path, t.d.unit, t.d.period, L, actual[t.d.unit]))
  end
  rows[i] = {L = L, d = t.d, policy = nz(P.policy) or t.d.policy, unit = t.d.unit}
end
local debts = {}  -- before the charge, for debts_added
for i, row in ipairs(rows) do debts[i] = row.L.debt end
local changes, charged, refused
if shadow then
  changes, charged = settle_shadow(rows, zero, actual, false)
else
  changes, charged, refused = settle(rows, zero, actual, false)
end
if refused then
  return fail(refused.reason, 'the record exceeds what remains', refused)
end
apply(rows, changes)
local balances = {}
for i, row in ipairs(rows) do balances[i] = balance(row.L, row.d) end
local subject = cjson.decode(P.subject)
local body = {event_id = P.event_id, charged = pack_units(charged), balances = balances,
  notes = {}}
if nz(P.key) then remember(cjson.encode(body)) end  -- the snapshot only a key can replay
local scopes, seen = {}, {}
for _, t in ipairs(found) do
  if not seen[t.path] then seen[t.path] = true scopes[#scopes + 1] = t.path end
end
audit('event.recorded', {scopes = scopes, subject = P.subject,
  action = P.action.kind .. ' ' .. P.action.name, idempotency_key = nz(P.key) or '',
  actual = pack_units(actual), charged = pack_units(charged)})
local tally = report_scopes(subject.scope_path, P.dims)
count_all(tally, 'records')
for unit, amount in pairs(charged) do count_all(tally, 'committed:' .. unit, amount) end
count_usage(NOW, subject.scope_path, P.action.name, 1, 0, nz(P.usage), charged)
for _, row in ipairs(rows) do
  alert(row.L, row.d, NULL)
  lsave(row.L)
end
debts_added(rows, debts, NULL)
forecasts(rows)
body.notes = NOTES
return cjson.encode(body)
