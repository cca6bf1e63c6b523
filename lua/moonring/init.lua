-- The `moonring` module user code sees: time, logging, sleeping and shared dicts.
-- Functions that yield (sleep) work in every request phase; they park the request on the
-- worker's loop and never block the worker.
local ffi = require "ffi"

ffi.cdef [[
double mr_lua_now(void);
void mr_lua_log(int level, const char *msg, size_t len);
]]

local C = ffi.C
local M = {}

local levels = { debug = 0, info = 1, notice = 2, warn = 3, error = 4 }

function M.now() return C.mr_lua_now() end

function M.log(level, ...)
  local l = levels[level]
  if not l then error("moonring.log(level, ...): level must be one of debug, info, notice, warn, error", 2) end
  local parts = { ... }
  for i = 1, select("#", ...) do parts[i] = tostring(parts[i]) end
  local msg = table.concat(parts, " ")
  C.mr_lua_log(l, msg, #msg)
end

function M.sleep(seconds)
  if type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds then
    error("moonring.sleep(seconds): seconds must be a non-negative number", 2)
  end
  if coroutine.running() == nil or not M._yield then
    error("moonring.sleep can only be called from a request phase", 2)
  end
  return M._yield("sleep", seconds)
end

-- moonring.shared.<name>: loaded on first use so that scripts without shared dicts pay nothing.
setmetatable(M, { __index = function(t, k)
  if k == "shared" then
    local ok, shared = pcall(require, "moonring.shared")
    if not ok then error("moonring.shared is not available: " .. tostring(shared), 2) end
    rawset(t, "shared", shared)
    return shared
  end
end })

return M
