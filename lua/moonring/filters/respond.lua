-- respond: answers every request with a fixed response; the upstream is never called.
--
--   { "moonring.filters.respond", { status = 503, body = "down for maintenance\n",
--                                   headers = { ["Retry-After"] = "120" } } }
--
-- status defaults to 200 and body to "". A non-empty body without a Content-Type header is
-- sent as text/plain; charset=utf-8.
local util = require "moonring.filters._util"

local NAME = "moonring.filters.respond"

return function(opts)
  opts = util.options(NAME, opts, { "status", "body", "headers" })
  local status = util.check_status(NAME, "status", opts.status, 200)
  local body = util.check_type(NAME, "body", opts.body, "string", true) or ""
  local headers, has_type = {}, false
  if opts.headers ~= nil then
    if type(opts.headers) ~= "table" then util.fail(NAME, "headers", "must be a map of header name to value") end
    for k, v in pairs(opts.headers) do
      local o = "headers." .. tostring(k)
      util.check_header_name(NAME, o, k)
      headers[k] = util.check_header_value(NAME, o, v)
      if k:lower() == "content-type" then has_type = true end
    end
  end
  if body ~= "" and not has_type then headers["Content-Type"] = "text/plain; charset=utf-8" end

  return {
    on_request = function(req)
      req:respond(status, body, headers)
    end,
  }
end
