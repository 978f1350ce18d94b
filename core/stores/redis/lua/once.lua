-- A claim on the idempotency key of a call of several steps (a bulk action), as the memory
-- store's once.py. KEYS[1] the claim: a hash of fingerprint, owner, until (ms) and, once the
-- run is done, answer. ARGV[1] "claim" or "finish", ARGV[2] the store's time (ms), ARGV[3]
-- the ttl (ms); a claim lapses at `until` (checked here, so a store's own clock rules) and
-- the key itself a minute later.
--   claim  ARGV[4] fingerprint, ARGV[5] owner -> {"claimed"} | {"mismatch"} | {"held"}
--          | {"done", answer}
--   finish ARGV[4] owner, ARGV[5] answer ("" lets the key go) -> 1 when the owner held it
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local held = redis.call('HMGET', KEYS[1], 'fingerprint', 'owner', 'until', 'answer')
if held[3] and tonumber(held[3]) <= now then
  redis.call('DEL', KEYS[1])
  held = {false, false, false, false}
end
if ARGV[1] == 'claim' then
  if not held[1] then
    redis.call('HSET', KEYS[1], 'fingerprint', ARGV[4], 'owner', ARGV[5], 'until', now + ttl)
    redis.call('PEXPIRE', KEYS[1], ttl + 60000)
    return {'claimed'}
  end
  if held[1] ~= ARGV[4] then return {'mismatch'} end
  if held[4] then return {'done', held[4]} end
  return {'held'}
end
if held[2] ~= ARGV[4] or held[4] then return 0 end
if ARGV[5] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'answer', ARGV[5], 'until', now + ttl)
  redis.call('PEXPIRE', KEYS[1], ttl + 60000)
end
return 1
