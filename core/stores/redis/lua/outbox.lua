-- Webhook operations on one tenant (as core/stores/memory/outbox.py): its own
-- subscriptions, what the appends look up (`wire`), and the outbox's claims, outcomes, log
-- and replays. Global subscriptions live outside the tenant's slot: the caller passes them
-- (P.globals: id -> {events, enabled}; P.version orders concurrent wirings).

local op = P.op

local function wire()
  -- event type -> enabled subscriptions wanting it, global and the tenant's own
  local seen = tonumber(redis.call('HGET', K_META, 'hooks_v') or '-1')
  local version = tonumber(P.version or '0')
  if version < seen then return end
  local wants, any = {}, false
  local function add(sub)
    if sub.enabled then
      for _, kind in ipairs(sub.events) do
        wants[kind] = wants[kind] or {}
        table.insert(wants[kind], sub.id)
        any = true
      end
    end
  end
  for _, sub in ipairs(P.globals or {}) do add(sub) end
  for _, raw in ipairs(redis.call('HVALS', hook_key('subs'))) do add(cjson.decode(raw)) end
  redis.call('HSET', K_META, 'hooks_v', s(version))
  if any then redis.call('HSET', K_META, 'hooks', cjson.encode(wants))
  else redis.call('HDEL', K_META, 'hooks') end
end

local function logged(member)
  local raw = redis.call('HGET', hook_key('log'), member)
  return raw and cjson.decode(raw)
end
local function save_log(member, row)
  redis.call('HSET', hook_key('log'), member, cjson.encode(row))
end

if (op == 'subscribe' or op == 'update') and redis.call('HEXISTS', K_META, 'closed') == 1 then
  return closed_refusal()
end
if op == 'subscribe' then
  local sub = P.sub
  redis.call('HSET', hook_key('subs'), sub.id, cjson.encode(sub))
  wire()
  audit('webhook.created', {detail = {webhook_id = sub.id, destination = P.destination,
    events = sub.events, format = sub.format, enabled = sub.enabled},  -- never the secret
    actor = P.actor or '', reason = P.reason or ''})
  return cjson.encode({webhook = sub})
elseif op == 'update' then
  -- P.set: the fields to change (url, events, secret, enabled), only those given
  local raw = redis.call('HGET', hook_key('subs'), P.id)
  if not raw then return fail('NOT_FOUND', 'no webhook ' .. P.id) end
  local sub = cjson.decode(raw)
  local detail = {webhook_id = P.id}  -- as `changes` in memory/outbox.py
  for name, value in pairs(P.set) do
    sub[name] = value
    if name == 'secret' then detail.secret_rotated = true
    elseif name == 'url' then detail.destination = P.destination  -- never a URL's token
    else detail[name] = value end
  end
  redis.call('HSET', hook_key('subs'), P.id, cjson.encode(sub))
  wire()
  audit('webhook.updated', {detail = detail, actor = P.actor or '', reason = P.reason or ''})
  sub.secret = nil
  return cjson.encode({webhook = sub})
elseif op == 'get' then
  local raw = redis.call('HGET', hook_key('subs'), P.id)
  if not raw then return fail('NOT_FOUND', 'no webhook ' .. P.id) end
  return cjson.encode({webhook = cjson.decode(raw)})
elseif op == 'remove' then
  local gone = redis.call('HDEL', hook_key('subs'), P.id)
  wire()
  if gone == 1 then
    audit('webhook.deleted', {detail = {webhook_id = P.id}, actor = P.actor or '',
      reason = P.reason or ''})
  end
  return cjson.encode({removed = gone == 1})
elseif op == 'list' then
  return cjson.encode({webhooks = redis.call('HVALS', hook_key('subs'))})
elseif op == 'wire' then
  wire()
  return cjson.encode({})
elseif op == 'claim' then
  -- first drop the oldest deliveries finished before the retention, and their events once
  -- none of their deliveries is kept (as _prune in outbox.py)
  local old = redis.call('ZRANGEBYSCORE', hook_key('done'), '-inf',
    '(' .. s(NOW - P.retention), 'LIMIT', 0, P.prune)
  for _, member in ipairs(old) do
    local eid = string.match(member, '^(.*)|')
    redis.call('ZREM', hook_key('done'), member)
    redis.call('HDEL', hook_key('log'), member)
    if redis.call('HINCRBY', hook_key('refs'), eid, -1) <= 0 then
      redis.call('HDEL', hook_key('refs'), eid)
      redis.call('HDEL', hook_key('events'), eid)
    end
  end
  local due = redis.call('ZRANGEBYSCORE', hook_key('pending'), '-inf', NOW, 'LIMIT', 0,
    P.limit + 1000)
  local claimed = {}
  for _, member in ipairs(due) do
    if #claimed >= P.limit then break end
    local eid, sub_id = string.match(member, '^(.*)|(.*)$')
    local sub, present, enabled = false, false, false
    if string.find(sub_id, '/', 1, true) then
      local raw = redis.call('HGET', hook_key('subs'), sub_id)
      if raw then sub = raw present = true enabled = cjson.decode(raw).enabled end
    elseif P.globals[sub_id] ~= nil then
      present, enabled = true, P.globals[sub_id]
    end
    local row = logged(member)
    if not present then  -- removed since: nothing to send it to
      redis.call('ZREM', hook_key('pending'), member)
      row.status, row.next, row.updated, row.error = 'failed', NULL, s(NOW),
        'subscription removed'
      save_log(member, row)
      redis.call('ZADD', hook_key('done'), NOW, member)
    elseif enabled then
      redis.call('ZADD', hook_key('pending'), NOW + P.lease, member)
      claimed[#claimed + 1] = {eid, sub_id, redis.call('HGET', hook_key('events'), eid),
        row.attempts, sub, s(NOW + P.lease)}
    end
  end
  return cjson.encode({claimed = claimed})
elseif op == 'finish' then
  local member = P.eid .. '|' .. P.sub
  local row = logged(member)
  if not row then return fail('NOT_FOUND', 'no delivery of ' .. P.eid .. ' to ' .. P.sub) end
  if row.status ~= 'pending' then return cjson.encode({}) end
  local retry = nz(P.retry_in)
  row.attempts = row.attempts + 1
  row.code, row.error, row.updated = nz(P.code) or NULL, nz(P.error) or NULL, s(NOW)
  if P.delivered then row.status, row.next = 'delivered', NULL
  elseif retry == nil then row.status, row.next = 'failed', NULL
  else row.next = s(NOW + retry) end
  save_log(member, row)
  if row.status == 'pending' then redis.call('ZADD', hook_key('pending'), NOW + retry, member)
  else
    redis.call('ZREM', hook_key('pending'), member)
    redis.call('ZADD', hook_key('done'), NOW, member)
  end
  return cjson.encode({})
elseif op == 'deliveries' then
  return cjson.encode({log = redis.call('HGETALL', hook_key('log'))})
elseif op == 'replay' then
  local event = redis.call('HGET', hook_key('events'), P.eid)
  if not event then
    return fail('NOT_FOUND', 'no event ' .. P.eid .. ' (never sent, or not kept)')
  end
  local kind = cjson.decode(event).row[1]
  local targets = {}
  if nz(P.sub) then
    local exists = P.global_exists
    if string.find(P.sub, '/', 1, true) then
      exists = redis.call('HEXISTS', hook_key('subs'), P.sub) == 1
    end
    if not exists then return fail('NOT_FOUND', 'no webhook ' .. P.sub) end
    targets = {P.sub}
  else
    local prefix = P.eid .. '|'
    for _, member in ipairs(redis.call('HKEYS', hook_key('log'))) do
      if string.sub(member, 1, #prefix) == prefix then
        targets[#targets + 1] = string.sub(member, #prefix + 1)
      end
    end
  end
  for _, sub in ipairs(targets) do
    local member = P.eid .. '|' .. sub
    if redis.call('HEXISTS', hook_key('log'), member) == 1 then
      redis.call('ZREM', hook_key('done'), member)
    else
      redis.call('HINCRBY', hook_key('refs'), P.eid, 1)
    end
    redis.call('ZADD', hook_key('pending'), NOW, member)
    save_log(member, {status = 'pending', attempts = 0, next = s(NOW), updated = s(NOW),
      type = kind})
  end
  return cjson.encode({queued = #targets})
end
return fail('INVALID_REQUEST', 'unknown webhook operation ' .. tostring(op))
