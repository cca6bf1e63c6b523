-- moonring.semaphore (and ngx.semaphore): counting semaphores between the light threads,
-- requests and timers of one worker (one VM), with OpenResty's API.
--
--   local sema = require("moonring.semaphore").new(0)
--   -- a waiter:  local ok, err = sema:wait(5)     -- true, or nil, "timeout"
--   -- elsewhere: sema:post(1)
--
-- A waiter parks its owner (request or timer); post() wakes the owner of the first waiter
-- through its waker (src/lua/wake.c) on a later loop turn. A request that ends while waiting is
-- forgotten by the semaphore (runtime.finish calls _forget), so a post never wakes a dead one.
local ffi = require "ffi"
local moonring = require "moonring"

pcall(ffi.cdef, "int mr_lua_wake(void *waker);")
local C = ffi.C

local M = { version = "0.1.25" }
local methods = {}
local mt = { __index = methods }

function M.new(n)
  n = n or 0
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 then return nil, "no memory" end
  return setmetatable({ resources = n, head = 1, tail = 0, q = {} }, mt)
end

local function remove(self, w)
  local q = self.q
  for i = self.head, self.tail do
    if q[i] == w then
      for j = i, self.tail - 1 do q[j] = q[j + 1] end
      q[self.tail] = nil
      self.tail = self.tail - 1
      return
    end
  end
end

local function forget(o, w)
  local waits = o.sema_waits
  if waits then waits[w] = nil end
end

-- Waits until a resource is available (taking it) or `timeout` seconds (default 0: do not wait)
-- passed: true, or nil and "timeout".
function methods.wait(self, timeout)
  if getmetatable(self) ~= mt then error("semaphore:wait: use ':'", 2) end
  timeout = timeout or 0
  if type(timeout) ~= "number" or timeout < 0 then error("semaphore:wait(timeout): timeout must be a non-negative number", 2) end
  if self.resources > 0 and self.tail < self.head then
    self.resources = self.resources - 1
    return true
  end
  if timeout == 0 then return nil, "timeout" end
  local o = moonring._cur
  if not o or coroutine.running() == nil then
    error("semaphore:wait can only wait in a request phase or a timer", 2)
  end
  local w = { o = o, posted = false }
  self.tail = self.tail + 1
  self.q[self.tail] = w
  local waits = o.sema_waits
  if not waits then waits = {}; o.sema_waits = waits end
  waits[w] = self
  local deadline = moonring.monotonic() + timeout
  while not w.posted do
    local left = deadline - moonring.monotonic()
    if left <= 0 then
      remove(self, w)
      forget(o, w)
      return nil, "timeout"
    end
    moonring._yield("sleep", left)
  end
  forget(o, w)
  return true
end

-- Adds n (default 1) resources and wakes as many waiters.
function methods.post(self, n)
  if getmetatable(self) ~= mt then error("semaphore:post: use ':'", 2) end
  n = n or 1
  if type(n) ~= "number" or n < 1 then error("semaphore:post(n): n must be a positive number", 2) end
  self.resources = self.resources + n
  local q = self.q
  while self.resources > 0 and self.head <= self.tail do
    local w = q[self.head]
    q[self.head] = nil
    self.head = self.head + 1
    self.resources = self.resources - 1
    w.posted = true
    local o = w.o
    o.woken = true -- its scheduler gives every waiting coroutine of it a turn
    if o ~= moonring._cur and o.waker then C.mr_lua_wake(o.waker) end
  end
  if self.head > self.tail then self.head, self.tail = 1, 0 end
  return true
end

-- Resources available, or minus the number of waiters.
function methods.count(self)
  local waiting = self.tail - self.head + 1
  if waiting > 0 then return -waiting end
  return self.resources
end

-- An owner ends (request finished): drop its waits.
function M._forget(o)
  local waits = o.sema_waits
  if not waits then return end
  o.sema_waits = nil
  for w, s in pairs(waits) do remove(s, w) end
end

return M
