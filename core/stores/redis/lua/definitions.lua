-- Writers of definitions (budgets, quotas, access rules, plans), shared by admin.lua and by
-- reserve.lua (which installs a guard's default plan for a tenant seen the first time).

local function budget_refusal(x, adding)
  -- why set_budget(x) must be refused before anything is written (nil when it may run):
  -- what it would store must read back the same. `adding` counts budgets new to each scope
  -- in this call (a plan adds several).
  local why = unpackable({scope = x.scope, unit = x.unit, period = x.period, per = x.per,
    limit = x.limit, od = x.od, policy = x.policy, alerts = x.alerts, degrade = x.degrade})
  if why then return x.scope .. ': ' .. why end
  if find_def(x.scope, x.unit, x.period, x.per) == nil then
    adding[x.scope] = (adding[x.scope] or 0) + 1
    if #defs_of(x.scope) + adding[x.scope] > MAX_U16 then
      return x.scope .. ': more than ' .. MAX_U16 .. ' budgets'
    end
  end
  return nil
end

local function plan_refusal(x)
  -- why apply_plan(x) must be refused before anything is written (nil when it may run)
  local adding = {}
  for _, item in ipairs(x.definitions) do
    local why = item.op == 'set_budget' and budget_refusal(item, adding)
    if why then return why end
  end
  return nil
end

local function each_dimension_ledger(d, visit)
  -- visit(L) for each stored ledger of template d in its current bucket (one per value)
  local suffix = '|' .. d.unit .. '|' .. d.period .. '|' .. current_bucket(d.period)
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', K_LEDGERS, cursor, 'MATCH',
      d.scope .. '/' .. d.per .. ':*' .. suffix, 'COUNT', 1000)
    cursor = page[1]
    for i = 1, #page[2], 2 do
      local field = page[2][i]
      if not string.find(string.sub(field_parts(field), #d.scope + 2), '/', 1, true) then
        visit(ledger(field, d, page[2][i + 1]))
      end
    end
  until cursor == '0'
end

local function set_budget(x)
  local list = defs_of(x.scope)
  local d = find_def(x.scope, x.unit, x.period, x.per)
  if d == nil then
    d = {scope = x.scope, unit = x.unit, period = x.period, per = x.per}
    list[#list + 1] = d
    table.sort(list, def_before)
  end
  d.limit, d.od, d.policy = x.limit, x.od, x.policy
  d.alerts, d.degrade = x.alerts, x.degrade
  d.required = x.required == true
  d.status = d.status or 'ACTIVE'
  save_defs(x.scope, list)
  audit('budget.set', {scopes = {x.scope}, detail = {unit = x.unit, limit = s(x.limit),
    period = x.period ~= '' and x.period or NULL, per = x.per ~= '' and x.per or NULL},
    actor = nz(x.actor), reason = nz(x.reason)})
  d = find_def(x.scope, x.unit, x.period, x.per)
  if x.per ~= '' then  -- every dimension ledger of this bucket follows, now
    each_dimension_ledger(d, function(L)
      recompute_over(L, d.od)
      lsave(L)
    end)
    return {}
  end
  local L = lload(lfield(x.scope, x.unit, x.period, current_bucket(x.period)), d)
  recompute_over(L, d.od)
  lsave(L)
  return {balance(L, d)}
end

local function quota_key(q) return q.kind .. '|' .. q.window .. '|' .. q.action_kind end

local function set_quota(x)
  local raw = redis.call('HGET', K_QUOTAS, x.scope)
  local list, kept = raw and cjson.decode(raw) or {}, {}
  for _, q in ipairs(list) do
    if quota_key(q) ~= quota_key(x) then kept[#kept + 1] = q end
  end
  if not x.remove then
    kept[#kept + 1] = {kind = x.kind, limit = x.limit, window = x.window,
      action_kind = x.action_kind}
  end
  if #kept == 0 then redis.call('HDEL', K_QUOTAS, x.scope)
  else redis.call('HSET', K_QUOTAS, x.scope, cjson.encode(kept)) end
  audit('quota.set', {scopes = {x.scope}, detail = {kind = x.kind,
    limit = x.remove and NULL or x.limit, window = x.window ~= '' and x.window or NULL,
    action_kind = x.action_kind}, actor = nz(x.actor), reason = nz(x.reason)})
end

local function set_access(x)
  if nz(x.rule) == nil then redis.call('HDEL', K_ACCESS, x.scope)
  else redis.call('HSET', K_ACCESS, x.scope, cjson.encode(x.rule)) end
  audit('access.set', {scopes = {x.scope}, detail = {removed = nz(x.rule) == nil},
    actor = nz(x.actor), reason = nz(x.reason)})
end

local function apply_plan(x)
  local keys, previous = {}, cjson.decode(redis.call('HGET', K_META, 'plan_keys') or '[]')
  for _, item in ipairs(x.definitions) do
    local key
    item.actor, item.reason = x.actor, x.reason  -- its records are signed alike
    if item.op == 'set_budget' then
      set_budget(item)
      key = 'budget\t' .. item.scope .. '\t' .. item.unit .. '\t' .. item.period .. '\t' .. item.per
    elseif item.op == 'set_quota' then
      set_quota(item)
      key = 'quota\t' .. item.scope .. '\t' .. quota_key(item)
    else
      set_access(item)
      key = 'access\t' .. item.scope
    end
    keys[#keys + 1] = key
  end
  local now_keys = {}
  for _, k in ipairs(keys) do now_keys[k] = true end
  for _, k in ipairs(previous) do  -- what the previous plan had and this one lacks
    if not now_keys[k] then
      local parts = split(k, '\t')
      local kind, scope = parts[1], parts[2]
      if kind == 'budget' then
        local list, kept = defs_of(scope), {}
        for _, d in ipairs(list) do
          if not (d.unit == parts[3] and d.period == parts[4] and d.per == parts[5]) then
            kept[#kept + 1] = d
          end
        end
        save_defs(scope, kept)
      elseif kind == 'quota' then
        local raw = redis.call('HGET', K_QUOTAS, scope)
        local kept = {}
        for _, q in ipairs(raw and cjson.decode(raw) or {}) do
          if quota_key(q) ~= parts[3] then kept[#kept + 1] = q end
        end
        if #kept == 0 then redis.call('HDEL', K_QUOTAS, scope)
        else redis.call('HSET', K_QUOTAS, scope, cjson.encode(kept)) end
      else
        redis.call('HDEL', K_ACCESS, scope)
      end
    end
  end
  redis.call('HSET', K_META, 'plan', x.name, 'plan_keys', cjson.encode(keys))
  if nz(x.mode) and redis.call('HGET', K_META, 'mode') ~= x.mode then
    redis.call('HSET', K_META, 'mode', x.mode)  -- a plan that changes the mode says so
    NOTES[#NOTES + 1] = {'tenant.mode_changed', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
      x.mode}
  end
  audit('plan.assigned', {detail = {plan = x.name}, actor = nz(x.actor),
    reason = nz(x.reason)})
end
