-- reserve (and decide, with dry_run): access rules, then quotas, then budgets; the first
-- refusal wins. In shadow mode evaluation goes on and the reservation is made anyway.
-- (Prelude: common.lua, and definitions.lua, whose apply_plan installs a guard's default plan.)

local meta = redis.call('HMGET', K_META, 'mode', 'plan', 'closed')
if not P.dry_run then
  local again = replay('reserve')
  if again then return again end
end
if meta[3] then  -- a closed tenant (as _closed in reserve.py): denied, a live call on record
  local denial = {outcome = 'DENY', reason = 'TENANT_CLOSED', scope = 'tenant:' .. P.tenant}
  if not P.dry_run then
    local asked = {}
    for _, pair in ipairs(P.estimate) do asked[pair[1]] = pair[2] end
    audit('reservation.denied', {scopes = {denial.scope}, subject = P.subject,
      action = P.action.kind .. ' ' .. P.action.name, idempotency_key = nz(P.key) or '',
      estimate = pack_units(asked), reason = denial.reason})
    NOTES[#NOTES + 1] = {'reservation.denied', denial.scope, NULL, NULL, NULL, NULL, NULL,
      NULL, denial.reason}
  end
  return {cjson.encode(denial), false, false, false, {}, notes_json()}
end
if not P.dry_run then
  if nz(P.plan) and not meta[2] and redis.call('HLEN', K_DEFS) == 0 then
    local bad = plan_refusal(P.plan)
    if bad then return fail('INVALID_REQUEST', bad) end
    apply_plan(P.plan)  -- a tenant seen for the first time
    meta[1] = redis.call('HGET', K_META, 'mode')
  end
end
local mode = meta[1] or (P.shadow and 'shadow' or 'enforce')
local shadow = mode == 'shadow'

-- the plain path (as _plain in memory/reserve.py): a tenant without access rules or quotas,
-- in enforce mode, a call with a fixed estimate, on budgets that are active, without
-- required dimensions or degrade rules, and ledgers clear of debt with room for it. It runs
-- the commands the general evaluation below would, in the same order, and writes and
-- answers exactly what it would; when any of that does not hold it writes nothing and hands
-- what it read on (`known`), so the general path reads nothing twice. A call with an
-- idempotency key comes here only when replay() above found no record of its key (a replay
-- or a mismatch was answered there), and leaves the same record the general path would.
local known = {}
local function plain()
  known.access = redis.call('EXISTS', K_ACCESS) == 1
  if known.access then return nil end
  local scopes_ = P.scopes
  prefetch_defs(scopes_)
  for i = 1, #scopes_ do
    local defs = defs_of(scopes_[i])
    for j = 1, #defs do
      local d = defs[j]
      if d.required or d.status ~= 'ACTIVE' or (d.degrade_raw or '') ~= '' or
          (d.degrade ~= nil and (type(d.degrade) ~= 'table' or next(d.degrade) ~= nil)) then
        return nil
      end
    end
  end
  known.quotas = redis.call('EXISTS', K_QUOTAS) == 1
  if known.quotas then return nil end
  local estimate, dims, pairs_ = {}, {}, P.estimate
  for i = 1, #pairs_ do
    local unit, amount = pairs_[i][1], pairs_[i][2]
    if amount < 0 or amount > MAX_AMOUNT then return nil end
    estimate[unit] = amount
  end
  pairs_ = P.dims
  for i = 1, #pairs_ do dims[pairs_[i][1]] = pairs_[i][2] end
  -- the ledgers it holds, as targets() finds them; a budget without a dimension keeps its
  -- target on its definition, which is kept across calls (DEF_MEMO), while its bucket holds
  local found = {}
  for i = 1, #scopes_ do
    local scope = scopes_[i]
    local defs = defs_of(scope)
    for j = 1, #defs do
      local d = defs[j]
      if estimate[d.unit] then
        local b = d.period == '' and '' or current_bucket(d.period)
        if d.per == '' then
          local st = d.target
          if st == nil or st.b ~= b then
            st = {field = scope .. '|' .. d.unit .. '|' .. d.period .. '|' .. b, d = d,
              path = scope, b = b}
            d.target = st
          end
          found[#found + 1] = st
        elseif dims[d.per] then
          local path = scope .. '/' .. d.per .. ':' .. dims[d.per]
          found[#found + 1] = {field = path .. '|' .. d.unit .. '|' .. d.period .. '|' .. b,
            d = d, path = path}
        end
      end
    end
  end
  if #found == 0 then return nil end
  -- the ledgers as values (no table per ledger), as ledger() reads them; one stored in
  -- an earlier form or under another limit goes to the general path
  local fields = {}
  for i = 1, #found do fields[i] = found[i].field end
  local raws = redis.call('HMGET', K_LEDGERS, unpack(fields))
  known.raws = raws
  local held_ledgers, scopes, seen, rows, writes = {}, {}, {}, {}, {}
  for i = 1, #found do
    local raw, st = raws[i], found[i]
    local d, path = st.d, st.path
    local _, a, ls, r, sp, debt, over, al, ex, on
    if not raw then
      a, ls, r, sp, debt, over, al, ex, on = d.limit, d.limit, 0, 0, 0, 0, 0, 0, 0
    elseif string.byte(raw, 1) == 1 then
      _, a, ls, r, sp, debt, over, _, al, ex, on = struct.unpack(LEDGER_FORMAT, raw)
      if ls ~= d.limit then return nil end
    else
      return nil
    end
    local amount = estimate[d.unit]
    if over == 1 or debt > 0 or a - r - sp < amount then return nil end
    r = r + amount
    writes[2 * i - 1] = fields[i]
    writes[2 * i] = struct.pack(LEDGER_FORMAT, 1, a, ls, r, sp, debt, over, NOW, al, ex, on)
    held_ledgers[2 * i - 1], held_ledgers[2 * i] = ledger_ref(fields[i], path, d)
    if not seen[path] then seen[path] = true scopes[#scopes + 1] = path end
    local n = #rows  -- as add_row
    rows[n + 1], rows[n + 2], rows[n + 3], rows[n + 4] = fields[i], a, r, sp
    rows[n + 5], rows[n + 6], rows[n + 7], rows[n + 8] = debt, d.od, over, d.status
  end
  -- the reservation as save_res writes it (its fields in that order)
  local tally, packed = report_scopes(P.scope_path, P.dims), pack_units(estimate)
  local expires = NOW + P.ttl
  redis.call('HSET', K_RES, 'status', 'ACTIVE', 'expires', s(expires), 'ext', 0, 'core',
    cmsgpack.pack({P.rid, P.tenant, P.subject, P.action_json, packed, held_ledgers, s(NOW),
      P.grace, P.maxext, nz(P.policy) or '', '', '0', P.scope_path, 1,
      table.concat(tally, '\n')}))
  redis.call('ZADD', K_EXP, expires + P.grace, P.rid)
  local fields = {'subject', P.subject, 'action', P.action.kind .. ' ' .. P.action.name,
    'reservation_id', P.rid}
  if #scopes > 0 then fields[7], fields[8] = 'scopes', cjson.encode(scopes) end
  local key = nz(P.key)  -- as with_optional in the general path: in this order, none empty
  if key and key ~= '' then fields[#fields + 1], fields[#fields + 2] = 'idempotency_key', key end
  if packed ~= '' then fields[#fields + 1], fields[#fields + 2] = 'estimate', packed end
  audit_fields('reservation.reserved', fields)
  count_all(tally, 'reservations')
  for unit, amount in pairs(estimate) do count_all(tally, 'reserved:' .. unit, amount) end
  redis.call('HSET', K_LEDGERS, unpack(writes))
  local body = {'ALLOW', P.rid, NOW, packed, rows, false}
  if key then remember(snapshot(body)) end  -- the snapshot only a key can replay
  body[6] = notes_json()
  return body
end
if not shadow and not P.dry_run and nz(P.elastic) == nil and
    not (nz(P.plan) and not meta[2]) then
  local done = plain()
  if done then return done end
end
local kind, name = P.action.kind, P.action.name
-- the provider a name starts with ('openai' in 'openai:gpt-4o'): a degrade rule's model
-- applies only to calls to a provider it names
local provider = string.match(name, '^([^:]+):')
local dims = {}
for _, pair in ipairs(P.dims) do dims[pair[1]] = pair[2] end
local denial = nil
-- what a denial's record says beyond the decision (as _Evaluation in reserve.py): `why` the
-- budget's period or the quota's kind and window; `requested` the whole estimate and
-- `evaluated` the output tokens when a budget refused (nil: the call's own estimate)
local why, requested, evaluated = nil, nil, nil
-- a dry run reaps nothing (begin): it counts what the reap would have given back
local returned, freed = {}, {}
if P.dry_run and CFG.reap_batch > 0 then returned, freed = overdue_holds(CFG.reap_batch) end

-- access rules, and the caps they give model calls ------------------------------------------
local caps = {}
local function add_caps(c, severity)
  if nz(c.max_tokens) then caps.max_tokens = math.min(caps.max_tokens or c.max_tokens, c.max_tokens) end
  if nz(c.tool_allowlist) then
    if caps.tool_allow == nil then
      caps.tool_allow = {}
      for _, t in ipairs(c.tool_allowlist) do caps.tool_allow[t] = true end
    else
      local keep = {}
      for _, t in ipairs(c.tool_allowlist) do if caps.tool_allow[t] then keep[t] = true end end
      caps.tool_allow = keep
    end
  end
  if nz(c.tool_denylist) and #c.tool_denylist > 0 then
    caps.tool_deny = caps.tool_deny or {}
    for _, t in ipairs(c.tool_denylist) do caps.tool_deny[t] = true end
  end
  if nz(c.cooldown_ms) then caps.cooldown_ms = math.max(caps.cooldown_ms or 0, c.cooldown_ms) end
  local model = c.model
  if type(model) == 'table' then model = provider and model[provider] end
  if nz(model) and severity < (caps.severity or 2) then
    caps.model, caps.severity = model, severity
  end
end
local function matches(value, patterns) return glob_any(value, patterns, true) end
local is_tool = string.sub(kind, 1, 5) == 'tool.'
local is_llm = string.sub(kind, 1, 4) == 'llm.'
local access = access_rules(P.scopes, known.access)
denial = missing_dims(P.scopes, dims, access)  -- required dimensions come first
for i, scope in ipairs(P.scopes) do
  local rule = access[i]
  if rule then
    local allow, deny, reason
    if is_tool then
      allow, deny, reason = rule.tools_allow, rule.tools_deny, 'TOOL_NOT_ALLOWED'
    elseif is_llm then
      allow, deny, reason = rule.models_allow, rule.models_deny, 'MODEL_NOT_ALLOWED'
    end
    if reason and denial == nil and (matches(name, deny) or (#allow > 0 and not matches(name, allow))) then
      denial = {outcome = 'DENY', reason = reason, scope = scope}
    end
    if is_llm then
      add_caps({max_tokens = rule.max_tokens_per_call,
        tool_allowlist = #rule.tools_allow > 0 and rule.tools_allow or NULL,
        tool_denylist = rule.tools_deny}, 1)
    end
  end
end

-- quotas -------------------------------------------------------------------------------------
local calls, runs, concurrency = {}, {}, {}
local run = dims['run']
if known.quotas == nil then known.quotas = redis.call('EXISTS', K_QUOTAS) == 1 end
local quota_lists = known.quotas and redis.call('HMGET', K_QUOTAS, unpack(P.scopes)) or {}
for i, scope in ipairs(P.scopes) do
  if quota_lists[i] then
    for _, q in ipairs(cjson.decode(quota_lists[i])) do
      if q.action_kind == '*' or glob_any(kind, {q.action_kind}, false) then
        local qkey = scope .. '|' .. q.kind .. '|' .. q.window .. '|' .. q.action_kind
        local refused = nil
        if q.kind == 'concurrent' then
          local used = tonumber(redis.call('HGET', K_QCOUNT, qkey) or '0')
          if P.dry_run then used = math.max(0, used - (freed[qkey] or 0)) end
          concurrency[#concurrency + 1] = qkey
          if used >= q.limit then
            refused = {outcome = 'DENY', reason = 'CONCURRENCY_EXCEEDED', scope = scope,
              remaining = '0', limit = s(q.limit), requested = '1'}
          end
        else
          local window = current_bucket(q.window)
          local stored = redis.call('HGET', K_QCOUNT, qkey)
          local used = 0
          if stored then
            local b, n = string.match(stored, '^(.*)|(%d+)$')
            if b == window then used = tonumber(n) end
          end
          local counts = true
          if q.kind == 'calls' then
            calls[#calls + 1] = {qkey, window, used}
          elseif run == nil then
            counts = false  -- only runs are counted; a call outside a run is not one
          elseif redis.call('HGET', K_QRUNS, qkey .. '|' .. run) == window then
            counts = false  -- this run was already counted in this window
          else
            runs[#runs + 1] = {qkey, window, used}
          end
          if counts and used >= q.limit then
            refused = {outcome = 'DENY', reason = 'QUOTA_EXCEEDED', scope = scope,
              remaining = '0', limit = s(q.limit), requested = '1',
              retry_after_ms = s(bucket_end(q.window, NOW) - NOW)}
          end
        end
        if refused and denial == nil then
          denial = refused
          why = {quota = q.kind, window = q.window ~= '' and q.window or NULL}
        end
      end
    end
  end
end

-- budgets: degrade caps, then an elastic estimate shrinks to what fits ---------------------
local fixed = {}
for _, pair in ipairs(P.estimate) do fixed[pair[1]] = pair[2] end
local states, estimate = {}, {}  -- states: the targets ({field, d, path}) with their ledger L
if denial == nil or shadow then
  local found, err = targets(P.scopes, dims, fixed)
  if err then return cjson.encode(err) end
  if found == nil then
    found = {}
    denial = denial or {outcome = 'DENY', reason = 'BUDGET_NOT_FOUND', scope = P.scopes[#P.scopes]}
  end
  local loaded
  if known.raws then  -- read by the plain path
    loaded = {}
    for i = 1, #found do loaded[i] = ledger(found[i].field, found[i].d, known.raws[i]) end
  else
    loaded = lload_all(found)
  end
  for i, L in ipairs(loaded) do
    if P.dry_run then L.r = L.r - (returned[L.field] or 0) end
    found[i].L = L
  end
  states = found
  for _, st in ipairs(states) do
    for _, rule in ipairs(degrade_rules(st.d)) do
      local fraction = st.L.a > 0 and remaining(st.L) / st.L.a or 0
      if fraction < rule.below then add_caps(rule, rule.below) end
    end
  end
  local rates, tokens, floor = {}, 0, 0
  if nz(P.elastic) then
    for _, pair in ipairs(P.elastic.rates) do rates[pair[1]] = pair[2] end
    tokens = P.elastic.max_tokens
    if caps.max_tokens then tokens = math.min(tokens, caps.max_tokens) end
    floor = math.min(P.elastic.floor, tokens)
  end
  local function need(unit)
    return fixed[unit] + math.ceil((rates[unit] or 0) * tokens / 1000000)
  end
  for _, st in ipairs(states) do
    local unit = st.d.unit
    local reason = refusal(st.L, st.d, need(unit), shadow)
    if reason == 'BUDGET_EXCEEDED' and (rates[unit] or 0) > 0 then
      local room = remaining(st.L)
      if room >= fixed[unit] then
        local fits = math.floor((room - fixed[unit]) * 1000000 / rates[unit])
        if fits >= floor then tokens, reason = fits, nil end
      end
    end
    if reason and denial == nil then
      local path, _, period = field_parts(st.L.field)
      denial = denial_of(reason, path, unit, period, st.L, need(unit))
      why = {period = period ~= '' and period or NULL}
      requested, evaluated = {}, tokens
      for u in pairs(fixed) do requested[u] = need(u) end
    end
  end
  if nz(P.elastic) and tokens < P.elastic.max_tokens then caps.max_tokens = tokens end
  for unit in pairs(fixed) do estimate[unit] = need(unit) end
end
local bad = amount_refusal(estimate, 'estimate')  -- never hold a negative amount
if bad then return bad end

local function built_caps()
  local out = {max_tokens = caps.max_tokens, cooldown_ms = caps.cooldown_ms, model = caps.model}
  if caps.tool_allow then out.tool_allowlist = sorted_keys(caps.tool_allow) end
  if caps.tool_deny then out.tool_denylist = sorted_keys(caps.tool_deny) end
  if next(out) == nil then return nil end
  return out
end
local function balances()
  local out = {}
  for _, st in ipairs(states) do add_row(out, st.L, st.d) end
  return out
end
local function answer(decision, R, rows)
  -- the compact reply: decision ('ALLOW', or JSON), reservation id, created at, estimate held,
  -- balance rows, notifications
  local said = 'ALLOW'
  if decision.outcome ~= 'ALLOW' or decision.observed then said = cjson.encode(decision) end
  if R == nil then return {said, false, false, false, rows, notes_json()} end
  return {said, R.id, NOW, R.estimate, rows, notes_json()}
end
local capped = built_caps()
local function asked()
  -- what a refused call asked for, per unit, packed: the whole estimate, its elastic part
  -- at the output size a budget evaluated (or the call's own max_tokens), as _requested
  if requested then return pack_units(requested) end
  local whole, rates = {}, {}
  if nz(P.elastic) then
    for _, pair in ipairs(P.elastic.rates) do rates[pair[1]] = pair[2] end
  end
  for unit, amount in pairs(fixed) do
    whole[unit] = amount + (nz(P.elastic) and
      math.ceil((rates[unit] or 0) * P.elastic.max_tokens / 1000000) or 0)
  end
  return pack_units(whole)
end
local function denial_detail()
  -- why a denial refused, in figures (as _denial_detail in reserve.py)
  local out = {}
  for k, v in pairs(why or {}) do out[k] = v end
  out.unit, out.requested, out.limit = nz(denial.unit), nz(denial.requested), nz(denial.limit)
  out.remaining, out.retry_after_ms = nz(denial.remaining), nz(denial.retry_after_ms)
  if nz(P.elastic) then out.max_tokens = s(evaluated or P.elastic.max_tokens) end
  out.missing_dimensions = nz(denial.missing_dimensions)
  -- a missing dimension refuses before anything else is weighed (enforce mode): no caps
  if shadow or denial.reason ~= 'DIMENSION_REQUIRED' then out.caps = capped end
  return out
end
local allowed = {outcome = capped and 'ALLOW_WITH_CAPS' or 'ALLOW', caps = capped or NULL}
if P.dry_run then
  return answer(denial or allowed, nil, balances())
end
if denial and not shadow then
  audit('reservation.denied', {scopes = {denial.scope}, subject = P.subject,
    action = kind .. ' ' .. name, idempotency_key = nz(P.key) or '',
    estimate = asked(), reason = denial.reason, detail = denial_detail()})
  count(refused_at(denial), 'denials:' .. denial.reason)  -- where the limit refused
  local none = {}
  for unit in pairs(fixed) do none[unit] = 0 end
  count_usage(NOW, P.scope_path, name, 0, 1, nil, none)
  NOTES[#NOTES + 1] = {'reservation.denied', denial.scope, denial.unit or NULL, NULL, NULL,
    denial.remaining or NULL, denial.limit or NULL, NULL, denial.reason}
  return answer(denial, nil, balances())
end

-- allowed (or shadow): hold the estimate, count the quotas, record it ------------------------
local held_ledgers, scopes, seen = {}, {}, {}
local tally = report_scopes(P.scope_path, P.dims)
for i, st in ipairs(states) do
  local L, d, path = st.L, st.d, st.path
  L.r = L.r + estimate[d.unit]
  L.t = NOW
  held_ledgers[2 * i - 1], held_ledgers[2 * i] = ledger_ref(L.field, path, d)
  if not seen[path] then seen[path] = true scopes[#scopes + 1] = path end
end
for _, c in ipairs(calls) do redis.call('HSET', K_QCOUNT, c[1], c[2] .. '|' .. (c[3] + 1)) end
for _, r in ipairs(runs) do
  redis.call('HSET', K_QCOUNT, r[1], r[2] .. '|' .. (r[3] + 1))
  redis.call('HSET', K_QRUNS, r[1] .. '|' .. run, r[2])
end
for _, qkey in ipairs(concurrency) do redis.call('HINCRBY', K_QCOUNT, qkey, 1) end
local R = {id = P.rid, tenant = P.tenant, status = 'ACTIVE', subject = P.subject,
  action = P.action_json, estimate = pack_units(estimate), ledger_list = held_ledgers,
  created = s(NOW), expires = NOW + P.ttl, grace = P.grace, ext = 0, maxext = P.maxext,
  policy = nz(P.policy) or '', concurrency = table.concat(concurrency, '\n'),
  shadow = shadow and '1' or '0', scope_path = P.scope_path, tally = table.concat(tally, '\n')}
save_res(R)
redis.call('ZADD', K_EXP, R.expires + R.grace, R.id)
local decision = allowed
if denial then  -- shadow: what enforce mode would have said, on record
  decision = {outcome = allowed.outcome, caps = allowed.caps, observed = denial}
  audit('reservation.observed_denied', {scopes = {denial.scope or ''}, subject = P.subject,
    action = kind .. ' ' .. name, reservation_id = R.id, estimate = asked(),
    reason = denial.reason, detail = denial_detail()})
  count(refused_at(denial), 'denials:observed:' .. denial.reason)
end
audit_fields('reservation.reserved', with_optional({'subject', P.subject,
  'action', kind .. ' ' .. name, 'reservation_id', R.id},
  'scopes', #scopes > 0 and cjson.encode(scopes), 'idempotency_key', nz(P.key),
  'estimate', R.estimate,
  'detail', capped and cjson.encode({caps = capped})))
count_all(tally, 'reservations')
for unit, amount in pairs(estimate) do count_all(tally, 'reserved:' .. unit, amount) end
local held, ledgers = balances(), {}
-- no alerts: a hold is not spend (they follow commits and records, see alert in common.lua)
for i, st in ipairs(states) do ledgers[i] = st.L end
lsave_all(ledgers)
local body = answer(decision, R, held)
if nz(P.key) then  -- the snapshot only a key can replay
  body[6] = false
  remember(snapshot(body))
  body[6] = notes_json()
end
return body
