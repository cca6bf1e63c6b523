-- cache: a small response cache in a shared dict (every worker sees it).
--
--   shared = { pages = "64m" },
--   filters = { { "moonring.filters.cache", { dict = "pages", ttl = 30 } } }
--
-- A GET or HEAD (`methods`) without Authorization (unless `authorized = true`) is looked up by
-- its key (method, scheme, host, path and query, or `key(req, ctx)`); a hit is answered from
-- on_request with the stored status, headers and body, plus `Age` and `X-Cache: HIT` (`header`).
-- A miss goes on, and its response is stored when its status is in `statuses`, it has no
-- Set-Cookie, its Cache-Control has no no-store, private or no-cache, its Vary is not "*", and
-- its body is at most `max_size`. The TTL is `ttl`, or the response's s-maxage / max-age with
-- `cache_control = true` (the default). `Vary` is honoured: the request headers it names are
-- part of the key. `bypass(req, ctx)` returning true skips the lookup (the response is still
-- stored), as does a request with Cache-Control: no-cache.
--
-- Order in the chain: the entry is what the client gets at this filter's place, with the final
-- headers; put it after filters that change the body (gzip), so that headers and body match.
local json = require "moonring.json"
local moonring = require "moonring"
local util = require "moonring.filters._util"

local NAME = "moonring.filters.cache"
local lower, find, match, format = string.lower, string.find, string.match, string.format
local concat = table.concat

-- Not replayed from the cache: hop-by-hop and framing fields, and what the filter sets.
local SKIP = { ["connection"] = true, ["keep-alive"] = true, ["transfer-encoding"] = true, ["content-length"] = true,
               ["te"] = true, ["trailer"] = true, ["upgrade"] = true, ["age"] = true, ["set-cookie"] = true }

local function default_key(req)
  return req.method .. " " .. req.scheme .. "://" .. req.host .. req.path .. "?" .. req.query
end

-- Seconds from Cache-Control, false when it forbids storing, nil when it says nothing.
local function cc_ttl(cc)
  if not cc then return nil end
  cc = lower(cc)
  if find(cc, "no-store", 1, true) or find(cc, "private", 1, true) or find(cc, "no-cache", 1, true) then return false end
  local s = tonumber(match(cc, "s%-maxage%s*=%s*(%d+)"))
  if s then return s end
  return tonumber(match(cc, "max%-age%s*=%s*(%d+)"))
end

local function vary_key(req, names)
  local parts = {}
  for name in names:gmatch("[^,%s]+") do parts[#parts + 1] = lower(name) .. "=" .. (req:header(name) or "") end
  return concat(parts, "\n")
end

return function(opts)
  opts = util.options(NAME, opts, { "dict", "ttl", "key", "methods", "statuses", "bypass", "max_size", "header",
                                    "cache_control", "authorized" })
  local dict_opt = opts.dict
  if type(dict_opt) ~= "string" and type(dict_opt) ~= "table" then util.fail(NAME, "dict", "is required: a name from shared = { ... }") end
  local function dict()
    if type(dict_opt) == "table" then return dict_opt end
    local d = moonring.shared[dict_opt]
    if not d then error(NAME .. ": no shared dict '" .. dict_opt .. "'", 0) end
    return d
  end
  if type(dict_opt) == "string" then
    local ok, d = pcall(function() return moonring.shared[dict_opt] end)
    if ok and d == nil then util.fail(NAME, "dict", "names no dict of shared = { ... }: " .. dict_opt) end
  end
  local ttl = util.check_type(NAME, "ttl", opts.ttl, "number", true) or 60
  if ttl <= 0 then util.fail(NAME, "ttl", "must be > 0") end
  local keyfn = util.check_type(NAME, "key", opts.key, "function", true) or default_key
  local bypass = util.check_type(NAME, "bypass", opts.bypass, "function", true)
  local max_size = util.check_type(NAME, "max_size", opts.max_size, "number", true) or 1024 * 1024
  local use_cc = opts.cache_control
  if use_cc == nil then use_cc = true end
  util.check_type(NAME, "cache_control", use_cc, "boolean")
  local authorized = util.check_type(NAME, "authorized", opts.authorized, "boolean", true) or false
  local header = opts.header
  if header == nil then header = "X-Cache" end
  if header ~= false then header = util.check_header_name(NAME, "header", header) end
  local methods = {}
  for _, m in ipairs(util.check_list(NAME, "methods", opts.methods, { "GET", "HEAD" })) do methods[m:upper()] = true end
  local statuses = {}
  local sl = opts.statuses or { 200, 203, 204, 301, 308, 404, 410 }
  if type(sl) ~= "table" then util.fail(NAME, "statuses", "must be a list of status codes") end
  for i, s in ipairs(sl) do statuses[util.check_status(NAME, "statuses[" .. i .. "]", s)] = true end

  local filter = {}

  function filter.on_request(req, ctx)
    if not methods[req.method] then return end
    if not authorized and req:header("authorization") then return end
    local key = keyfn(req, ctx)
    if key == nil then return end
    local d = dict()
    ctx.cache_key = key
    ctx.cache_req = req -- live until the request ends: on_body reads the headers Vary names
    local rcc = req:header("cache-control")
    if (bypass and bypass(req, ctx)) or (rcc and find(lower(rcc), "no-cache", 1, true)) then
      ctx.cache_state = "BYPASS"
      return
    end
    local vary = d:get("v\n" .. key)
    local full = vary and (key .. "\n" .. vary_key(req, vary)) or key
    ctx.cache_full = full
    local v = d:get("e\n" .. full)
    if not v then ctx.cache_state = "MISS"; return end
    local n = tonumber(match(v, "^(%d+):"))
    local meta = n and json.decode(v:sub(#tostring(n) + 2, #tostring(n) + 1 + n))
    if not meta then ctx.cache_state = "MISS"; return end
    local body = v:sub(#tostring(n) + 2 + n)
    local headers = meta.h
    headers["Age"] = tostring(math.max(0, math.floor(moonring.now() - meta.t)))
    if header then headers[header] = "HIT" end
    ctx.cache_state = "HIT"
    req:respond(meta.s, body, headers)
  end

  function filter.on_response(res, ctx)
    local state = ctx.cache_state
    if not state then return end
    if header and state ~= "HIT" then res:set_header(header, state) end
    if state == "HIT" then return end
    if not statuses[res.status] or res:header("set-cookie") then return end
    local vary = res:header("vary")
    if vary and find(vary, "*", 1, true) then return end
    local t = ttl
    if use_cc then
      local c = cc_ttl(res:header("cache-control"))
      if c == false or c == 0 then return end
      if c then t = c end
    end
    local len = tonumber(res:header("content-length"))
    if len and len > max_size then return end
    ctx.cache_store = { ttl = t, parts = {}, n = 0 }
  end

  function filter.on_body(res, chunk, eof, ctx)
    local st = ctx.cache_store
    if not st then return chunk end
    st.n = st.n + #chunk
    if st.n > max_size then ctx.cache_store = nil; return chunk end
    st.parts[#st.parts + 1] = chunk
    if not eof then return chunk end
    ctx.cache_store = nil
    -- the final head (every on_response ran): status, headers, Vary
    local d = dict()
    local h = {}
    for k, v in pairs(res:headers()) do if not SKIP[k] and k ~= lower(header or "") then h[k] = v end end
    local vary = res:header("vary")
    local full = ctx.cache_key
    if vary then
      d:set("v\n" .. ctx.cache_key, vary, st.ttl)
      full = full .. "\n" .. vary_key(ctx.cache_req, vary)
    end
    local meta = json.encode({ s = res.status, h = h, t = moonring.now() })
    if meta then d:set("e\n" .. full, #meta .. ":" .. meta .. concat(st.parts), st.ttl) end
    return chunk
  end

  return filter
end
