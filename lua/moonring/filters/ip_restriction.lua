-- ip_restriction: allow or deny clients by address (IPv4 and IPv6, single addresses or CIDR).
--
--   { "moonring.filters.ip_restriction", { allow = { "10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8" },
--                                          deny = { "10.0.13.0/24" } } }
--
-- A client matching `deny` is refused; otherwise, if `allow` is given, a client must match
-- it. Refused requests get `status` (403) and `message`. IPv4 rules also match IPv4-mapped
-- IPv6 clients (::ffff:a.b.c.d). A network with host bits set (10.1.2.3/8) is masked. An
-- address that cannot be parsed is refused.
local bit = require "bit"
local util = require "moonring.filters._util"

local NAME = "moonring.filters.ip_restriction"
local band, lshift, tobit = bit.band, bit.lshift, bit.tobit
local find, match, sub = string.find, string.match, string.sub

local function octets(s)
  local a, b, c, d = match(s, "^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)$")
  if not a then return nil end
  a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
  if a > 255 or b > 255 or c > 255 or d > 255 then return nil end
  return a, b, c, d
end

-- "1:2::3" (one side of "::") → list of 16-bit groups; an IPv4 tail counts as two groups.
local function groups(part, allow_v4, out)
  if part == "" then return out end
  local items = {}
  for g in (part .. ":"):gmatch("([^:]*):") do items[#items + 1] = g end
  for i, g in ipairs(items) do
    if i == #items and allow_v4 and find(g, ".", 1, true) then
      local a, b, c, d = octets(g)
      if not a then return nil end
      out[#out + 1] = a * 256 + b
      out[#out + 1] = c * 256 + d
    elseif find(g, "^%x%x?%x?%x?$") then
      out[#out + 1] = tonumber(g, 16)
    else
      return nil
    end
  end
  return out
end

-- An address → four signed 32-bit words of its IPv6 form (IPv4 as ::ffff:a.b.c.d), or nil.
local function parse(s)
  local a, b, c, d = octets(s)
  if a then return 0, 0, 0xffff, tobit(((a * 256 + b) * 256 + c) * 256 + d), true end
  s = match(s, "^([^%%]*)") -- drop a zone id (fe80::1%eth0)
  local g
  local dc = find(s, "::", 1, true)
  if dc then
    if find(s, "::", dc + 1, true) then return nil end
    local head = groups(sub(s, 1, dc - 1), false, {})
    local tail = head and groups(sub(s, dc + 2), true, {})
    if not tail or #head + #tail > 7 then return nil end
    g = head
    for _ = 1, 8 - #head - #tail do g[#g + 1] = 0 end
    for i = 1, #tail do g[#g + 1] = tail[i] end
  else
    g = groups(s, true, {})
    if not g or #g ~= 8 then return nil end
  end
  return tobit(g[1] * 65536 + g[2]), tobit(g[3] * 65536 + g[4]), tobit(g[5] * 65536 + g[6]),
    tobit(g[7] * 65536 + g[8]), false
end

local function mask(prefix, word) -- mask of 32-bit word `word` (0-3) for a /prefix
  local bits = prefix - 32 * word
  if bits <= 0 then return 0 end
  if bits >= 32 then return -1 end
  return lshift(-1, 32 - bits)
end

local function compile(opt, list)
  local rules = {}
  for i, cidr in ipairs(util.check_list(NAME, opt, list, {})) do
    local o = opt .. "[" .. i .. "]"
    local addr, len = match(cidr, "^([^/]+)/(%d+)$")
    addr = addr or cidr
    local w1, w2, w3, w4, v4 = parse(addr)
    if not w1 then util.fail(NAME, o, "is not an IPv4/IPv6 address or CIDR, got " .. util.describe(cidr)) end
    local prefix = v4 and 32 or 128
    if len then
      len = tonumber(len)
      if len > prefix then util.fail(NAME, o, "has a prefix length above " .. prefix) end
      prefix = len
    end
    if v4 then prefix = prefix + 96 end
    local m1, m2, m3, m4 = mask(prefix, 0), mask(prefix, 1), mask(prefix, 2), mask(prefix, 3)
    rules[#rules + 1] = { band(w1, m1), band(w2, m2), band(w3, m3), band(w4, m4), m1, m2, m3, m4 }
  end
  return rules
end

local function matches(rules, a1, a2, a3, a4)
  for i = 1, #rules do
    local r = rules[i]
    if band(a1, r[5]) == r[1] and band(a2, r[6]) == r[2] and band(a3, r[7]) == r[3]
      and band(a4, r[8]) == r[4] then
      return true
    end
  end
  return false
end

-- Parsed client addresses, shared by all instances; emptied when it grows past MAX.
local cache, cached, MAX = {}, 0, 4096
local BAD = {}

local function lookup(addr)
  local e = cache[addr]
  if e == nil then
    local s = match(addr, "^%[(.-)%]") or match(addr, "^(%d+%.%d+%.%d+%.%d+):%d+$") or addr
    local w1, w2, w3, w4 = parse(s)
    e = w1 and { w1, w2, w3, w4 } or BAD
    if cached >= MAX then cache, cached = {}, 0 end
    cache[addr], cached = e, cached + 1
  end
  return e
end

return function(opts)
  opts = util.options(NAME, opts, { "allow", "deny", "status", "message" })
  local allow = compile("allow", opts.allow)
  local deny = compile("deny", opts.deny)
  if #allow == 0 and #deny == 0 then util.fail(NAME, "allow", "(or 'deny') must list at least one address") end
  local status = util.check_status(NAME, "status", opts.status, 403)
  local message = util.check_type(NAME, "message", opts.message, "string", true) or "Forbidden\n"
  local headers = { ["Content-Type"] = "text/plain; charset=utf-8" }
  local check_allow = #allow > 0

  return {
    on_request = function(req)
      local e = lookup(req.remote_addr or "")
      if e == BAD or matches(deny, e[1], e[2], e[3], e[4])
        or (check_allow and not matches(allow, e[1], e[2], e[3], e[4])) then
        req:respond(status, message, headers)
      end
    end,
  }
end
