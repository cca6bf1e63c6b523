-- ngx.base64 (URL-safe base64) for OpenResty code on moonring.
local M = { version = "0.1.25" }

function M.encode_base64url(s)
  if type(s) ~= "string" then error("must provide a string", 2) end
  return (ngx.encode_base64(s, true):gsub("[+/]", { ["+"] = "-", ["/"] = "_" }))
end

function M.decode_base64url(s)
  if type(s) ~= "string" then error("string argument only", 2) end
  if s:find("[^%w%-_]") then return nil, "invalid input" end
  local r = ngx.decode_base64((s:gsub("[-_]", { ["-"] = "+", ["_"] = "/" })))
  if not r then return nil, "invalid input" end
  return r
end

return M
