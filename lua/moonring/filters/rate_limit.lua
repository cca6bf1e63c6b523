-- rate_limit: token bucket per client key, kept in a shared dict so that all workers share it.
--
--   shared = { limits = "10m" },
--   ... filters = { { "moonring.filters.rate_limit",
--                     { dict = "limits", rate = 10, burst = 20, key = "header:X-Api-Key" } } }
--
-- A bucket holds `burst` tokens and refills at `rate` tokens per second; each request takes
-- one. An empty bucket answers `status` (429) with Retry-After, X-RateLimit-Limit and
-- X-RateLimit-Remaining; allowed responses carry the two X-RateLimit headers (`headers`).
--
-- State: the bucket is stored as ONE number, its "theoretical arrival time" (GCRA, the
-- token-bucket algorithm in virtual-scheduling form): tokens = (tat_max - tat) / interval,
-- where the timestamp and the token count are folded into that single value. A request reads
-- it, and writes it back with dict:set() only when allowed, with a TTL that expires the key
-- exactly when the bucket is full again (so idle clients cost no memory). Because the value
-- is one number, a read always sees a consistent (tokens, time) pair. get + set is not
-- atomic across workers: two workers that read the same value at the same instant both
-- admit, so under contention the limit can be exceeded by at most one request per
-- concurrently racing worker; it never rejects a request that should have passed, and the
-- next write resynchronises. An incr-based counter would be atomic but cannot express refill
-- without a second read-modify-write, so it would not remove the race, only move it.
-- Dict failures (e.g. out of memory) fail open.
local util = require "moonring.filters._util"

local NAME = "moonring.filters.rate_limit"
local ceil, floor, max = math.ceil, math.floor, math.max
local sub = string.sub

local EPS = 1e-9

local function compile_key(key)
  if key == nil or key == "remote_addr" then
    return function(req) return "ip|" .. req.remote_addr end
  end
  if type(key) == "function" then
    return function(req, ctx)
      local k = key(req, ctx)
      if k == nil then return nil end
      return "fn|" .. tostring(k)
    end
  end
  if type(key) == "string" and sub(key, 1, 7) == "header:" then
    local name = util.check_header_name(NAME, "key", sub(key, 8))
    local prefix = "h|" .. name:lower() .. "|"
    return function(req)
      local v = req:header(name)
      if v == nil or v == "" then return "ip|" .. req.remote_addr end
      return prefix .. v
    end
  end
  util.fail(NAME, "key", 'must be "remote_addr", "header:<name>" or a function(req, ctx), got ' .. util.describe(key))
end

return function(opts)
  opts = util.options(NAME, opts, { "dict", "rate", "burst", "key", "scope", "status", "message", "headers" })
  local rate = opts.rate
  if type(rate) ~= "number" or rate <= 0 or rate ~= rate or rate == math.huge then
    util.fail(NAME, "rate", "is required: requests per second, a number > 0, got " .. util.describe(rate))
  end
  local burst = opts.burst
  if burst == nil then burst = max(1, ceil(rate)) end
  if type(burst) ~= "number" or burst < 1 or burst ~= floor(burst) then
    util.fail(NAME, "burst", "must be an integer >= 1, got " .. util.describe(burst))
  end
  local key_of = compile_key(opts.key)
  local scope = util.check_type(NAME, "scope", opts.scope, "string", true) or ""
  local status = util.check_status(NAME, "status", opts.status, 429)
  local message = util.check_type(NAME, "message", opts.message, "string", true) or "Too Many Requests\n"
  local add_headers = util.check_type(NAME, "headers", opts.headers, "boolean", true)
  if add_headers == nil then add_headers = true end

  local dict, dict_name = opts.dict, nil
  if type(dict) == "string" then
    dict_name = dict
    local d, err, why = util.shared_dict(dict_name)
    if not d and why ~= "unavailable" then util.fail(NAME, "dict", "is invalid: " .. err) end
    dict = d -- nil: resolved on the first request (shared dicts not attached yet)
  elseif dict == nil then
    util.fail(NAME, "dict", "is required: the name of a shared dict")
  elseif not pcall(function() assert(dict.get and dict.set) end) then
    util.fail(NAME, "dict", "must be a shared dict name or a dict object, got " .. util.describe(dict))
  end

  local interval = 1 / rate      -- seconds per token
  local capacity = burst * interval -- how far ahead of now the arrival time may run
  local prefix = "rl|" .. scope .. "|"
  local limit_str = tostring(burst)
  local deny_headers = { ["Retry-After"] = "1", ["X-RateLimit-Limit"] = limit_str,
    ["X-RateLimit-Remaining"] = "0", ["Content-Type"] = "text/plain; charset=utf-8" }

  local filter = {}

  local function note(ctx, remaining)
    local cur = ctx.rate_limit_remaining
    if cur == nil or remaining < cur then
      ctx.rate_limit_remaining, ctx.rate_limit_limit = remaining, burst
    end
  end

  function filter.on_request(req, ctx)
    local k = key_of(req, ctx)
    if k == nil then return end
    if not dict then
      local err
      dict, err = util.shared_dict(dict_name)
      if not dict then error(NAME .. ": option 'dict': " .. err, 0) end
    end
    k = prefix .. k
    local now = util.now()
    local tat = dict:get(k)
    if type(tat) ~= "number" or tat < now then tat = now end
    local new_tat = tat + interval
    local wait = new_tat - now - capacity
    if wait > EPS then
      note(ctx, 0)
      deny_headers["Retry-After"] = tostring(max(1, ceil(wait - EPS)))
      req:respond(status, message, deny_headers)
      return
    end
    local ttl = new_tat - now
    dict:set(k, new_tat, ttl > 0.001 and ttl or 0.001)
    note(ctx, floor((capacity - ttl) / interval + EPS))
  end

  if add_headers then
    function filter.on_response(res, ctx)
      local remaining = ctx.rate_limit_remaining
      if remaining == nil then return end
      res:set_header("X-RateLimit-Limit", tostring(ctx.rate_limit_limit))
      res:set_header("X-RateLimit-Remaining", tostring(remaining))
    end
  end

  return filter
end
