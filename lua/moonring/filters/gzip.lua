-- gzip: compresses responses (zlib, streaming) for clients that accept gzip.
--
--   { "moonring.filters.gzip", { level = 5, types = { "text/html", "application/json" }, min_length = 256 } }
--
-- A response is compressed when the request's Accept-Encoding allows gzip (q > 0), the method
-- is not HEAD, the status is 200-203 (4xx and 5xx too with `errors = true`; never 206: ranges
-- are of the uncompressed body), its Content-Type (without parameters) is in `types`; it has no
-- Content-Encoding and no Cache-Control: no-transform; and a Content-Length, when there is one,
-- is at least `min_length`. The body is compressed as it streams (on_body), so memory stays
-- bounded by zlib's window whatever the size; Content-Length goes (the body is re-framed),
-- Content-Encoding: gzip and Vary: Accept-Encoding are set, and a strong ETag becomes weak.
local ffi = require "ffi"
local util = require "moonring.filters._util"

pcall(ffi.cdef, [[
typedef struct mr_gzip mr_gzip_t;
int mr_gzip_new(int level, int mem_level, mr_gzip_t **out);
void mr_gzip_free(mr_gzip_t *g);
int64_t mr_gzip_feed(mr_gzip_t *g, const char *in, size_t n, int mode, const unsigned char **p);
]])

local NAME = "moonring.filters.gzip"
local C = ffi.C
local lower, find, sub, match = string.lower, string.find, string.sub, string.match
local outp = ffi.new("mr_gzip_t *[1]")
local pp = ffi.new("const unsigned char *[1]")

local DEFAULT_TYPES = { "text/html", "text/plain", "text/css", "text/xml", "text/javascript",
  "application/javascript", "application/json", "application/xml", "application/xhtml+xml",
  "application/rss+xml", "application/atom+xml", "image/svg+xml", "application/wasm" }

-- Whether an Accept-Encoding value allows gzip: listed (or "*") with q > 0.
local function accepts_gzip(ae)
  if not ae then return false end
  local star
  for item in ae:gmatch("[^,]+") do
    local coding, params = match(item, "^%s*([^;%s]+)%s*(.*)$")
    if coding then
      coding = lower(coding)
      local q = tonumber(match(params, "[qQ]%s*=%s*([%d.]+)")) or 1
      if coding == "gzip" or coding == "x-gzip" then return q > 0 end
      if coding == "*" then star = q > 0 end
    end
  end
  return star or false
end

return function(opts)
  opts = util.options(NAME, opts, { "level", "types", "min_length", "errors", "flush", "mem_level" })
  local level = util.check_type(NAME, "level", opts.level, "number", true) or 5
  if level < 1 or level > 9 or level % 1 ~= 0 then util.fail(NAME, "level", "must be an integer from 1 to 9") end
  local mem_level = util.check_type(NAME, "mem_level", opts.mem_level, "number", true) or 8
  if mem_level < 1 or mem_level > 9 or mem_level % 1 ~= 0 then util.fail(NAME, "mem_level", "must be an integer from 1 to 9") end
  local min_length = util.check_type(NAME, "min_length", opts.min_length, "number", true) or 256
  local errors = util.check_type(NAME, "errors", opts.errors, "boolean", true) or false
  local flush = util.check_type(NAME, "flush", opts.flush, "boolean", true) or false
  local types = {}
  local any_type = false
  for i, t in ipairs(util.check_list(NAME, "types", opts.types, DEFAULT_TYPES)) do
    if t == "*" then any_type = true
    elseif not find(t, "^[%w!#$&^_.+-]+/[%w!#$&^_.+-]+$") then util.fail(NAME, "types[" .. i .. "]", "must be a media type like \"text/html\" or \"*\"") end
    types[lower(t)] = true
  end

  local filter = {}

  function filter.on_request(req, ctx)
    if req.method ~= "HEAD" and accepts_gzip(req:header("accept-encoding")) then ctx.gzip_ok = true end
  end

  function filter.on_response(res, ctx)
    ctx.gzip = nil -- a response that replaced another (an error after a parked phase) starts afresh
    -- what varies with Accept-Encoding must say so, compressed this time or not
    local vary = res:header("vary")
    if not vary then res:set_header("Vary", "Accept-Encoding")
    elseif not find(lower(vary), "accept-encoding", 1, true) and vary ~= "*" then res:set_header("Vary", vary .. ", Accept-Encoding") end
    if not ctx.gzip_ok then return end
    local st = res.status
    if not (st == 200 or st == 201 or st == 202 or st == 203 or (errors and st >= 400)) then return end
    if res:header("content-encoding") then return end
    local cc = res:header("cache-control")
    if cc and find(lower(cc), "no-transform", 1, true) then return end
    local ct = res:header("content-type")
    if not any_type then
      if not ct then return end
      local mt = lower(match(ct, "^%s*([^;%s]+)") or "")
      if not types[mt] then return end
    end
    local len = tonumber(res:header("content-length"))
    if len and len < min_length then return end
    if C.mr_gzip_new(level, mem_level, outp) ~= 0 then return end -- out of memory: send as it is
    ctx.gzip = ffi.gc(outp[0], C.mr_gzip_free)
    res:set_header("Content-Encoding", "gzip")
    res:del_header("Content-Length")
    local etag = res:header("etag")
    if etag and sub(etag, 1, 2) ~= "W/" then res:set_header("ETag", "W/" .. etag) end
  end

  function filter.on_body(res, chunk, eof, ctx)
    local g = ctx.gzip
    if not g then return chunk end
    local n = C.mr_gzip_feed(g, chunk, #chunk, eof and 1 or (flush and 2 or 0), pp)
    if n < 0 then error(NAME .. ": compression failed (" .. tonumber(n) .. ")", 0) end
    if eof then
      ctx.gzip = nil
      local out = ffi.string(pp[0], n)
      C.mr_gzip_free(ffi.gc(g, nil))
      return out
    end
    if n == 0 then return nil end
    return ffi.string(pp[0], n)
  end

  return filter
end
