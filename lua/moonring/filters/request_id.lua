-- request_id: gives every request an id, in a request header, in ctx.request_id and echoed
-- in the response.
--
--   { "moonring.filters.request_id", { header = "X-Request-Id", always = false, echo = true } }
local util = require "moonring.filters._util"

local NAME = "moonring.filters.request_id"
local find = string.find

-- An incoming id is kept only if it is 1-200 visible ASCII characters.
local function acceptable(id)
  return id ~= nil and #id <= 200 and not find(id, "[^\33-\126]")
end

return function(opts)
  opts = util.options(NAME, opts, { "header", "always", "echo", "generator" })
  local header = util.check_header_name(NAME, "header", opts.header or "X-Request-Id")
  local always = util.check_type(NAME, "always", opts.always, "boolean", true) or false
  local echo = util.check_type(NAME, "echo", opts.echo, "boolean", true)
  if echo == nil then echo = true end
  local generate = util.check_type(NAME, "generator", opts.generator, "function", true) or util.random_hex128

  local filter = {}

  function filter.on_request(req, ctx)
    local id = not always and req:header(header) or nil
    if not acceptable(id) then
      id = generate()
      req:set_header(header, id)
    end
    ctx.request_id = id
  end

  if echo then
    function filter.on_response(res, ctx)
      local id = ctx.request_id
      if id then res:set_header(header, id) end
    end
  end

  return filter
end
