-- batch: the operations that queued up while a call to this server was in flight, run one
-- after another in one call (group commit). Each keeps its own all-or-nothing step: it runs
-- its function's body exactly as its own call would (`begin`, then the body), under pcall, so
-- an operation that fails, even with a Lua error, fails alone and its neighbours go on.
-- (Prelude: common.lua, definitions.lua, hooks.lua, then each operation's body; `library`
-- in functions.py fills ENTRIES after this file with each operation's entry, the one its
-- own registered function runs too.)
--
-- keys: per operation its 13 keys (a keyed call's 14: keyed.lua), or only those after the
-- tenant's 11 (reservation, replay, and a keyed call's key hash) when its tenant's 11 keys
-- are those of the operation before it.
-- args: 1 the count; then per operation its function's name, its key count (negative: only
-- that many keys after the tenant's 11, as above), its argument count, and its arguments.
-- reply: per operation two items, 1 and its reply, or 0 and the error's message.

local ENTRIES = {}  -- operation -> its entry: begin, the body, the outbox (functions.py)

local function inherit_definitions(inherited)
  -- definitions read once per tenant per batch: what the operations of this tenant before
  -- it in the batch decoded is not read again
  if not inherited then return end
  for scope, list in pairs(inherited) do
    if DEF_CACHE[scope] == nil then DEF_CACHE[scope] = list end
  end
end

-- Operations after which the decoded definitions they read still hold for the next operations
-- of the same tenant in the batch: none of them writes a definition (a reserve that installs
-- a default plan does, so it is left out; see `shares_definitions`). An operation that fails
-- or may write definitions drops its tenant's shared definitions.
local KEEPS_DEFINITIONS = {settle = true, record = true, read = true, reserve = true}

local function shares_definitions(name)
  return KEEPS_DEFINITIONS[name] and not (name == 'reserve' and nz(P.plan))
end

local function run_batch(keys, args)
  local out, ki, ai = {}, 0, 2
  local shared = {}
  local caches = {}  -- per tenant (its defs key), the definitions its operations decoded
  for i = 1, tonumber(args[1]) do
    local name, nk, na = args[ai], tonumber(args[ai + 1]), tonumber(args[ai + 2])
    local own = {}
    if nk < 0 then  -- the tenant of the operation before it: only its own -nk keys
      for j = 1, 11 do own[j] = shared[j] end
      for j = 1, -nk do own[11 + j] = keys[ki + j] end
      ki = ki - nk
    else
      for j = 1, nk do own[j] = keys[ki + j] end
      for j = 1, 11 do shared[j] = own[j] end
      ki = ki + nk
    end
    local entry = ENTRIES[name]
    local ok, reply
    if entry == nil then
      ok, reply = false, 'allotment batch: no function ' .. tostring(name)
    else
      ok, reply = pcall(entry, own, {unpack(args, ai + 3, ai + 2 + na)}, caches[own[1]])
      -- a keyed call shares as the operation it gates (keyed.lua; refused, it leaves
      -- the definitions its tenant's calls before it decoded)
      local shares = name == 'keyed' and args[ai + 6] or name
      caches[own[1]] = ok and shares_definitions(shares) and DEF_CACHE or nil
    end
    ai = ai + 3 + na
    if ok and type(reply) == 'table' and reply.err then ok, reply = false, reply.err end
    if ok then
      out[2 * i - 1], out[2 * i] = 1, reply == nil and false or reply
    else
      if type(reply) == 'table' then reply = reply.err or cjson.encode(reply) end
      out[2 * i - 1], out[2 * i] = 0, tostring(reply)
    end
  end
  return out
end
