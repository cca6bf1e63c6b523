-- Route matching, compiled once per VM load.
--
-- Semantics (the contract, kept by `naive` below and checked against it by spec/unit/router_spec.lua):
-- routes are tried in order and the first one whose every key matches wins. Keys: `method` (set),
-- `exact` (whole path; parameters of the last segment are ignored, "/login;jsessionid=1" matches
-- "/login"), `path` (prefix at a segment boundary: "/api" and "/api/" both match "/api", "/api/x"
-- and "/api;v=1", not "/apix"), `host` (exact names or "*.suffix"; the request host is
-- lowercased without its port), `headers` (name -> exact value, or "~lua pattern"), `pattern` (LPeg
-- `re` over the path; named captures become req.params), `match` (function(req) -> bool).
-- The prefix and exact rules are the C ones (src/http/path.h: mr_path_prefix_match,
-- mr_path_exact_match); spec/unit/path_spec.lua checks that both agree.
--
-- The compiled matcher avoids trying every route: routes are bucketed by host (a hash for exact
-- hosts, a hash per wildcard suffix, one bucket for routes without host), and inside a bucket by
-- path (a hash for `exact`, a byte trie for `path` prefixes, a list for routes with neither). A
-- request visits only its host's buckets, its exact path and the prefixes along its path; the few
-- candidate lists, each already in route order, are merged by route index, and only the keys the
-- index did not decide (method, headers, pattern, match) are checked per candidate. So the first
-- candidate passing its residual checks is the first route of the table that matches, and `match`
-- functions run for exactly the routes (and in the order) the naive scan would run them.
local M = {}

local byte, sub, find = string.byte, string.sub, string.find

local SLASH, SEMI = 47, 59

-- The part of a prefix that decides matching: a trailing slash does not change the subtree a
-- prefix names ("/api/" is "/api"), except for "/" itself.
local function prefix_key(p)
  if #p > 1 and byte(p, #p) == SLASH then return sub(p, 1, -2) end
  return p
end

-- Segment-boundary prefix match (mr_path_prefix_match).
function M.prefix_match(prefix, path)
  if byte(prefix, 1) ~= SLASH or byte(path, 1) ~= SLASH then return false end
  local p = prefix_key(prefix)
  local n = #p
  if n == 1 then return true end
  if sub(path, 1, n) ~= p then return false end
  local c = byte(path, n + 1)
  return c == nil or c == SLASH or c == SEMI
end

-- The path without the parameters of its last segment, or nil when it has none.
local function exact_base(path)
  if not find(path, ";", 1, true) then return nil end
  local last = find(path, "/[^/]*$") or 1
  local semi = find(path, ";", last, true)
  if semi then return sub(path, 1, semi - 1) end
  return nil
end

-- Exact match ignoring the last segment's parameters (mr_path_exact_match).
function M.exact_match(exact, path)
  if exact == path then return true end
  return exact_base(path) == exact
end

local prefix_match, exact_match = M.prefix_match, M.exact_match

local lpeg, re
local function need_re()
  if not re then
    lpeg = require "lpeg"
    re = require "re"
  end
end

local function header_checks(h)
  if not h then return nil end
  local list = {}
  local names = {}
  for k in pairs(h) do names[#names + 1] = k end
  table.sort(names) -- deterministic order; header checks have no side effects
  for _, k in ipairs(names) do
    local v = h[k]
    -- "~pattern" is a Lua pattern; anything else must match exactly
    if v:sub(1, 1) == "~" then list[#list + 1] = { name = k, pat = v:sub(2) }
    else list[#list + 1] = { name = k, eq = v } end
  end
  return list
end

local function method_set(list)
  if not list then return nil end
  local s = {}
  for _, m in ipairs(list) do s[m] = true end
  return s
end

local function host_ok(hosts, host)
  for _, h in ipairs(hosts) do
    if h:sub(1, 2) == "*." then
      local suffix = h:sub(2)
      if #host > #suffix and host:sub(-#suffix) == suffix then return true end
    elseif h == host then
      return true
    end
  end
  return false
end

-- Checks what an index did not decide. Returns the LPeg captures table (or true) on a match.
local function residual(rec, req, path)
  local ms = rec.methods
  if ms and not ms[req.method] then return false end
  if rec.prefix and not prefix_match(rec.prefix, path) then return false end
  if rec.hosts and not host_ok(rec.hosts, req.host) then return false end
  local hs = rec.headers
  if hs then
    for j = 1, #hs do
      local h = hs[j]
      local v = req:header(h.name)
      if not v then return false end
      if h.eq then
        if v ~= h.eq then return false end
      elseif not find(v, h.pat) then
        return false
      end
    end
  end
  local params
  if rec.pattern then
    params = lpeg.match(rec.pattern, path)
    if not params then return false end
  end
  if rec.match and not rec.match(req) then return false end
  if params then rawset(req, "params", params) end
  return true
end

local function record(i, r, index_path, index_host)
  local rec = { i = i, methods = method_set(r.method), headers = header_checks(r.headers), match = r.match }
  if r.pattern then need_re(); rec.pattern = lpeg.Ct(re.compile(r.pattern)) end
  if not index_path and r.path then rec.prefix = r.path end
  if not index_path and r.exact then rec.prefix = nil; rec.exact = r.exact end
  if not index_host then rec.hosts = r.host end
  rec.plain = not (rec.methods or rec.headers or rec.pattern or rec.match or rec.prefix or rec.exact or rec.hosts)
  return rec
end

-- The reference matcher: a plain ordered scan. Kept for the property spec and as documentation.
function M.naive(routes)
  local recs = {}
  for i, r in ipairs(routes) do
    local rec = record(i, r, false, false)
    recs[i] = rec
  end
  return function(req)
    local path = req.path
    for i = 1, #recs do
      local rec = recs[i]
      if (not rec.exact or exact_match(rec.exact, path)) and residual(rec, req, path) then return i end
    end
    return 0
  end
end

local function new_bucket()
  return { exact = {}, trie = {}, has_trie = false, any = {}, has_any = false }
end

local function bucket_add(b, r, rec)
  if r.exact then
    local l = b.exact[r.exact]
    if not l then l = {}; b.exact[r.exact] = l end
    l[#l + 1] = rec
  elseif r.path then
    local node = b.trie
    local key = prefix_key(r.path)
    for k = 1, #key do
      local c = byte(key, k)
      local nx = node[c]
      if not nx then nx = {}; node[c] = nx end
      node = nx
    end
    local l = node.ids
    if not l then l = {}; node.ids = l end
    l[#l + 1] = rec
    b.has_trie = true
  else
    b.any[#b.any + 1] = rec
    b.has_any = true
  end
end

function M.compile(routes)
  local exact_hosts, wild_hosts, any_host = {}, {}, new_bucket()
  local has_hosts, has_wild = false, false
  for i, r in ipairs(routes) do
    local rec = record(i, r, true, true)
    if r.host then
      local seen = {}
      for _, h in ipairs(r.host) do
        local tbl, key = exact_hosts, h
        if h:sub(1, 2) == "*." then tbl, key = wild_hosts, h:sub(2); has_wild = true end
        if not seen[h] then
          seen[h] = true
          local b = tbl[key]
          if not b then b = new_bucket(); tbl[key] = b end
          bucket_add(b, r, rec)
          has_hosts = true
        end
      end
    else
      bucket_add(any_host, r, rec)
    end
  end

  -- Scratch for candidate lists: matching never yields, and match functions do not re-enter it.
  local lists, pos = {}, {}

  -- base: the path without its last segment's parameters (or nil), for exact routes
  local function gather(b, path, base, n)
    local l = b.exact[path]
    if l then n = n + 1; lists[n] = l end
    if base then
      l = b.exact[base]
      if l then n = n + 1; lists[n] = l end
    end
    if b.has_trie then
      local node = b.trie
      for k = 1, #path do
        node = node[byte(path, k)]
        if not node then break end
        local ids = node.ids
        if ids then
          -- a prefix matches at a segment boundary; the only one-byte key is "/", which always does
          local c = byte(path, k + 1)
          if k == 1 or c == nil or c == SLASH or c == SEMI then n = n + 1; lists[n] = ids end
        end
      end
    end
    if b.has_any then n = n + 1; lists[n] = b.any end
    return n
  end

  return function(req)
    local path = req.path
    local base = exact_base(path)
    local n = 0
    if has_hosts then
      local host = req.host
      local b = exact_hosts[host]
      if b then n = gather(b, path, base, n) end
      if has_wild then
        local p = 2 -- "*.x" needs at least one character before the dot
        while true do
          local d = find(host, ".", p, true)
          if not d then break end
          b = wild_hosts[sub(host, d)]
          if b then n = gather(b, path, base, n) end
          p = d + 1
        end
      end
    end
    n = gather(any_host, path, base, n)
    if n == 0 then return 0 end
    if n == 1 then
      local l = lists[1]
      lists[1] = nil
      for k = 1, #l do
        local rec = l[k]
        if rec.plain or residual(rec, req, path) then return rec.i end
      end
      return 0
    end
    -- k-way merge of the candidate lists by route index (k is small: a few prefixes and hosts)
    for j = 1, n do pos[j] = 1 end
    local found, last = 0, 0
    while true do
      local best, bj = nil, 0
      for j = 1, n do
        local rec = lists[j][pos[j]]
        if rec and (not best or rec.i < best.i) then best, bj = rec, j end
      end
      if not best then break end
      pos[bj] = pos[bj] + 1
      -- a route listed under two hosts that both match comes up twice in a row: check it once, so
      -- its `match` function runs no more often than in the naive scan
      if best.i ~= last then
        last = best.i
        if best.plain or residual(best, req, path) then found = best.i; break end
      end
    end
    for j = 1, n do lists[j] = nil end
    return found
  end
end

return M
