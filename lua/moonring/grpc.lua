-- gRPC helpers for filters and handlers (docs/lua.md, "gRPC"). A gRPC call is answered with a
-- status rather than an HTTP error: req:grpc_error(code, message) sends gRPC's Trailers-Only
-- response (HTTP 200, content-type application/grpc, grpc-status, grpc-message), which is what
-- this module's error() does too.
--
--   local grpc = require "moonring.grpc"
--   on_request = function(req)
--     if grpc.is_grpc(req) and not req:header("authorization") then
--       return req:grpc_error(grpc.status.UNAUTHENTICATED, "missing credentials")
--     end
--   end
local M = {}

-- The status codes, by name (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
M.status = {
  OK = 0, CANCELLED = 1, UNKNOWN = 2, INVALID_ARGUMENT = 3, DEADLINE_EXCEEDED = 4, NOT_FOUND = 5,
  ALREADY_EXISTS = 6, PERMISSION_DENIED = 7, RESOURCE_EXHAUSTED = 8, FAILED_PRECONDITION = 9,
  ABORTED = 10, OUT_OF_RANGE = 11, UNIMPLEMENTED = 12, INTERNAL = 13, UNAVAILABLE = 14,
  DATA_LOSS = 15, UNAUTHENTICATED = 16,
}

-- A code given as a number (0-16) or a name ("UNAUTHENTICATED"); nil when it is neither.
function M.code(c)
  if type(c) == "string" then return M.status[c:upper()] end
  if type(c) == "number" and c >= 0 and c <= 16 and c % 1 == 0 then return c end
  return nil
end

-- True when the request is a gRPC call (content-type application/grpc, or application/grpc+...).
function M.is_grpc(req)
  local ct = req:header("content-type")
  if not ct then return false end
  ct = ct:lower()
  return ct == "application/grpc" or ct:sub(1, 17) == "application/grpc+" or ct:sub(1, 17) == "application/grpc;"
end

-- grpc-message is percent-encoded: bytes outside printable ASCII, and "%".
function M.encode_message(s)
  return (tostring(s):gsub("[^\32-\36\38-\126]", function(ch) return ("%%%02X"):format(ch:byte()) end))
end

-- Answers req with a gRPC status (see req:grpc_error).
function M.error(req, code, message)
  return req:grpc_error(code, message)
end

return M
