-- A named lease (the background sweeper's): take it if free, renew it if already ours.
-- KEYS[1] the lease; ARGV[1] the owner, ARGV[2] its time to live in ms.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
