-- keyed: an operation run only if its caller's API key lets it through, checked in the same
-- call before the operation's own step (its reap of overdue reservations included), as
-- memory/keys.py `check_key` and operations.py `key_refusal`: the key exists, the hash of
-- the secret given is the one kept, the key is not revoked nor expired by the store's
-- clock, and it holds the permission. A refusal writes nothing and answers
-- {"key_refused": reason}; a key let through runs the operation's entry with the time the
-- check used, so both read one clock. (After the ENTRIES of functions.py: alone or in a
-- batch, the same entry.)
--
-- keys: the operation's own 13 keys, then the tenant's key hash (keys.lua's K_KEYS).
-- args: 1 key id, 2 the secret's hash, 3 the permission, 4 the operation's function, then
-- its own arguments (its 2nd, the clock override, is replaced by the time of the check).
do
  local function grants(held, permission)
    local reads = string.sub(permission, -5) == ':read'
    for _, p in ipairs(held) do
      if p == permission or p == 'admin:write' or (reads and p == 'admin:read') then
        return true
      end
    end
    return false
  end

  local function key_refusal(text, hash, permission, now)
    if not text then return 'unknown' end
    local k = cjson.decode(text)
    if k.hash ~= hash then return 'mismatch' end  -- interned strings: no early exit by byte
    if k.revoked then return 'revoked' end
    if type(k.expires) == 'string' and k.expires ~= '' and now >= tonumber(k.expires) then
      return 'expired'
    end
    if not grants(k.permissions, permission) then return 'permission' end
    return nil
  end

  ENTRIES.keyed = function(keys, args, inherited)
    NULL = cjson.null
    local own = {args[5], '', args[7]}
    local now = now_ms(args[6])
    local refused = key_refusal(redis.call('HGET', keys[14], args[1]), args[2], args[3], now)
    if refused then
      P, DEF_CACHE = {}, inherited or {}  -- a batch keeps what its tenant's calls decoded
      return cjson.encode({key_refused = refused})
    end
    own[2] = string.format('%d', now)
    for i = 8, #args do own[i - 4] = args[i] end
    local entry = ENTRIES[args[4]]
    if entry == nil then error('allotment keyed: no function ' .. tostring(args[4])) end
    return entry(keys, own, inherited)  -- its begin reads keys 1 to 13
  end
end
