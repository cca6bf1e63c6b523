-- moonring.re: PCRE2 regular expressions with OpenResty's ngx.re API (match, find, gmatch, sub,
-- gsub, split), over src/lua/regex.c through FFI.
--
--   local re = require "moonring.re"
--   local m, err = re.match("/users/42", [[^/users/(?<id>\d+)$]], "jo")  -- m[0], m[1], m.id
--
-- Options are ngx.re's letters: i (caseless), m (multi-line), s (dot matches newline),
-- x (extended), a (anchored), u (UTF-8), U (UTF-8, not checked), D (duplicate names),
-- J (JavaScript escapes), j (PCRE2 JIT), o (compile once: keep the compiled regex in this VM's
-- cache, up to re.cache_max patterns). "d" (DFA matching) is refused.
-- Without "o" a regex is compiled at every call, as in OpenResty: use "jo" on hot paths.
-- Errors: a bad pattern or option returns nil, err (never raises); misuse (not a string) raises.
local ffi = require "ffi"

ffi.cdef [[
typedef struct mr_regex mr_regex_t;
int mr_regex_compile(const char *pat, size_t len, int flags, mr_regex_t **out);
void mr_regex_free(mr_regex_t *re);
int mr_regex_ncaptures(const mr_regex_t *re);
int mr_regex_nnames(const mr_regex_t *re);
int mr_regex_name_at(const mr_regex_t *re, int i, const char **name, int *group);
int mr_regex_exec(mr_regex_t *re, const char *subj, size_t len, size_t from, const size_t **ov);
const char *mr_regex_error(void);
]]

local base = require "moonring.base"
local C = ffi.C
local ffi_string, ffi_gc = ffi.string, ffi.gc
local sub, byte, find, type, tostring, error = string.sub, string.byte, string.find, type, tostring, error
local concat = table.concat
local OK, DECLINED = base.OK, base.DECLINED

local M = { cache_max = 1024 }

local FLAGS = { i = 1, m = 2, s = 4, x = 8, a = 16, u = 32, U = 64, D = 128, J = 256, j = 512, o = 0 }
local F_UTF = 32 + 64
local UNSET = ffi.cast("size_t", -1)

local outp = ffi.new("mr_regex_t *[1]")
local ovp = ffi.new("const size_t *[1]")
local namep = ffi.new("const char *[1]")
local groupp = ffi.new("int[1]")

-- option string -> flags, cache it?  (memoised: option strings are few)
local parsed = {}
local function parse_opts(opts)
  local p = parsed[opts]
  if p then return p end
  local flags, once = 0, false
  for i = 1, #opts do
    local c = sub(opts, i, i)
    local f = FLAGS[c]
    if not f then
      if c == "d" then return nil, "regex option 'd' (DFA matching) is not supported" end
      return nil, "unknown flag \"" .. c .. "\" (flags \"" .. opts .. "\")"
    end
    if c == "o" then once = true end
    if f ~= 0 and flags % (2 * f) < f then flags = flags + f end
  end
  p = { flags = flags, once = once }
  parsed[opts] = p
  return p
end

local cache, ncached = {}, 0

local function new_regex(pat, flags)
  local rc = C.mr_regex_compile(pat, #pat, flags, outp)
  if rc ~= OK then
    if rc == base.NOMEM then return nil, base.ERR_NOMEM end
    return nil, ffi_string(C.mr_regex_error())
  end
  local cd = outp[0]
  local r = { cd = cd, ncap = C.mr_regex_ncaptures(cd), utf = flags % 128 >= 32 }
  local nn = C.mr_regex_nnames(cd)
  if nn > 0 then
    local names = {}
    for i = 0, nn - 1 do
      C.mr_regex_name_at(cd, i, namep, groupp)
      names[#names + 1] = { ffi_string(namep[0]), groupp[0] }
    end
    r.names = names
    r.dup = flags % 256 >= 128
  end
  return r
end

-- The compiled regex for (pat, opts): from the cache with "o", else a new one the caller frees
-- with release(). nil, err for a bad pattern or option.
local function compile(pat, opts)
  if type(pat) ~= "string" then error("bad argument: the regex must be a string", 3) end
  if opts == nil then opts = "" elseif type(opts) ~= "string" then error("bad argument: the options must be a string", 3) end
  local p, err = parse_opts(opts)
  if not p then return nil, err end
  if p.once then
    local byopts = cache[opts]
    local r = byopts and byopts[pat]
    if r then return r end
    r, err = new_regex(pat, p.flags)
    if not r then return nil, err end
    ffi_gc(r.cd, C.mr_regex_free)
    if ncached >= M.cache_max then cache, ncached = {}, 0 end -- the GC frees what was dropped
    byopts = cache[opts]
    if not byopts then byopts = {}; cache[opts] = byopts end
    byopts[pat] = r
    ncached = ncached + 1
    return r
  end
  local r
  r, err = new_regex(pat, p.flags)
  if not r then return nil, err end
  r.temp = true
  return r
end

local function release(r)
  if r.temp then C.mr_regex_free(r.cd); r.cd = nil end
end

-- Captures of the last match into a table: [0] the whole match, [1..n] the groups (false when
-- unset), and named groups by name (a list of values with "D").
local function captures(r, subj, rc, ov, res)
  res = res or {}
  for i = 0, r.ncap do
    local s = ov[2 * i]
    if i < rc and s ~= UNSET then
      res[i] = sub(subj, tonumber(s) + 1, tonumber(ov[2 * i + 1]))
    else
      res[i] = false
    end
  end
  local names = r.names
  if names then
    for i = 1, #names do
      local name, g = names[i][1], names[i][2]
      if r.dup then
        local v = res[g]
        if v then
          local list = res[name]
          if type(list) ~= "table" then list = {}; res[name] = list end
          list[#list + 1] = v
        elseif res[name] == nil then
          res[name] = false
        end
      else
        res[name] = res[g]
      end
    end
  end
  return res
end

local function start_of(ctx)
  if ctx == nil then return 0 end
  if type(ctx) ~= "table" then error("bad argument: ctx must be a table", 3) end
  local pos = ctx.pos
  if pos == nil then return 0 end
  if type(pos) ~= "number" then error("bad argument: ctx.pos must be a number", 3) end
  return pos > 1 and pos - 1 or 0
end

local function check_subject(s)
  if type(s) == "number" then return tostring(s) end
  if type(s) ~= "string" then error("bad argument: the subject must be a string", 3) end
  return s
end

-- The captures of the first match at or after ctx.pos (1-based; ctx.pos is set past the match),
-- or nil, or nil and an error.
function M.match(subj, pat, opts, ctx, res)
  subj = check_subject(subj)
  local r, err = compile(pat, opts)
  if not r then return nil, err end
  local rc = C.mr_regex_exec(r.cd, subj, #subj, start_of(ctx), ovp)
  if rc < 0 then
    if rc == DECLINED then release(r); return nil end
    err = ffi_string(C.mr_regex_error())
    release(r)
    return nil, err
  end
  local ov = ovp[0]
  if ctx then ctx.pos = tonumber(ov[1]) + 1 end
  local m = captures(r, subj, rc, ov, res)
  release(r)
  return m
end

-- from, to (1-based, inclusive) of the first match (or of its capture nth), or nil[, err].
function M.find(subj, pat, opts, ctx, nth)
  subj = check_subject(subj)
  local r, err = compile(pat, opts)
  if not r then return nil, nil, err end
  local rc = C.mr_regex_exec(r.cd, subj, #subj, start_of(ctx), ovp)
  if rc < 0 then
    if rc ~= DECLINED then err = ffi_string(C.mr_regex_error()) end
    release(r)
    return nil, nil, err
  end
  local ov = ovp[0]
  if ctx then ctx.pos = tonumber(ov[1]) + 1 end
  nth = nth or 0
  if nth < 0 or nth > r.ncap then release(r); return nil, nil, "nth out of range" end
  local s = ov[2 * nth]
  release(r)
  if nth >= rc or s == UNSET then return nil end
  return tonumber(s) + 1, tonumber(ov[2 * nth + 1])
end

-- Past an empty match at byte offset pos: the next character's offset (a whole UTF-8 sequence
-- in "u" mode).
local function step_over(r, subj, pos)
  pos = pos + 1
  if r.utf then
    while pos < #subj do
      local b = byte(subj, pos + 1)
      if b < 0x80 or b >= 0xC0 then break end
      pos = pos + 1
    end
  end
  return pos
end

-- An iterator over the captures of every match (nil at the end, or nil, err).
function M.gmatch(subj, pat, opts)
  subj = check_subject(subj)
  local r, err = compile(pat, opts)
  if not r then return nil, err end
  if r.temp then ffi_gc(r.cd, C.mr_regex_free); r.temp = nil end -- lives as long as the iterator
  local pos, len, done = 0, #subj, false
  return function()
    if done then return nil end
    local rc = C.mr_regex_exec(r.cd, subj, len, pos, ovp)
    if rc < 0 then
      done = true
      if rc == DECLINED then return nil end
      return nil, ffi_string(C.mr_regex_error())
    end
    local ov = ovp[0]
    local s, e = tonumber(ov[0]), tonumber(ov[1])
    if e == s then
      if e >= len then done = true end
      pos = step_over(r, subj, e)
    else
      pos = e
    end
    return captures(r, subj, rc, ov)
  end
end

-- Expands a replacement template: $0..$99, ${n}, ${name}, $$.
local function expand(tpl, m)
  if not find(tpl, "$", 1, true) then return tpl end
  local out, i, n = {}, 1, #tpl
  while i <= n do
    local j = find(tpl, "$", i, true)
    if not j then out[#out + 1] = sub(tpl, i); break end
    out[#out + 1] = sub(tpl, i, j - 1)
    local c = sub(tpl, j + 1, j + 1)
    if c == "$" then
      out[#out + 1] = "$"
      i = j + 2
    elseif c == "{" then
      local close = find(tpl, "}", j + 2, true)
      if not close then return nil, "the closing bracket in \"" .. tpl .. "\" variable is missing" end
      local name = sub(tpl, j + 2, close - 1)
      local v = m[tonumber(name) or name]
      if v == nil then return nil, "invalid capturing variable name found in \"" .. tpl .. "\"" end
      out[#out + 1] = v or ""
      i = close + 1
    else
      local d = tpl:match("^%d%d?", j + 1)
      if not d then return nil, "invalid capturing variable name found in \"" .. tpl .. "\"" end
      local v = m[tonumber(d)]
      out[#out + 1] = v or ""
      i = j + 1 + #d
    end
  end
  return concat(out)
end

local function replace(subj, pat, repl, opts, global)
  subj = check_subject(subj)
  local rt = type(repl)
  if rt == "number" then repl = tostring(repl); rt = "string" end
  if rt ~= "string" and rt ~= "function" then error("bad argument: the replacement must be a string or a function", 3) end
  local r, err = compile(pat, opts)
  if not r then return nil, nil, err end
  local out, n, pos, len, last = {}, 0, 0, #subj, 0
  while pos <= len do
    local rc = C.mr_regex_exec(r.cd, subj, len, pos, ovp)
    if rc < 0 then
      if rc ~= DECLINED then err = ffi_string(C.mr_regex_error()); release(r); return nil, nil, err end
      break
    end
    local ov = ovp[0]
    local s, e = tonumber(ov[0]), tonumber(ov[1])
    local m = captures(r, subj, rc, ov)
    local v
    if rt == "function" then
      v = repl(m)
      if type(v) == "number" then v = tostring(v) elseif type(v) ~= "string" then v = "" end
    else
      v, err = expand(repl, m)
      if not v then release(r); return nil, nil, err end
    end
    out[#out + 1] = sub(subj, last + 1, s)
    out[#out + 1] = v
    n = n + 1
    last = e
    if not global then break end
    if e == s then
      if e >= len then break end
      pos = step_over(r, subj, e)
      out[#out + 1] = sub(subj, e + 1, pos)
      last = pos
    else
      pos = e
    end
  end
  release(r)
  if n == 0 then return subj, 0 end
  out[#out + 1] = sub(subj, last + 1)
  return concat(out), n
end

-- The subject with its first match replaced: new string, count, or nil, nil, err.
function M.sub(subj, pat, repl, opts) return replace(subj, pat, repl, opts, false) end
-- The subject with every match replaced.
function M.gsub(subj, pat, repl, opts) return replace(subj, pat, repl, opts, true) end

-- ngx.re.split: the pieces between matches (a capture group's values are kept too), at most
-- max pieces (the last holds the rest), into res if given.
function M.split(subj, pat, opts, ctx, max, res)
  subj = check_subject(subj)
  if max ~= nil and type(max) ~= "number" then error("bad argument: max must be a number", 2) end
  if max and max <= 0 then max = nil end
  local r, err = compile(pat, opts)
  if not r then return nil, err end
  res = res or {}
  local n, pos, last, len = 0, start_of(ctx), start_of(ctx), #subj
  if pat == "" then
    -- every character
    while pos < len and (not max or n < max - 1) do
      local nxt = step_over(r, subj, pos)
      n = n + 1
      res[n] = sub(subj, pos + 1, nxt)
      pos = nxt
    end
    if pos < len then n = n + 1; res[n] = sub(subj, pos + 1) end
    for i = n + 1, #res do res[i] = nil end
    release(r)
    return res
  end
  while pos <= len and (not max or n < max - 1) do
    local rc = C.mr_regex_exec(r.cd, subj, len, pos, ovp)
    if rc < 0 then
      if rc ~= DECLINED then err = ffi_string(C.mr_regex_error()); release(r); return nil, err end
      break
    end
    local ov = ovp[0]
    local s, e = tonumber(ov[0]), tonumber(ov[1])
    if e == s then
      if s >= len then break end
      pos = step_over(r, subj, s)
      if s > last then
        n = n + 1
        res[n] = sub(subj, last + 1, s)
        last = s
      end
    else
      n = n + 1
      res[n] = sub(subj, last + 1, s)
      for g = 1, r.ncap do
        local gs = ov[2 * g]
        if g < rc and gs ~= UNSET then n = n + 1; res[n] = sub(subj, tonumber(gs) + 1, tonumber(ov[2 * g + 1])) end
      end
      last, pos = e, e
    end
  end
  n = n + 1
  res[n] = sub(subj, last + 1)
  -- trailing empty pieces are dropped (as Perl and ngx.re.split do) unless max was given
  if not max then while n > 0 and res[n] == "" do res[n] = nil; n = n - 1 end end
  for i = n + 1, #res do res[i] = nil end
  release(r)
  return res
end

-- For unit specs: use the core shared library (libmoonring_ffi.so) instead of the binary.
function M.use_lib(lib)
  C = lib or ffi.C
  cache, ncached = {}, 0
end

-- ngx.re.opt: only the names OpenResty knows; their values are accepted and ignored (PCRE2's
-- defaults apply).
function M.opt(name, value)
  if name ~= "jit_stack_size" and name ~= "match_limit" then error("unrecognized option name", 2) end
  return true
end

return M
