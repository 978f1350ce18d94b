-- API keys of one tenant, as memory/keys.py. This call declares the tenant's key hash in
-- slot 11 (K_RES): HASH key id -> JSON {key_id, name, permissions, created, expires,
-- revoked, hash}; only the hash of a secret is kept. Times travel out as decimal strings.
-- A tenant's record (its display name, creation time and, once closed, when) lives in its
-- meta hash (K_META); a closed tenant makes no new key and changes none.

local K_KEYS = K_RES

local function key_view(k)
  return {key_id = k.key_id, name = k.name, permissions = k.permissions,
    created = k.created, expires = k.expires, revoked = k.revoked}
end

local op = P.op
local changes = op == 'create_key' or op == 'update_key'
if changes and redis.call('HEXISTS', K_META, 'closed') == 1 then return closed_refusal() end
if op == 'create_key' then
  if redis.call('HEXISTS', K_KEYS, P.key_id) == 1 then
    return fail('INVALID_REQUEST', 'key ' .. P.key_id .. ' exists already')
  end
  local k = {key_id = P.key_id, name = P.name, permissions = P.permissions,
    created = s(NOW), expires = P.expires, revoked = false, hash = P.hash}
  redis.call('HSET', K_KEYS, P.key_id, cjson.encode(k))
  local detail = {key_id = P.key_id, name = P.name, permissions = P.permissions}
  if P.expires ~= '' then detail.expires_at_ms = P.expires end
  audit('api_key.created', {detail = detail})  -- as memory/keys.py: never the hash
  return reply({key = key_view(k)})
elseif op == 'list_keys' then
  local raw = redis.call('HVALS', K_KEYS)
  local keys = {}
  for i, text in ipairs(raw) do keys[i] = key_view(cjson.decode(text)) end
  table.sort(keys, function(a, b)
    local ca, cb = tonumber(a.created), tonumber(b.created)
    if ca ~= cb then return ca < cb end
    return a.key_id < b.key_id
  end)
  return reply({keys = keys})
elseif op == 'revoke_key' then
  local text = redis.call('HGET', K_KEYS, P.key_id)
  if not text then return fail('NOT_FOUND', 'no key ' .. P.key_id) end
  local k = cjson.decode(text)
  if not k.revoked then audit('api_key.revoked', {detail = {key_id = P.key_id}}) end
  k.revoked = true
  redis.call('HSET', K_KEYS, P.key_id, cjson.encode(k))
  return reply({key = key_view(k)})
elseif op == 'update_key' then
  local text = redis.call('HGET', K_KEYS, P.key_id)
  if not text then return fail('NOT_FOUND', 'no key ' .. P.key_id) end
  local k = cjson.decode(text)
  if k.revoked or (k.expires ~= '' and NOW >= tonumber(k.expires)) then
    return reply({key = key_view(k), changed = false})
  end
  if P.name then k.name = P.name end
  if P.permissions then k.permissions = P.permissions end
  redis.call('HSET', K_KEYS, P.key_id, cjson.encode(k))
  audit('api_key.updated', {detail = {key_id = P.key_id, name = P.name or nil,
    permissions = P.permissions or nil}})
  return reply({key = key_view(k), changed = true})
elseif op == 'find_key' then
  local text = redis.call('HGET', K_KEYS, P.key_id)
  if not text then return reply({}) end
  local k = cjson.decode(text)
  return reply({key = key_view(k), hash = k.hash, now = s(NOW)})
elseif op == 'register_tenant' then
  local made = redis.call('HSETNX', K_META, 'tenant_name', P.name)
  if made == 1 then
    redis.call('HSET', K_META, 'tenant_created', s(NOW))
    audit('tenant.created', {scopes = {'tenant:' .. P.tenant}, detail = {name = P.name}})
  end
  local stored = redis.call('HMGET', K_META, 'tenant_name', 'tenant_created', 'closed')
  return reply({name = stored[1], created = stored[2], closed = stored[3], made = made == 1})
elseif op == 'get_tenant' then
  local stored = redis.call('HMGET', K_META, 'tenant_name', 'tenant_created', 'closed')
  if not stored[1] then return reply({}) end
  return reply({name = stored[1], created = stored[2], closed = stored[3]})
end
return fail('INVALID_REQUEST', 'unknown key operation ' .. tostring(op))
