-- batch: the operations that queued up while a call to this server was in flight, run one
-- after another in one call (group commit). Each keeps its own all-or-nothing step: it runs
-- its function's body exactly as its own call would (`begin`, then the body), under pcall, so
-- an operation that fails, even with a Lua error, fails alone and its neighbours go on.
-- (Prelude: common.lua and definitions.lua, then each operation's function; BATCHED names
-- them with their flat-argument readers, see `library` in functions.py.)
--
-- keys: per operation its 13 keys, or only its last two (reservation, replay) when its
-- tenant's 11 keys are those of the operation before it.
-- args: 1 the count; then per operation its function's name, its key count (-2: only the
-- last two, as above), its argument count, and its arguments.
-- reply: per operation two items, 1 and its reply, or 0 and the error's message.

local function batch_entry(fn, flat)
  return function(keys, args, inherited)
    begin(keys, args, flat)
    if inherited then
      -- definitions read once per tenant per batch: what the operations of this tenant
      -- before it decoded is not read again
      for scope, list in pairs(inherited) do
        if DEF_CACHE[scope] == nil then DEF_CACHE[scope] = list end
      end
    end
    return fn()
  end
end
local BATCH_ENTRIES  -- built by the first batch (loading a library may call no builtins)
-- Operations after which the decoded definitions they read still hold for the next operations
-- of the same tenant in the batch: none of them writes a definition (a reserve that installs
-- a default plan does, so it is left out; see `shares_definitions`). An operation that fails
-- or may write definitions drops its tenant's shared definitions.
local KEEPS_DEFINITIONS = {settle = true, record = true, read = true, reserve = true}

local function shares_definitions(name)
  return KEEPS_DEFINITIONS[name] and not (name == 'reserve' and nz(P.plan))
end

local function run_batch(keys, args)
  if BATCH_ENTRIES == nil then
    BATCH_ENTRIES = {}
    for name, entry in pairs(BATCHED) do BATCH_ENTRIES[name] = batch_entry(entry[1], entry[2]) end
  end
  local out, ki, ai = {}, 0, 2
  local shared = {}
  local caches = {}  -- per tenant (its defs key), the definitions its operations decoded
  for i = 1, tonumber(args[1]) do
    local name, nk, na = args[ai], tonumber(args[ai + 1]), tonumber(args[ai + 2])
    local own = {}
    if nk == -2 then  -- the tenant of the operation before it: only its own two keys
      for j = 1, 11 do own[j] = shared[j] end
      own[12], own[13] = keys[ki + 1], keys[ki + 2]
      ki = ki + 2
    else
      for j = 1, nk do own[j] = keys[ki + j] end
      for j = 1, 11 do shared[j] = own[j] end
      ki = ki + nk
    end
    local entry = BATCH_ENTRIES[name]
    local ok, reply
    if entry == nil then
      ok, reply = false, 'allotment batch: no function ' .. tostring(name)
    else
      ok, reply = pcall(entry, own, {unpack(args, ai + 3, ai + 2 + na)}, caches[own[1]])
      caches[own[1]] = ok and shares_definitions(name) and DEF_CACHE or nil
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
