-- A claim on the idempotency key of a call of several steps (a bulk action), as the memory
-- store's once.py: the body of the library's `once` function (functions.py), which takes no
-- prelude. keys[1] the claim: a hash of fingerprint, owner, until (ms) and, once the run is
-- done, answer. args[1] "claim" or "finish", args[2] the store's time (ms), args[3] the ttl
-- (ms); a claim lapses at `until` (checked here, so a store's own clock rules) and the key
-- itself a minute later.
--   claim  args[4] fingerprint, args[5] owner -> {"claimed"} | {"mismatch"} | {"held"}
--          | {"done", answer}
--   finish args[4] owner, args[5] answer ("" lets the key go) -> 1 when the owner held it
local now, ttl = tonumber(args[2]), tonumber(args[3])
local held = redis.call('HMGET', keys[1], 'fingerprint', 'owner', 'until', 'answer')
if held[3] and tonumber(held[3]) <= now then
  redis.call('DEL', keys[1])
  held = {false, false, false, false}
end
if args[1] == 'claim' then
  if not held[1] then
    redis.call('HSET', keys[1], 'fingerprint', args[4], 'owner', args[5], 'until', now + ttl)
    redis.call('PEXPIRE', keys[1], ttl + 60000)
    return {'claimed'}
  end
  if held[1] ~= args[4] then return {'mismatch'} end
  if held[4] then return {'done', held[4]} end
  return {'held'}
end
if held[2] ~= args[4] or held[4] then return 0 end
if args[5] == '' then
  redis.call('DEL', keys[1])
else
  redis.call('HSET', keys[1], 'answer', args[5], 'until', now + ttl)
  redis.call('PEXPIRE', keys[1], ttl + 60000)
end
return 1
