-- rewrite: rewrites the request path by pattern, before the upstream sees it.
--
--   { "moonring.filters.rewrite", { from = "^/old/(.*)$", to = "/new/%1" } }
--   { "moonring.filters.rewrite", { re = "'/v' {%d+} '/'", to = "/api/%1/" } } -- LPeg re syntax
--
-- `from` is a Lua pattern (not a regex): the first match in the path is replaced by `to`, as
-- string.gsub(path, from, to, 1) does, so %0 is the whole match and %1..%9 the captures;
-- anchor with ^ and $ to replace the whole path. `to` may also be a function(captures...)
-- returning the replacement. `re` is the LPeg `re` alternative (captures are {...}).
-- If the result contains '?', what follows becomes the query. `query` (default true) keeps
-- the original query string, appended after any query from `to`; `query = false` drops it.
-- An empty result becomes "/"; any other result must start with '/'.
local util = require "moonring.filters._util"

local NAME = "moonring.filters.rewrite"
local find, gsub, sub = string.find, string.gsub, string.sub
local pattern_error = require("moonring.config").lua_pattern_error

-- Number of captures in a Lua pattern (syntax already checked).
local function count_captures(p)
  local n, i, len = 0, 1, #p
  while i <= len do
    local c = sub(p, i, i)
    if c == "%" then
      i = i + (sub(p, i + 1, i + 1) == "b" and 4 or 2)
    elseif c == "[" then
      i = i + 1
      if sub(p, i, i) == "^" then i = i + 1 end
      if sub(p, i, i) == "]" then i = i + 1 end
      while i <= len and sub(p, i, i) ~= "]" do
        i = i + (sub(p, i, i) == "%" and 2 or 1)
      end
      i = i + 1
    else
      if c == "(" then n = n + 1 end
      i = i + 1
    end
  end
  return n
end

local function check_replacement(to, ncap)
  local max = ncap > 0 and ncap or 1 -- with no captures, %1 is the whole match
  for c in to:gmatch("%%(.?)") do
    local d = tonumber(c)
    if d then
      if d > max then util.fail(NAME, "to", "refers to capture %" .. d .. " but 'from' has " .. ncap) end
    elseif c ~= "%" then
      util.fail(NAME, "to", "has an invalid use of '%' (use %0-%9 or %%)")
    end
  end
end

local function compile_re(src, to)
  local ok, re = pcall(require, "re")
  if not ok then util.fail(NAME, "re", "needs the LPeg `re` module (lua-lpeg): " .. tostring(re)) end
  local lpeg = require "lpeg"
  local okc, patt = pcall(re.compile, src)
  if not okc then util.fail(NAME, "re", "is not a valid re pattern: " .. tostring(patt)) end
  local ok2, subst = pcall(function()
    return lpeg.Cs((1 - patt) ^ 0 * (patt / to) * lpeg.P(1) ^ 0)
  end)
  if not ok2 then util.fail(NAME, "to", "cannot be used with 're': " .. tostring(subst)) end
  return function(path) return lpeg.match(subst, path) end
end

return function(opts)
  opts = util.options(NAME, opts, { "from", "re", "to", "query" })
  local from, re_src, to = opts.from, opts.re, opts.to
  if (from == nil) == (re_src == nil) then util.fail(NAME, "from", "(or 're') is required, and only one of them") end
  if type(to) ~= "string" and type(to) ~= "function" then
    util.fail(NAME, "to", "must be a string or a function, got " .. util.describe(to))
  end
  local keep_query = util.check_type(NAME, "query", opts.query, "boolean", true)
  if keep_query == nil then keep_query = true end

  local match_re
  if from ~= nil then
    util.check_type(NAME, "from", from, "string")
    -- checked whole: gsub raises only on the part of a pattern a path reaches
    local perr = pattern_error(from)
    if perr then util.fail(NAME, "from", "is not a valid Lua pattern: " .. perr) end
    if type(to) == "string" then check_replacement(to, count_captures(from)) end
  else
    util.check_type(NAME, "re", re_src, "string")
    match_re = compile_re(re_src, to)
  end

  return {
    on_request = function(req)
      local new
      if match_re then
        new = match_re(req.path)
        if not new then return end
      else
        local n
        new, n = gsub(req.path, from, to, 1)
        if n == 0 then return end
      end
      local q = find(new, "?", 1, true)
      if q then
        local nq, old = sub(new, q + 1), req.query
        new = sub(new, 1, q - 1)
        if keep_query and old ~= "" then nq = nq == "" and old or (nq .. "&" .. old) end
        req:set_query(nq)
      elseif not keep_query and req.query ~= "" then
        req:set_query("")
      end
      req:set_path(new == "" and "/" or new)
    end,
  }
end
