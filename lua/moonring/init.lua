-- The `moonring` module user code sees: time, logging, sleeping and shared dicts.
-- Functions that yield (sleep) work in every request phase; they park the request on the
-- worker's loop and never block the worker.
local ffi = require "ffi"

ffi.cdef [[
double mr_lua_now(void);
double mr_lua_monotonic(void);
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

-- Seconds on a monotonic clock (for deadlines; not a date).
function M.monotonic() return C.mr_lua_monotonic() end

function M.sleep(seconds)
  if type(seconds) ~= "number" or seconds < 0 or seconds ~= seconds then
    error("moonring.sleep(seconds): seconds must be a non-negative number", 2)
  end
  if coroutine.running() == nil or not M._yield then
    error("moonring.sleep can only be called from a request phase", 2)
  end
  -- A wake-up may be meant for another coroutine of the same request (moonring.thread): sleep
  -- until the deadline whatever wakes this one.
  local deadline = C.mr_lua_monotonic() + seconds
  M._yield("sleep", seconds)
  local left = deadline - C.mr_lua_monotonic()
  while left > 0.0005 do
    M._yield("sleep", left)
    left = deadline - C.mr_lua_monotonic()
  end
end

-- Cosockets belong to the owner that was running when they connected: a request's state, or a
-- timer's record (moonring._cur while its coroutine runs). Whatever the owner leaves open is
-- closed when it ends, so scripts cannot leak file descriptors.
function M._release(owner)
  local socks = owner.socks
  owner.socks = nil
  if socks then for s in pairs(socks) do s:close() end end
end

-- The owner's coroutine moved (a detached on_log): wake it through its new park timer.
function M._rewake(owner)
  if owner.socks then for s in pairs(owner.socks) do s:_rewake(owner.waker) end end
end

-- moonring.shared.<name>, .tcp, .http, .timer and .metrics are loaded on first use so that scripts
-- without them pay nothing.
local lazy = { shared = "moonring.shared", tcp = "moonring.tcp", http = "moonring.http", timer = "moonring.timer",
               thread = "moonring.thread", json = "moonring.json", udp = "moonring.udp", re = "moonring.re",
               metrics = "moonring.metrics" }
setmetatable(M, { __index = function(t, k)
  local name = lazy[k]
  if name then
    local ok, mod = pcall(require, name)
    if not ok then error(name .. " is not available: " .. tostring(mod), 2) end
    if k == "tcp" then mod = mod.tcp elseif k == "udp" then mod = mod.udp end
    rawset(t, k, mod)
    return mod
  end
end })

return M
