-- Administration: definitions, modes and plans, funding and transfers, closing a tenant.
-- One call each; a closed tenant refuses them all (meta `closed`: when it was closed).

local function locate(scope, base, per, unit, period)
  -- the current ledger of the one budget at scope in unit (and period, unless "*")
  local found = {}
  for _, d in ipairs(defs_of(base)) do
    if d.unit == unit and d.per == per and (period == '*' or d.period == period) then
      found[#found + 1] = d
    end
  end
  if #found == 0 then
    return nil, fail('NOT_FOUND', 'no budget at ' .. scope .. ' in ' .. unit ..
      (period == '*' and '' or ' for period ' .. period))
  end
  if #found > 1 then
    local periods = {}
    for i, d in ipairs(found) do periods[i] = d.period ~= '' and d.period or 'None' end
    return nil, fail('INVALID_REQUEST', scope .. ' has ' .. unit .. ' budgets for periods [' ..
      table.concat(periods, ', ') .. ']; say which with period=')
  end
  local d = found[1]
  return {L = lload(lfield(scope, unit, d.period, current_bucket(d.period)), d), d = d}
end

local function remove_budget(x)
  -- here rather than in definitions.lua (shared with reserve.lua): only admin removes one
  local list, kept, removed = defs_of(x.scope), {}, 0
  for _, d in ipairs(list) do
    if d.unit == x.unit and d.period == x.period and d.per == x.per then
      removed = removed + 1
    else
      kept[#kept + 1] = d
    end
  end
  if removed > 0 then
    save_defs(x.scope, kept)
    audit('budget.set', {scopes = {x.scope}, detail = {unit = x.unit, removed = true},
      actor = nz(x.actor), reason = nz(x.reason)})
  end
  return removed
end

local function close_tenant()
  -- as close_tenant in admin.py: overdue reservations expire, the other open ones are
  -- released, every budget closed, every key revoked, the tenant's own webhooks disabled
  reap(1000000000)
  local prefix, released = string.match(K_EXP, '^(.*):exp$') .. ':r:', 0
  for _, rid in ipairs(redis.call('ZRANGE', K_EXP, 0, -1)) do
    local key = prefix .. rid
    local R = load_res(key)
    if R and R.status == 'ACTIVE' then  -- as a release (settle.lua)
      return_estimate(R)
      finish(R, key, 'RELEASED')
      audit('reservation.released', {scopes = res_scopes(R), reservation_id = R.id,
        estimate = R.estimate, detail = {reason = 'tenant closed'}})
      count_all(res_report_scopes(R), 'releases')
      released = released + 1
    else
      redis.call('ZREM', K_EXP, rid)
    end
  end
  local budgets = 0
  for _, scope in ipairs(redis.call('HKEYS', K_DEFS)) do
    local list, changed = defs_of(scope), false
    for _, d in ipairs(list) do
      if d.status ~= 'CLOSED' then
        d.status, changed, budgets = 'CLOSED', true, budgets + 1
      end
    end
    if changed then save_defs(scope, list) end
  end
  local function each_record(hash, change)  -- JSON records of a hash, changed in place
    local n, all = 0, redis.call('HGETALL', hash)
    for i = 1, #all, 2 do
      local record = cjson.decode(all[i + 1])
      if change(record) then
        redis.call('HSET', hash, all[i], cjson.encode(record))
        n = n + 1
      end
    end
    return n
  end
  local keys = each_record(string.sub(K_META, 1, -5) .. 'keys', function(k)
    if k.revoked then return false end
    k.revoked = true
    return true
  end)
  local hooks_off = each_record(hook_key('subs'), function(sub)
    if not sub.enabled then return false end
    sub.enabled = false
    return true
  end)
  local wired = redis.call('HGET', K_META, 'hooks')  -- its own ids leave the event map
  if wired then
    local wants, own, any = cjson.decode(wired), P.tenant .. '/', false
    for event, ids in pairs(wants) do
      local kept = {}
      for _, id in ipairs(ids) do
        if string.sub(id, 1, #own) ~= own then kept[#kept + 1] = id end
      end
      if #kept > 0 then wants[event], any = kept, true else wants[event] = nil end
    end
    if any then redis.call('HSET', K_META, 'hooks', cjson.encode(wants))
    else redis.call('HDEL', K_META, 'hooks') end
  end
  if redis.call('HSETNX', K_META, 'tenant_name', P.tenant) == 1 then
    redis.call('HSET', K_META, 'tenant_created', s(NOW))
  end
  redis.call('HSET', K_META, 'closed', s(NOW))
  audit('tenant.closed', {scopes = {'tenant:' .. P.tenant}, detail = {released = released,
    budgets_closed = budgets, keys_revoked = keys}, actor = nz(P.actor), reason = nz(P.reason)})
  NOTES[#NOTES + 1] = {'tenant.closed', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    nz(P.reason) or ''}
  return {released = released, budgets = budgets, keys = keys, hooks = hooks_off,
    changed = true}
end

local op = P.op
local closed = redis.call('HGET', K_META, 'closed')
if closed and op ~= 'close_tenant' then return closed_refusal() end
if op == 'close_tenant' then
  local did = closed and {released = 0, budgets = 0, keys = 0, hooks = 0, changed = false}
    or close_tenant()
  local stored = redis.call('HMGET', K_META, 'tenant_name', 'tenant_created', 'closed')
  did.name, did.created, did.closed = stored[1], stored[2], stored[3]
  return reply(did)
end
local bad = (op == 'set_budget' and budget_refusal(P, {})) or
  (op == 'apply_plan' and plan_refusal(P))
if bad then return fail('INVALID_REQUEST', bad) end
if op == 'set_budget' then
  return reply({balances = set_budget(P)})
elseif op == 'remove_budget' then
  return reply({removed = remove_budget(P)})
elseif op == 'set_quota' then
  set_quota(P)
  return reply({})
elseif op == 'set_access' then
  set_access(P)
  return reply({})
elseif op == 'apply_plan' then
  apply_plan(P)
  return reply({})
elseif op == 'set_mode' then
  if nz(P.mode) then redis.call('HSET', K_META, 'mode', P.mode)
  else redis.call('HDEL', K_META, 'mode') end
  audit('tenant.mode_set', {detail = {mode = nz(P.mode) or NULL}, actor = nz(P.actor),
    reason = nz(P.reason)})
  NOTES[#NOTES + 1] = {'tenant.mode_changed', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    nz(P.mode) or ''}
  return reply({})
elseif op == 'suspend_tenant' then
  -- as suspend_tenant in admin.py: every open budget frozen (or unfrozen) in this step
  local want, open, changed = P.suspended and 'FROZEN' or 'ACTIVE', 0, 0
  for _, scope in ipairs(redis.call('HKEYS', K_DEFS)) do
    local list, dirty = defs_of(scope), false
    for _, d in ipairs(list) do
      local status = d.status or 'ACTIVE'
      if status ~= 'CLOSED' then
        open = open + 1
        if status ~= want then d.status, dirty, changed = want, true, changed + 1 end
      end
    end
    if dirty then save_defs(scope, list) end
  end
  if open == 0 then
    return fail('NOT_FOUND', 'tenant ' .. P.tenant .. ' has no open budgets to ' ..
      (P.suspended and 'freeze' or 'unfreeze') ..
      ' (suspending freezes its budgets: give it a plan or a budget first)')
  end
  if changed > 0 then
    local kind = P.suspended and 'tenant.suspended' or 'tenant.reactivated'
    audit(kind, {scopes = {'tenant:' .. P.tenant}, detail = {budgets = changed},
      actor = nz(P.actor), reason = nz(P.reason)})
    NOTES[#NOTES + 1] = {kind, NULL, NULL, NULL, NULL, NULL, NULL, NULL, nz(P.reason) or ''}
  end
  return reply({changed = changed})
elseif op == 'set_status' then
  local list, matched = defs_of(P.scope), 0
  for _, d in ipairs(list) do
    if nz(P.unit) == nil or d.unit == P.unit then
      d.status = P.status
      matched = matched + 1
    end
  end
  if matched == 0 then
    return fail('NOT_FOUND', 'no budget at ' .. P.scope .. (nz(P.unit) and ' in ' .. P.unit or ''))
  end
  save_defs(P.scope, list)
  audit('budget.status_changed', {scopes = {P.scope}, detail = {status = P.status,
    budgets = matched}, actor = nz(P.actor), reason = nz(P.reason)})
  return reply({changed = matched})
elseif op == 'set_budget_terms' then
  local od, policy = nz(P.od), nz(P.policy)
  if (od == nil and policy == nil) or (od ~= nil and (type(od) ~= 'number' or od < 0 or
      od > MAX_AMOUNT or od ~= math.floor(od))) or
      (policy ~= nil and POLICY_CODES[policy] == nil) then
    return fail('INVALID_REQUEST', 'set_budget_terms: an overdraft limit (an integer ' ..
      'between 0 and ' .. s(MAX_AMOUNT) .. ') or an overage policy, or both')
  end
  local list, matched = defs_of(P.scope), {}
  for _, d in ipairs(list) do
    if d.unit == P.unit then
      d.od, d.policy = od or d.od, policy or d.policy
      matched[#matched + 1] = d
    end
  end
  if #matched == 0 then
    return fail('NOT_FOUND', 'no budget at ' .. P.scope .. ' in ' .. P.unit)
  end
  save_defs(P.scope, list)  -- a new stored string: decoded copies kept by scripts are dropped
  for _, d in ipairs(matched) do  -- each current ledger's flag follows the new limit
    local function follow(L)
      recompute_over(L, d.od)
      lsave(L)
    end
    if d.per ~= '' then
      each_dimension_ledger(d, follow)
    else
      local field = lfield(P.scope, d.unit, d.period, current_bucket(d.period))
      local raw = redis.call('HGET', K_LEDGERS, field)
      if raw then follow(ledger(field, d, raw)) end  -- one never touched owes nothing
    end
  end
  audit('budget.updated', {scopes = {P.scope}, detail = {unit = P.unit,
    overdraft_limit = od and s(od) or NULL, overage_policy = policy or NULL,
    budgets = #matched}, actor = nz(P.actor), reason = nz(P.reason)})
  return reply({changed = #matched})
end

-- funding and transfers are idempotent by key
local again = replay(op)
if again then return again end
if op == 'fund' then
  local at, err = locate(P.scope, P.base, P.per, P.unit, P.period)
  if err then return err end
  local L, d = at.L, at.d
  local before = balance(L, d)
  local x = P.amount
  if P.operation == 'CREDIT' then L.a = L.a + x
  elseif P.operation == 'DEBIT' then
    if remaining(L) < x then
      return fail('BUDGET_EXCEEDED', 'not enough remaining to debit',
        denial_of('BUDGET_EXCEEDED', P.scope, P.unit, '', L, x))
    end
    L.a = L.a - x
  elseif P.operation == 'RESET' then L.a = x
  elseif P.operation == 'RESET_SPENT' then L.a = x L.sp = nz(P.spent) or 0
  elseif P.operation == 'REPAY_DEBT' then
    if x > L.debt then
      return fail('INVALID_REQUEST', 'amount: repay at most the debt (' .. s(L.debt) ..
        '), got ' .. s(x))
    end
    L.debt = L.debt - x
  end
  if L.a > MAX_AMOUNT then
    return fail('INVALID_REQUEST', 'amount: the allocation would be more than a ledger holds (' ..
      s(MAX_AMOUNT) .. ')')
  end
  recompute_over(L, d.od)
  lsave(L)
  local answer = {before = before, after = balance(L, d), notes = {}}
  local body = cjson.encode(answer)
  remember(body)
  if #NOTES > 0 then body = reply(answer) end  -- what the reap before it expired
  audit('budget.funded', {scopes = {P.scope}, idempotency_key = nz(P.key) or '',
    actual = P.unit .. '=' .. s(x), detail = {operation = P.operation}, actor = nz(P.actor),
    reason = nz(P.reason)})
  return body
elseif op == 'transfer' then
  local src, err = locate(P.source, P.source_base, P.source_per, P.unit, P.period)
  if err then return err end
  local dst, err2 = locate(P.destination, P.destination_base, P.destination_per, P.unit, P.period)
  if err2 then return err2 end
  if src.L.field == dst.L.field then
    return fail('INVALID_REQUEST', 'transfer: source and destination are the same budget')
  end
  if remaining(src.L) < P.amount then
    return fail('BUDGET_EXCEEDED', 'the source cannot give that much',
      denial_of('BUDGET_EXCEEDED', P.source, P.unit, '', src.L, P.amount))
  end
  if dst.L.a + P.amount > MAX_AMOUNT then
    return fail('INVALID_REQUEST', 'amount: ' .. P.destination ..
      ' would hold more than a ledger can (' .. s(MAX_AMOUNT) .. ')')
  end
  src.L.a = src.L.a - P.amount
  dst.L.a = dst.L.a + P.amount
  recompute_over(dst.L, dst.d.od)
  lsave(src.L)
  lsave(dst.L)
  local answer = {source = balance(src.L, src.d), destination = balance(dst.L, dst.d),
    notes = {}}
  local body = cjson.encode(answer)
  remember(body)
  if #NOTES > 0 then body = reply(answer) end
  audit('budget.transferred', {scopes = {P.source, P.destination},
    idempotency_key = nz(P.key) or '', actual = P.unit .. '=' .. s(P.amount),
    actor = nz(P.actor), reason = nz(P.reason)})
  return body
end
return fail('INVALID_REQUEST', 'unknown operation ' .. tostring(op))
