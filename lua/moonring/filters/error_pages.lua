-- error_pages: custom bodies for error responses, per route and status.
--
--   { "moonring.filters.error_pages", { pages = {
--       [404] = { file = "errors/404.html" },
--       ["5xx"] = "<h1>We'll be right back</h1>",
--   } } }
--
-- A response whose status has a page (an exact status, else its class "4xx"/"5xx") gets that
-- body instead of its own, with `content_type` (default "text/html; charset=utf-8"); the
-- status and the other headers stay. It applies to upstream responses, to local ones
-- (req:respond, other filters' answers such as a 401) and to the errors the core answers for
-- the upstream (502, 503, 504: upstream down, refused, timed out). A page is a string, a
-- table { body = string } or { file = path } (read when the config loads; relative paths are
-- relative to the config file's directory), or a function(res, ctx) returning the body.
-- "${status}" in a page is replaced by the status code.
local util = require "moonring.filters._util"

local NAME = "moonring.filters.error_pages"
local gsub, match = string.gsub, string.match

local function read(path)
  if path:sub(1, 1) ~= "/" then
    local dir = require("moonring.config").dir
    if dir then path = dir .. "/" .. path end
  end
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

return function(opts)
  opts = util.options(NAME, opts, { "pages", "content_type" })
  local ct = opts.content_type or "text/html; charset=utf-8"
  util.check_header_value(NAME, "content_type", ct)
  if type(opts.pages) ~= "table" then util.fail(NAME, "pages", "is required: a table from status (404, \"5xx\") to page") end
  local pages = {}
  for k, v in pairs(opts.pages) do
    local key = k
    if type(k) == "number" then
      util.check_status(NAME, "pages[" .. k .. "]", k)
    elseif type(k) ~= "string" or not match(k, "^[1-5]xx$") then
      util.fail(NAME, "pages", "keys are status codes (404) or classes (\"5xx\"), got " .. util.describe(k))
    end
    local label = "pages[" .. tostring(k) .. "]"
    if type(v) == "table" then
      if v.file then
        if type(v.file) ~= "string" then util.fail(NAME, label .. ".file", "must be a path") end
        local s, err = read(v.file)
        if not s then util.fail(NAME, label .. ".file", "cannot be read: " .. tostring(err)) end
        v = s
      elseif type(v.body) == "string" then
        v = v.body
      else
        util.fail(NAME, label, "must be a string, { body = ... }, { file = ... } or a function")
      end
    elseif type(v) ~= "string" and type(v) ~= "function" then
      util.fail(NAME, label, "must be a string, { body = ... }, { file = ... } or a function")
    end
    pages[key] = v
  end

  local filter = {}

  function filter.on_response(res, ctx)
    ctx.error_page = nil
    local st = res.status
    if st < 400 then return end
    local page = pages[st] or pages[math.floor(st / 100) .. "xx"]
    if not page then return end
    if type(page) == "function" then
      page = page(res, ctx)
      if type(page) ~= "string" then return end
    end
    ctx.error_page = (gsub(page, "%${status}", tostring(st)))
    res:set_header("Content-Type", ct)
    res:del_header("Content-Length")
    res:del_header("Content-Encoding")
    res:del_header("ETag")
  end

  function filter.on_body(res, chunk, eof, ctx)
    local page = ctx.error_page
    if not page then return chunk end
    if eof then ctx.error_page = nil; return page end
    return nil
  end

  return filter
end
